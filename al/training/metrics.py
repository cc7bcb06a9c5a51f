"""Accuracy and uncertainty-quality metrics on the test set."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from al.data.molecules import MolecularData
from al.data.reference import fit_composition


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share their mean rank), ``[n] -> [n]`` float64."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=torch.float64)
    # average over ties
    uniq, inverse = torch.unique(x, return_inverse=True)
    if uniq.numel() != x.numel():
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add(0, inverse, ranks)
        counts = torch.bincount(inverse, minlength=uniq.numel()).double()
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two ``[n]`` vectors (NaN if either is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = ra.norm() * rb.norm()
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def gaussian_nll(mean: Tensor, std: Tensor, target: Tensor, min_std: float = 1e-4) -> float:
    """Mean negative log-likelihood of ``target`` under N(mean, std^2), in nats."""
    var = std.double().clamp_min(min_std).square()
    err2 = (target.double() - mean.double()).square()
    return float((0.5 * torch.log(2 * math.pi * var) + err2 / (2 * var)).mean())


def calibration_curve(
    mean: Tensor, std: Tensor, target: Tensor, n_levels: int = 99
) -> tuple[Tensor, Tensor]:
    """Expected and observed coverage of central Gaussian intervals, both ``[n_levels]``.

    For each level ``p`` in ``linspace(0.01, 0.99, n_levels)`` (expected), the share of
    targets inside ``mean +- z_p std`` with ``z_p`` the half-width of the central interval
    of mass ``p`` (observed). A calibrated model lies on the diagonal; below it the std is
    too small (overconfident).

    Args:
        mean, std, target: ``[n]``.
    """
    z = (target.double() - mean.double()).abs() / std.double().clamp_min(1e-12)
    expected = torch.linspace(0.01, 0.99, n_levels, dtype=torch.float64)
    half_width = math.sqrt(2.0) * torch.special.erfinv(expected)  # central interval of mass p
    observed = (z[None, :] <= half_width[:, None]).double().mean(1)
    return expected, observed


def miscalibration_area(mean: Tensor, std: Tensor, target: Tensor, n_levels: int = 99) -> float:
    """Mean |observed - expected| coverage of central Gaussian intervals (0 = calibrated);
    the curve is :func:`calibration_curve`."""
    expected, observed = calibration_curve(mean, std, target, n_levels)
    return float((observed - expected).abs().mean())


def calibration_scale(mean: Tensor, std: Tensor, target: Tensor, min_std: float = 1e-8) -> float:
    """The factor ``s`` minimising the Gaussian NLL of ``target`` under ``N(mean, (s std)^2)``.

    Closed form: ``s^2 = mean(err^2 / std^2)``. 1 when there is nothing to fit on (no
    targets, or a non-finite result).

    Args:
        mean, std, target: ``[n]``.
    """
    if target.numel() == 0:
        return 1.0
    err = target.double() - mean.double().to(target.device)
    ratio = (err / std.double().to(target.device).clamp_min(min_std)).square().mean()
    scale = float(ratio.sqrt())
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def regression_report(
    mean: Tensor, target: Tensor, std: Tensor | None = None, std_raw: Tensor | None = None
) -> dict[str, float]:
    """MAE, RMSE, 95th and 99th percentile and max of the absolute error (eV) of ``mean``
    against ``target`` (both ``[n]``) and, with ``std`` (``[n]``), NLL, Spearman(std, |err|),
    miscalibration; with ``std_raw`` (``[n]``, the uncalibrated std) also ``nll_raw`` and
    ``miscalibration_area_raw``. Percentiles interpolate linearly between order statistics
    (``torch.quantile``'s default, as ``numpy.percentile``)."""
    err = (mean.double() - target.double().to(mean.device)).abs()
    empty = err.numel() == 0
    out = {
        "mae": float(err.mean()),
        "rmse": float(err.square().mean().sqrt()),
        "p95_ae": float("nan") if empty else float(torch.quantile(err, 0.95)),
        "p99_ae": float("nan") if empty else float(torch.quantile(err, 0.99)),
        "max_ae": float("nan") if empty else float(err.max()),
    }
    if std is not None:
        out["nll"] = gaussian_nll(mean, std, target)
        out["spearman_std_err"] = spearman(std, err)
        out["miscalibration_area"] = miscalibration_area(mean, std, target)
        out["mean_std"] = float(std.double().mean())
    if std_raw is not None:
        out["nll_raw"] = gaussian_nll(mean, std_raw, target)
        out["miscalibration_area_raw"] = miscalibration_area(mean, std_raw, target)
    return out


def baseline_mae(data: MolecularData, train_rows: Tensor, test_rows: Tensor) -> float:
    """Test MAE of the per-element linear model fitted on ``train_rows`` (composition only;
    an element absent from them gets the fallback of :func:`~al.data.reference.fit_composition`).

    Args:
        data: the molecules; train_rows, test_rows: row indices ``[n_train]``, ``[n_test]``.
    """
    A, y = data.composition(train_rows), data.y[train_rows]
    coef = fit_composition(A, y, context="baseline_mae").to(A)  # absent elements: the prior
    return float((data.composition(test_rows) @ coef - data.y[test_rows]).abs().mean())
