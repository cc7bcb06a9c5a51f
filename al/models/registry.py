"""The model registry: names written once (CLI choices, configs, factory, checkpoints)."""

from __future__ import annotations

from typing import Any

from torch import nn

from al.models.base import AtomisticModel
from al.models.painn import PaiNN
from al.models.schnet import SchNet

#: The registry: CLI choices, configs, factory and tests all read it.
MODELS: dict[str, type[AtomisticModel]] = {"schnet": SchNet, "painn": PaiNN}


def build_model(model: str | AtomisticModel, **kwargs: Any) -> AtomisticModel:
    """A model from its registry name (with hyper-parameters) or the instance itself."""
    if isinstance(model, nn.Module):
        return model
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of: {', '.join(MODELS)}")
    return MODELS[model](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
