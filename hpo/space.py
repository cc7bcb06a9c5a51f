"""The search space: which surrogate settings Optuna tunes, and why these ranges.

Every dimension is a key of :class:`al.config.ModelConfig` or :class:`al.config.FitConfig`,
so a trial's settings are a surrogate config that ``train`` and ``al_loop`` accept as they
are. The ranges are written once, here; the study logs them as ``search_space.yaml``.

Why this space. The surrogate is retrained every round of a campaign on 10^2-10^4
molecules, so the space stays inside what trains in minutes on a CPU and does not
over-fit 1,000 labels:

- ``model``: SchNet (invariant, 159k parameters at width 128) against PaiNN (equivariant,
  558k); which one wins at small data is the first question.
- ``hidden`` 64-128, ``n_interactions`` 2-4: below that the models underfit QM9 even at
  10^4 labels; above it they are slower per round without gaining at 10^3 labels.
- ``cutoff`` 4-6 Angstrom: QM9 molecules are at most ~9 Angstrom across; 5 Angstrom already
  covers 89 % of atom pairs, so this is the range where it still changes something.
- ``n_rbf`` 16-48 in steps of 8: the resolution of the distance expansion; finer steps
  are indistinguishable in validation noise.
- ``filter_groups`` {8, 16}: radial filters shared by groups of channels; both divide
  every width above, so no trial is invalid.
- ``lr`` 1e-4-3e-3 (log) with the one-cycle schedule of :func:`al.train.fit`; above
  3e-3 training diverges often, below 1e-4 nothing converges in a trial's epochs.
- ``weight_decay`` 1e-6-1e-2 (log): the lower end is as good as no decay (AdamW shrinks
  the weights by lr x wd per step: < 1e-4 over a whole run), so no separate zero branch.
- ``batch_size`` {32, 64, 128}: more optimiser steps against less gradient noise at a
  fixed epoch budget; larger batches were not faster on CPU.
- ``dropout`` 0-0.2: a little regularisation at 10^3 labels, and what MC dropout needs.
- ``epochs``: fixed by default (the budget of one campaign round); a range when asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from al.config import ConfigError, build_config
from al.models import MODELS
from al.training.config import SurrogateConfig

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Dimension:
    """One tuned config key: a categorical choice, or an int/float range (optionally log)."""

    name: str
    kind: str  # "categorical" | "int" | "float"
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: int = 1
    log: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.kind == "int" and self.step != 1:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


#: The space, written once (``epochs`` is added from the study's settings).
DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("model", "categorical", choices=tuple(MODELS)),
    Dimension("hidden", "categorical", choices=(64, 96, 128)),
    Dimension("n_interactions", "int", low=2, high=4),
    Dimension("cutoff", "float", low=4.0, high=6.0),
    Dimension("n_rbf", "int", low=16, high=48, step=8),
    Dimension("filter_groups", "categorical", choices=(8, 16)),
    Dimension("lr", "float", low=1e-4, high=3e-3, log=True),
    Dimension("weight_decay", "float", low=1e-6, high=1e-2, log=True),
    Dimension("batch_size", "categorical", choices=(32, 64, 128)),
    Dimension("dropout", "float", low=0.0, high=0.2),
)


def parse_fixed(text: str) -> dict[str, Any]:
    """``"model=schnet,hidden=32"`` -> ``{"model": "schnet", "hidden": 32}``, validated.

    Keys must be dimensions of the space (or ``epochs``); values are checked like any
    config value.
    """
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config key 'fixed': expected key=value items, got {item!r}")
        values[key.strip()] = value.strip()
    names = [d.name for d in DIMENSIONS] + ["epochs"]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"config key 'fixed': unknown search-space key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(names)}"
        )
    checked = build_config(SurrogateConfig, {"filter_groups": 1, **values})
    return {key: getattr(checked, key) for key in values}


class SearchSpace:
    """The dimensions still tuned after ``fixed`` keys are taken out, plus ``epochs``.

    Args:
        epochs: epochs per trial, or the upper end of the range when ``epochs_min > 0``.
        epochs_min: lower end of the epochs range (0: epochs are fixed).
        fixed: keys held at a value instead of being tuned (see :func:`parse_fixed`).
    """

    def __init__(self, epochs: int, epochs_min: int = 0, fixed: Mapping[str, Any] = ()) -> None:
        self.fixed = dict(fixed)
        dims = list(DIMENSIONS)
        if epochs_min > 0 and "epochs" not in self.fixed:
            if epochs_min > epochs:
                raise ConfigError(f"epochs_min={epochs_min} must not exceed epochs={epochs}")
            dims.append(Dimension("epochs", "int", low=epochs_min, high=epochs))
        else:
            self.fixed.setdefault("epochs", epochs)
        self.dimensions = tuple(d for d in dims if d.name not in self.fixed)
        self._check_divisible()

    def _check_divisible(self) -> None:
        def values(name: str) -> list[int]:
            if name in self.fixed:
                return [int(self.fixed[name])]
            return [int(c) for d in self.dimensions if d.name == name for c in d.choices]

        bad = [(h, g) for h in values("hidden") for g in values("filter_groups") if h % g]
        if bad:
            h, g = bad[0]
            raise ConfigError(f"search space: hidden={h} is not divisible by filter_groups={g}")

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """A surrogate config for ``trial``: the suggested values and the fixed ones."""
        values = {**self.fixed, **{d.name: d.suggest(trial) for d in self.dimensions}}
        order = [d.name for d in DIMENSIONS] + ["epochs"]
        return {k: values[k] for k in sorted(values, key=order.index)}

    def describe(self) -> dict[str, Any]:
        """The space as logged: tuned dimensions and fixed values."""
        return {
            "tuned": {d.name: {"type": d.kind, **d.describe()} for d in self.dimensions},
            "fixed": dict(self.fixed),
        }
