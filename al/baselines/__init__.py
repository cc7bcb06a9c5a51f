"""Δ-learning baselines (the ``baseline`` key) and the surrogate that learns the residual.

``none`` (the default)
    No baseline: the surrogate learns the target itself.
``composition`` (:class:`CompositionBaseline`)
    The per-element linear fit of the labelled set. Nearly the same as ``none``, because
    the model fits per-element reference energies itself. Cost 0.
``xtb`` (:class:`XTBBaseline`)
    GFN2-xTB with the packaged per-element reference, cached on disk by QM9 index.
    Cost 1e-4 per molecule (the measured xTB / DFT time ratio).
``pretrained``, ``model:<MLflow model URI>`` (:class:`OracleBaseline`)
    A model oracle's label; cost: the oracle's default per label (0.001).
``ani1x``, ``ani1ccx`` (:class:`~al.baselines.ani.ANIBaseline`)
    A published ANI ensemble with its packaged per-element reference, cached on disk by QM9
    index; H, C, N, O only (a campaign leaves molecules with F out of its pool). Cost 1e-5
    per molecule (the measured ANI / DFT time ratio).

:data:`BASELINES` is their registry: each registers itself where it is defined.

:class:`ResidualSurrogate` wraps any surrogate: it learns ``target - baseline`` and adds the
baseline back to every prediction.
"""

from __future__ import annotations

from al.baselines.ani import ANI_BASELINE_COST, ANI1ccxBaseline, ANI1xBaseline, ANIBaseline
from al.baselines.base import (
    BASELINES,
    XTB_BASELINE_COST,
    Baseline,
    CompositionBaseline,
    EnergyBaseline,
    OracleBaseline,
    XTBBaseline,
    molecules_data,
)
from al.baselines.residual import ResidualSurrogate, baseline_of
from al.registry import Spec


def baseline_choices() -> list[str]:
    """Valid specs as shown to users: ``none, composition, xtb, ..., model:<...>``."""
    return list(BASELINES.choices())


def baseline_spec_problem(spec: str) -> str | None:
    """What is wrong with a baseline spec (one line), or None when it names a baseline."""
    return BASELINES.problem(spec)


def build_baseline(
    spec: str | Spec[type[Baseline] | None], cost: float | None = None
) -> Baseline | None:
    """The baseline named by ``spec`` (a spec string, or one parsed by
    :meth:`BASELINES.parse <al.registry.Registry.parse>`; None for ``none``); ``cost`` per
    molecule, None for its default. An unknown spec raises ``ValueError`` listing the
    choices."""
    parsed = spec if isinstance(spec, Spec) else BASELINES.parse(spec)
    return None if parsed.obj is None else parsed.obj.from_spec(parsed, cost)


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
    "baseline_of",
    "baseline_spec_problem",
    "build_baseline",
    "molecules_data",
]
