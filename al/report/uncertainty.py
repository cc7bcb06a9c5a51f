"""How well the predicted std of a model describes its test errors: reliability bins and
z-scores of per-molecule test predictions (pure functions on arrays and frames).

Frames: *predictions* (:mod:`al.report.read`), one row per (run, step, test molecule),
columns ``run_id, step, source, qm9_index, target, mean, std, std_raw`` (``std`` already
scaled by the std scale fitted on the campaign's validation set; NaN for a model without
uncertainty).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

#: The two-sided 95 % quantile of the standard normal: ``|z| <= Z95`` holds 95 % of a
#: calibrated Gaussian's errors.
Z95 = 1.959963984540054
#: Equal-count bins of the reliability diagram: at most this many, each with at least
#: :data:`MIN_PER_BIN` molecules.
MAX_BINS, MIN_PER_BIN = 15, 20
RELIABILITY_COLUMNS = ("bin", "rmv", "rmse", "n", "std_lo", "std_hi")
CALIBRATION_COLUMNS = ("n", "mean_z", "sd_z", "coverage_95", "rmse", "rmv")


def usable(std: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Mask ``[n]`` of the molecules with a finite error and a finite positive std."""
    s, e = np.asarray(std, dtype=float), np.asarray(err, dtype=float)
    return np.isfinite(s) & np.isfinite(e) & (s > 0)


def reliability_bins(std: np.ndarray, err: np.ndarray, n_bins: int | None = None) -> pd.DataFrame:
    """Reliability diagram of predicted std against error, in equal-count bins of std.

    Args:
        std: predicted std per molecule ``[n]``.
        err: error ``target - mean`` per molecule ``[n]``.
        n_bins: bins (default ``min(MAX_BINS, n // MIN_PER_BIN)``, at least 1).

    The molecules (finite error, positive std) are sorted by std and cut into ``n_bins``
    groups of equal size (``numpy.array_split``). Per bin: ``rmv`` (root mean variance,
    ``sqrt(mean std^2)``) and ``rmse`` (``sqrt(mean err^2)``), which agree for a calibrated
    Gaussian (the y = x line), ``n`` and the std range ``std_lo, std_hi``. Returns columns
    :data:`RELIABILITY_COLUMNS` (empty without a usable molecule).
    """
    ok = usable(std, err)
    s, e = np.asarray(std, dtype=float)[ok], np.asarray(err, dtype=float)[ok]
    if s.size == 0:
        return pd.DataFrame(columns=list(RELIABILITY_COLUMNS))
    k = n_bins or max(1, min(MAX_BINS, s.size // MIN_PER_BIN))
    order = np.argsort(s, kind="stable")
    rows = []
    for i, idx in enumerate(np.array_split(order, min(k, s.size))):
        rows.append(
            dict(
                bin=i,
                rmv=float(np.sqrt(np.mean(s[idx] ** 2))),
                rmse=float(np.sqrt(np.mean(e[idx] ** 2))),
                n=int(idx.size),
                std_lo=float(s[idx].min()),
                std_hi=float(s[idx].max()),
            )
        )
    return pd.DataFrame(rows, columns=list(RELIABILITY_COLUMNS))


def z_scores(target: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(target - mean) / std`` of the molecules with a finite positive std, ``[n_usable]``
    (a standard normal sample for a calibrated Gaussian)."""
    t, m, s = (np.asarray(a, dtype=float) for a in (target, mean, std))
    ok = usable(s, t - m)
    return (t[ok] - m[ok]) / s[ok]


def calibration(std: np.ndarray, err: np.ndarray) -> dict[str, Any]:
    """Summary of the z-scores ``err / std`` of the usable molecules (``[n]`` arrays in):
    ``n``, ``mean_z`` (0 when unbiased), ``sd_z`` (1 when calibrated), ``coverage_95``
    (fraction with ``|z| <= 1.96``; 0.95 when calibrated), ``rmse`` and ``rmv`` over all
    of them (NaN without a usable molecule)."""
    ok = usable(std, err)
    s, e = np.asarray(std, dtype=float)[ok], np.asarray(err, dtype=float)[ok]
    if s.size == 0:
        return dict(n=0, mean_z=math.nan, sd_z=math.nan, coverage_95=math.nan,
                    rmse=math.nan, rmv=math.nan)  # fmt: skip
    z = e / s
    return dict(
        n=int(z.size),
        mean_z=float(z.mean()),
        sd_z=float(z.std(ddof=1)) if z.size > 1 else math.nan,
        coverage_95=float(np.mean(np.abs(z) <= Z95)),
        rmse=float(np.sqrt(np.mean(e**2))),
        rmv=float(np.sqrt(np.mean(s**2))),
    )


def pooled(predictions: pd.DataFrame, run_ids: list[str], step: float) -> pd.DataFrame:
    """The rows of ``run_ids`` at ``step``, pooled over the runs (seeds)."""
    return predictions[predictions["run_id"].isin(run_ids) & (predictions["step"] == step)]


def uncertainty_tables(
    predictions: pd.DataFrame, runs: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (arm, step, source) of the predictions of ``runs`` (one grid), pooled over its
    seeds: the calibration summary (:func:`calibration`) and the reliability bins
    (:func:`reliability_bins`).

    ``runs`` has columns ``run_id, arm``. Returns ``(calibration, reliability)``: columns
    ``arm, step, source, n_runs`` then :data:`CALIBRATION_COLUMNS` (with ``has_std``:
    whether any std was predicted), and ``arm, step, source`` then
    :data:`RELIABILITY_COLUMNS`.
    """
    arm_of = dict(zip(runs["run_id"], runs["arm"], strict=True))
    pred = predictions[predictions["run_id"].isin(arm_of)]
    cal_rows, rel = [], []
    for (step, source), at in pred.groupby(["step", "source"], sort=True):
        for arm, f in at.groupby(at["run_id"].map(arm_of), sort=True):
            err = f["target"].to_numpy(float) - f["mean"].to_numpy(float)
            std = f["std"].to_numpy(float)
            key = dict(arm=arm, step=float(step), source=source)
            cal_rows.append(
                dict(**key, n_runs=int(f["run_id"].nunique()), has_std=bool(usable(std, err).any()),
                     **calibration(std, err))
            )  # fmt: skip
            bins = reliability_bins(std, err)
            if len(bins):
                rel.append(bins.assign(**key))
    cal_cols = ["arm", "step", "source", "n_runs", "has_std", *CALIBRATION_COLUMNS]
    rel_cols = ["arm", "step", "source", *RELIABILITY_COLUMNS]
    reliability = (
        pd.concat(rel, ignore_index=True)[rel_cols] if rel else pd.DataFrame(columns=rel_cols)
    )
    return pd.DataFrame(cal_rows, columns=cal_cols), reliability
