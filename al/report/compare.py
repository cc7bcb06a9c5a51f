"""Compare active-learning campaigns read back from the tracking server.

Only the public MLflow API is used (``MlflowClient.search_runs`` and
``get_metric_history``): the report is built from what the tracking server holds, so it
can be rebuilt anywhere from the server alone.

The work is split in three layers:

* **reading** (:func:`find_campaign_runs`, :func:`runs_frame`, :func:`fetch_histories`):
  campaign runs and their per-round metric histories (``step = n_labelled``) as pandas
  frames;
* **statistics** (pure functions on those frames, testable on synthetic data):
  learning curves with t-confidence bands, labels needed to reach a target MAE, the area
  under the learning curve, seed-paired differences against a baseline arm, label savings;
* **writing** (:func:`write_report`, :func:`log_report`): ``report.md``, a self-contained
  ``report.html``, PNG plots and CSV tables, logged back as a run tagged
  ``al.kind=report``.

Frames used throughout:

* *runs*: one row per campaign run, columns :data:`RUN_COLUMNS`
  (``run_id, arm, grid, seed, strategy, oracle, cell, start_time, run_name``);
* *histories*: one row per (run, step), columns ``run_id, arm, grid, seed, step`` plus
  one column per metric of :data:`REPORT_METRICS` (NaN where the run did not log it).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from al.tracking import (
    KIND_CAMPAIGN,
    KIND_REPORT,
    TAG_CELL,
    TAG_GRID,
    TAG_KIND,
    TAG_ORACLE,
    TAG_PARENT,
    TAG_REPORT_OF,
    TAG_SEED,
    TAG_STRATEGY,
)
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key

log = logging.getLogger(__name__)


#: Metric histories read per campaign run.
REPORT_METRICS: tuple[str, ...] = (
    CM.TEST_MAE,
    CM.COST_SPENT,
    CM.N_LABELLED,
    CM.TEST_NLL,
    CM.TEST_SPEARMAN,
    CM.TEST_MISCALIBRATION,
    CM.TIME_FIT,
    CM.TIME_SCORE,
    CM.TIME_SELECT,
    CM.TIME_LABEL,
)
TIME_METRICS: tuple[str, ...] = (CM.TIME_FIT, CM.TIME_SCORE, CM.TIME_SELECT, CM.TIME_LABEL)
RUN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "arm",
    "grid",
    "seed",
    "strategy",
    "oracle",
    "cell",
    "start_time",
    "run_name",
)
KEY_COLUMNS: tuple[str, ...] = ("run_id", "arm", "grid", "seed")

#: Verdicts of a paired comparison (arm - baseline, lower MAE is better).
BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = (
    "better",
    "worse",
    "no significant difference",
    "too few seeds",
)
NOT_REACHED = "not reached"

#: 97.5 % quantiles of Student's t for df = 1..30 (the 95 % two-sided interval), to 1e-6.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
    2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.13145, 2.119905,
    2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
    2.059539, 2.055529, 2.051831, 2.048407, 2.04523, 2.042272,
)  # fmt: skip
_Z975 = 1.959963984540054


class CompareError(ValueError):
    """A problem the user can fix (unknown experiment, nothing to compare); one line."""


# --- statistics ------------------------------------------------------------------------------
class MeanCI(NamedTuple):
    """Mean of a sample and its two-sided t confidence interval."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile: ``P(|T_df| <= q) = level``.

    For ``level=0.95`` (the report's) a table for ``df <= 30`` and a Cornish-Fisher
    expansion above (relative error < 1e-6), so that the report does not pay for importing
    :mod:`scipy.stats` (seconds on a loaded machine); other levels use scipy.
    """
    if df < 1:
        return math.nan
    if math.isclose(level, 0.95):
        if df <= len(_T975):
            return _T975[df - 1]
        z = _Z975
        return (
            z
            + (z**3 + z) / (4 * df)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        )
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn/mlflow here
        raise ValueError(f"confidence level {level} needs scipy (0.95 does not)") from None
    return float(stats.t.ppf(0.5 + level / 2, df))


def mean_ci(values: Iterable[float], level: float = 0.95) -> MeanCI:
    """Mean and t-interval of the finite values (NaN band with fewer than two values)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if n < 2:
        return MeanCI(m, math.nan, math.nan, 1)
    h = t_quantile(n - 1, level) * float(v.std(ddof=1)) / math.sqrt(n)
    return MeanCI(m, m - h, m + h, n)


def verdict(ci: MeanCI, min_pairs: int = 2) -> str:
    """Verdict on a difference *arm - baseline* of an error (lower is better).

    ``better`` only when the whole interval is below 0, ``worse`` when it is above,
    ``too few seeds`` with fewer than ``min_pairs`` pairs, else no significant difference.
    """
    if ci.n < min_pairs or not (math.isfinite(ci.lo) and math.isfinite(ci.hi)):
        return TOO_FEW
    if ci.hi < 0:
        return BETTER
    if ci.lo > 0:
        return WORSE
    return NO_DIFFERENCE


def interpolate_curve(
    x: Sequence[float],
    y: Sequence[float],
    grid: Sequence[float],
    log_x: bool = False,
    log_y: bool = False,
) -> np.ndarray:
    """``y(x)`` at ``grid`` by piecewise-linear interpolation (NaN outside ``[min x, max x]``).

    With ``log_x``/``log_y`` the interpolation is linear in ``log x``/``log y`` (exact for
    power laws when both are set); duplicate ``x`` keep their last value.
    """
    xs, ys, g = (np.asarray(a, dtype=float) for a in (x, y, grid))
    ok = np.isfinite(xs) & np.isfinite(ys)
    if log_x:
        ok &= xs > 0
    if log_y:
        ok &= ys > 0
    xs, ys = xs[ok], ys[ok]
    out = np.full(g.shape, np.nan)
    if xs.size == 0:
        return out
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    last = np.r_[xs[1:] != xs[:-1], True]  # keep the last value of equal x
    xs, ys = xs[last], ys[last]
    tx = np.log(xs) if log_x else xs
    ty = np.log(ys) if log_y else ys
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.log(g) if log_x else g
    inside = np.isfinite(tg) & (g >= xs[0]) & (g <= xs[-1])
    vals = np.interp(tg[inside], tx, ty)
    out[inside] = np.exp(vals) if log_y else vals
    return out


def labels_to_reach(x: Sequence[float], mae: Sequence[float], target: float) -> float:
    """First ``x`` at which the curve ``mae(x)`` reaches ``target`` (``mae <= target``).

    Between two steps the crossing is found by linear interpolation of ``log(mae)`` in
    ``x``. Returns ``x[0]`` when the first point is already at or below the target, and NaN
    when the curve never reaches it.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(mae, dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys) & (ys > 0)
    xs, ys = xs[ok], ys[ok]
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    if xs.size == 0 or not target > 0:
        return math.nan
    if ys[0] <= target:
        return float(xs[0])
    lt = math.log(target)
    for i in range(1, xs.size):
        if ys[i] <= target:
            l0, l1 = math.log(ys[i - 1]), math.log(ys[i])
            frac = (l0 - lt) / (l0 - l1) if l0 != l1 else 1.0
            return float(xs[i - 1] + frac * (xs[i] - xs[i - 1]))
    return math.nan


def curve_auc(x: Sequence[float], y: Sequence[float], lo: float, hi: float) -> float:
    """Mean of ``y`` over ``[lo, hi]``: trapezoid area of the (linearly interpolated) curve
    divided by ``hi - lo``. With ``lo == hi`` the value there; NaN when the curve does not
    cover the range."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    if xs.size == 0 or not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        return math.nan
    if xs.min() > lo or xs.max() < hi:
        return math.nan
    if hi == lo:
        return float(interpolate_curve(xs, ys, [lo])[0])
    inner = np.unique(xs[(xs > lo) & (xs < hi)])
    grid = np.r_[lo, inner, hi]
    vals = interpolate_curve(xs, ys, grid)
    area = float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)))
    return area / (hi - lo)


