"""Acquisition functions: which pool molecules to label next.

Every function has one signature and is pure: randomness comes only from ``generator``::

    fn(pred: Prediction, k: int, *, generator: torch.Generator,
       labelled_embedding: Tensor | None = None, **options) -> Selection

``pred`` holds the candidate pool only (``n`` rows), so the returned indices point into
those rows and can never name a labelled or test molecule. Ties are broken by a
generator-drawn permutation, so the choice does not depend on the order of the pool.

:data:`ACQUISITIONS` is the only list of names (a :class:`~al.registry.Registry` filled by
:func:`register` beside each function); :func:`select` checks ``needs <= provides`` before
calling one.

There is no UCB (or expected improvement): those rank molecules by how likely their
*property* is to be extreme, which serves optimisation, not the accuracy of the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from al.registry import Registry
from al.uncertainty.prediction import Prediction

#: What a function may need: fields of :class:`Prediction` plus the labelled embeddings.
KNOWN_NEEDS = frozenset({"mean", "std", "embedding", "members", "labelled_embedding"})

#: Rows of the candidate x labelled distance matrix computed at once (memory bound).
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Selection:
    """The chosen molecules, in the order they were chosen.

    Attributes:
        index: ``[k]`` int64 row indices into the candidate pool, unique, on the CPU.
        score: ``[k]`` float64 acquisition value at the time each was chosen; NaN where the
            function has no score (``random``, or the first pick with nothing to compare to).
    """

    index: Tensor
    score: Tensor

    def __post_init__(self) -> None:
        if self.index.shape != self.score.shape or self.index.dim() != 1:
            raise ValueError(
                f"index {tuple(self.index.shape)} and score {tuple(self.score.shape)} "
                "must both be [k]"
            )

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @classmethod
    def empty(cls) -> Selection:
        return cls(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.float64))


#: ``fn(pred, k, *, generator, labelled_embedding=None, **options) -> Selection``.
AcquisitionFn = Callable[..., Selection]


@dataclass(frozen=True)
class Acquisition:
    """A registered acquisition function and what it needs from the prediction."""

    name: str
    fn: AcquisitionFn
    needs: frozenset[str]
    description: str


#: The registry: CLI choices, factory and tests all read it.
ACQUISITIONS: Registry[Acquisition] = Registry("acquisition")


def register(
    name: str, *, needs: set[str] | frozenset[str] = frozenset(), description: str
) -> Callable[[AcquisitionFn], AcquisitionFn]:
    """Decorator adding a function to :data:`ACQUISITIONS` under ``name``, as an
    :class:`Acquisition` that declares what it ``needs``."""
    unknown = set(needs) - KNOWN_NEEDS
    if unknown:
        raise ValueError(
            f"unknown needs {sorted(unknown)}; expected a subset of {sorted(KNOWN_NEEDS)}"
        )

    def deco(fn: AcquisitionFn) -> AcquisitionFn:
        entry = Acquisition(name, fn, frozenset(needs), description)
        ACQUISITIONS.register(name, entry, description=description)
        return fn

    return deco


def resolve(acquisition: str | Acquisition) -> Acquisition:
    """The registry entry for a name, or the :class:`Acquisition` itself."""
    if isinstance(acquisition, Acquisition):
        return acquisition
    return ACQUISITIONS.get(acquisition)


def select(
    acquisition: str | Acquisition,
    pred: Prediction,
    k: int,
    *,
    generator: torch.Generator,
    labelled_embedding: Tensor | None = None,
    **options: Any,
) -> Selection:
    """Choose ``k`` of the ``len(pred)`` candidates with a named or given acquisition.

    Args:
        acquisition: a name in :data:`ACQUISITIONS` or an :class:`Acquisition`.
        pred: the surrogate's prediction for the candidate pool (``n`` rows).
        k: how many to choose; ``k <= 0`` gives an empty selection.
        generator: the only source of randomness.
        labelled_embedding: ``[m, F]`` embeddings of the labelled molecules, or None.
        **options: keyword options of the function (e.g. ``prefilter`` for ``diverse``).

    Raises:
        ValueError: unknown name, a need the prediction does not provide, or ``k > n``.
    """
    acq = resolve(acquisition)
    available = set(pred.provides())
    if labelled_embedding is not None:
        available.add("labelled_embedding")
    missing = acq.needs - available
    if missing:
        raise ValueError(
            f"acquisition {acq.name!r} needs {sorted(acq.needs)} but got only "
            f"{sorted(available)}; missing: {sorted(missing)}"
        )
    if k <= 0:
        return Selection.empty()
    return acq.fn(pred, k, generator=generator, labelled_embedding=labelled_embedding, **options)


# --------------------------------------------------------------------------- helpers


def _check(pred: Prediction, k: int) -> int:
    n = len(pred)
    if not 0 <= k <= n:
        raise ValueError(f"cannot select k={k} molecules from a pool of n={n}")
    return n


def _field(pred: Prediction, name: str) -> Tensor:
    """A present, finite field whose pool axis has ``len(pred)`` entries."""
    value = getattr(pred, name)
    if value is None:
        raise ValueError(f"prediction has no {name!r}; it provides {sorted(pred.provides())}")
    axis = 1 if name == "members" else 0
    if value.dim() <= axis or value.shape[axis] != len(pred):
        raise ValueError(
            f"prediction {name!r} has shape {tuple(value.shape)}, expected {len(pred)} "
            f"molecules along dimension {axis}"
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"prediction {name!r} has non-finite values")
    return value


def _permutation(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def _top(score: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``[n] -> [k]``: indices of the ``k`` largest scores, ties in generator order."""
    perm = _permutation(score.shape[0], generator, score.device)
    order = torch.sort(score[perm], descending=True, stable=True).indices[:k]
    return perm[order]


