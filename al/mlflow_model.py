"""Model-from-code entry for MLflow: the pyfunc class, without pickling an instance.

Logged models name this file (and, before the package had one folder per role, imported
``al.pyfunc`` from it): keep its path.
"""

import mlflow

from al.tracking.pyfunc import MoleculeEnergyModel

mlflow.models.set_model(MoleculeEnergyModel())
