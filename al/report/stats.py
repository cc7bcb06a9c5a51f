"""Statistics of campaign histories: pure functions on pandas frames, no tracking server.

Frames (see :mod:`al.report.read`):

* *histories*: one row per (run, step), columns ``run_id, arm, grid, seed, step`` plus one
  column per metric (NaN where a run did not log it), ``step = n_labelled``;
* *curves* (:func:`learning_curves`): one row per (grid, arm, x), columns
  ``grid, arm, x, mean, lo, hi, n_seeds``.

Intervals are two-sided Student-t intervals over seeds; differences are *arm - baseline*
of an error, so lower is better.
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


def _pairs(
    histories: pd.DataFrame, arm: str, base: str
) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(seed, arm run, baseline run) for every seed both arms have."""
    a, b = (
        {str(s): f.sort_values("step") for s, f in histories[histories["arm"] == x].groupby("seed")}
        for x in (arm, base)
    )
    return [(s, a[s], b[s]) for s in sorted(set(a) & set(b))]


def _by_step(run: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` of one run indexed by step (a step logged twice keeps its last value)."""
    return (
        run.dropna(subset=[metric]).drop_duplicates("step", keep="last").set_index("step")[metric]
    )


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
        va, vb = _by_step(fa, metric), _by_step(fb, metric)
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
    last_a = {float(fa.dropna(subset=[CM.TEST_MAE])["step"].max()) for _, fa, _ in pairs}
    last_b = {float(fb.dropna(subset=[CM.TEST_MAE])["step"].max()) for _, _, fb in pairs}
    # Arms that end at different label counts are compared at the largest label count both
    # reached when that is where one arm ends (an arm run to fewer labels than its
    # reference); otherwise (multi-fidelity arms count labels of every fidelity and grids
    # give them equal budgets in cost) at the end of each campaign, not at a common label
    # count that is the final one of neither.
    own_last = bool(pairs) and (last_a | last_b) != {at} and {at} not in (last_a, last_b)
    abs_d, rel_d, rel_auc, abs_auc = [], [], [], []
    sub = histories[histories["arm"].isin([arm, baseline])]
    lo, hi = auc_range if auc_range is not None else common_range(sub)
    auc_note = auc_range_note(sub, lo, hi)
    for (_, fa, fb), own in zip(pairs, steps, strict=True):
        if own_last:
            ya, yb = (
                float(f.dropna(subset=[CM.TEST_MAE]).sort_values("step")[CM.TEST_MAE].iloc[-1])
                for f in (fa, fb)
            )
        else:
            step = at if common else (max(own) if own else math.nan)
            if not math.isfinite(step):
                continue
            ya, yb = (
                float(f.loc[f["step"] == step, CM.TEST_MAE].dropna().iloc[-1]) for f in (fa, fb)
            )
        abs_d.append(ya - yb)
        rel_d.append(ya / yb - 1 if yb else math.nan)
        if auc_note:
            continue
        aa = curve_auc(fa["step"], fa[CM.TEST_MAE], lo, hi)
        ab = curve_auc(fb["step"], fb[CM.TEST_MAE], lo, hi)
        abs_auc.append(aa - ab)
        rel_auc.append(aa / ab - 1 if ab else math.nan)
    d, r = mean_ci(abs_d, level), mean_ci(rel_d, level)
    da, ra = mean_ci(abs_auc, level), mean_ci(rel_auc, level)
    out.update(final_step=math.nan if own_last else at, **_ci_fields("final_diff", d))
    out.update(**_ci_fields("final_rel", r), auc_diff=da.mean, **_ci_fields("auc_rel", ra))
    out.update(auc_lo_labels=lo, auc_hi_labels=hi, auc_note=auc_note)
    out.update(
        verdict=verdict(d) if len(pairs) >= 2 else TOO_FEW,
        verdict_auc=auc_note or (verdict(da) if len(pairs) >= 2 else TOO_FEW),
    )
    step = math.nan if own_last or not common else at
    for metric in (*FINAL_ERRORS[1:], *FINAL_UNCERTAINTY):
        ci = paired_final(histories, arm, baseline, metric, level, step)
        out.update(_ci_fields(f"final_{metric}_diff", ci))
    return out


def paired_final(
    histories: pd.DataFrame,
    arm: str,
    baseline: str,
    metric: str,
    level: float = 0.95,
    step: float = math.nan,
) -> MeanCI:
    """Seed-paired difference *arm - baseline* of ``metric`` at ``step`` (``n_labelled``),
    or at the end of each run (its last logged value) when ``step`` is NaN: mean and
    t-interval over the pairs where both runs logged it (one grid)."""
    diffs = []
    for _, fa, fb in _pairs(histories, arm, baseline):
        if metric not in fa or metric not in fb:
            continue
        if math.isfinite(step):
            va, vb = (_by_step(f, metric) for f in (fa, fb))
            if step in va.index and step in vb.index:
                diffs.append(float(va[step]) - float(vb[step]))
            continue
        va, vb = fa[metric].dropna(), fb[metric].dropna()
        if len(va) and len(vb):
            diffs.append(float(va.iloc[-1]) - float(vb.iloc[-1]))
    return mean_ci(diffs, level)


def labels_to_reference_final_paired(
    histories: pd.DataFrame, arm: str, reference: str, level: float = 0.95
) -> dict[str, Any]:
    """Per seed, the labels the arm's run needs to reach the final test MAE of the
    reference's run of the same seed (:func:`labels_to_reach` on that run's curve).

    Returns ``n`` (mean and t-interval over the seeds that reached it: ``n``, ``n_lo``,
    ``n_hi``), ``reached`` and ``pairs`` (how many seeds reached it, of how many), and
    ``at_start`` (some seed was at the target from its first point: an upper bound)."""
    found, at_start, pairs = [], False, _pairs(histories, arm, reference)
    for _, fa, fb in pairs:
        vb = _by_step(fb, CM.TEST_MAE)
        if vb.empty:
            continue
        va = _by_step(fa, CM.TEST_MAE)
        target = float(vb.iloc[-1])
        n = labels_to_reach(va.index, va.values, target)
        if math.isfinite(n):
            found.append(n)
            at_start |= bool(len(va)) and float(va.iloc[0]) <= target
    ci = mean_ci(found, level)
    return dict(
        n=ci.mean, n_lo=ci.lo, n_hi=ci.hi, reached=len(found), pairs=len(pairs), at_start=at_start
    )


def labels_to_reference_final(
    curves: pd.DataFrame, arm: str, reference: str, grid: str | None = None
) -> dict[str, Any]:
    """Labels the arm's mean curve needs to reach the reference's final mean MAE (the last
    point of its mean curve on labels), interpolated as in :func:`labels_to_reach`.

    ``curves`` is :func:`learning_curves` on labels. Returns ``target_mae`` (the
    reference's final mean MAE), ``n_arm`` (NaN: not reached within the arm's curve),
    ``n_reference`` (the reference's last label count) and ``at_start`` (the arm is at the
    target from its first point: ``n_arm`` is an upper bound).
    """
    sub = curves if grid is None else curves[curves["grid"] == grid]
    ca = sub[sub["arm"] == arm]
    cb = sub[sub["arm"] == reference].dropna(subset=["mean"]).sort_values("x")
    if cb.empty:
        return dict(target_mae=math.nan, n_arm=math.nan, n_reference=math.nan, at_start=False)
    target = float(cb["mean"].iloc[-1])
    return dict(
        target_mae=target,
        n_arm=labels_to_reach(ca["x"], ca["mean"], target),
        n_reference=float(cb["x"].iloc[-1]),
        at_start=reached_at_start(ca, target),
    )


def _ci_fields(name: str, ci: MeanCI) -> dict[str, float]:
    """``{name: mean, name_lo: lo, name_hi: hi}``."""
    return {name: ci.mean, f"{name}_lo": ci.lo, f"{name}_hi": ci.hi}


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
        rows.append((arm, baseline, float(t), na, nb, savings, note))
    columns = ["arm", "baseline", "target_mae", "n_arm", "n_baseline", "savings", "note"]
    return pd.DataFrame(rows, columns=columns)


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
    and ``cost_from.o``, the mean final labels and cost spent on that fidelity.

    ``curves`` is :func:`learning_curves` on labels (``x="step"``).
    """
    per_oracle = sorted(
        c for c in histories if c.startswith((CM.LABELS_FROM_PREFIX, COST_FROM_PREFIX))
    )
    metrics = (CM.COST_SPENT, *FINAL_ERRORS, *FINAL_UNCERTAINTY, *per_oracle)
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
                **_ci_fields("final_mae", mae),
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
                auc_note=note,
                final_nll=final(CM.TEST_NLL).mean,
                final_spearman=final(CM.TEST_SPEARMAN).mean,
                final_miscalibration=final(CM.TEST_MISCALIBRATION).mean,
                time_per_round_s=float(times.reindex(ids).mean()),
            )
            for m in (*FINAL_ERRORS, *FINAL_UNCERTAINTY):
                ci = final(m)
                row.update(_ci_fields(f"final_{m}", ci), **{f"final_{m}_n": ci.n})
            for m in per_oracle:
                row[m] = final(m).mean
            rows.append(row)
    return pd.DataFrame(rows)


def seed_key(s: str) -> tuple[int, float | str]:
    """Sort key of a seed tag: numbers in numeric order first, then other text."""
    try:
        return (0, float(s))
    except ValueError:
        return (1, s)
