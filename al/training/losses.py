"""Training losses: mean squared error per member, and the shallow ensemble's Gaussian NLL.

Inputs are in units of the model's target scale (``scale`` eV), so that the losses and the
NLL's variance floor do not depend on the size of the targets.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Variance floor of the NLL, in units of ``scale**2``.
NLL_EPS = 1e-6


def _weighted_mean(values: Tensor, mask: Tensor, weight: Tensor | None) -> Tensor:
    """Sum of ``values`` where ``mask`` (times ``weight``) over the number of masked entries."""
    values = torch.where(mask, values, 0.0)
    if weight is not None:
        values = values * (weight[..., None] if values.dim() > weight.dim() else weight)
    return values.sum() / mask.sum().clamp(min=1)


def member_mse(pred: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    """Sum over members of each member's mean squared error.

    Each member's gradient is what it would be if trained alone (a mean over members would
    shrink it by K), which keeps per-member gradient clipping meaningful.

    Args:
        pred: ``[K, B]`` or ``[K, B, D]``; y: targets of the same shape, NaN where missing.
        weight: per-molecule loss weights, ``[K, B]``, or None.

    Returns:
        a scalar; the mean MSE of the members is that divided by K.
    """
    present = torch.isfinite(y)
    y = torch.where(present, y, 0.0)  # a NaN would reach the gradient even when masked
    sq = torch.where(present, (pred - y).square(), 0.0)
    if weight is not None:
        sq = sq * (weight[..., None] if sq.dim() > weight.dim() else weight)
    return (sq.flatten(1).sum(1) / present.flatten(1).sum(1).clamp(min=1)).sum()


def mse(pred: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error of ``pred`` ``[B]`` or ``[B, D]`` over the targets present.

    Args:
        pred: predictions; y: targets of the same shape, NaN where missing.
        weight: per-molecule weights ``[B]``, or None.
    """
    present = torch.isfinite(y)
    y = torch.where(present, y, 0.0)
    return _weighted_mean((pred - y).square(), present, weight)


def ensemble_nll(
    heads: Tensor, y: Tensor, weight: Tensor | None = None, eps: float = NLL_EPS
) -> Tensor:
    """Gaussian negative log-likelihood of ``y`` given the heads' mean and variance (DPOSE).

    For each molecule the K head outputs give ``m = mean_k h_k`` and
    ``s2 = sum_k (h_k - m)^2 / (K - 1)``; the loss is the mean over molecules (and targets
    present) of ``0.5 log(s2 + eps) + (y - m)^2 / (2 (s2 + eps))``. The constant
    ``0.5 log 2 pi`` is left out.

    Args:
        heads: ``[K, B]`` or ``[K, B, D]`` (K >= 2).
        y: ``[B]`` or ``[B, D]``, NaN where missing.
        weight: per-molecule weights ``[B]``, or None.
    """
    if heads.shape[0] < 2:
        raise ValueError("the ensemble NLL needs at least 2 heads")
    present = torch.isfinite(y)
    y = torch.where(present, y, 0.0)
    mean, var = heads.mean(0), heads.var(0) + eps
    nll = 0.5 * torch.log(var) + (y - mean).square() / (2 * var)
    return _weighted_mean(nll, present, weight)
