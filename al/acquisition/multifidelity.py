"""Cost-aware acquisition over (molecule, fidelity) pairs, for campaigns with several oracles.

A multi-fidelity campaign has ``D`` oracles ordered from the cheapest, least accurate
fidelity to the highest (the last one; its labels are what the surrogate should predict).
The surrogate (:mod:`al.uncertainty` with ``n_outputs = D``) predicts every fidelity from
one shared trunk, so its members give a joint sample ``[K, n, D]`` of all fidelities.

Every function here has one signature and is pure (randomness only from ``generator``)::

    fn(pred: Prediction, bought: Tensor [n, D] bool, costs: Tensor [D], budget: float, *,
       generator: torch.Generator, **options) -> PairSelection

``bought[i, d]`` marks pairs already asked for (never asked twice). A selection spends at
most ``budget`` and takes at most one fidelity per molecule per round (buying the high
fidelity makes a cheap label of the same molecule worthless, and vice versa in one round).

:data:`MF_ACQUISITIONS` holds

``variance_reduction``
    Expected reduction of the high-fidelity predictive variance per unit cost. The target
    fidelity is the cheap one plus a discrepancy, ``f_hi = f_d + delta_d``; the members give
    a joint Gaussian over the ``D`` outputs of molecule ``i``. A label of fidelity ``d`` is
    ``y_d = f_d + e_d`` with noise ``e_d ~ N(0, s_d^2)``, so it reduces the variance of the
    high fidelity only through the correlation of the two (Gaussian conditioning)::

        reduction(i, d) = cov(f_hi, f_d)^2 / (var(f_d) + s_d^2)        (d = hi: var^2/(var+s^2))
        score(i, d)     = reduction(i, d) / cost_d

    where ``cov(f_hi, f_d) = var(f_d) + cov(delta_d, f_d)``: a discrepancy the members
    disagree on is variance a cheap label cannot remove. The noise ``s_d^2`` of a cheap
    fidelity is its error level relative to the highest one: the variance of the residual
    of ``y_hi ~ a + b y_d`` over labelled molecules that have both labels, divided by
    ``b^2`` (:func:`discrepancy_noise`), never below ``cheap_noise_floor``; the highest
    fidelity has :data:`NOISE_FLOOR`. Pairs are taken greedily by score until the budget is
    spent. The reduction counts only molecule ``i`` itself, ignoring what a label teaches
    about its neighbours (the criterion of Kandasamy et al.'s MF-GP-UCB family without the
    optimisation term; BoTorch's knowledge-gradient variants are the non-myopic kin).
``high_only``
    The baseline that ignores cheap oracles: highest high-fidelity std first, high fidelity.
``cheap_first``
    Screening: ``cheap_share`` of the budget buys the cheapest fidelity for the most
    uncertain molecules that lack it; the rest buys the high fidelity for the most uncertain
    molecules already screened (any molecule when none is).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from al.registry import Registry, summary
from al.uncertainty.prediction import Prediction

#: Observation noise floor in eV^2 of every fidelity (numerical safety: a member spread of
#: zero must not divide by zero); the highest fidelity's labels are the target itself.
NOISE_FLOOR = 1e-6
#: Default floor in eV^2 of a cheap fidelity's noise (its error relative to the highest
#: fidelity, (0.1 eV)^2) when labelled molecules do not give a larger estimate.
CHEAP_NOISE_FLOOR = 1e-2


@dataclass(frozen=True)
class PairSelection:
    """Chosen (molecule, fidelity) pairs, in the order they were chosen.

    Attributes:
        index: ``[m]`` int64 rows into the candidate pool (unique).
        fidelity: ``[m]`` int64 fidelity of each pair (0 = cheapest, ``D - 1`` = highest).
        score: ``[m]`` float64 acquisition value of each pair.
    """

    index: Tensor
    fidelity: Tensor
    score: Tensor

    def __post_init__(self) -> None:
        if not self.index.shape == self.fidelity.shape == self.score.shape:
            raise ValueError("index, fidelity and score must have the same shape [m]")

    def __len__(self) -> int:
        return int(self.index.numel())

    def cost(self, costs: Tensor) -> float:
        return float(costs.double()[self.fidelity].sum())


MFAcquisitionFn = Callable[..., PairSelection]

#: What a campaign may pass a function beyond the common signature: ``cheap_share`` (the
#: setting of that name) and ``labels`` (``[m, D]`` labels of the labelled molecules).
KNOWN_OPTIONS = frozenset({"cheap_share", "labels"})


@dataclass(frozen=True)
class MFAcquisition:
    """A registered multi-fidelity acquisition function and the campaign options it takes
    (a subset of :data:`KNOWN_OPTIONS`)."""

    name: str
    fn: MFAcquisitionFn
    options: frozenset[str]


#: The registry (the ``mf_acquisition`` key): config choices, CLI, selection and tests.
MF_ACQUISITIONS: Registry[MFAcquisition] = Registry("multi-fidelity acquisition")


def register(
    name: str, *, options: frozenset[str] = frozenset()
) -> Callable[[MFAcquisitionFn], MFAcquisitionFn]:
    """Decorator adding a function to :data:`MF_ACQUISITIONS` under ``name``; ``options``:
    what it takes from the campaign (see :data:`KNOWN_OPTIONS`)."""
    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown options {sorted(unknown)}; expected a subset of {sorted(KNOWN_OPTIONS)}"
        )

    def deco(fn: MFAcquisitionFn) -> MFAcquisitionFn:
        entry = MFAcquisition(name, fn, frozenset(options))
        MF_ACQUISITIONS.register(name, entry, description=summary(fn))
        return fn

    return deco


def fidelity_moments(samples: Tensor) -> tuple[Tensor, Tensor]:
    """Per-fidelity variance and covariance with the highest fidelity over members.

    Args:
        samples: member energies, ``[K, n, D]``.

    Returns:
        ``var [n, D]`` and ``cov_high [n, D]`` (``cov_high[:, -1] == var[:, -1]``), unbiased.
    """
    k = samples.shape[0]
    centred = samples.double() - samples.double().mean(0)
    var = centred.square().sum(0) / max(k - 1, 1)
    cov_high = (centred * centred[..., -1:]).sum(0) / max(k - 1, 1)
    return var, cov_high


def _check(pred: Prediction, bought: Tensor, costs: Tensor, budget: float) -> Tensor:
    if pred.fidelity_members is None:
        raise ValueError(
            "multi-fidelity acquisition needs a multi-fidelity surrogate "
            "(Prediction.fidelity_members [K, n, D])"
        )
    samples = pred.fidelity_members
    n, d = samples.shape[1:]
    if bought.shape != (n, d) or costs.shape != (d,):
        raise ValueError(
            f"bought {tuple(bought.shape)} and costs {tuple(costs.shape)} must be [{n}, {d}] "
            f"and [{d}] for {n} candidates and {d} fidelities"
        )
    if not (costs > 0).all():
        raise ValueError(f"multi-fidelity costs must be > 0, got {costs.tolist()}")
    if budget < 0 or not math.isfinite(budget):
        raise ValueError(f"round budget must be a finite number >= 0, got {budget}")
    return samples


def greedy_by_score(
    score: Tensor, costs: Tensor, budget: float, generator: torch.Generator
) -> PairSelection:
    """Take pairs by descending ``score`` (``[n, D]``, -inf = not allowed) while they fit the
    budget, at most one per molecule; ties are broken by a generator-drawn permutation."""
    n, d = score.shape
    flat = score.reshape(-1)
    perm = torch.randperm(flat.numel(), generator=generator)
    order = perm[torch.argsort(flat[perm], descending=True, stable=True)]
    pair_cost = costs.double().repeat(n)
    cheapest = float(costs.min())
    taken = torch.zeros(n, dtype=torch.bool)
    rows, fids, scores = [], [], []
    left = float(budget)
    for p in order.tolist():
        s = float(flat[p])
        if s == -math.inf or left < cheapest - 1e-12:
            break
        i, f = divmod(p, d)
        c = float(pair_cost[p])
        if taken[i] or c > left + 1e-12:
            continue
        taken[i] = True
        rows.append(i)
        fids.append(f)
        scores.append(s)
        left -= c
    return PairSelection(
        torch.tensor(rows, dtype=torch.int64),
        torch.tensor(fids, dtype=torch.int64),
        torch.tensor(scores, dtype=torch.float64),
    )


def _allowed(bought: Tensor) -> Tensor:
    """Pairs that may be bought: not bought yet, and the molecule has no high label."""
    return ~bought & ~bought[:, -1:]


def discrepancy_noise(labels: Tensor, min_pairs: int = 3) -> Tensor:
    """Noise variance of each fidelity as an observation of the highest one, from labelled
    molecules.

    For a cheap fidelity ``d``, over the molecules with both labels, ``y_hi`` is regressed
    on ``y_d`` (``y_hi = a + b y_d + r``, least squares); the residual variance
    ``var(r)`` (``m - 2`` degrees of freedom) is what a cheap label cannot tell about the
    high one. Expressed on the scale of ``f_d`` it is ``var(r) / b^2``, so that
    ``cov^2 / (var(f_d) + s_d^2)`` never removes more than ``var(r)`` of what remains.

    Args:
        labels: ``[m, D]`` labels of the labelled molecules at each fidelity (lowest first),
            NaN where a molecule lacks one.
        min_pairs: fewest molecules with both labels to estimate from (else NaN).

    Returns:
        ``[D]`` float64 eV^2: NaN where there is too little to estimate from (or the
        cheap labels are constant), 0 for the highest fidelity; ``inf`` when ``b = 0``.
    """
    y = labels.double()
    d = y.shape[1]
    out = torch.full((d,), math.nan, dtype=torch.float64)
    out[-1] = 0.0
    hi = y[:, -1]
    for f in range(d - 1):
        both = torch.isfinite(hi) & torch.isfinite(y[:, f])
        m = int(both.sum())
        if m < max(min_pairs, 3):
            continue
        x, t = y[both, f], hi[both]
        xc, tc = x - x.mean(), t - t.mean()
        sxx = float(xc.square().sum())
        if sxx <= 0:
            continue
        b = float((xc * tc).sum()) / sxx
        resid = float((tc - b * xc).square().sum()) / (m - 2)
        out[f] = resid / b**2 if b != 0 else math.inf
    return out


def fidelity_noise(
    costs: Tensor,
    noise: Tensor | None = None,
    labels: Tensor | None = None,
    cheap_noise_floor: float = CHEAP_NOISE_FLOOR,
) -> Tensor:
    """Noise variance ``s_d^2`` of each fidelity, ``[D]`` float64 eV^2.

    ``noise`` (``[D]``) when given; else, for a cheap fidelity, the larger of
    ``cheap_noise_floor`` and the estimate of :func:`discrepancy_noise` from ``labels``
    (``[m, D]``); :data:`NOISE_FLOOR` for the highest fidelity. Never below
    :data:`NOISE_FLOOR`.
    """
    d = costs.numel()
    if noise is not None:
        s2 = noise.double().reshape(-1)
        if s2.numel() != d:
            raise ValueError(f"noise must have one variance per fidelity ([{d}]), got {s2.numel()}")
        return s2.clamp(min=NOISE_FLOOR)
    if cheap_noise_floor < 0:
        raise ValueError(f"cheap_noise_floor must be >= 0, got {cheap_noise_floor}")
    s2 = torch.full((d,), max(cheap_noise_floor, NOISE_FLOOR), dtype=torch.float64)
    s2[-1] = NOISE_FLOOR
    if labels is not None:
        est = discrepancy_noise(labels)
        known = torch.isfinite(est) | torch.isinf(est)
        s2 = torch.where(known, torch.maximum(s2, est.nan_to_num(nan=0.0)), s2)
        s2[-1] = NOISE_FLOOR
    return s2


def variance_reduction_gain(samples: Tensor, noise: Tensor) -> Tensor:
    """Reduction of the high-fidelity variance by one label of each fidelity, ``[n, D]``.

    ``cov(f_hi, f_d)^2 / (var(f_d) + s_d^2)`` with the moments of the members
    (:func:`fidelity_moments`; ``samples [K, n, D]``) and ``noise = s^2 [D]`` eV^2; for
    the highest fidelity ``var(f_hi)^2 / (var(f_hi) + s_hi^2)``. Never above
    ``var(f_hi)`` (Cauchy-Schwarz).
    """
    var, cov_high = fidelity_moments(samples)
    return cov_high.square() / (var + noise.double().clamp(min=NOISE_FLOOR))


@register("variance_reduction", options=frozenset({"labels"}))
def variance_reduction(
    pred: Prediction,
    bought: Tensor,
    costs: Tensor,
    budget: float,
    *,
    generator: torch.Generator,
    noise: Tensor | None = None,
    labels: Tensor | None = None,
    cheap_noise_floor: float = CHEAP_NOISE_FLOOR,
) -> PairSelection:
    """High-fidelity variance removed per unit cost, greedy under the budget.

    ``score[i, d] = cov(f_hi, f_d)^2 / (var(f_d) + s_d^2) / cost_d`` (see the module
    docstring and :func:`fidelity_noise` for ``s_d^2``).

    Args:
        noise: observation noise variance per fidelity, ``[D]`` eV^2 (overrides the rest).
        labels: ``[m, D]`` labels of labelled molecules at each fidelity (NaN where missing),
            to estimate each cheap fidelity's error relative to the highest one.
        cheap_noise_floor: the least noise variance of a cheap fidelity, eV^2.
    """
    samples = _check(pred, bought, costs, budget)
    s2 = fidelity_noise(costs, noise, labels, cheap_noise_floor)
    gain = variance_reduction_gain(samples, s2)
    score = torch.where(_allowed(bought), gain / costs.double(), -math.inf)
    return greedy_by_score(score, costs, budget, generator)


@register("high_only")
def high_only(
    pred: Prediction,
    bought: Tensor,
    costs: Tensor,
    budget: float,
    *,
    generator: torch.Generator,
) -> PairSelection:
    """Highest high-fidelity std first, high fidelity only."""
    samples = _check(pred, bought, costs, budget)
    std_high = samples[..., -1].double().std(0)
    score = torch.full(bought.shape, -math.inf, dtype=torch.float64)
    score[:, -1] = torch.where(bought[:, -1], -math.inf, std_high)
    return greedy_by_score(score, costs, budget, generator)


@register("cheap_first", options=frozenset({"cheap_share"}))
def cheap_first(
    pred: Prediction,
    bought: Tensor,
    costs: Tensor,
    budget: float,
    *,
    generator: torch.Generator,
    cheap_share: float = 0.5,
) -> PairSelection:
    """Screen with the cheapest fidelity, then confirm the most uncertain at the highest."""
    samples = _check(pred, bought, costs, budget)
    if not 0.0 <= cheap_share <= 1.0:
        raise ValueError(f"cheap_share must be in [0, 1], got {cheap_share}")
    std_high = samples[..., -1].double().std(0)
    allowed = _allowed(bought)
    cheap = int(torch.argmin(costs))
    score = torch.full(bought.shape, -math.inf, dtype=torch.float64)
    score[:, cheap] = torch.where(allowed[:, cheap], std_high, -math.inf)
    first = greedy_by_score(score, costs, budget * cheap_share, generator)
    screened = bought[:, cheap].clone()
    if not bool((screened & allowed[:, -1]).any()):
        screened[:] = True  # nothing screened yet: any molecule
    high = torch.full(bought.shape, -math.inf, dtype=torch.float64)
    ok = allowed[:, -1] & screened
    ok[first.index] = False
    high[:, -1] = torch.where(ok, std_high, -math.inf)
    second = greedy_by_score(high, costs, budget - first.cost(costs), generator)
    return PairSelection(
        torch.cat([first.index, second.index]),
        torch.cat([first.fidelity, second.fidelity]),
        torch.cat([first.score, second.score]),
    )


def select_pairs(
    acquisition: str | MFAcquisition,
    pred: Prediction,
    bought: Tensor,
    costs: Tensor,
    budget: float,
    *,
    generator: torch.Generator,
    **options: object,
) -> PairSelection:
    """Run a registered function (its name or its entry); unknown names list the valid
    ones."""
    if not isinstance(acquisition, MFAcquisition):
        acquisition = MF_ACQUISITIONS.get(acquisition)
    return acquisition.fn(pred, bought, costs, budget, generator=generator, **options)
