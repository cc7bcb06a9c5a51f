"""The model registry's face: every architecture imported (each registers itself in
:data:`~al.models.base.MODELS` where it is defined) and the factory."""

from __future__ import annotations

from typing import Any

from torch import nn

# each architecture registers itself on import; "schnet" first, the default
from al.models import schnet  # noqa: F401

# isort: split
from al.models import painn  # noqa: F401
from al.models.base import MODELS, AtomisticModel


def build_model(model: str | AtomisticModel, **kwargs: Any) -> AtomisticModel:
    """A model from its registry name (with hyper-parameters) or the instance itself."""
    if isinstance(model, nn.Module):
        return model
    return MODELS.get(model)(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
