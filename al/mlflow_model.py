"""Model-from-code entry for MLflow: the pyfunc class, without pickling an instance.

Logged models name this file (and, before the package had one folder per role, imported
``al.pyfunc`` from it): keep its path. A model stores a copy of it beside ``code/al.zip``,
the package it was logged with (:func:`al.tracking.pyfunc.zip_package`); models logged
before that store the package as a folder, ``code/al``, which MLflow puts on ``sys.path``.
"""

import sys
from pathlib import Path

import mlflow

if "al" not in sys.modules:  # a process without `al`: run the copy stored with the model
    _SHIPPED = Path(__file__).parent / "code" / "al.zip"
    if _SHIPPED.is_file() and str(_SHIPPED) not in sys.path:
        sys.path.insert(0, str(_SHIPPED))

from al.tracking.pyfunc import MoleculeEnergyModel

mlflow.models.set_model(MoleculeEnergyModel())
