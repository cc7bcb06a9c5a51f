"""Model-from-code entry for MLflow: the pyfunc class, without pickling an instance."""

import mlflow

from al.pyfunc import MoleculeEnergyModel

mlflow.models.set_model(MoleculeEnergyModel())
