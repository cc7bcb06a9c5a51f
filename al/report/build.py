"""The report model: per-grid tables built from the *runs* and *histories* frames
(:mod:`al.report.read`) with the statistics of :mod:`al.report.stats`, and their display
forms (text cells, as the report shows them).

:func:`build_report` is pure (frames in, :class:`Report` out), so a report can be built
from synthetic frames; :mod:`al.report.render` writes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from al.report.stats import (
    NOT_REACHED,
    common_range,
    label_savings,
    learning_curves,
    paired_differences,
    paired_summary,
    seed_key,
    summary_table,
)
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key


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


@dataclass
class GridReport:
    """Tables of one grid (numbers, not text: see the ``*_display`` functions)."""

    grid: str
    summary: pd.DataFrame  # one row per arm (summary_table)
    curves_labels: pd.DataFrame  # learning_curves on labels: grid, arm, x, mean, lo, hi, n_seeds
    curves_cost: pd.DataFrame  # the same on cumulative cost
    baseline: str | None
    paired: pd.DataFrame  # one row per arm (paired_summary)
    paired_steps: pd.DataFrame  # arm, step, mean, lo, hi, n_pairs, verdict
    savings: pd.DataFrame  # one row per (arm, target) (label_savings)
    targets: list[float]
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything written to report.md / report.html; ``runs`` is the *runs* frame."""

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


def arms_display(runs: pd.DataFrame) -> pd.DataFrame:
    """The *runs* frame summed up per (grid, arm): runs, seeds, strategies, oracles, run ids."""

    def joined(values: pd.Series) -> str:
        return ", ".join(sorted(set(values)))

    arms = (
        runs.groupby(["grid", "arm"], sort=True)
        .agg(
            runs=("run_id", "size"),
            seeds=("seed", lambda s: ", ".join(sorted(map(str, s), key=seed_key))),
            strategy=("strategy", joined),
            oracle=("oracle", joined),
            run_ids=("run_id", " ".join),
        )
        .reset_index()
    )
    arms["grid"] = arms["grid"].replace("", "–")
    return arms


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
