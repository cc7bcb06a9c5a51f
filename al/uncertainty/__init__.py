"""Uncertainty-aware surrogates and their registry (the ``uncertainty`` key)."""

from __future__ import annotations

import torch

from al.models import ModelConfig
from al.training.config import FitConfig
from al.uncertainty.prediction import Prediction
from al.uncertainty.surrogates import (
    UNCERTAINTIES,
    EnsembleSurrogate,
    MCDropoutSurrogate,
    ShallowEnsembleSurrogate,
    Surrogate,
)


def build_surrogate(
    name: str,
    model_config: ModelConfig,
    fit_config: FitConfig,
    device: torch.device,
    *,
    ensemble_size: int = 5,
    bootstrap: bool = False,
    mc_samples: int = 20,
    n_outputs: int = 1,
) -> Surrogate:
    """A surrogate from its registry name; unknown names list the valid ones.

    ``n_outputs > 1`` makes it multi-fidelity: one shared trunk, one output per fidelity.
    """
    surrogate = UNCERTAINTIES.get(name).build(
        model_config, fit_config, device,
        ensemble_size=ensemble_size, bootstrap=bootstrap, mc_samples=mc_samples,
    )  # fmt: skip
    surrogate.n_outputs = n_outputs
    return surrogate


__all__ = [
    "UNCERTAINTIES",
    "EnsembleSurrogate",
    "MCDropoutSurrogate",
    "Prediction",
    "ShallowEnsembleSurrogate",
    "Surrogate",
    "build_surrogate",
]