def _min_dist(x: Tensor, centers: Tensor) -> Tensor:
    """``[n, F], [m, F] -> [n]``: Euclidean distance from each row of x to its nearest center."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, centers.shape[0]))
    return torch.cat([torch.cdist(c, centers).amin(dim=1) for c in x.split(rows)])


def _k_center(
    x: Tensor,
    k: int,
    *,
    generator: torch.Generator,
    centers: Tensor | None,
    weight: Tensor | None = None,
) -> Selection:
    """Greedy k-center on ``x [n, F]``: repeatedly pick argmax ``weight * distance to centers``.

    ``centers [m, F]`` are already covered points (the labelled set). With none, the first
    pick is the largest weight (or a random row without weights), scored NaN.
    """
    n = x.shape[0]
    perm = _permutation(n, generator, x.device)  # argmax ties then fall in generator order
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    # Centring shrinks |x|^2 and so the cancellation error of the expansion below.
    shift = x.mean(dim=0)
    x = x[perm] - shift
    # argmax of w * d is argmax of w^2 * d^2: no square root inside the loop.
    w2 = None if weight is None else weight[perm].to(x).square()
    min_d2 = None
    if centers is not None and centers.shape[0] > 0:
        if centers.dim() != 2 or centers.shape[1] != x.shape[1]:
            raise ValueError(
                f"labelled_embedding has shape {tuple(centers.shape)}, "
                f"expected [m, {x.shape[1]}] like the pool's embedding"
            )
        if not torch.isfinite(centers).all():
            raise ValueError("labelled_embedding has non-finite values")
        min_d2 = _min_dist(x, centers.to(x) - shift).square()
    # Keep h_i = min_c (|c|^2 - 2 x_i.c), so that min_d2 = |x_i|^2 + h_i: each new center
    # then costs one fused pass over x (addmv) and one minimum.
    sq_norm = x.square().sum(dim=1)
    h = None if min_d2 is None else min_d2 - sq_norm
    taken = torch.zeros(n, dtype=torch.bool, device=x.device)
    index = torch.empty(k, dtype=torch.int64)
    score = torch.full((k,), math.nan, dtype=torch.float64)
    for i in range(k):
        if h is None:
            value = torch.zeros_like(sq_norm) if w2 is None else w2.clone()
        else:
            value = sq_norm + h
            if w2 is not None:
                value.mul_(w2)
        j = int(value.masked_fill_(taken, -math.inf).argmax())
        if h is not None:
            score[i] = max(float(value[j]), 0.0) ** 0.5
        index[i], taken[j] = j, True
        t = torch.addmv(sq_norm[j], x, x[j], alpha=-2.0)
        h = t if h is None else torch.minimum(h, t, out=h)
    return Selection(perm[index.to(x.device)].cpu(), score)


# ------------------------------------------------------------------------- functions


@register("random", description="uniform at random without replacement (baseline)")
def uniform(
    pred: Prediction,
    k: int,
    *,
    generator: torch.Generator,
    labelled_embedding: Tensor | None = None,
) -> Selection:
    """``k`` candidates uniformly at random; scores are NaN."""
    n = _check(pred, k)
    index = _permutation(n, generator, torch.device("cpu"))[:k]
    return Selection(index, torch.full((k,), math.nan, dtype=torch.float64))


@register(
    "max_std",
    needs={"std"},
    description="the k largest predictive standard deviations (uncertainty sampling)",
)
def max_std(
    pred: Prediction,
    k: int,
    *,
    generator: torch.Generator,
    labelled_embedding: Tensor | None = None,
) -> Selection:
    """The ``k`` candidates with the largest ``pred.std [n]``; score = std in eV."""
    _check(pred, k)
    std = _field(pred, "std")
    index = _top(std, k, generator)
    return Selection(index.cpu(), std[index].double().cpu())


@register(
    "bald",
    needs={"members"},
    description="Gaussian mutual information 0.5*log(1 + var_members/noise_var) (ensembles)",
)
def bald(
    pred: Prediction,
    k: int,
    *,
    generator: torch.Generator,
    labelled_embedding: Tensor | None = None,
    noise_var: float = 0.05**2,
) -> Selection:
    """Largest mutual information between a molecule's label and the model, Gaussian form.

    With ``members [K, n]`` (K >= 2) the epistemic variance is their sample variance and,
    for Gaussian predictions with homoscedastic label noise ``noise_var`` (eV², default
    (0.05 eV)²), the mutual information is ``0.5 * log(1 + var / noise_var)`` nats.
    That is monotone in ``var``, so the *ranking* is the same as ``max_std`` on the
    members' spread; only the score (in nats) differs. It would differ in ranking only
    with per-molecule noise, which the surrogates here do not predict.
    """
    _check(pred, k)
    if noise_var <= 0:
        raise ValueError(f"noise_var must be positive, got {noise_var}")
    members = _field(pred, "members")
    if members.dim() != 2 or members.shape[0] < 2:
        raise ValueError(f"bald needs members [K, n] with K >= 2, got {tuple(members.shape)}")
    info = 0.5 * torch.log1p(members.double().var(dim=0) / noise_var)
    index = _top(info, k, generator)
    return Selection(index.cpu(), info[index].cpu())


@register(
    "coreset",
    needs={"embedding"},
    description="greedy k-center in embedding space, labelled molecules as initial centers",
)
def coreset(
    pred: Prediction,
    k: int,
    *,
    generator: torch.Generator,
    labelled_embedding: Tensor | None = None,
) -> Selection:
    """Greedy k-center (Sener & Savarese, 2018) on ``pred.embedding [n, F]``.

    Each pick is the candidate farthest from every center so far; ``labelled_embedding
    [m, F]`` are the initial centers (without them the first pick is random). Score = that
    Euclidean distance, in embedding units. O((m + k) n F) time, O(n) extra memory.
    """
    _check(pred, k)
    emb = _field(pred, "embedding")
    return _k_center(emb, k, generator=generator, centers=labelled_embedding)


@register(
    "diverse",
    needs={"std", "embedding"},
    description="uncertainty-weighted k-center among the most uncertain candidates",
)
def diverse(
    pred: Prediction,
    k: int,
    *,
    generator: torch.Generator,
    labelled_embedding: Tensor | None = None,
    prefilter: int = 10,
) -> Selection:
    """Batch-aware uncertainty with diversity.

    Keeps the ``m = min(n, prefilter * k)`` candidates with the largest ``pred.std``, then
    greedily picks ``argmax std_i * d_i`` among them, ``d_i`` being the embedding distance
    to the nearest labelled or already chosen molecule. A near-duplicate of a chosen
    molecule has ``d_i ~ 0`` and is not chosen again, which plain ``max_std`` would do.
    Without ``labelled_embedding`` the first pick is the largest std (score NaN); later
    scores are ``std * distance`` (eV x embedding units).

    A cheap approximation in spirit of LCMD (Holzmüller et al., JMLR 2023, "A Framework
    and Benchmark for Deep Batch Active Learning for Regression"), which does this with
    gradient-kernel distances and is the stronger reference.
    """
    n = _check(pred, k)
    if prefilter < 1:
        raise ValueError(f"prefilter must be >= 1, got {prefilter}")
    std = _field(pred, "std")
    emb = _field(pred, "embedding")
    top = _top(std, min(n, prefilter * k), generator)
    sel = _k_center(emb[top], k, generator=generator, centers=labelled_embedding, weight=std[top])
    return Selection(top.cpu()[sel.index], sel.score)


__all__ = [
    "ACQUISITIONS",
    "KNOWN_NEEDS",
    "Acquisition",
    "AcquisitionFn",
    "Selection",
    "bald",
    "coreset",
    "diverse",
    "max_std",
    "register",
    "resolve",
    "select",
    "uniform",
]
