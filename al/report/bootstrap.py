"""Paired bootstrap over seeds and test molecules of a difference in test MAE.

Both arms of a seed pair are evaluated on the same fixed test set, so a resample draws the
seed pairs with replacement and, within each drawn pair, the test molecules with
replacement, the same molecules for both arms. The MAE of a resample is a mean of absolute
errors over the drawn molecules, so the difference of MAEs is the mean of the per-molecule
differences ``|err_arm| - |err_ref|``: one gather per resample, vectorised in chunks.

Frames: *predictions* (:mod:`al.report.read`), one row per (run, step, test molecule),
columns ``run_id, step, source, qm9_index, target, mean, std, std_raw``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

#: Resamples drawn and the seed of the generator, unless asked otherwise.
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
#: At most this many gathered values per chunk of resamples (memory: 8 bytes each, twice).
CHUNK_VALUES = 1_000_000


class BootstrapCI(NamedTuple):
    """A paired-bootstrap estimate of *arm - reference* of the test MAE.

    ``mean``: mean over the seed pairs of ``MAE_arm - MAE_ref`` on the data (eV), ``lo`` and
    ``hi`` its percentile interval; ``rel``: that mean as a fraction of the mean MAE of the
    reference (``mean / mean_s MAE_ref``), ``rel_lo`` and ``rel_hi`` its interval;
    ``n_pairs`` seed pairs, ``n_molecules`` test molecules, ``n_resamples`` resamples.
    """

    mean: float
    lo: float
    hi: float
    rel: float
    rel_lo: float
    rel_hi: float
    n_pairs: int
    n_molecules: int
    n_resamples: int


def paired_bootstrap(
    abs_arm: np.ndarray,
    abs_ref: np.ndarray,
    n_resamples: int = N_RESAMPLES,
    level: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
    chunk_values: int = CHUNK_VALUES,
) -> BootstrapCI:
    """Paired bootstrap over seed pairs and test molecules of the difference in MAE.

    Args:
        abs_arm, abs_ref: absolute test errors ``[n_pairs, n_molecules]``; row ``s`` holds
            the two runs of seed pair ``s``, column ``j`` the same molecule in both.
        n_resamples: bootstrap resamples ``B``.
        level: coverage of the two-sided percentile interval.
        seed: seed of ``numpy.random.default_rng``; it draws the pairs of every resample,
            ``rng.integers(0, S, (B, S))``, then the molecules, ``rng.integers(0, M,
            (b, S, M))`` per chunk of ``b`` resamples in order (the same stream as one
            ``(B, S, M)`` draw).
        chunk_values: at most this many values gathered at once (``b * S * M``).

    Statistic of a resample: the mean over its ``S`` drawn pairs of ``MAE_arm - MAE_ref``,
    each MAE over the ``M`` drawn molecules of that pair; relative: that divided by the
    mean over the drawn pairs of ``MAE_ref``.
    """
    a, r = np.asarray(abs_arm, dtype=float), np.asarray(abs_ref, dtype=float)
    if a.shape != r.shape or a.ndim != 2:
        raise ValueError(f"abs_arm {a.shape} and abs_ref {r.shape}: want equal [pairs, molecules]")
    S, M = a.shape
    if S == 0 or M == 0:
        nan = math.nan
        return BootstrapCI(nan, nan, nan, nan, nan, nan, S, M, 0)
    d = (a - r).ravel()
    ref = r.ravel()
    diff, base = np.empty(n_resamples), np.empty(n_resamples)
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, S, size=(n_resamples, S))
    step = max(1, chunk_values // (S * M))
    for start in range(0, n_resamples, step):
        b = min(step, n_resamples - start)
        mols = rng.integers(0, M, size=(b, S, M))
        # [b, S, M]: index into the flattened [S, M] of the drawn pair's row
        flat = pairs[start : start + b, :, None] * M + mols
        diff[start : start + b] = d[flat].mean(axis=(1, 2))
        base[start : start + b] = ref[flat].mean(axis=(1, 2))
    q = [(1 - level) / 2, (1 + level) / 2]
    lo, hi = np.quantile(diff, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_lo, rel_hi = np.quantile(diff / base, q)
    mean, ref_mean = float(d.mean()), float(ref.mean())
    return BootstrapCI(
        mean,
        float(lo),
        float(hi),
        mean / ref_mean if ref_mean else math.nan,
        float(rel_lo),
        float(rel_hi),
        S,
        M,
        n_resamples,
    )


def aligned_errors(
    predictions: pd.DataFrame, pairs: Sequence[tuple[str, str]], step: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Absolute test errors of the runs of each seed pair at ``step``, on the molecules
    every one of these runs predicted (by ``qm9_index``).

    Args:
        predictions: the *predictions* frame.
        pairs: ``(arm run_id, reference run_id)`` per seed pair.
        step: the checkpoint's label count.

    Returns ``abs_arm``, ``abs_ref`` (``[n_pairs, n_molecules]``, molecules in ascending
    ``qm9_index``) and the largest number of molecules a single run predicted (more than
    ``n_molecules`` when the runs' test sets differ).
    """
    at = predictions[predictions["step"] == step]
    by_run = {
        str(rid): f.drop_duplicates("qm9_index", keep="last").set_index("qm9_index")
        for rid, f in at.groupby("run_id", sort=False)
    }
    ids = [rid for pair in pairs for rid in pair]
    if not ids or any(rid not in by_run for rid in ids):
        return np.empty((0, 0)), np.empty((0, 0)), 0
    common = sorted(set.intersection(*(set(by_run[rid].index) for rid in ids)))
    largest = max(len(by_run[rid]) for rid in ids)

    def errors(rid: str) -> np.ndarray:
        f = by_run[rid].loc[common]
        return np.abs(f["target"].to_numpy(float) - f["mean"].to_numpy(float))

    abs_arm = np.vstack([errors(a) for a, _ in pairs])
    abs_ref = np.vstack([errors(b) for _, b in pairs])
    return abs_arm, abs_ref, largest
