"""Import path of models logged before the package had one folder per role: their
``mlflow_model.py`` imports ``al.pyfunc``. The code lives in :mod:`al.tracking.pyfunc`."""

from al.data.molecules import molecules_frame
from al.tracking.pyfunc import MoleculeEnergyModel, log_pyfunc_model, predict_molecules

__all__ = ["MoleculeEnergyModel", "log_pyfunc_model", "molecules_frame", "predict_molecules"]
