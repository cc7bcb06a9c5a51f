"""The report model: per-grid tables built from the *runs* and *histories* frames
(:mod:`al.report.read`) with the statistics of :mod:`al.report.stats`, and their display
forms (:mod:`al.report.display`).

:func:`build_report` is pure (frames in, :class:`Report` out), so a report can be built
from synthetic frames; :mod:`al.report.render` writes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from al.report.bootstrap import BOOTSTRAP_SEED, N_RESAMPLES, aligned_errors, paired_bootstrap
from al.report.paired import (
    CHECKPOINT_COLUMNS,
    label_savings,
    labels_to_reference_final,
    labels_to_reference_final_paired,
    paired_checkpoints,
    paired_differences,
    paired_summary,
)
from al.report.read import MATCH_SETTINGS, PREDICTION_FRAME_COLUMNS, SOURCE_CONVERGED
from al.report.stats import (
    CONVERGED_ERRORS,
    checkpoint_table,
    common_range,
    holm,
    learning_curves,
    seed_key,
    summary_table,
    verdict_p,
)
from al.report.uncertainty import uncertainty_tables
from al.tracking import EVALUATED_ON_HELDOUT
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
    #: the learning curves on ``cost_total`` (cost_spent + the prior labels of an oracle or
    #: baseline model), when some run logged prior labels; empty otherwise
    curves_cost_total: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: per (arm, converged checkpoint): the converged errors over seeds (checkpoint_table)
    converged: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: per (arm, checkpoint, converged error): paired_checkpoints, with ``p_holm`` (the
    #: primary endpoint's rows) and the bootstrap of the MAE rows (``boot_*``)
    converged_paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: per (arm, step, source): calibration of the predicted std (uncertainty_tables)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: per (arm, step, source, bin): the reliability diagram's bins (uncertainty_tables)
    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class Report:
    """Everything written to report.md / report.html; ``runs`` is the *runs* frame,
    ``histories`` the *histories* frame every statistic is computed from (written out as
    ``tables/per_seed.csv``), ``predictions`` the *predictions* frame (may be empty)."""

    title: str
    experiment_name: str
    source: str
    runs: pd.DataFrame
    grids: list[GridReport]
    level: float
    command: str
    notes: list[str] = field(default_factory=list)
    histories: pd.DataFrame = field(default_factory=pd.DataFrame)
    predictions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(PREDICTION_FRAME_COLUMNS))
    )
    #: the primary endpoint, in words, and how many comparisons its Holm family holds
    primary: str = ""
    n_primary: int = 0
    #: whether some run has converged checkpoints (then they are the primary endpoint)
    has_converged: bool = False
    n_resamples: int = N_RESAMPLES
    bootstrap_seed: int = BOOTSTRAP_SEED
    #: the MLflow experiment of the runs (for links to them; "" when not known)
    experiment_id: str = ""


def total_cost_curves(hist: pd.DataFrame, level: float) -> pd.DataFrame:
    """Learning curves on ``cost_total``, every cost counted: ``cost_spent`` plus the DFT
    labels that built an oracle or baseline model (a run without prior labels: its
    ``cost_spent``). Empty when no run logged ``cost_total``."""
    if CM.COST_TOTAL not in hist.columns or hist[CM.COST_TOTAL].isna().all():
        return pd.DataFrame()
    total = hist.assign(**{CM.COST_TOTAL: hist[CM.COST_TOTAL].fillna(hist[CM.COST_SPENT])})
    return learning_curves(total.dropna(subset=[CM.COST_TOTAL]), CM.COST_TOTAL, level=level)


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


def _paired_tables(
    hist: pd.DataFrame,
    curves: pd.DataFrame,
    refs: dict[str, str | None],
    targets: list[float],
    grid: str,
    level: float,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Each compared arm against its reference in one grid: the paired summary (one row an
    arm), the paired differences at every step, and the label savings at ``targets``."""
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
        savings.append(label_savings(curves, arm, base, targets, grid))
    return (
        pd.DataFrame(paired),
        pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(),
        pd.concat(savings, ignore_index=True) if savings else pd.DataFrame(),
    )


