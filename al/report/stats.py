"""Statistics of campaign histories: pure functions on pandas frames, no tracking server.

Frames (see :mod:`al.report.read`):

* *histories*: one row per (run, step), columns ``run_id, arm, grid, seed, step`` plus one
  column per metric (NaN where a run did not log it), ``step = n_labelled``;
* *curves* (:func:`learning_curves`): one row per (grid, arm, x), columns
  ``grid, arm, x, mean, lo, hi, n_seeds``.

Intervals are two-sided Student-t intervals over seeds; differences are *arm - baseline*
of an error, so lower is better. A paired difference has a two-sided one-sample t-test of
mean 0 (:func:`t_test`); :func:`holm` adjusts the p-values of a family of comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key

#: The phase timings summed into the time per round.
TIME_METRICS: tuple[str, ...] = (CM.TIME_FIT, CM.TIME_SCORE, CM.TIME_SELECT, CM.TIME_LABEL)

#: Verdicts of a paired comparison (arm - baseline, lower MAE is better).
BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = (
    "better",
    "worse",
    "no significant difference",
    "too few seeds",
)
NOT_REACHED = "not reached"
#: What a paired interval reads when there are fewer than two seeds to pair.
ONE_SEED = "n/a (1 seed)"

#: Errors of the final model on the test set, summarised per arm and paired per seed.
FINAL_ERRORS: tuple[str, ...] = (
    CM.TEST_MAE,
    CM.TEST_RMSE,
    CM.TEST_P95_AE,
    CM.TEST_P99_AE,
    CM.TEST_MAX_AE,
)
#: Uncertainty quality of the final model (NLL and miscalibration: lower is better;
#: Spearman(std, |err|): higher is better).
FINAL_UNCERTAINTY: tuple[str, ...] = (CM.TEST_NLL, CM.TEST_SPEARMAN, CM.TEST_MISCALIBRATION)
#: Prefix of the per-oracle cumulative cost columns of *histories* (:mod:`al.report.read`).
COST_FROM_PREFIX = "cost_from."
#: Prefix of the metrics of a converged checkpoint (the labelled set refitted from scratch to
#: convergence, logged at the checkpoint's step): ``converged.test_mae``, ...
CONVERGED_PREFIX = CM.converged("")
#: Errors of a converged checkpoint, paired between arms; the first (MAE) is the primary
#: endpoint of a report that has converged checkpoints.
CONVERGED_ERRORS: tuple[str, ...] = tuple(CM.converged(m) for m in FINAL_ERRORS)
#: Every metric of a converged checkpoint the report reads.
CONVERGED_METRICS: tuple[str, ...] = (
    *CONVERGED_ERRORS,
    *(
        CM.converged(m)
        for m in (
            CM.TEST_NLL,
            CM.TEST_MISCALIBRATION,
            CM.TEST_SPEARMAN,
            CM.VAL_MAE,
            CM.STD_SCALE,
            CM.FIT_STEPS,
        )
    ),
)
#: Labels and cost of the campaign's validation set (in ``cost_spent``), of answers a kill
#: lost and that were bought again (``cost_lost``, in ``cost_spent``) and of the labels that
#: trained an oracle or baseline model (``cost_prior``, in ``cost_total`` only).
COST_METRICS: tuple[str, ...] = (
    CM.N_VALIDATION,
    CM.COST_VALIDATION,
    CM.COST_LOST,
    CM.N_PRIOR_LABELS,
    CM.COST_PRIOR,
    CM.COST_TOTAL,
)


class MeanCI(NamedTuple):
    """Mean of a sample and its two-sided t confidence interval."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        """Half the width of the interval (NaN with fewer than two values)."""
        return (self.hi - self.lo) / 2


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile ``q``: ``P(|T_df| <= q) = level`` (NaN for ``df < 1``)."""
    if df < 1:
        return math.nan
    from scipy import stats  # lazy: seconds to import on a loaded machine, only when needed

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


