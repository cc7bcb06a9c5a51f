"""Seed-paired comparisons of an arm with its reference arm (one grid): differences at
each label count, the final comparison, the other errors of the final model, and the
labels each needs to reach the reference's final MAE or a target.

Frames as in :mod:`al.report.stats`: *histories* (one row per run and step) and *curves*
(:func:`~al.report.stats.learning_curves` on labels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from al.report.stats import (
    CONVERGED_ERRORS,
    FINAL_ERRORS,
    FINAL_UNCERTAINTY,
    TOO_FEW,
    MeanCI,
    auc_range_note,
    ci_fields,
    common_range,
    curve_auc,
    labels_to_reach,
    mean_ci,
    reached_at_start,
    t_test,
    verdict,
)
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key


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
    ``step, mean, lo, hi, n_pairs, p, verdict`` (``p``: :func:`~al.report.stats.t_test`,
    unadjusted).
    """
    diffs: dict[float, list[float]] = {}
    for _, fa, fb in _pairs(histories, arm, baseline):
        if metric not in fa or metric not in fb:
            continue
        va, vb = _by_step(fa, metric), _by_step(fb, metric)
        for step in va.index.intersection(vb.index):
            diffs.setdefault(float(step), []).append(float(va[step] - vb[step]))
    rows = []
    for step in sorted(diffs):
        ci = mean_ci(diffs[step], level)
        rows.append(
            dict(
                step=step,
                mean=ci.mean,
                lo=ci.lo,
                hi=ci.hi,
                n_pairs=ci.n,
                p=t_test(diffs[step])[1],
                verdict=verdict(ci),
            )
        )
    return pd.DataFrame(rows, columns=["step", "mean", "lo", "hi", "n_pairs", "p", "verdict"])


#: Columns of :func:`paired_checkpoints`.
CHECKPOINT_COLUMNS: tuple[str, ...] = (
    "arm", "baseline", "step", "metric", "mean", "lo", "hi", "n_pairs", "t", "p",
    "rel", "rel_lo", "rel_hi", "verdict",
)  # fmt: skip


def paired_checkpoints(
    histories: pd.DataFrame,
    arm: str,
    baseline: str,
    metrics: Sequence[str] = CONVERGED_ERRORS,
    level: float = 0.95,
) -> pd.DataFrame:
    """Seed-paired differences *arm - baseline* of the converged errors at each converged
    checkpoint (each step where both runs of a pair logged the metric).

    Per (step, metric): mean and t-interval of the differences over the pairs (``mean, lo,
    hi, n_pairs``), the t-test of mean 0 (``t, p``, unadjusted), the relative difference
    ``arm / baseline - 1`` per pair (``rel, rel_lo, rel_hi``, mean and t-interval) and the
    verdict on the interval (:func:`~al.report.stats.verdict`, unadjusted). ``histories``
    should hold one grid. Returns columns :data:`CHECKPOINT_COLUMNS`, one row per step and
    metric, in step order.
    """
    rows = []
    for metric in metrics:
        diffs: dict[float, list[tuple[float, float]]] = {}
        for _, fa, fb in _pairs(histories, arm, baseline):
            if metric not in fa or metric not in fb:
                continue
            va, vb = _by_step(fa, metric), _by_step(fb, metric)
            for step in va.index.intersection(vb.index):
                diffs.setdefault(float(step), []).append((float(va[step]), float(vb[step])))
        for step, pairs in diffs.items():
            d = [a - b for a, b in pairs]
            ci = mean_ci(d, level)
            rel = mean_ci([a / b - 1 if b else math.nan for a, b in pairs], level)
            t, p = t_test(d)
            rows.append(
                dict(arm=arm, baseline=baseline, step=step, metric=metric, mean=ci.mean,
                     lo=ci.lo, hi=ci.hi, n_pairs=ci.n, t=t, p=p, rel=rel.mean, rel_lo=rel.lo,
                     rel_hi=rel.hi, verdict=verdict(ci))
            )  # fmt: skip
    out = pd.DataFrame(rows, columns=list(CHECKPOINT_COLUMNS))
    return out.sort_values(["step"], kind="stable").reset_index(drop=True)


def paired_summary(
    histories: pd.DataFrame,
    arm: str,
    baseline: str,
    auc_range: tuple[float, float] | None = None,
    level: float = 0.95,
) -> dict[str, Any]:
    """Seed-paired comparison of one arm with the baseline (one grid).

    * final MAE difference *arm - baseline* at the last ``n_labelled`` common to all pairs
      (each pair's last common step when there is none), mean and t-CI, the p-value of
      its t-test (``final_p``, unadjusted) and its verdict;
      that step is where one arm ends when it was run to fewer labels; when it is the
      last step of neither arm (equal cost but different label counts), at the end of
      each run instead (``final_step`` NaN);
    * the other errors and the uncertainty of the final model at that same step
      (:func:`paired_final`);
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
            ya, yb = (float(_by_step(f, CM.TEST_MAE)[step]) for f in (fa, fb))
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
    out.update(final_step=math.nan if own_last else at, **ci_fields("final_diff", d))
    out.update(final_p=t_test(abs_d)[1])
    out.update(**ci_fields("final_rel", r), auc_diff=da.mean, **ci_fields("auc_rel", ra))
    out.update(auc_lo_labels=lo, auc_hi_labels=hi, auc_note=auc_note)
    out.update(
        verdict=verdict(d) if len(pairs) >= 2 else TOO_FEW,
        verdict_auc=auc_note or (verdict(da) if len(pairs) >= 2 else TOO_FEW),
    )
    step = math.nan if own_last or not common else at
    for metric in (*FINAL_ERRORS[1:], *FINAL_UNCERTAINTY):
        ci = paired_final(histories, arm, baseline, metric, level, step)
        out.update(ci_fields(f"final_{metric}_diff", ci))
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
            at_start |= float(va.iloc[0]) <= target
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