def _run_groups(histories: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    for run_id, frame in histories.groupby("run_id", sort=False):
        yield str(run_id), frame.sort_values("step")


def common_range(
    histories: pd.DataFrame, x: str = "step", y: str = CM.TEST_MAE
) -> tuple[float, float]:
    """``[max over runs of the first x, min over runs of the last x]`` where ``y`` is logged:
    the range every run covers (``lo > hi`` when there is none)."""
    los, his = [], []
    for _, frame in _run_groups(histories):
        xs = frame.loc[frame[y].notna() & frame[x].notna(), x]
        if len(xs):
            los.append(float(xs.min()))
            his.append(float(xs.max()))
    if not los:
        return math.nan, math.nan
    return max(los), min(his)


def learning_curves(
    histories: pd.DataFrame,
    x: str = "step",
    y: str = CM.TEST_MAE,
    level: float = 0.95,
    n_points: int = 60,
) -> pd.DataFrame:
    """Mean learning curve and t-band over seeds, per (grid, arm).

    Each run is interpolated onto a common grid within the range all seeds of the arm cover.
    On labels (``x="step"``, i.e. ``n_labelled``) the grid is the union of the steps and
    the interpolation is linear (exact where seeds share steps). On any other ``x`` (such
    as ``cost_spent``, which differs between seeds in multi-fidelity runs) the grid has
    ``n_points`` points, log-spaced, and ``log y`` is interpolated linearly in ``log x``
    (falling back to linear in ``x`` when some ``x <= 0``).

    Returns columns ``grid, arm, x, mean, lo, hi, n_seeds``.
    """
    rows: list[dict[str, Any]] = []
    for (grid, arm), frame in histories.groupby(["grid", "arm"], sort=True):
        lo, hi = common_range(frame, x, y)
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
            continue
        runs = list(_run_groups(frame))
        if x == "step":
            pts = np.unique(
                np.concatenate([f.loc[f[y].notna(), x].to_numpy(float) for _, f in runs])
            )
            pts = pts[(pts >= lo) & (pts <= hi)]
            log_x = log_y = False
        else:
            log_x = log_y = lo > 0
            pts = (
                np.geomspace(lo, hi, n_points)
                if log_x and hi > lo
                else np.linspace(lo, hi, n_points if hi > lo else 1)
            )
        curves = np.vstack(
            [interpolate_curve(f[x], f[y], pts, log_x=log_x, log_y=log_y) for _, f in runs]
        )
        for j, p in enumerate(pts):
            ci = mean_ci(curves[:, j], level)
            rows.append(
                dict(grid=grid, arm=arm, x=float(p), mean=ci.mean, lo=ci.lo, hi=ci.hi, n_seeds=ci.n)
            )
    return pd.DataFrame(rows, columns=["grid", "arm", "x", "mean", "lo", "hi", "n_seeds"])


def final_values(histories: pd.DataFrame, metric: str) -> pd.Series:
    """Per run, the value of ``metric`` at the last step it was logged (index: run_id)."""
    out = {}
    for run_id, frame in _run_groups(histories):
        vals = frame[metric].dropna() if metric in frame else pd.Series(dtype=float)
        out[run_id] = float(vals.iloc[-1]) if len(vals) else math.nan
    return pd.Series(out, dtype=float)


def run_aucs(histories: pd.DataFrame, lo: float, hi: float, y: str = CM.TEST_MAE) -> pd.Series:
    """Per run, the mean of ``y`` over ``[lo, hi]`` labels (:func:`curve_auc`; index: run_id)."""
    return pd.Series(
        {rid: curve_auc(f["step"], f[y], lo, hi) for rid, f in _run_groups(histories)},
        dtype=float,
    )


def time_per_round(histories: pd.DataFrame) -> pd.Series:
    """Per run, the mean over steps of the summed phase times ``time_*_s`` (index: run_id)."""
    cols = [c for c in TIME_METRICS if c in histories]
    out = {}
    for rid, f in _run_groups(histories):
        if not cols or f[cols].isna().all().all():
            out[rid] = math.nan
            continue
        logged = f[cols].notna().any(axis=1)
        out[rid] = float(f.loc[logged, cols].fillna(0).sum(axis=1).mean())
    return pd.Series(out, dtype=float)


def resolve_baseline(
    runs: pd.DataFrame, baseline: str, grid: str | None = None
) -> tuple[str | None, str]:
    """The baseline arm of a grid: the arm named ``baseline``, else the only arm whose
    strategy is ``baseline``. Returns ``(arm or None, note)``; the note says why none."""
    sub = runs if grid is None else runs[runs["grid"] == grid]
    arms = sorted(sub["arm"].unique())
    if baseline in arms:
        return baseline, ""
    by_strategy = sorted(sub.loc[sub["strategy"] == baseline, "arm"].unique())
    if len(by_strategy) == 1:
        return by_strategy[0], ""
    where = f"grid {grid!r}" if grid is not None else "the selection"
    if by_strategy:
        return None, (
            f"baseline {baseline!r} is ambiguous in {where} (arms {', '.join(by_strategy)}); "
            "pass --baseline ARM: paired comparison skipped"
        )
    return None, (
        f"no baseline arm {baseline!r} in {where} (arms: {', '.join(arms)}): "
        "paired comparison skipped"
    )


def _pairs(
    histories: pd.DataFrame, arm: str, base: str
) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(seed, arm run, baseline run) for every seed both arms have."""
    a = {
        str(s): f.sort_values("step") for s, f in histories[histories["arm"] == arm].groupby("seed")
    }
    b = {
        str(s): f.sort_values("step")
        for s, f in histories[histories["arm"] == base].groupby("seed")
    }
    return [(s, a[s], b[s]) for s in sorted(set(a) & set(b))]


def paired_differences(
    histories: pd.DataFrame,
    arm: str,
    baseline: str,
    metric: str = CM.TEST_MAE,
    level: float = 0.95,
) -> pd.DataFrame:
    """Seed-paired difference *arm - baseline* of ``metric`` at each ``n_labelled`` that both
    runs of a pair logged: mean and t-interval over the pairs that have that step.

    ``histories`` should hold one grid. Returns columns
    ``step, mean, lo, hi, n_pairs, verdict``.
    """
    diffs: dict[float, list[float]] = {}
    for _, fa, fb in _pairs(histories, arm, baseline):
        va = (
            fa.dropna(subset=[metric])
            .drop_duplicates("step", keep="last")
            .set_index("step")[metric]
        )
        vb = (
            fb.dropna(subset=[metric])
            .drop_duplicates("step", keep="last")
            .set_index("step")[metric]
        )
        for step in va.index.intersection(vb.index):
            diffs.setdefault(float(step), []).append(float(va[step] - vb[step]))
    rows = []
    for step in sorted(diffs):
        ci = mean_ci(diffs[step], level)
        rows.append(
            dict(step=step, mean=ci.mean, lo=ci.lo, hi=ci.hi, n_pairs=ci.n, verdict=verdict(ci))
        )
    return pd.DataFrame(rows, columns=["step", "mean", "lo", "hi", "n_pairs", "verdict"])


def paired_summary(
    histories: pd.DataFrame,
    arm: str,
    baseline: str,
    auc_range: tuple[float, float] | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """Seed-paired comparison of one arm with the baseline (one grid).

    * final MAE difference *arm - baseline* at the last ``n_labelled`` common to all pairs
      (each pair's last common step when there is none), mean and t-CI, and its verdict;
      when the runs do not all end at that step (arms with equal cost but different label
      counts), at the end of each run instead (``final_step`` NaN);
    * relative difference of that final MAE, ``arm / baseline - 1`` per pair;
    * relative difference of the AUC (mean MAE over ``auc_range``, by default the range
      every run of both arms covers), and its verdict.
    """
    pairs = _pairs(histories, arm, baseline)
    out: dict[str, Any] = dict(arm=arm, baseline=baseline, n_pairs=len(pairs))
    steps = [
        set(fa.dropna(subset=[CM.TEST_MAE])["step"]) & set(fb.dropna(subset=[CM.TEST_MAE])["step"])
        for _, fa, fb in pairs
    ]
    common = set.intersection(*steps) if steps else set()
    at = max(common) if common else math.nan
    last = {
        float(f.dropna(subset=[CM.TEST_MAE])["step"].max()) for _, fa, fb in pairs for f in (fa, fb)
    }
    # Arms that end at different label counts (multi-fidelity arms count labels of every
    # fidelity; grids give arms equal budgets in cost instead) are compared at the end of
    # each campaign, not at a common label count that is the final one of neither.
    own_last = bool(pairs) and last != {at}
    abs_d, rel_d, rel_auc, abs_auc = [], [], [], []
    sub = histories[histories["arm"].isin([arm, baseline])]
    lo, hi = auc_range if auc_range is not None else common_range(sub)
    for (_, fa, fb), own in zip(pairs, steps, strict=True):
        if own_last:
            ya = float(fa.dropna(subset=[CM.TEST_MAE]).sort_values("step")[CM.TEST_MAE].iloc[-1])
            yb = float(fb.dropna(subset=[CM.TEST_MAE]).sort_values("step")[CM.TEST_MAE].iloc[-1])
        else:
            step = at if common else (max(own) if own else math.nan)
            if not math.isfinite(step):
                continue
            ya = float(fa.loc[fa["step"] == step, CM.TEST_MAE].dropna().iloc[-1])
            yb = float(fb.loc[fb["step"] == step, CM.TEST_MAE].dropna().iloc[-1])
        abs_d.append(ya - yb)
        rel_d.append(ya / yb - 1 if yb else math.nan)
        aa = curve_auc(fa["step"], fa[CM.TEST_MAE], lo, hi)
        ab = curve_auc(fb["step"], fb[CM.TEST_MAE], lo, hi)
        abs_auc.append(aa - ab)
        rel_auc.append(aa / ab - 1 if ab else math.nan)
    d, r = mean_ci(abs_d, level), mean_ci(rel_d, level)
    da, ra = mean_ci(abs_auc, level), mean_ci(rel_auc, level)
    out.update(
        final_step=math.nan if own_last else at,
        final_diff=d.mean,
        final_diff_lo=d.lo,
        final_diff_hi=d.hi,
        final_rel=r.mean,
        final_rel_lo=r.lo,
        final_rel_hi=r.hi,
        auc_diff=da.mean,
        auc_rel=ra.mean,
        auc_rel_lo=ra.lo,
        auc_rel_hi=ra.hi,
        verdict=verdict(d) if len(pairs) >= 2 else TOO_FEW,
        verdict_auc=verdict(da) if len(pairs) >= 2 else TOO_FEW,
    )
    return out


def label_savings(
    curves: pd.DataFrame, arm: str, baseline: str, targets: Sequence[float], grid: str | None = None
) -> pd.DataFrame:
    """Labels each arm's mean curve needs to reach each target MAE, against the baseline's.

    ``curves`` is :func:`learning_curves` on labels. ``savings = 1 - n_arm / n_baseline``
    (positive: the arm needs fewer labels). A curve already at the target at its first
    step reached it with at most that many labels: the note says so (the savings are then
    a bound). Returns columns ``arm, baseline, target_mae, n_arm, n_baseline, savings, note``.
    """
    sub = curves if grid is None else curves[curves["grid"] == grid]
    ca, cb = sub[sub["arm"] == arm], sub[sub["arm"] == baseline]
    rows = []
    for t in targets:
        na, nb = labels_to_reach(ca["x"], ca["mean"], t), labels_to_reach(cb["x"], cb["mean"], t)
        note = ""
        savings = math.nan
        if math.isfinite(na) and math.isfinite(nb):
            savings = 1 - na / nb
            start_a, start_b = reached_at_start(ca, t), reached_at_start(cb, t)
            if start_a and start_b:
                note = "both at the target from their first step: savings unknown"
            elif start_a:
                note = f"arm at the target from its first step: savings ≥ {savings:.0%}"
            elif start_b:
                note = f"baseline at the target from its first step: savings ≤ {savings:.0%}"
        elif math.isfinite(na):
            top = float(cb["x"].max()) if len(cb) else math.nan
            note = f"baseline not reached within {top:.0f} labels: savings > {1 - na / top:.0%}"
        elif math.isfinite(nb):
            note = "arm not reached"
        else:
            note = "neither reached"
        rows.append(
            dict(
                arm=arm,
                baseline=baseline,
                target_mae=float(t),
                n_arm=na,
                n_baseline=nb,
                savings=savings,
                note=note,
            )
        )
    return pd.DataFrame(
        rows, columns=["arm", "baseline", "target_mae", "n_arm", "n_baseline", "savings", "note"]
    )


def reached_at_start(curve: pd.DataFrame, target: float) -> bool:
    """Whether a mean curve (``x, mean``) is at or below ``target`` at its first point, so
    that :func:`labels_to_reach` gives an upper bound rather than a crossing."""
    c = curve.dropna(subset=["mean"]).sort_values("x")
    return bool(len(c)) and float(c["mean"].iloc[0]) <= target


def summary_table(
    histories: pd.DataFrame,
    curves: pd.DataFrame,
    targets: Sequence[float],
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per (grid, arm): seeds, final labels and cost, final MAE (mean and CI),
    labels to reach each target MAE (on the mean curve), AUC (mean MAE over the labelled
    range common to all arms of the grid), final NLL, Spearman(std, |err|), miscalibration
    area, and the mean time per round (sum of the ``time_*_s`` phases).

    ``curves`` is :func:`learning_curves` on labels (``x="step"``).
    """
    finals = {
        m: final_values(histories, m)
        for m in (CM.TEST_MAE, CM.COST_SPENT, CM.TEST_NLL, CM.TEST_SPEARMAN, CM.TEST_MISCALIBRATION)
    }
    last_step = histories.dropna(subset=[CM.TEST_MAE]).groupby("run_id")["step"].max()
    times = time_per_round(histories)
    rows = []
    for grid, gframe in histories.groupby("grid", sort=True):
        lo, hi = common_range(gframe)
        aucs = run_aucs(gframe, lo, hi)
        for arm, frame in gframe.groupby("arm", sort=True):
            ids = list(dict.fromkeys(frame["run_id"]))
            mae = mean_ci(finals[CM.TEST_MAE][ids], level)
            auc = mean_ci(aucs.reindex(ids), level)
            c = curves[(curves["grid"] == grid) & (curves["arm"] == arm)]
            row: dict[str, Any] = dict(
                grid=grid,
                arm=arm,
                n_runs=len(ids),
                seeds=", ".join(sorted(map(str, frame["seed"].unique()), key=_seed_key)),
                final_labels=float(last_step.reindex(ids).mean()),
                final_cost=float(finals[CM.COST_SPENT][ids].mean()),
                final_mae=mae.mean,
                final_mae_lo=mae.lo,
                final_mae_hi=mae.hi,
            )
            for t in targets:
                row[f"labels_to_{t:g}"] = labels_to_reach(c["x"], c["mean"], t)
                row[f"labels_to_{t:g}_at_start"] = reached_at_start(c, t)
            row.update(
                auc_lo_labels=lo,
                auc_hi_labels=hi,
                auc=auc.mean,
                auc_ci_lo=auc.lo,
                auc_ci_hi=auc.hi,
                final_nll=float(finals[CM.TEST_NLL][ids].mean()),
                final_spearman=float(finals[CM.TEST_SPEARMAN][ids].mean()),
                final_miscalibration=float(finals[CM.TEST_MISCALIBRATION][ids].mean()),
                time_per_round_s=float(times.reindex(ids).mean()),
            )
            rows.append(row)
    return pd.DataFrame(rows)


def _seed_key(s: str) -> tuple[int, float | str]:
    try:
        return (0, float(s))
    except ValueError:
        return (1, s)


# --- runs and arms ---------------------------------------------------------------------------
def assign_arms(runs: pd.DataFrame) -> pd.Series:
    """The arm of each run: the ``al.cell`` tag when present, else the strategy, with the
    oracle appended (``strategy/oracle``) when the untagged runs of a grid use more than one
    oracle. ``runs`` needs columns ``grid, cell, strategy, oracle``."""
    arms = pd.Series(index=runs.index, dtype=object)
    has_cell = runs["cell"].fillna("").astype(str) != ""
    arms[has_cell] = runs.loc[has_cell, "cell"]
    rest = runs[~has_cell]
    for _, frame in rest.groupby("grid", sort=False):
        several = frame["oracle"].fillna("").nunique() > 1
        for i, r in frame.iterrows():
            strategy = r["strategy"] or "unknown"
            arms[i] = f"{strategy}/{r['oracle']}" if several else strategy
    return arms.astype(str)


def dedupe_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep the most recent run per (grid, arm, seed); the notes name what was dropped."""
    ordered = runs.sort_values("start_time", kind="stable")
    dup = ordered.duplicated(["grid", "arm", "seed"], keep="last")
    notes = [
        f"run {r.run_id} ({r.arm}, seed {r.seed}) superseded by a later run of the same "
        "arm and seed"
        for r in ordered[dup].itertuples()
    ]
    return ordered[~dup].sort_values(["grid", "arm", "seed"], key=_sort_key).reset_index(
        drop=True
    ), notes


def _sort_key(col: pd.Series) -> pd.Series:
    if col.name == "seed":
        return col.map(lambda s: _seed_key(str(s)))
    return col


# --- reading from the tracking server --------------------------------------------------------
@dataclass
class Selection:
    """What :func:`find_campaign_runs` found."""

    runs: list[Any]
    experiment_id: str
    experiment_name: str
    source: str  # "experiment NAME" or "children of run ID"
    report_of: str
    n_unfinished: int = 0
    n_other_kind: int = 0


def _search_all(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def find_campaign_runs(client: Any, experiment_name: str = "", parent_run: str = "") -> Selection:
    """Campaign runs (``al.kind=campaign``) of an experiment, or the children of a run.

    Only FINISHED runs are returned; the others are counted in ``n_unfinished``. Raises
    :class:`CompareError` with one line for an unknown experiment or run, or when no
    finished campaign run is found.
    """
    from mlflow.exceptions import MlflowException

    if parent_run:
        try:
            parent = client.get_run(parent_run)
        except MlflowException:
            raise CompareError(f"no run with id {parent_run!r} on {_uri()}") from None
        exp = client.get_experiment(parent.info.experiment_id)
        if experiment_name and exp.name != experiment_name:
            raise CompareError(
                f"run {parent_run} is in experiment {exp.name!r}, not {experiment_name!r}"
            )
        flt = f"tags.{TAG_PARENT} = '{parent_run}'"
        source, report_of = f"children of run {parent_run} (experiment {exp.name!r})", parent_run
    elif experiment_name:
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments(max_results=1000))
            shown = ", ".join(names[:20]) + (
                f", ... ({len(names)} in all)" if len(names) > 20 else ""
            )
            raise CompareError(
                f"no experiment named {experiment_name!r}; existing: {shown or '(none)'}"
            )
        flt = ""
        source, report_of = f"experiment {exp.name!r}", exp.name
    else:
        raise CompareError("give --experiment-name NAME or --parent-run RUN_ID")
    found = _search_all(client, exp.experiment_id, flt)
    campaigns = [r for r in found if r.data.tags.get(TAG_KIND) == KIND_CAMPAIGN]
    finished = [r for r in campaigns if r.info.status == "FINISHED"]
    if not finished:
        what = f"{len(campaigns)} campaign run(s), none FINISHED" if campaigns else "none"
        raise CompareError(
            f"no finished campaign runs (tag {TAG_KIND}={KIND_CAMPAIGN}) among the "
            f"{source} on {_uri()}: {what}"
        )
    return Selection(
        runs=finished,
        experiment_id=exp.experiment_id,
        experiment_name=exp.name,
        source=source,
        report_of=report_of,
        n_unfinished=len(campaigns) - len(finished),
        n_other_kind=len(found) - len(campaigns),
    )


def runs_frame(runs: Sequence[Any]) -> pd.DataFrame:
    """The *runs* frame (:data:`RUN_COLUMNS`) of MLflow runs, arms assigned."""
    rows = []
    for r in runs:
        t = r.data.tags
        rows.append(
            dict(
                run_id=r.info.run_id,
                arm="",
                grid=t.get(TAG_GRID, ""),
                seed=t.get(TAG_SEED, r.info.run_id[:8]),
                strategy=t.get(TAG_STRATEGY, ""),
                oracle=t.get(TAG_ORACLE, ""),
                cell=t.get(TAG_CELL, ""),
                start_time=r.info.start_time or 0,
                run_name=r.info.run_name or "",
            )
        )
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    if len(frame):
        frame["arm"] = assign_arms(frame)
    return frame


def fetch_histories(
    client: Any,
    runs: Sequence[Any],
    metrics: Sequence[str] = REPORT_METRICS,
    max_workers: int = 8,
) -> pd.DataFrame:
    """Metric histories of ``runs`` as one row per (run_id, step), a column per metric.

    One ``get_metric_history`` call per metric the run has (from its latest metrics), in a
    thread pool. A step logged twice (a resumed round) keeps its latest value.
    """
    jobs = [(r.info.run_id, m) for r in runs for m in metrics if m in r.data.metrics]

    def one(job: tuple[str, str]) -> list[tuple[str, str, int, float, int]]:
        run_id, key = job
        return [
            (run_id, key, m.step, m.value, m.timestamp)
            for m in client.get_metric_history(run_id, key)
        ]

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(jobs) or 1))) as pool:
        points = [p for chunk in pool.map(one, jobs) for p in chunk]
    long = pd.DataFrame(points, columns=["run_id", "metric", "step", "value", "timestamp"])
    long = long.sort_values("timestamp", kind="stable").drop_duplicates(
        ["run_id", "metric", "step"], keep="last"
    )
    wide = long.pivot(index=["run_id", "step"], columns="metric", values="value").reset_index()
    wide.columns.name = None
    for m in metrics:
        if m not in wide:
            wide[m] = np.nan
    return wide[["run_id", "step", *metrics]]


def join_histories(runs: pd.DataFrame, wide: pd.DataFrame) -> pd.DataFrame:
    """The *histories* frame: ``wide`` (:func:`fetch_histories`) with arm, grid and seed."""
    out = runs[list(KEY_COLUMNS)].merge(wide, on="run_id", how="inner")
    out["step"] = out["step"].astype(float)
    return out.sort_values(["grid", "arm", "run_id", "step"]).reset_index(drop=True)


def _uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


# --- the report ------------------------------------------------------------------------------
@dataclass
class GridReport:
    """Tables of one grid."""

    grid: str
    summary: pd.DataFrame
    curves_labels: pd.DataFrame
    curves_cost: pd.DataFrame
    baseline: str | None
    paired: pd.DataFrame  # one row per arm (paired_summary)
    paired_steps: pd.DataFrame  # arm, step, mean, lo, hi, n_pairs, verdict
    savings: pd.DataFrame
    targets: list[float]
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything written to report.md / report.html."""

    title: str
    experiment_name: str
    source: str
    runs: pd.DataFrame
    grids: list[GridReport]
    level: float
    command: str
    notes: list[str] = field(default_factory=list)


def default_targets(curves: pd.DataFrame, baseline: str | None) -> list[float]:
    """Target MAEs when none are given: the last point of the baseline's mean curve on
    labels (the median arm's when there is no baseline) and 1.25 times it, rounded up to 3
    significant digits so that the baseline reaches both."""
    last = curves.sort_values("x").groupby("arm")["mean"].last().dropna()
    if last.empty:
        return []
    ref = float(last[baseline]) if baseline in last else float(last.median())
    if not (math.isfinite(ref) and ref > 0):
        return []

    def up(v: float) -> float:
        q = 10.0 ** (math.floor(math.log10(v)) - 2)
        return float(f"{math.ceil(v / q - 1e-9) * q:.3g}")

    return [up(1.25 * ref), up(ref)]


def build_report(
    runs: pd.DataFrame,
    histories: pd.DataFrame,
    *,
    baseline: str = "random",
    targets: Sequence[float] | None = None,
    level: float = 0.95,
    title: str = "",
    experiment_name: str = "",
    source: str = "",
    command: str = "",
) -> Report:
    """All tables and curves, per grid (pure: frames in, :class:`Report` out)."""
    grids = []
    for grid in sorted(runs["grid"].unique()):
        g_runs = runs[runs["grid"] == grid]
        hist = histories[histories["grid"] == grid]
        base, note = resolve_baseline(
            g_runs, baseline, grid if runs["grid"].nunique() > 1 else None
        )
        curves = learning_curves(hist, "step", level=level)
        tg = list(targets) if targets else default_targets(curves, base)
        cost = learning_curves(hist.dropna(subset=[CM.COST_SPENT]), CM.COST_SPENT, level=level)
        notes = [note] if note else []
        paired, steps, savings = [], [], []
        if base is not None:
            lo, hi = common_range(hist)
            for arm in sorted(a for a in g_runs["arm"].unique() if a != base):
                paired.append(paired_summary(hist, arm, base, (lo, hi), level))
                d = paired_differences(hist, arm, base, level=level)
                d.insert(0, "arm", arm)
                steps.append(d)
                savings.append(label_savings(curves, arm, base, tg, grid))
        grids.append(
            GridReport(
                grid=grid,
                summary=summary_table(hist, curves, tg, level),
                curves_labels=curves,
                curves_cost=cost,
                baseline=base,
                paired=pd.DataFrame(paired),
                paired_steps=pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(),
                savings=pd.concat(savings, ignore_index=True) if savings else pd.DataFrame(),
                targets=tg,
                notes=notes,
            )
        )
    return Report(
        title=title or f"Campaign comparison: {experiment_name}",
        experiment_name=experiment_name,
        source=source,
        runs=runs,
        grids=grids,
        level=level,
        command=command,
    )


# --- formatting ------------------------------------------------------------------------------
def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{max(digits, len(str(int(abs(v)))))}g}"


def _ci(m: float, lo: float, hi: float) -> str:
    if not math.isfinite(m):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return _num(m)
    return f"{_num(m)} ± {_num((hi - lo) / 2, 2)}"


def _pct(v: float, lo: float = math.nan, hi: float = math.nan) -> str:
    if not math.isfinite(v):
        return "–"
    s = f"{v:+.1%}"
    return s + (f" [{lo:+.1%}, {hi:+.1%}]" if math.isfinite(lo) and math.isfinite(hi) else "")


def _labels(v: float) -> str:
    return NOT_REACHED if not math.isfinite(v) else f"{v:,.0f}"


def summary_display(summary: pd.DataFrame, targets: Sequence[float], level: float) -> pd.DataFrame:
    """The summary table as text cells for the report."""
    pct = f"{level:.0%}"
    rows = []
    for r in summary.to_dict("records"):
        row = {
            "arm": r["arm"],
            "runs": r["n_runs"],
            "seeds": r["seeds"],
            "final labels": _num(r["final_labels"]),
            "final cost": _num(r["final_cost"]),
            f"final MAE (eV, ± {pct} CI)": _ci(
                r["final_mae"], r["final_mae_lo"], r["final_mae_hi"]
            ),
        }
        for t in targets:
            n = _labels(r[f"labels_to_{t:g}"])
            row[f"labels to MAE {t:g}"] = f"≤ {n}" if r.get(f"labels_to_{t:g}_at_start") else n
        span = f"{_num(r['auc_lo_labels'])}–{_num(r['auc_hi_labels'])}"
        row.update(
            {
                f"AUC: mean MAE over {span} labels": _ci(r["auc"], r["auc_ci_lo"], r["auc_ci_hi"]),
                "final NLL": _num(r["final_nll"]),
                "Spearman(std, |err|)": _num(r["final_spearman"], 3),
                "miscalibration area": _num(r["final_miscalibration"], 3),
                "time per round (s)": _num(r["time_per_round_s"], 3),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def paired_display(paired: pd.DataFrame) -> pd.DataFrame:
    """The paired-comparison table as text cells."""
    rows = []
    for r in paired.to_dict("records"):
        rows.append(
            {
                "arm": r["arm"],
                "baseline": r["baseline"],
                "pairs (seeds)": r["n_pairs"],
                "at labels": (
                    _num(r["final_step"])
                    if math.isfinite(r["final_step"])
                    else "each run's last round"
                ),
                "Δ final MAE (eV) [CI]": _diff(
                    r["final_diff"], r["final_diff_lo"], r["final_diff_hi"]
                ),
                "relative Δ final MAE [CI]": _pct(
                    r["final_rel"], r["final_rel_lo"], r["final_rel_hi"]
                ),
                "relative Δ AUC [CI]": _pct(r["auc_rel"], r["auc_rel_lo"], r["auc_rel_hi"]),
                "verdict (final MAE)": r["verdict"],
                "verdict (AUC)": r["verdict_auc"],
            }
        )
    return pd.DataFrame(rows)


def _diff(m: float, lo: float, hi: float) -> str:
    if not math.isfinite(m):
        return "–"
    s = f"{m:+.4f}"
    return s + (f" [{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) and math.isfinite(hi) else "")


def savings_display(savings: pd.DataFrame) -> pd.DataFrame:
    """The label-savings table as text cells."""
    rows = []
    for r in savings.to_dict("records"):
        rows.append(
            {
                "arm": r["arm"],
                "target MAE (eV)": _num(r["target_mae"]),
                "labels (arm)": _labels(r["n_arm"]),
                f"labels ({r['baseline']})": _labels(r["n_baseline"]),
                "label savings": _pct(r["savings"]).lstrip("+")
                if math.isfinite(r["savings"])
                else "–",
                "note": r["note"],
            }
        )
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (``tabulate``-free ``DataFrame.to_markdown``)."""
    if frame.empty:
        return "_(empty)_"

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    sep = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, sep, *body])


# --- plots -----------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "all"


def plot_curves(
    curves: pd.DataFrame, xlabel: str, title: str, path: Path, log_x: bool = False
) -> Path:
    """Mean test MAE per arm with its confidence band, log-scale y; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for arm, c in curves.groupby("arm", sort=True):
        (line,) = ax.plot(
            c["x"],
            c["mean"],
            marker="o" if len(c) <= 30 else None,
            ms=3,
            label=f"{arm} (n={int(c['n_seeds'].max())})",
        )
        if c["lo"].notna().any():
            ax.fill_between(
                c["x"], c["lo"].clip(lower=1e-12), c["hi"], color=line.get_color(), alpha=0.2, lw=0
            )
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test MAE (eV)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_paired(steps: pd.DataFrame, baseline: str, title: str, path: Path) -> Path:
    """Paired difference arm - baseline of test MAE vs labels, with its band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for arm, d in steps.groupby("arm", sort=True):
        (line,) = ax.plot(
            d["step"], d["mean"], marker="o" if len(d) <= 30 else None, ms=3, label=arm
        )
        if d["lo"].notna().any():
            ax.fill_between(d["step"], d["lo"], d["hi"], color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("labels (n_labelled)")
    ax.set_ylabel(f"test MAE − {baseline} (eV)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --- writing ---------------------------------------------------------------------------------
METHODS = (
    "Each campaign run logs its metrics at step = n_labelled. An arm is a grid cell "
    "(tag `al.cell`), else a strategy (plus oracle when several are used); runs of an arm "
    "differ by seed (`al.seed`). Means are over seeds with two-sided {pct} Student-t "
    "intervals (mean ± t·s/√n; no band with one seed). On labels, seeds are interpolated "
    "linearly onto the union of their steps within the range all seeds cover; on cumulative "
    "cost, log-MAE is interpolated linearly in log-cost onto 60 log-spaced points (exact "
    "for power-law curves). Labels to reach a target: first crossing of the mean curve, "
    "interpolating log-MAE linearly in labels between steps ('≤ n' when the curve is "
    "already there at its first step n). AUC: trapezoid of MAE over the "
    "labelled range common to all arms of the grid, divided by its width (the mean MAE "
    "over that budget). Paired comparison: runs paired by seed; differences arm − baseline "
    "at each n_labelled both runs logged; final = the last n_labelled common to all pairs, "
    "or each run's last round when the runs end at different label counts (equal cost, "
    "e.g. multi-fidelity arms, whose labels of every fidelity are counted). "
    "Verdict: 'better' only when the whole CI of the difference is below 0, 'worse' when "
    "above, else 'no significant difference'; 'too few seeds' with fewer than 2 pairs. "
    "Label savings = 1 − labels(arm) / labels(baseline) to reach the same mean MAE."
)


def write_report(report: Report, output_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` (plots inlined as base64), ``plots/*.png`` and
    ``tables/*.csv`` to ``output_dir``. Returns the two report paths."""
    out = Path(output_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    pct = f"{report.level:.0%}"
    runs = report.runs
    md: list[str] = [f"# {report.title}", ""]
    ht: list[str] = [f"<h1>{html.escape(report.title)}</h1>"]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = [
        ("Experiment", report.experiment_name),
        ("Runs", report.source),
        ("Tracking server", _uri()),
        ("Generated", when),
        ("Campaign runs compared", f"{len(runs)} finished, {runs['arm'].nunique()} arm(s)"),
    ]
    for k, v in facts:
        md.append(f"- **{k}:** {v}")
    ht.append(
        "<ul>"
        + "".join(f"<li><b>{html.escape(k)}:</b> {html.escape(str(v))}</li>" for k, v in facts)
        + "</ul>"
    )
    md += ["", "Reproduce:", "", "```", report.command, "```", ""]
    ht.append(f"<p>Reproduce:</p><pre>{html.escape(report.command)}</pre>")
    if report.notes:
        md += ["**Notes:**", ""] + [f"- {n}" for n in report.notes] + [""]
        ht.append(
            "<p><b>Notes:</b></p><ul>"
            + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
            + "</ul>"
        )

    arms = (
        runs.groupby(["grid", "arm"], sort=True)
        .agg(
            runs=("run_id", "size"),
            seeds=("seed", lambda s: ", ".join(sorted(map(str, s), key=_seed_key))),
            strategy=("strategy", lambda s: ", ".join(sorted(set(s)))),
            oracle=("oracle", lambda s: ", ".join(sorted(set(s)))),
            run_ids=("run_id", lambda s: " ".join(s)),
        )
        .reset_index()
    )
    arms["grid"] = arms["grid"].replace("", "–")
    md += ["## Runs per arm", "", markdown_table(arms), ""]
    ht += ["<h2>Runs per arm</h2>", _html_table(arms)]
    runs.to_csv(out / "tables" / "runs.csv", index=False)

    for g in report.grids:
        slug = _slug(g.grid)
        gname = g.grid or "(no grid tag)"
        md += [f"## Grid: {gname}", ""]
        ht.append(f"<h2>Grid: {html.escape(gname)}</h2>")
        for n in g.notes:
            md += [f"> {n}", ""]
            ht.append(f"<p><i>{html.escape(n)}</i></p>")
        table = summary_display(g.summary, g.targets, report.level)
        md += ["### Summary", "", markdown_table(table), ""]
        ht += ["<h3>Summary</h3>", _html_table(table)]
        g.summary.to_csv(out / "tables" / f"summary_{slug}.csv", index=False)
        g.curves_labels.to_csv(out / "tables" / f"curve_labels_{slug}.csv", index=False)
        g.curves_cost.to_csv(out / "tables" / f"curve_cost_{slug}.csv", index=False)
        if g.baseline is not None and not g.paired.empty:
            head = f"Paired comparison with {g.baseline} (arm − baseline, {pct} CI over seeds)"
            table = paired_display(g.paired)
            md += [f"### {head}", "", markdown_table(table), ""]
            ht += [f"<h3>{html.escape(head)}</h3>", _html_table(table)]
            g.paired.to_csv(out / "tables" / f"paired_{slug}.csv", index=False)
            g.paired_steps.to_csv(out / "tables" / f"paired_steps_{slug}.csv", index=False)
        if not g.savings.empty:
            table = savings_display(g.savings)
            md += [f"### Label savings against {g.baseline}", "", markdown_table(table), ""]
            ht += [
                f"<h3>Label savings against {html.escape(str(g.baseline))}</h3>",
                _html_table(table),
            ]
            g.savings.to_csv(out / "tables" / f"savings_{slug}.csv", index=False)
        plots: list[tuple[str, Path]] = []
        if not g.curves_labels.empty:
            p = plot_curves(
                g.curves_labels,
                "labels (n_labelled)",
                f"{gname}: test MAE vs labels ({pct} CI)",
                out / "plots" / f"mae_vs_labels_{slug}.png",
            )
            plots.append(("Test MAE vs labels", p))
        if not g.curves_cost.empty:
            p = plot_curves(
                g.curves_cost,
                "cumulative cost (cost_spent)",
                f"{gname}: test MAE vs cost ({pct} CI)",
                out / "plots" / f"mae_vs_cost_{slug}.png",
                log_x=True,
            )
            plots.append(("Test MAE vs cumulative cost", p))
        if g.baseline is not None and not g.paired_steps.empty:
            p = plot_paired(
                g.paired_steps,
                g.baseline,
                f"{gname}: paired difference with {g.baseline}",
                out / "plots" / f"paired_diff_{slug}.png",
            )
            plots.append((f"Paired difference with {g.baseline}", p))
        if plots:
            md += ["### Plots", ""]
            ht.append("<h3>Plots</h3>")
        for caption, p in plots:
            md += [f"![{caption}]({p.relative_to(out).as_posix()})", ""]
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            ht.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    md += ["## Method", "", METHODS.format(pct=pct), ""]
    ht += ["<h2>Method</h2>", f"<p>{html.escape(METHODS.format(pct=pct))}</p>"]

    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md))
    html_path.write_text(
        _HTML_HEAD.format(title=html.escape(report.title)) + "\n".join(ht) + "\n</body></html>\n"
    )
    return md_path, html_path


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><i>(empty)</i></p>"
    return frame.to_html(index=False, border=0, classes="t", escape=True, na_rep="–")


_HTML_HEAD = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table.t {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
table.t th, table.t td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
table.t th {{ background: #f3f3f3; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
img {{ max-width: 640px; }}
</style></head><body>
"""


def log_report(
    client: Any, output_dir: Path, experiment_id: str, report_of: str, params: dict[str, Any]
) -> str:
    """Log ``output_dir`` as the artifacts of a run tagged ``al.kind=report`` in the
    experiment; returns its id. Under ``mlflow run`` (``MLFLOW_RUN_ID`` set) the project's
    own run is used when it is in the same experiment."""
    from mlflow.entities import Param, RunTag

    tags = {TAG_KIND: KIND_REPORT, TAG_REPORT_OF: report_of}
    wrapper = os.environ.get("MLFLOW_RUN_ID", "")
    run_id = ""
    if wrapper:
        try:
            if client.get_run(wrapper).info.experiment_id == experiment_id:
                run_id = wrapper
        except Exception:
            run_id = ""
    own = not run_id
    if own:
        run_id = client.create_run(experiment_id, tags=tags, run_name="report").info.run_id
    existing = client.get_run(run_id).data.params
    client.log_batch(
        run_id,
        params=[Param(k, str(v)) for k, v in params.items() if k not in existing],
        tags=[RunTag(k, v) for k, v in tags.items()],
        synchronous=True,
    )
    try:
        client.log_artifacts(run_id, str(output_dir))
    except Exception:
        if own:
            client.set_terminated(run_id, "FAILED")
        raise
    if own:
        client.set_terminated(run_id, "FINISHED")
        if wrapper:
            client.set_tag(wrapper, "al.report_run", run_id)
    return run_id


@dataclass
class CompareResult:
    """What :func:`run_compare` produced."""

    markdown: Path
    html: Path
    run_id: str | None
    report: Report
    n_unfinished: int


def reproduce_command(
    experiment_name: str,
    parent_run: str,
    output_dir: str,
    baseline: str,
    mae_targets: Sequence[float] | None,
) -> str:
    """The ``al compare`` command line that rebuilds this report (and the MLflow form)."""
    args = ["al", "compare"]
    if experiment_name:
        args += ["--experiment-name", experiment_name]
    if parent_run:
        args += ["--parent-run", parent_run]
    args += ["--output-dir", output_dir, "--baseline", baseline]
    if mae_targets:
        args += ["--mae-targets", ",".join(f"{t:g}" for t in mae_targets)]
    project = ["mlflow", "run", ".", "-e", "compare", "--env-manager", "local"]
    for k, v in (
        ("experiment_name", experiment_name),
        ("parent_run", parent_run),
        ("output_dir", output_dir),
    ):
        if v:
            project += ["-P", f"{k}={v}"]
    if baseline != "random":
        project += ["-P", f"baseline={baseline}"]
    if mae_targets:
        project += ["-P", "mae_targets=" + ",".join(f"{t:g}" for t in mae_targets)]
    uri = f"MLFLOW_TRACKING_URI={shlex.quote(_uri())} "
    return f"{uri}{shlex.join(args)}\n# or: {uri}{shlex.join(project)}"


def parse_targets(text: str) -> list[float]:
    """``"0.3,0.2"`` -> ``[0.3, 0.2]``; empty -> ``[]``. Raises :class:`CompareError`."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            v = float(part)
        except ValueError:
            raise CompareError(f"--mae-targets: {part!r} is not a number") from None
        if not v > 0:
            raise CompareError(f"--mae-targets: {part!r} must be positive")
        out.append(v)
    return out


def _targets_param(report: Report) -> str:
    """The target MAEs used, ``0.3,0.2``; per grid (``grid=0.3,0.2; ...``) when they differ."""
    per = {g.grid: ",".join(f"{t:g}" for t in g.targets) for g in report.grids}
    if len(set(per.values())) <= 1:
        return next(iter(per.values()), "")
    return "; ".join(f"{g or '-'}={v}" for g, v in per.items())


def run_compare(
    experiment_name: str = "",
    parent_run: str = "",
    output_dir: str | Path = "report",
    baseline: str = "random",
    mae_targets: Sequence[float] | None = None,
    log: bool = True,
    level: float = 0.95,
    echo: Callable[[str], None] = print,
) -> CompareResult:
    """Select, read, compare, write, and (with ``log``) log the report back to MLflow."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    sel = find_campaign_runs(client, experiment_name, parent_run)
    if sel.n_unfinished:
        echo(f"skipped {sel.n_unfinished} unfinished campaign run(s) (status not FINISHED)")
    runs, notes = dedupe_runs(runs_frame(sel.runs))
    kept = [r for r in sel.runs if r.info.run_id in set(runs["run_id"])]
    histories = join_histories(runs, fetch_histories(client, kept))
    empty = sorted(set(runs["run_id"]) - set(histories.dropna(subset=[CM.TEST_MAE])["run_id"]))
    if empty:
        notes.append(f"{len(empty)} run(s) without test_mae history left out: {', '.join(empty)}")
        runs = runs[~runs["run_id"].isin(empty)].reset_index(drop=True)
        histories = histories[~histories["run_id"].isin(empty)]
    if runs.empty:
        raise CompareError(
            f"no finished campaign run among the {sel.source} has a test_mae history"
        )
    if sel.n_unfinished:
        notes.insert(0, f"{sel.n_unfinished} unfinished campaign run(s) skipped")
    name = experiment_name if parent_run else sel.experiment_name
    command = reproduce_command(name, parent_run, str(output_dir), baseline, mae_targets)
    report = build_report(
        runs,
        histories,
        baseline=baseline,
        targets=mae_targets,
        level=level,
        experiment_name=sel.experiment_name,
        source=sel.source,
        command=command,
    )
    report.notes = notes
    md, page = write_report(report, Path(output_dir))
    run_id = None
    if log:
        params = dict(
            experiment_name=sel.experiment_name,
            parent_run=parent_run or "",
            baseline=baseline,
            resolved_mae_targets=_targets_param(report),
            n_runs=len(runs),
            n_unfinished=sel.n_unfinished,
        )
        run_id = log_report(client, Path(output_dir), sel.experiment_id, sel.report_of, params)
    return CompareResult(md, page, run_id, report, sel.n_unfinished)