def _grid_report(
    g_runs: pd.DataFrame,
    hist: pd.DataFrame,
    *,
    grid: str,
    named_as: str | None,
    baseline: str,
    targets: Sequence[float] | None,
    level: float,
    predictions: pd.DataFrame,
    n_resamples: int,
    bootstrap_seed: int,
) -> GridReport:
    """The tables and curves of one grid's runs ``g_runs`` and histories ``hist``
    (``named_as``: the grid's name in notes, None when the report has one grid)."""
    refs, notes = reference_arms(g_runs, baseline, named_as)
    held = sorted(set(g_runs.loc[g_runs["evaluated_on"] == EVALUATED_ON_HELDOUT, "arm"]))
    if held:  # campaigns on a pool: no ground truth
        notes.insert(0, f"{', '.join(held)}: campaigns on a pool of one's own molecules, "
                        "measured on the held-out labelled molecules each bought in round 0 "
                        "(never trained on): 'test' in this section means those")  # fmt: skip
    used = sorted({r for r in refs.values() if r is not None})
    curves = learning_curves(hist, "step", level=level)
    tg = list(targets) if targets else default_targets(curves, used)
    cost = learning_curves(hist.dropna(subset=[CM.COST_SPENT]), CM.COST_SPENT, level=level)
    paired, steps, savings = _paired_tables(hist, curves, refs, tg, grid, level)
    compared = {a: r for a, r in refs.items() if r is not None}
    conv, conv_notes = converged_comparisons(
        hist, compared, predictions, level, n_resamples, bootstrap_seed
    )
    calibration, reliability = uncertainty_tables(predictions, g_runs)
    return GridReport(
        grid=grid,
        summary=summary_table(hist, curves, tg, level),
        curves_labels=curves,
        curves_cost=cost,
        curves_cost_total=total_cost_curves(hist, level),
        baseline=baseline.removeprefix(ARM_PREFIX) if used else None,
        paired=paired,
        paired_steps=steps,
        savings=savings,
        targets=tg,
        notes=notes + conv_notes,
        references=refs,
        named=baseline.startswith(ARM_PREFIX),
        converged=checkpoint_table(hist, level),
        converged_paired=conv,
        calibration=calibration,
        reliability=reliability,
    )


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
    predictions: pd.DataFrame | None = None,
    n_resamples: int = N_RESAMPLES,
    bootstrap_seed: int = BOOTSTRAP_SEED,
) -> Report:
    """All tables and curves, per grid (pure: frames in, :class:`Report` out).

    With converged checkpoints (``converged.*`` metrics in ``histories``), each compared
    arm is paired with its reference at every checkpoint (:func:`converged_comparisons`),
    and the converged test MAE there is the primary endpoint; otherwise the final test MAE
    of the paired comparison is. The p-values of the primary endpoint's comparisons, over
    every grid of the report, are Holm-adjusted and its verdicts read the adjusted values.
    ``predictions`` (the *predictions* frame) feed the paired bootstrap of the converged
    MAE and the uncertainty tables.
    """
    pred = (
        predictions
        if predictions is not None
        else pd.DataFrame(columns=list(PREDICTION_FRAME_COLUMNS))
    )
    several = runs["grid"].nunique() > 1
    grids = [
        _grid_report(
            runs[runs["grid"] == grid],
            histories[histories["grid"] == grid],
            grid=grid,
            named_as=grid if several else None,
            baseline=baseline,
            targets=targets,
            level=level,
            predictions=pred,
            n_resamples=n_resamples,
            bootstrap_seed=bootstrap_seed,
        )
        for grid in sorted(runs["grid"].unique())
    ]
    has_converged = any(not g.converged.empty for g in grids)
    primary, n_primary = adjust_primary(grids, has_converged, 1 - level)
    return Report(
        title=title or f"Campaign comparison: {experiment_name}",
        experiment_name=experiment_name,
        source=source,
        runs=runs,
        grids=grids,
        level=level,
        command=command,
        histories=histories,
        predictions=pred,
        primary=primary,
        n_primary=n_primary,
        has_converged=has_converged,
        n_resamples=n_resamples,
        bootstrap_seed=bootstrap_seed,
    )


#: Bootstrap columns of the primary rows of :attr:`GridReport.converged_paired`.
BOOT_COLUMNS: tuple[str, ...] = (
    "boot_mean", "boot_lo", "boot_hi", "boot_rel", "boot_rel_lo", "boot_rel_hi",
    "boot_n_pairs", "boot_n_molecules", "boot_n_resamples",
)  # fmt: skip


def _seed_runs(histories: pd.DataFrame, arm: str, step: float, metric: str) -> dict[str, str]:
    """seed -> run_id of the runs of ``arm`` that logged ``metric`` at ``step``."""
    at = histories[(histories["arm"] == arm) & (histories["step"] == step)]
    at = at.dropna(subset=[metric]) if metric in at else at.iloc[:0]
    return dict(zip(at["seed"].astype(str), at["run_id"].astype(str), strict=True))


