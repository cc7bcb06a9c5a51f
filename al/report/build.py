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

from al.report.paired import (
    label_savings,
    labels_to_reference_final,
    labels_to_reference_final_paired,
    paired_differences,
    paired_summary,
)
from al.report.read import MATCH_SETTINGS
from al.report.stats import (
    COST_FROM_PREFIX,
    FINAL_ERRORS,
    FINAL_UNCERTAINTY,
    NOT_REACHED,
    ONE_SEED,
    common_range,
    learning_curves,
    seed_key,
    summary_table,
)
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key

#: ``--baseline arm:NAME``: the arm ``NAME`` is every other arm's reference, whatever the
#: settings (:func:`reference_arms`).
ARM_PREFIX = "arm:"


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


def _settings(runs: pd.DataFrame, arm: str) -> dict[str, str]:
    """The :data:`~al.report.read.MATCH_SETTINGS` of an arm (values of its runs, joined)."""
    sub = runs[runs["arm"] == arm]
    return {
        k: ", ".join(sorted(set(sub[k].fillna("").astype(str)))) for k in MATCH_SETTINGS if k in sub
    }


def reference_arms(
    runs: pd.DataFrame, baseline: str, grid: str | None = None
) -> tuple[dict[str, str | None], list[str]]:
    """The reference arm of every arm of a grid, and notes on the arms left without one.

    The candidates are the arms named ``baseline`` or whose strategy or acquisition is
    ``baseline`` (``random``: random acquisition). An arm is compared with the candidate
    that has the same settings (:data:`~al.report.read.MATCH_SETTINGS`: the surrogate's
    uncertainty method, the oracle(s), the batch size), never across them: with no such
    candidate, or several, it gets ``None`` and a note says so. A ``baseline`` that names
    one arm of another strategy (``--baseline ARM``) is the reference of every arm, as
    asked. Candidates themselves are not compared. ``arm:NAME`` makes the arm ``NAME`` the
    reference of every other arm whatever their settings (batch sizes at an equal budget,
    say); a note names the settings that differ.
    """
    sub = runs if grid is None else runs[runs["grid"] == grid]
    arms = sorted(sub["arm"].unique())
    where = f"grid {grid!r}" if grid is not None else "the selection"
    if baseline.startswith(ARM_PREFIX):
        return _named_reference(sub, baseline[len(ARM_PREFIX) :], arms, where)
    by_what = sub["strategy"] == baseline
    if "acquisition" in sub:
        by_what |= sub["acquisition"].fillna("") == baseline
    cands = sorted(set(sub.loc[by_what, "arm"]) | ({baseline} & set(arms)))
    if not cands:
        note = (
            f"no baseline arm {baseline!r} in {where} (arms: {', '.join(arms)}): "
            "paired comparison skipped"
        )
        return dict.fromkeys(arms), [note]
    if baseline in arms and baseline not in set(sub.loc[by_what, "arm"]):
        return {a: (None if a == baseline else baseline) for a in arms}, []
    refs: dict[str, str | None] = {}
    notes = []
    cand_settings = {c: _settings(sub, c) for c in cands}
    for arm in arms:
        if arm in cands:
            refs[arm] = _direct_arm(sub, arm, cands, cand_settings)
            continue
        mine = _settings(sub, arm)
        same = [c for c in cands if cand_settings[c] == mine]
        refs[arm] = same[0] if len(same) == 1 else None
        shown = ", ".join(f"{k} {v or '–'}" for k, v in mine.items())
        if not same:
            notes.append(
                f"{arm}: no {baseline} arm with the same surrogate and settings ({shown}) in "
                f"{where}: not compared (a {baseline} arm of another surrogate is no reference)"
            )
        elif len(same) > 1:
            notes.append(
                f"{arm}: several {baseline} arms with the same settings ({', '.join(same)}) "
                f"in {where}: not compared; pass --baseline ARM"
            )
    return refs, notes


def _named_reference(
    runs: pd.DataFrame, ref: str, arms: list[str], where: str
) -> tuple[dict[str, str | None], list[str]]:
    """:func:`reference_arms` for ``arm:NAME``: ``NAME`` is every other arm's reference."""
    if ref not in arms:
        note = f"no arm {ref!r} in {where} (arms: {', '.join(arms)}): paired comparison skipped"
        return dict.fromkeys(arms), [note]
    theirs = _settings(runs, ref)
    notes = []
    for arm in (a for a in arms if a != ref):
        mine = _settings(runs, arm)
        differ = [
            f"{k} {v or '–'} vs {theirs[k] or '–'}" for k, v in mine.items() if v != theirs[k]
        ]
        if differ:
            notes.append(f"{arm} is read against {ref} with other settings: {', '.join(differ)}")
    return {a: (None if a == ref else ref) for a in arms}, notes


