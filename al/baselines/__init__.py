"""Δ-learning baselines (the ``baseline`` key) and the surrogate that learns the residual.

``none`` (the default)
    No baseline: the surrogate learns the target itself.
``composition`` (:class:`CompositionBaseline`)
    The per-element linear fit of the labelled set. Nearly the same as ``none``, because
    the model fits per-element reference energies itself. Cost 0.
``xtb`` (:class:`XTBBaseline`)
    GFN2-xTB with the packaged per-element reference, cached on disk by QM9 index.
    Cost 1e-4 per molecule (the measured xTB / DFT time ratio).
``ani1x``, ``ani1ccx`` (:class:`~al.baselines.ani.ANIBaseline`)
    A published ANI ensemble with its packaged per-element reference, cached on disk by QM9
    index; H, C, N, O only (a campaign leaves molecules with F out of its pool). Cost 1e-5
    per molecule (the measured ANI / DFT time ratio).
``pretrained``, ``model:<MLflow model URI>`` (:class:`OracleBaseline`)
    A model oracle's label; cost: the oracle's default per label (0.001).

:class:`ResidualSurrogate` wraps any surrogate: it learns ``target - baseline`` and adds the
baseline back to every prediction.
"""

from __future__ import annotations

from al.baselines.ani import ANI_BASELINE_COST, ANI1ccxBaseline, ANI1xBaseline, ANIBaseline
from al.baselines.base import (
    XTB_BASELINE_COST,
    Baseline,
    CompositionBaseline,
    EnergyBaseline,
    OracleBaseline,
    XTBBaseline,
    molecules_data,
)
from al.baselines.residual import ResidualSurrogate
from al.oracles import ORACLES

#: The baseline registry: spec name -> class (None: no baseline). ``model`` takes a URI.
BASELINES: dict[str, type[Baseline] | None] = {
    "none": None,
    "composition": CompositionBaseline,
    "xtb": XTBBaseline,
    "ani1x": ANI1xBaseline,
    "ani1ccx": ANI1ccxBaseline,
    "pretrained": OracleBaseline,
    "model": OracleBaseline,
}
#: Baselines whose spec takes an argument, and its placeholder.
ARGUMENTS = {"model": ORACLES["model"].argument}


def baseline_choices() -> list[str]:
    """Valid specs as shown to users: ``none, composition, xtb, ani1x, ..., model:<...>``."""
    return [f"{k}:{ARGUMENTS[k]}" if k in ARGUMENTS else k for k in BASELINES]


def baseline_spec_problem(spec: str) -> str | None:
    """What is wrong with a baseline spec (one line), or None when it names a baseline."""
    name, sep, arg = str(spec).strip().partition(":")
    name = name.strip().lower()
    if name not in BASELINES:
        return f"unknown baseline {spec!r}; expected one of: {', '.join(baseline_choices())}"
    if name not in ARGUMENTS and sep:
        return f"baseline {name!r} takes no argument, got {spec!r}"
    if name in ARGUMENTS and not arg.strip():
        return f"baseline {name!r} needs an argument: {name}:{ARGUMENTS[name]}"
    return None


def build_baseline(spec: str, cost: float | None = None) -> Baseline | None:
    """The baseline named by ``spec`` (None for ``none``); ``cost`` per molecule, None for
    its default. An unknown spec raises ``ValueError`` listing the choices."""
    problem = baseline_spec_problem(spec)
    if problem:
        raise ValueError(problem)
    name = str(spec).strip().partition(":")[0].strip().lower()
    cls = BASELINES[name]
    if cls is None:
        return None
    if cls is OracleBaseline:
        return OracleBaseline(str(spec).strip(), cost=cost)
    return cls(cost=cost)


__all__ = [
    "ANI_BASELINE_COST",
    "BASELINES",
    "XTB_BASELINE_COST",
    "ANI1ccxBaseline",
    "ANI1xBaseline",
    "ANIBaseline",
    "Baseline",
    "CompositionBaseline",
    "EnergyBaseline",
    "OracleBaseline",
    "ResidualSurrogate",
    "XTBBaseline",
    "baseline_choices",
    "baseline_spec_problem",
    "build_baseline",
    "molecules_data",
]
