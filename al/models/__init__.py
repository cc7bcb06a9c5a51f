"""Models: SchNet and PaiNN on one base class, their registry, settings and checkpoints."""

from al.models.base import AtomisticModel, MCDropout, set_mc_dropout
from al.models.config import ModelConfig
from al.models.painn import PaiNN
from al.models.registry import MODELS, build_model, count_parameters
from al.models.schnet import SchNet
from al.models.shallow import ShallowEnsembleModel

__all__ = [
    "MODELS",
    "AtomisticModel",
    "MCDropout",
    "ModelConfig",
    "PaiNN",
    "SchNet",
    "ShallowEnsembleModel",
    "build_model",
    "count_parameters",
    "set_mc_dropout",
]
