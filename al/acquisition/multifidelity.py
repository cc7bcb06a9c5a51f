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
    Expected reduction of the high-fidelity predictive variance per unit cost. Treating the
    members as a Gaussian over the ``D`` outputs of molecule ``i``, observing fidelity ``d``
    reduces the variance of the high fidelity by ``cov(h_i, y_id)^2 / (var(y_id) + noise)``
    (the Gaussian conditioning formula; for ``d = high`` it is ``var(h_i)``). The score is
    that reduction divided by the cost; pairs are taken greedily by score until the budget
    is spent. The reduction counts only molecule ``i`` itself, ignoring what a label teaches
    about its neighbours (the criterion of Kandasamy et al.'s MF-GP-UCB family without
    the optimisation term; BoTorch's knowledge-gradient variants are the non-myopic kin).
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

from al.uncertainty.prediction import Prediction

#: Observation noise floor in eV^2 added to every fidelity's variance (numerical safety:
#: a member spread of zero must not divide by zero).
NOISE_FLOOR = 1e-6


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
MF_ACQUISITIONS: dict[str, MFAcquisitionFn] = {}


def register(name: str) -> Callable[[MFAcquisitionFn], MFAcquisitionFn]:
    def deco(fn: MFAcquisitionFn) -> MFAcquisitionFn:
        MF_ACQUISITIONS[name] = fn
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


@register("variance_reduction")
def variance_reduction(
    pred: Prediction,
    bought: Tensor,
    costs: Tensor,
    budget: float,
    *,
    generator: torch.Generator,
    noise: Tensor | None = None,
) -> PairSelection:
    """High-fidelity variance removed per unit cost, greedy under the budget.

    Args:
        noise: observation noise variance per fidelity, ``[D]`` eV^2 (default: the floor).
    """
    samples = _check(pred, bought, costs, budget)
    var, cov_high = fidelity_moments(samples)
    noise = torch.full_like(costs, NOISE_FLOOR, dtype=torch.float64) if noise is None else noise
    gain = cov_high.square() / (var + noise.double().clamp(min=NOISE_FLOOR))
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


@register("cheap_first")
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
    name: str,
    pred: Prediction,
    bought: Tensor,
    costs: Tensor,
    budget: float,
    *,
    generator: torch.Generator,
    **options: object,
) -> PairSelection:
    """Run the registered function ``name``; unknown names list the valid ones."""
    if name not in MF_ACQUISITIONS:
        raise ValueError(
            f"unknown multi-fidelity acquisition {name!r}; expected one of: "
            f"{', '.join(MF_ACQUISITIONS)}"
        )
    return MF_ACQUISITIONS[name](pred, bought, costs, budget, generator=generator, **options)