def converged_comparisons(
    histories: pd.DataFrame,
    references: dict[str, str],
    predictions: pd.DataFrame,
    level: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[pd.DataFrame, list[str]]:
    """Every compared arm against its reference at each converged checkpoint (one grid).

    ``references``: arm -> reference arm. Per (arm, checkpoint, converged error): the
    seed-paired difference, its t-test and relative difference
    (:func:`~al.report.paired.paired_checkpoints`); on the converged test MAE, the paired
    bootstrap over seeds and test molecules (:func:`~al.report.bootstrap.paired_bootstrap`,
    columns :data:`BOOT_COLUMNS`) from the converged prediction tables of the pairs' runs,
    skipped with a note when a table is missing or there is a single pair. Returns the
    frame (columns :data:`~al.report.paired.CHECKPOINT_COLUMNS`, ``p_holm`` NaN until
    :func:`adjust_primary`, the bootstrap columns) and the notes.
    """
    key = CONVERGED_ERRORS[0]
    frames, notes = [], []
    conv = predictions[predictions["source"] == SOURCE_CONVERGED]
    for arm in sorted(references):
        ref = references[arm]
        d = paired_checkpoints(histories[histories["arm"].isin([arm, ref])], arm, ref, level=level)
        if d.empty:
            continue
        d = d.assign(p_holm=math.nan, **dict.fromkeys(BOOT_COLUMNS, math.nan))
        for i in d.index[d["metric"] == key]:
            step = float(d.at[i, "step"])
            a, b = _seed_runs(histories, arm, step, key), _seed_runs(histories, ref, step, key)
            pairs = [(a[s], b[s]) for s in sorted(set(a) & set(b), key=seed_key)]
            where = f"{arm} vs {ref} at {step:,.0f} labels"
            if len(pairs) < 2:
                continue  # one pair: no interval, as for the t-interval
            abs_arm, abs_ref, largest = aligned_errors(conv, pairs, step)
            if abs_arm.size == 0:
                notes.append(f"bootstrap of {where} skipped: converged test predictions missing")
                continue
            if abs_arm.shape[1] < largest:
                notes.append(
                    f"bootstrap of {where} on the {abs_arm.shape[1]:,} test molecules every "
                    f"run predicted (up to {largest:,} per run)"
                )
            ci = paired_bootstrap(abs_arm, abs_ref, n_resamples, level, seed)
            for col, v in zip(BOOT_COLUMNS, ci, strict=True):
                d.at[i, col] = v
        frames.append(d)
    columns = [*CHECKPOINT_COLUMNS, "p_holm", *BOOT_COLUMNS]
    return (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    ), notes


def adjust_primary(grids: list[GridReport], converged: bool, alpha: float) -> tuple[str, int]:
    """Holm-adjust the p-values of the report's primary endpoint over all its grids and
    base its verdicts on them (in place); returns the endpoint in words and the number of
    comparisons in the family.

    With ``converged``: the rows of the converged test MAE in ``converged_paired`` (one
    per arm and checkpoint) get ``p_holm`` and their ``verdict`` from it. Otherwise the
    final MAE of ``paired`` (one per arm): ``final_p_holm`` and ``verdict``. Other
    comparisons keep their unadjusted verdicts.
    """
    key = CONVERGED_ERRORS[0]
    if converged:
        parts = [
            (g, g.converged_paired.index[g.converged_paired["metric"] == key])
            for g in grids
            if "metric" in g.converged_paired
        ]
        p = [float(g.converged_paired.at[i, "p"]) for g, idx in parts for i in idx]
        adjusted = iter(holm(p))
        for g, idx in parts:
            for i in idx:
                row = g.converged_paired.loc[i]
                q = next(adjusted)
                g.converged_paired.at[i, "p_holm"] = q
                g.converged_paired.at[i, "verdict"] = verdict_p(
                    row["mean"], q, int(row["n_pairs"]), alpha
                )
        what = "converged test MAE at each checkpoint, arm − reference arm"
    else:
        p = [float(v) for g in grids if not g.paired.empty for v in g.paired["final_p"]]
        adjusted = iter(holm(p))
        for g in grids:
            if g.paired.empty:
                continue
            q = [next(adjusted) for _ in range(len(g.paired))]
            g.paired["final_p_holm"] = q
            g.paired["verdict"] = [
                verdict_p(m, v, int(n), alpha)
                for m, v, n in zip(g.paired["final_diff"], q, g.paired["n_pairs"], strict=True)
            ]
        what = "final test MAE, arm − reference arm"
    return what, int(np.isfinite(np.asarray(p, dtype=float)).sum())