def _direct_arm(
    runs: pd.DataFrame, arm: str, cands: list[str], cand_settings: dict[str, dict[str, str]]
) -> str | None:
    """The reference of a reference arm that learns on a Δ-learning ``baseline`` or from a
    labeller other than DFT: the one reference arm with the same settings that learns DFT
    labels directly (``baseline`` none, ``oracle`` dft), so that ``xtb_random`` and a
    random arm on pretrained-model labels are read against ``random``. ``None`` for every
    other arm."""
    mine = cand_settings[arm]
    direct = {k: {"baseline": "none", "oracle": "dft"}.get(k, v) for k, v in mine.items()}
    if direct == mine:
        return None
    strategy = set(runs.loc[runs["arm"] == arm, "strategy"])
    same = [
        c
        for c in cands
        if cand_settings[c] == direct and set(runs.loc[runs["arm"] == c, "strategy"]) == strategy
    ]
    return same[0] if len(same) == 1 else None


@dataclass
class GridReport:
    """Tables of one grid (numbers, not text: see the ``*_display`` functions)."""

    grid: str
    summary: pd.DataFrame  # one row per arm (summary_table)
    curves_labels: pd.DataFrame  # learning_curves on labels: grid, arm, x, mean, lo, hi, n_seeds
    curves_cost: pd.DataFrame  # the same on cumulative cost
    baseline: str | None  # the baseline asked for, when some arm has a reference
    paired: pd.DataFrame  # one row per compared arm (paired_summary + labels to ref's final)
    paired_steps: pd.DataFrame  # arm, step, mean, lo, hi, n_pairs, verdict
    savings: pd.DataFrame  # one row per (arm, target) (label_savings)
    targets: list[float]
    notes: list[str] = field(default_factory=list)
    #: the reference arm of each arm (``None``: not compared; see :func:`reference_arms`)
    references: dict[str, str | None] = field(default_factory=dict)
    #: the reference was named with ``arm:NAME``, whatever the arms' settings
    named: bool = False


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


