"""The surrogate network's settings (keys of ``train``, ``al_loop``, ``pretrain``, ``hpo``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from al.config import ConfigError, option
from al.models.registry import MODELS


@dataclass
class ModelConfig:
    """The surrogate network."""

    #: The help section of these keys on the command line.
    GROUP = "model"

    model: str = option("schnet", "network architecture", choices=tuple(MODELS))
    hidden: int = option(128, "feature width", min=8)
    n_interactions: int = option(3, "interaction blocks", min=1)
    n_rbf: int = option(32, "Gaussians in the radial basis", min=2)
    cutoff: float = option(5.0, "interaction radius in Angstrom", min=1.0)
    filter_groups: int = option(16, "radial filters per block (divides hidden)", min=1)
    dropout: float = option(0.0, "dropout rate (MC dropout needs > 0)", min=0.0, max=0.9)

    def __post_init__(self) -> None:
        if self.hidden % self.filter_groups:
            raise ConfigError(
                f"hidden={self.hidden} must be divisible by filter_groups={self.filter_groups}"
            )

    def model_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(ModelConfig) if f.name != "model"}
