"""Batch acquisitions on last-layer features: LCMD and BAIT (forward-backward).

Both follow Holzmüller et al., "A Framework and Benchmark for Deep Batch Active Learning
for Regression", JMLR 24 (2023) (the ``bmdal_reg`` package), with a *linear kernel* on
``pred.embedding`` and the labelled molecules taken into account (``labelled_embedding``):

* ``lcmd``: largest cluster maximum distance, TP mode (``LargestClusterMaxDistSelectionMethod``
  with the training set as the first centers). In their benchmark it beat random on MAE,
  RMSE and maximum error, where plain uncertainty sampling lost.
* ``bait``: BAIT forward-backward in P mode (``BaitFeatureSpaceSelectionMethod`` with
  ``overselection_factor=2`` after the ``("train", [sigma, None])`` transform): the GP
  posterior given the labelled set, then greedy reduction of the total posterior variance.

The kernel is meant to be the one of the features the predicted energy is linear in. For
the shallow ensemble (:class:`~al.models.shallow.ShallowEnsembleModel`) ``embedding`` is
exactly that: the per-molecule sum of the readout's last hidden layer, which every head
maps linearly to an energy. For the deep ensemble and MC dropout, ``embedding`` is the mean
of the trunk's atom features (the readout MLP's input, averaged over members for the deep
ensemble), so there these functions use a linear kernel on a penultimate representation.

Both are exact greedy algorithms whose every step costs one pass over the ``[n, F]`` pool
features; the pool is stored feature-major (``[F, n]``) so that pass is one contiguous
vector-matrix product. Ties fall in a generator-drawn order, as for the other functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from al.acquisition.functions import Selection, _check, _field, _permutation, register
from al.uncertainty.prediction import Prediction

#: GP noise standard deviation of BAIT, relative to the labelled features' RMS norm
#: (``bmdal_reg``'s ``bait_sigma`` with automatic scale normalisation; its default 0.1).
BAIT_SIGMA = 0.1

#: Elements of the candidate x labelled distance block computed at once (memory bound).
_CHUNK_ELEMENTS = 1 << 24


def _features(pred: Prediction, labelled_embedding: Tensor | None) -> tuple[Tensor, Tensor]:
    """Pool ``[n, F]`` and labelled ``[m, F]`` features in one float dtype (``m`` may be 0)."""
    x = _field(pred, "embedding")
    if x.dim() != 2:
        raise ValueError(f"embedding has shape {tuple(x.shape)}, expected [n, F]")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if labelled_embedding is None:
        return x, x.new_zeros(0, x.shape[1])
    t = labelled_embedding
    if t.dim() != 2 or t.shape[1] != x.shape[1]:
        raise ValueError(
            f"labelled_embedding has shape {tuple(t.shape)}, "
            f"expected [m, {x.shape[1]}] like the pool's embedding"
        )
    if not torch.isfinite(t).all():
        raise ValueError("labelled_embedding has non-finite values")
    return x, t.to(device=x.device, dtype=x.dtype)


def _nearest(x: Tensor, centers: Tensor, sq_norm: Tensor) -> tuple[Tensor, Tensor]:
    """``[n, F], [m, F], [n] -> ([n], [n])``: squared distance to and index of the nearest
    center (first of equals), as ``|x|^2 + |c|^2 - 2 x.c`` in chunks of rows."""
    c_norm = centers.square().sum(dim=1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, centers.shape[0]))
    dists, owners = [], []
    for xs, ns in zip(x.split(rows), sq_norm.split(rows), strict=True):
        block = torch.addmm(c_norm[None, :], xs, centers.T, alpha=-2.0).add_(ns[:, None])
        d, i = block.min(dim=1)
        dists.append(d)
        owners.append(i)
    return torch.cat(dists), torch.cat(owners)


@register(
    "lcmd",
    needs={"embedding", "labelled_embedding"},
    description="largest cluster maximum distance on last-layer features (bmdal LCMD-TP)",
)
def lcmd(
    pred: Prediction,
    k: int,
    *,
    generator: torch.Generator,
    labelled_embedding: Tensor | None = None,
) -> Selection:
    """LCMD (Holzmüller et al., JMLR 2023) on ``pred.embedding [n, F]``, linear kernel.

    Every labelled molecule (``labelled_embedding [m, F]``) and every chosen one is a
    cluster center; each candidate belongs to the cluster of its nearest center. Each step
    takes the cluster with the largest sum of squared member-to-center distances and picks,
    within it, the candidate farthest from its center. Unlike plain k-center it does not
    chase isolated outliers when a dense region is badly covered. With no labelled molecule
    the first pick is the largest feature norm (as in ``bmdal_reg``).

    Score = the chosen candidate's Euclidean distance to its center, in embedding units.
    Cost: O(n m F) for the labelled centers (chunked, O(n) extra memory) plus O(k n F).
    """
    n = _check(pred, k)
    x, t = _features(pred, labelled_embedding)
    m = t.shape[0]
    perm = _permutation(n, generator, x.device)  # argmax ties then fall in generator order
    shift = x.mean(dim=0)  # centring shrinks the cancellation error of |a|^2 + |b|^2 - 2ab
    x = x[perm]
    first = int(x.square().sum(dim=1).argmax()) if m == 0 else -1  # the largest norm
    x = x - shift
    xt = x.T.contiguous()  # [F, n]: one contiguous pass per new center
    sq_norm = x.square().sum(dim=1)
    if m:
        min_sq, cluster = _nearest(x, t - shift, sq_norm)
    else:
        min_sq = torch.full_like(sq_norm, math.inf)
        cluster = torch.zeros(n, dtype=torch.int64, device=x.device)
    taken = torch.zeros(n, dtype=torch.bool, device=x.device)
    index = torch.empty(k, dtype=torch.int64)
    score = torch.full((k,), math.nan, dtype=torch.float64)
    for i in range(k):
        if i == 0 and m == 0:
            j = first
        else:
            weight = torch.bincount(cluster, weights=min_sq, minlength=m + i)
            largest = weight[cluster] == weight.max()
            value = torch.where(largest, min_sq, -math.inf).masked_fill_(taken, -math.inf)
            j = int(value.argmax())
            score[i] = max(float(min_sq[j]), 0.0) ** 0.5
        index[i], taken[j] = j, True
        sq = (x[j] @ xt).mul_(-2.0).add_(sq_norm).add_(sq_norm[j])
        closer = sq < min_sq
        cluster[closer] = m + i
        min_sq = torch.where(closer, sq, min_sq)
    return Selection(perm[index.to(x.device)].cpu(), score)


class _BaitState:
    """The GP posterior of BAIT in feature space, updated one observation at a time.

    With features scaled so that the labelled ones have mean squared norm 1, the kernel is
    ``k(a, b) = a.b`` and the posterior after the labelled set ``T`` and the chosen set
    ``S`` (noise ``sigma^2``) is ``k_S(a, b) = sigma^2 a^T P b`` with ``P = (sigma^2 I +
    sum_{T+S} x x^T)^{-1}`` (``[F, F]``). BAIT's objective is the total posterior variance
    of the pool and the labelled set; adding ``x`` lowers it by ``r(x) / (d(x) + sigma^2)``
    with ``d(x) = k_S(x, x)`` and ``r(x) = sum_j k_S(x, x_j)^2 = sigma^4 x^T P G P x``,
    ``G = sum_{pool+T} x_j x_j^T``. Adding or removing one ``x`` changes ``P`` by a rank-one
    term (Sherman-Morrison), so ``d`` and ``r`` of every row change by closed forms in two
    dot products per row: one ``[2, F] x [F, n]`` product per step, never an ``[n, F]`` write.

    Args:
        xt: the rows to track, feature-major ``[F, n]`` (any float dtype; products run in it).
        p: ``P`` ``[F, F]``, float64; g: ``G`` ``[F, F]``, float64.
        d: ``d`` ``[n]``, float64; r: ``r`` ``[n]``, float64.
    """

    def __init__(self, xt: Tensor, p: Tensor, g: Tensor, d: Tensor, r: Tensor, s2: float):
        self.xt, self.p, self.g, self.d, self.r, self.s2 = xt, p, g, d, r, s2

    def update(self, x: Tensor, d_x: float, sign: float) -> None:
        """Observe (``sign = +1``) or forget (``-1``) the features ``x [F]`` (float64) whose
        tracked posterior variance is ``d_x``."""
        s2 = self.s2
        # 1 +- x^T P x from the tracked d, as bmdal_reg does; a removal's is clamped > 0
        c = (d_x + s2) / s2 if sign > 0 else max(s2 - d_x, 1e-15) / s2
        w = self.p @ x
        gw = self.g @ w
        v, gg = self.p @ gw, float(w @ gw)
        ab = (torch.stack([w, v]).to(self.xt.dtype) @ self.xt).double()  # [2, n]
        a, b = ab[0], ab[1]
        a2 = a.square()
        self.d.add_(a2, alpha=-sign * s2 / c)
        self.r.add_(a * b, alpha=-sign * 2 * s2 * s2 / c).add_(a2, alpha=s2 * s2 * gg / c**2)
        self.p.sub_(torch.outer(w, w), alpha=sign / c)


def _bait_init(x: Tensor, t: Tensor, sigma: float) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """``P``, ``G`` ``[F, F]`` and ``d``, ``r`` ``[n]`` (float64) of the pool ``x [n, F]``
    after the labelled ``t [m, F]`` (both already scaled), and ``sigma^2``."""
    F = x.shape[1]
    s2 = sigma * sigma
    tt = t.double()
    g_t = tt.T @ tt
    a = g_t + s2 * torch.eye(F, dtype=torch.float64, device=x.device)
    p = torch.cholesky_inverse(torch.linalg.cholesky(a))
    g = g_t.clone()
    rows = max(1, _CHUNK_ELEMENTS // max(1, F))
    for xs in x.split(rows):
        xs = xs.double()
        g.addmm_(xs.T, xs)
    pgp = p @ g @ p
    d, r = [], []
    for xs in x.split(rows):
        xs = xs.double()
        d.append((xs @ p).mul_(xs).sum(dim=1).mul_(s2))
        r.append((xs @ pgp).mul_(xs).sum(dim=1).mul_(s2 * s2))
    return p, g, torch.cat(d), torch.cat(r), s2


@register(
    "bait",
    needs={"embedding", "labelled_embedding"},
    description="BAIT forward-backward: greedy GP posterior variance reduction (bmdal BAIT-FB-P)",
)
def bait(
    pred: Prediction,
    k: int,
    *,
    generator: torch.Generator,
    labelled_embedding: Tensor | None = None,
    sigma: float = BAIT_SIGMA,
    overselection: float = 2.0,
) -> Selection:
    """BAIT (Ash et al., 2021) in the feature-space form of Holzmüller et al. (JMLR 2023).

    A Gaussian process with the linear kernel on ``pred.embedding [n, F]``, scaled so that
    the labelled features (``labelled_embedding [m, F]``; the pool's when ``m = 0``) have
    mean squared norm 1, and noise ``sigma^2``, is conditioned on the labelled molecules.
    Forward: greedily add ``min(n, round(overselection * k))`` candidates, each the one
    that most reduces the summed posterior variance over pool and labelled set. Backward:
    remove, one at a time, the chosen candidate whose removal raises it least, until ``k``
    remain. Should a step find no positive gain (features of rank < F all explained), the
    rest is filled at random from the generator, as ``bmdal_reg`` does.

    Score = the forward step's variance reduction (in units of the scaled kernel).
    Cost: O((n + m) F^2) to set up, then O(n F) per forward step and O(k F) per backward one.
    Precision: the per-step products with the pool run in the embedding's dtype (float32
    from the surrogates, float64 in ``bmdal_reg``'s benchmark); ``P``, ``G`` and the tracked
    variances are float64, and the backward phase is float64 throughout.
    """
    n = _check(pred, k)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if overselection < 1:
        raise ValueError(f"overselection must be >= 1, got {overselection}")
    x, t = _features(pred, labelled_embedding)
    perm = _permutation(n, generator, x.device)
    x, t = _bait_scaled(x[perm], t)
    p, g, d, r, s2 = _bait_init(x, t, sigma)
    state = _BaitState(x.T.contiguous(), p, g, d, r, s2)

    total = min(n, round(overselection * k))
    chosen, gains, taken = _bait_forward(state, x, total)
    if len(chosen) < total:  # no gain left: fill up at random, keep the first k
        index, score = _bait_fill(chosen, gains, taken, k, generator)
        return Selection(perm[index].cpu(), score)

    sel = torch.tensor(chosen, dtype=torch.int64, device=x.device)
    kept = _bait_backward(x[sel].double(), t, g, s2, total - k)[:k]
    score = torch.tensor(gains, dtype=torch.float64)[kept.cpu()]
    return Selection(perm[sel[kept]].cpu(), score)


def _bait_scaled(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The pool ``x [n, F]`` and the labelled ``t [m, F]`` scaled alike, so that the
    labelled features (the pool's when ``m = 0``) have mean squared norm 1."""
    ref = t if t.shape[0] else x
    mean_sq = float(ref.double().square().sum(dim=1).mean())
    scale = 1.0 / math.sqrt(mean_sq) if mean_sq > 0 else 1.0
    return x * scale, t * scale


def _bait_forward(
    state: _BaitState, x: Tensor, total: int
) -> tuple[list[int], list[float], Tensor]:
    """BAIT's forward phase: up to ``total`` rows of ``x [n, F]`` (tracked by ``state``),
    each the one that most lowers the summed posterior variance; it stops at the first step
    without a positive gain. The picks in order, their gains and the mask of the picked."""
    s2 = state.s2
    taken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    chosen: list[int] = []
    gains: list[float] = []
    for _ in range(total):
        value = (state.r / (state.d + s2 + 1e-8)).masked_fill_(taken, -math.inf)
        j = int(value.argmax())
        if not float(value[j]) > 0.0:
            break
        chosen.append(j)
        gains.append(float(value[j]))
        taken[j] = True
        state.update(x[j].double(), float(state.d[j]), +1.0)
    return chosen, gains, taken


def _bait_fill(
    chosen: list[int], gains: list[float], taken: Tensor, k: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The first ``k`` forward picks, filled up to ``k`` with rows not ``taken`` drawn at
    random from ``generator`` (score NaN): rows of the permuted pool and their scores."""
    rest = (~taken).nonzero().squeeze(1)
    fill = rest[torch.randperm(rest.numel(), generator=generator, device=generator.device)]
    fill = fill.to(taken.device)[: k - min(k, len(chosen))]
    index = torch.tensor(chosen[:k], dtype=torch.int64, device=taken.device)
    score = torch.tensor(gains[:k], dtype=torch.float64)
    index = torch.cat([index, fill])
    score = torch.cat([score, torch.full((fill.numel(),), math.nan, dtype=torch.float64)])
    return index, score


def _bait_backward(xs: Tensor, t: Tensor, g: Tensor, s2: float, steps: int) -> Tensor:
    """BAIT's backward phase over the forward picks ``xs [c, F]`` (float64): remove, ``steps``
    times, the pick whose removal raises the summed posterior variance least (``t``: the
    labelled features, ``g``: ``G``); it stops at the first step that fails, keeping the
    earliest picks. The kept rows of ``xs``, in forward order.

    Only the picks' ``d`` and ``r`` matter here. They are recomputed in float64 from a
    fresh ``P``: removal scores divide by ``d - sigma^2``, where the rounding of float32
    forward updates would otherwise decide.
    """
    tt = t.double()
    eye = torch.eye(xs.shape[1], dtype=torch.float64, device=xs.device)
    p = torch.cholesky_inverse(torch.linalg.cholesky(tt.T @ tt + xs.T @ xs + s2 * eye))
    d = (xs @ p).mul_(xs).sum(dim=1).mul_(s2)
    r = (xs @ (p @ g @ p)).mul_(xs).sum(dim=1).mul_(s2 * s2)
    back = _BaitState(xs.T.contiguous(), p, g, d, r, s2)
    keep = torch.ones(xs.shape[0], dtype=torch.bool, device=xs.device)
    for _ in range(steps):
        den = back.d - s2
        value = back.r.clamp(min=0.0) / den
        value.masked_fill_((den >= 0) | ~keep, -math.inf)
        i = int(value.argmax())
        if not -math.inf < float(value[i]) < 0.0:
            break  # the backward step failed: keep the earliest forward picks
        keep[i] = False
        back.update(xs[i], float(back.d[i]), -1.0)
    return keep.nonzero().squeeze(1)