def default_targets(curves: pd.DataFrame, baseline: str | Sequence[str] | None) -> list[float]:
    """Target MAEs when none are given: the last point of the baseline's mean curve on
    labels (the median over several reference arms; the median arm's when there is no
    baseline) and 1.25 times it, rounded up to 3 significant digits so that the baseline
    reaches both."""
    last = curves.sort_values("x").groupby("arm")["mean"].last().dropna()
    if last.empty:
        return []
    names = [baseline] if isinstance(baseline, str) else list(baseline or [])
    refs = last.reindex([b for b in names if b in last])
    ref = float(refs.median()) if len(refs) else float(last.median())
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
        refs, notes = reference_arms(g_runs, baseline, grid if runs["grid"].nunique() > 1 else None)
        used = sorted({r for r in refs.values() if r is not None})
        curves = learning_curves(hist, "step", level=level)
        tg = list(targets) if targets else default_targets(curves, used)
        cost = learning_curves(hist.dropna(subset=[CM.COST_SPENT]), CM.COST_SPENT, level=level)
        paired, steps, savings = [], [], []
        for arm in sorted(a for a, r in refs.items() if r is not None):
            base = refs[arm]
            assert base is not None
            pair = hist[hist["arm"].isin([arm, base])]
            row = paired_summary(pair, arm, base, common_range(pair), level)
            reach = labels_to_reference_final(curves, arm, base, grid)
            row.update({f"ref_final_{k}": v for k, v in reach.items()})
            per_seed = labels_to_reference_final_paired(pair, arm, base, level)
            row.update({f"ref_seed_{k}": v for k, v in per_seed.items()})
            paired.append(row)
            d = paired_differences(hist, arm, base, level=level)
            d.insert(0, "arm", arm)
            d.insert(1, "baseline", base)
            steps.append(d)
            savings.append(label_savings(curves, arm, base, tg, grid))
        grids.append(
            GridReport(
                grid=grid,
                summary=summary_table(hist, curves, tg, level),
                curves_labels=curves,
                curves_cost=cost,
                baseline=baseline.removeprefix(ARM_PREFIX) if used else None,
                paired=pd.DataFrame(paired),
                paired_steps=pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(),
                savings=pd.concat(savings, ignore_index=True) if savings else pd.DataFrame(),
                targets=tg,
                notes=notes,
                references=refs,
                named=baseline.startswith(ARM_PREFIX),
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


def _ci(m: float, lo: float, hi: float, n: int | None = None) -> str:
    if not math.isfinite(m):
        return "–"
    if n is not None and n < 2:
        return f"{_num(m)} ± {ONE_SEED}"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return _num(m)
    return f"{_num(m)} ± {_num((hi - lo) / 2, 2)}"


def _pct(v: float, lo: float = math.nan, hi: float = math.nan, n: int | None = None) -> str:
    if not math.isfinite(v):
        return "–"
    s = f"{v:+.1%}"
    if n is not None and n < 2:
        return f"{s} [{ONE_SEED}]"
    return s + (f" [{lo:+.1%}, {hi:+.1%}]" if math.isfinite(lo) and math.isfinite(hi) else "")


def _labels(v: float) -> str:
    return NOT_REACHED if not math.isfinite(v) else f"{v:,.0f}"


def summary_display(summary: pd.DataFrame, targets: Sequence[float], level: float) -> pd.DataFrame:
    """The summary table as text cells for the report. Without a common labelled range of
    positive width, the AUC column says why there is no AUC."""
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
                r["final_mae"], r["final_mae_lo"], r["final_mae_hi"], r.get("n_runs")
            ),
        }
        for t in targets:
            n = _labels(r[f"labels_to_{t:g}"])
            row[f"labels to MAE {t:g}"] = f"≤ {n}" if r.get(f"labels_to_{t:g}_at_start") else n
        note = r.get("auc_note") or ""
        if note:
            row["AUC: mean MAE over the common labelled range"] = note
        else:
            span = f"{_num(r['auc_lo_labels'])}–{_num(r['auc_hi_labels'])}"
            row[f"AUC: mean MAE over {span} labels"] = _ci(
                r["auc"], r["auc_ci_lo"], r["auc_ci_hi"], r.get("n_runs")
            )
        row["time per round (s)"] = _num(r["time_per_round_s"], 3)
        rows.append(row)
    return pd.DataFrame(rows)


#: Column titles of the final model's metrics.
METRIC_TITLES: dict[str, str] = {
    CM.TEST_MAE: "MAE (eV)",
    CM.TEST_RMSE: "RMSE (eV)",
    CM.TEST_P95_AE: "95th pct |err| (eV)",
    CM.TEST_P99_AE: "99th pct |err| (eV)",
    CM.TEST_MAX_AE: "max |err| (eV)",
    CM.TEST_NLL: "NLL",
    CM.TEST_SPEARMAN: "Spearman(std, |err|)",
    CM.TEST_MISCALIBRATION: "miscalibration area",
}