def t_test(values: Iterable[float]) -> tuple[float, float]:
    """Two-sided one-sample Student-t test of mean 0 on the finite ``values``: ``(t, p)``.

    ``t = mean / (s / sqrt(n))`` with ``n - 1`` degrees of freedom (what
    ``scipy.stats.ttest_1samp(values, 0)`` gives). With equal values (``s = 0``) the
    difference is exact: ``p = 0`` unless they are all 0 (``p = 1``). NaN with fewer than
    two values.
    """
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n < 2:
        return math.nan, math.nan
    m, sd = float(v.mean()), float(v.std(ddof=1))
    if sd == 0 or not math.isfinite(sd):
        return (math.copysign(math.inf, m), 0.0) if m != 0 else (0.0, 1.0)
    from scipy import stats

    t = m / (sd / math.sqrt(n))
    return t, float(2 * stats.t.sf(abs(t), n - 1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of one family of comparisons, ``[m]`` like
    ``p_values``; NaN entries are not comparisons (they stay NaN and do not count in m).

    With the finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted
    value of the i-th is ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting where the
    adjusted value is below alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def verdict_p(mean: float, p: float, n: int, alpha: float = 0.05, min_pairs: int = 2) -> str:
    """Verdict on a difference *arm - baseline* of an error (lower is better) from its
    (adjusted) p-value: ``better``/``worse`` when ``p < alpha`` and the mean is below/above
    0, ``too few seeds`` with fewer than ``min_pairs`` pairs or no p-value, else no
    significant difference. With the unadjusted p-value of :func:`t_test` it is the verdict
    of :func:`verdict` on the ``1 - alpha`` t-interval."""
    if n < min_pairs or not math.isfinite(p) or not math.isfinite(mean):
        return TOO_FEW
    if p < alpha and mean < 0:
        return BETTER
    if p < alpha and mean > 0:
        return WORSE
    return NO_DIFFERENCE


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


def auc_range_note(histories: pd.DataFrame, lo: float, hi: float, y: str = CM.TEST_MAE) -> str:
    """Why no AUC is taken over ``[lo, hi]`` (``""`` when one is): the range is empty, has
    zero width (the curves share a single label count), or holds fewer than two logged
    points."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        return "no AUC: the curves share no labelled range"
    if hi == lo:
        return f"no AUC: the curves share only one label count ({lo:,.0f} labels)"
    logged = histories.loc[histories[y].notna(), "step"].astype(float)
    if logged[(logged >= lo) & (logged <= hi)].nunique() < 2:
        return f"no AUC: fewer than 2 logged points in {lo:,.0f}–{hi:,.0f} labels"
    return ""


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


def ci_fields(name: str, ci: MeanCI) -> dict[str, float]:
    """``{name: mean, name_lo: lo, name_hi: hi}``."""
    return {name: ci.mean, f"{name}_lo": ci.lo, f"{name}_hi": ci.hi}


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
    range common to all arms of the grid; NaN with ``auc_note`` saying why when that range
    is degenerate, :func:`auc_range_note`), the mean time per round (sum of the
    ``time_*_s`` phases), and the final model's errors (:data:`FINAL_ERRORS`) and
    uncertainty quality (:data:`FINAL_UNCERTAINTY`) as ``final_<metric>`` with ``_lo`` /
    ``_hi`` bounds; ``final_nll``, ``final_spearman`` and ``final_miscalibration`` are the
    means of the last three. Per oracle ``o`` that the histories count: ``labels_from.o``
    and ``cost_from.o``, the mean final labels and cost spent on that fidelity; per metric
    ``m`` of :data:`COST_METRICS` (validation labels, prior labels, ``cost_total``):
    ``final_m``, its mean final value (NaN where no run logged it).

    ``curves`` is :func:`learning_curves` on labels (``x="step"``).
    """
    per_oracle = sorted(
        c for c in histories if c.startswith((CM.LABELS_FROM_PREFIX, COST_FROM_PREFIX))
    )
    metrics = (CM.COST_SPENT, *FINAL_ERRORS, *FINAL_UNCERTAINTY, *per_oracle, *COST_METRICS)
    finals = {m: final_values(histories, m) for m in metrics if m in histories}
    last_step = histories.dropna(subset=[CM.TEST_MAE]).groupby("run_id")["step"].max()
    times = time_per_round(histories)
    rows = []
    for grid, gframe in histories.groupby("grid", sort=True):
        lo, hi = common_range(gframe)
        note = auc_range_note(gframe, lo, hi)
        aucs = run_aucs(gframe, lo, hi) if not note else pd.Series(dtype=float)
        for arm, frame in gframe.groupby("arm", sort=True):
            ids = list(dict.fromkeys(frame["run_id"]))

            def final(metric: str, ids: list[str] = ids) -> MeanCI:
                if metric not in finals:
                    return MeanCI(math.nan, math.nan, math.nan, 0)
                return mean_ci(finals[metric].reindex(ids), level)

            mae = final(CM.TEST_MAE)
            auc = mean_ci(aucs.reindex(ids), level)
            c = curves[(curves["grid"] == grid) & (curves["arm"] == arm)]
            row: dict[str, Any] = dict(
                grid=grid,
                arm=arm,
                n_runs=len(ids),
                seeds=", ".join(sorted(map(str, frame["seed"].unique()), key=seed_key)),
                final_labels=float(last_step.reindex(ids).mean()),
                final_cost=final(CM.COST_SPENT).mean,
                **ci_fields("final_mae", mae),
                final_mae_n=mae.n,
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
                auc_n=auc.n,
                auc_note=note,
                final_nll=final(CM.TEST_NLL).mean,
                final_spearman=final(CM.TEST_SPEARMAN).mean,
                final_miscalibration=final(CM.TEST_MISCALIBRATION).mean,
                time_per_round_s=float(times.reindex(ids).mean()),
            )
            for m in (*FINAL_ERRORS, *FINAL_UNCERTAINTY):
                ci = final(m)
                row.update(ci_fields(f"final_{m}", ci), **{f"final_{m}_n": ci.n})
            for m in per_oracle:
                row[m] = final(m).mean
            for m in COST_METRICS:
                row[f"final_{m}"] = final(m).mean
            rows.append(row)
    return pd.DataFrame(rows)


def checkpoint_steps(histories: pd.DataFrame) -> list[float]:
    """The label counts at which some run logged a converged checkpoint (its
    ``converged.test_mae``), ascending; empty without converged metrics."""
    key = CONVERGED_ERRORS[0]
    if key not in histories:
        return []
    return sorted(float(s) for s in histories.loc[histories[key].notna(), "step"].unique())


def checkpoint_table(histories: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (grid, arm, checkpoint): the converged errors (:data:`CONVERGED_ERRORS`), mean and
    t-interval over the seeds that logged them at that step.

    Returns columns ``grid, arm, step, n_runs`` and per error ``m``: ``m, m_lo, m_hi, m_n``
    (empty frame without converged metrics)."""
    rows = []
    steps = checkpoint_steps(histories)
    for (grid, arm), frame in histories.groupby(["grid", "arm"], sort=True):
        for step in steps:
            at = frame[frame["step"] == step].drop_duplicates("run_id", keep="last")
            if at[CONVERGED_ERRORS[0]].notna().sum() == 0:
                continue
            row: dict[str, Any] = dict(grid=grid, arm=arm, step=step, n_runs=at["run_id"].nunique())
            for m in CONVERGED_ERRORS:
                ci = mean_ci(at.get(m, []), level)
                row.update(ci_fields(m, ci), **{f"{m}_n": ci.n})
            rows.append(row)
    return pd.DataFrame(rows)


def seed_key(s: str) -> tuple[int, float | str]:
    """Sort key of a seed tag: numbers in numeric order first, then other text."""
    try:
        return (0, float(s))
    except ValueError:
        return (1, s)