def final_model_display(summary: pd.DataFrame) -> pd.DataFrame:
    """Per arm, the final model's errors and uncertainty quality on the test set: mean
    ± half-width of the CI over seeds (``n/a (1 seed)`` with one)."""
    rows = []
    for r in summary.to_dict("records"):
        row: dict[str, Any] = {"arm": r["arm"]}
        for m in (*FINAL_ERRORS, *FINAL_UNCERTAINTY):
            key = f"final_{m}"
            row[METRIC_TITLES[m]] = _ci(
                r.get(key, math.nan),
                r.get(f"{key}_lo", math.nan),
                r.get(f"{key}_hi", math.nan),
                int(r.get(f"{key}_n", 0) or 0),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def fidelity_display(summary: pd.DataFrame) -> pd.DataFrame:
    """Per arm and oracle, the mean final labels and cost spent on that fidelity (empty
    when the histories count no oracle)."""
    oracles = sorted(
        {
            c.split(".", 1)[1]
            for c in summary.columns
            if c.startswith((CM.LABELS_FROM_PREFIX, COST_FROM_PREFIX))
        }
    )
    rows = []
    for r in summary.to_dict("records"):
        row: dict[str, Any] = {"arm": r["arm"]}
        for o in oracles:
            # a Δ-learning baseline's cheap labels have a cost but no label count
            if CM.LABELS_FROM_PREFIX + o in summary:
                row[f"labels from {o}"] = _num(r.get(CM.LABELS_FROM_PREFIX + o, math.nan))
            row[f"cost on {o}"] = _num(r.get(COST_FROM_PREFIX + o, math.nan))
        row["total cost"] = _num(r["final_cost"])
        rows.append(row)
    return pd.DataFrame(rows) if oracles else pd.DataFrame()


def paired_display(paired: pd.DataFrame) -> pd.DataFrame:
    """The paired-comparison table as text cells: each arm against its reference arm (same
    surrogate and settings); intervals read ``n/a (1 seed)`` with a single pair."""
    rows = []
    for r in paired.to_dict("records"):
        n = int(r["n_pairs"])
        reach = _labels(r.get("ref_final_n_arm", math.nan))
        if reach != NOT_REACHED and r.get("ref_final_at_start"):
            reach = f"≤ {reach}"
        rows.append(
            {
                "arm": r["arm"],
                "baseline": r["baseline"],
                "pairs (seeds)": n,
                "at labels": (
                    _num(r["final_step"])
                    if math.isfinite(r["final_step"])
                    else "each run's last round"
                ),
                "Δ final MAE (eV) [CI]": _diff(
                    r["final_diff"], r["final_diff_lo"], r["final_diff_hi"], n
                ),
                "relative Δ final MAE [CI]": _pct(
                    r["final_rel"], r["final_rel_lo"], r["final_rel_hi"], n
                ),
                "relative Δ AUC [CI]": r.get("auc_note")
                or _pct(r["auc_rel"], r["auc_rel_lo"], r["auc_rel_hi"], n),
                "labels to baseline's final MAE": (
                    f"{reach} (baseline: {_labels(r.get('ref_final_n_reference', math.nan))}"
                    f" labels, MAE {_num(r.get('ref_final_target_mae', math.nan))})"
                ),
                "labels to baseline's final MAE, per seed [CI]": _seed_reach(r),
                "verdict (final MAE)": r["verdict"],
                "verdict (AUC)": r["verdict_auc"],
            }
        )
    return pd.DataFrame(rows)


def _seed_reach(r: dict[str, Any]) -> str:
    """Per-seed labels to the reference run's final MAE: mean [CI] over the seeds that
    reached it, and how many did (``≤`` when some seed was there from its first round)."""
    pairs, reached = int(r.get("ref_seed_pairs", 0) or 0), int(r.get("ref_seed_reached", 0) or 0)
    if not pairs:
        return "–"
    if not reached:
        return f"{NOT_REACHED} (0 of {pairs} seeds)"
    m, lo, hi = (r.get(f"ref_seed_n{k}", math.nan) for k in ("", "_lo", "_hi"))
    bound = "≤ " if r.get("ref_seed_at_start") else ""
    band = f" [{lo:.0f}, {hi:.0f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{bound}{m:.0f}{band} ({reached} of {pairs} seeds)"


def paired_final_display(paired: pd.DataFrame) -> pd.DataFrame:
    """Seed-paired differences *arm − baseline* of the final model's other errors and its
    uncertainty quality, with their CIs (``n/a (1 seed)`` with a single pair)."""
    rows = []
    for r in paired.to_dict("records"):
        n = int(r["n_pairs"])
        row: dict[str, Any] = {"arm": r["arm"], "baseline": r["baseline"], "pairs (seeds)": n}
        for m in (*FINAL_ERRORS[1:], *FINAL_UNCERTAINTY):
            key = f"final_{m}_diff"
            row[f"Δ {METRIC_TITLES[m]} [CI]"] = _diff(
                r.get(key, math.nan), r.get(f"{key}_lo", math.nan), r.get(f"{key}_hi", math.nan), n
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _diff(m: float, lo: float, hi: float, n: int | None = None) -> str:
    if not math.isfinite(m):
        return "–"
    s = f"{m:+.4f}"
    if n is not None and n < 2:
        return f"{s} [{ONE_SEED}]"
    return s + (f" [{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) and math.isfinite(hi) else "")


def savings_display(savings: pd.DataFrame) -> pd.DataFrame:
    """The label-savings table as text cells."""
    rows = []
    for r in savings.to_dict("records"):
        rows.append(
            {
                "arm": r["arm"],
                "baseline": r["baseline"],
                "target MAE (eV)": _num(r["target_mae"]),
                "labels (arm)": _labels(r["n_arm"]),
                "labels (baseline)": _labels(r["n_baseline"]),
                "label savings": _pct(r["savings"]).lstrip("+")
                if math.isfinite(r["savings"])
                else "–",
                "note": r["note"],
            }
        )
    return pd.DataFrame(rows)
