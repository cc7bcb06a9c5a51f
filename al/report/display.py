"""Display forms of the report's tables: text cells, as the report shows them ("±" is the
half-width of a 95 % t-interval over seeds or seed pairs; ``[lo, hi]`` a bootstrap
interval)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from al.report.stats import (
    CONVERGED_ERRORS,
    CONVERGED_PREFIX,
    COST_FROM_PREFIX,
    FINAL_ERRORS,
    FINAL_UNCERTAINTY,
    NOT_REACHED,
    ONE_SEED,
    seed_key,
)
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key


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


def _pm(
    m: float,
    lo: float,
    hi: float,
    n: int | None,
    n_row: int | None,
    value: Callable[[float], str],
    half: Callable[[float], str],
) -> str:
    """``m ± h``: the mean and the half-width ``h = (hi - lo) / 2`` of its t-interval over
    ``n`` seeds or pairs, the one meaning of ``±`` in the report; ``m ± n/a (1 seed)`` with
    one, ``m`` alone without an interval, and `` (n=k)`` when ``n`` differs from the
    ``n_row`` the row states."""
    if not math.isfinite(m):
        return "–"
    if n is not None and n < 2:
        return f"{value(m)} ± {ONE_SEED}"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return value(m)
    out = f"{value(m)} ± {half((hi - lo) / 2)}"
    return out + (f" (n={n})" if n is not None and n_row is not None and n != n_row else "")


def _ci(m: float, lo: float, hi: float, n: int | None = None, n_row: int | None = None) -> str:
    """A mean ± half-width (:func:`_pm`), 4 significant digits and 2 for the half-width."""
    return _pm(m, lo, hi, n, n_row, _num, lambda h: _num(h, 2))


def _pct(
    v: float,
    lo: float = math.nan,
    hi: float = math.nan,
    n: int | None = None,
    n_row: int | None = None,
) -> str:
    """A signed fraction as a percentage ± half-width (:func:`_pm`)."""
    return _pm(v, lo, hi, n, n_row, lambda x: f"{x:+.1%}", lambda h: f"{h:.1%}")


def _diff(m: float, lo: float, hi: float, n: int | None = None, n_row: int | None = None) -> str:
    """A signed difference (eV) ± half-width (:func:`_pm`)."""
    return _pm(m, lo, hi, n, n_row, lambda x: f"{x:+.4f}", lambda h: f"{h:.4f}")


def _p(p: float) -> str:
    """A p-value, 2 significant digits (``–`` without one)."""
    return f"{p:.2g}" if isinstance(p, (int, float)) and math.isfinite(p) else "–"


def _bracket(lo: float, hi: float, fmt: Callable[[float], str]) -> str:
    """``[lo, hi]``: a percentile bootstrap interval (not symmetric: never written ``±``)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _labels(v: float) -> str:
    return NOT_REACHED if not math.isfinite(v) else f"{v:,.0f}"


def summary_display(summary: pd.DataFrame, targets: Sequence[float], level: float) -> pd.DataFrame:
    """The summary table as text cells for the report. Without a common labelled range of
    positive width, the AUC column says why there is no AUC. Validation labels, the cost of
    prior labels and ``cost_total`` get a column when some run logged them."""
    rows = []
    for r in summary.to_dict("records"):
        row = {
            "arm": r["arm"],
            "runs": r["n_runs"],
            "seeds": r["seeds"],
            "final labels": _num(r["final_labels"]),
            "final cost": _num(r["final_cost"]),
            "final MAE (eV, ± CI)": _ci(
                r["final_mae"],
                r["final_mae_lo"],
                r["final_mae_hi"],
                int(r.get("final_mae_n", r["n_runs"])),
                int(r["n_runs"]),
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
            row[f"AUC: mean MAE over {span} labels (± CI)"] = _ci(
                r["auc"],
                r["auc_ci_lo"],
                r["auc_ci_hi"],
                int(r.get("auc_n", r["n_runs"])),
                int(r["n_runs"]),
            )
        row["time per round (s)"] = _num(r["time_per_round_s"], 3)
        rows.append(row)
    frame = pd.DataFrame(rows)
    # labels and cost outside the campaign's own purchases, when the runs logged them
    extra = {
        f"final_{CM.N_VALIDATION}": "validation labels (in cost)",
        f"final_{CM.COST_LOST}": "paid again after kills (in cost; runs with any)",
        f"final_{CM.COST_PRIOR}": "prior labels' cost (not in cost)",
        f"final_{CM.COST_TOTAL}": "total cost incl. prior",
    }
    for key, title in extra.items():
        if key in summary and summary[key].notna().any():
            frame.insert(len(frame.columns) - 1, title, [_num(v) for v in summary[key]])
    return frame


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
    ± half-width of the CI over seeds (``n/a (1 seed)`` with one; ``(n=k)`` where fewer
    seeds than the arm's runs logged a metric)."""
    rows = []
    for r in summary.to_dict("records"):
        row: dict[str, Any] = {"arm": r["arm"], "seeds": int(r["n_runs"])}
        for m in (*FINAL_ERRORS, *FINAL_UNCERTAINTY):
            key = f"final_{m}"
            row[METRIC_TITLES[m]] = _ci(
                r.get(key, math.nan),
                r.get(f"{key}_lo", math.nan),
                r.get(f"{key}_hi", math.nan),
                int(r.get(f"{key}_n", 0) or 0),
                int(r["n_runs"]),
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
    surrogate and settings); intervals read ``n/a (1 seed)`` with a single pair. The
    p-value of the final MAE's t-test, and its Holm-adjusted value when the final MAE is
    the report's primary endpoint (``final_p_holm``; the verdict then reads it)."""
    holm_ = "final_p_holm" in paired
    rows = []
    for r in paired.to_dict("records"):
        n = int(r["n_pairs"])
        reach = _labels(r.get("ref_final_n_arm", math.nan))
        if reach != NOT_REACHED and r.get("ref_final_at_start"):
            reach = f"≤ {reach}"
        row = {
            "arm": r["arm"],
            "baseline": r["baseline"],
            "pairs (seeds)": n,
            "at labels": (
                _num(r["final_step"]) if math.isfinite(r["final_step"]) else "each run's last round"
            ),
            "Δ final MAE (eV, ± CI)": _diff(
                r["final_diff"], r["final_diff_lo"], r["final_diff_hi"], n
            ),
            "relative Δ final MAE (± CI)": _pct(
                r["final_rel"], r["final_rel_lo"], r["final_rel_hi"], n
            ),
            "p (final MAE)": _p(r.get("final_p", math.nan)),
        }
        if holm_:
            row["p (Holm)"] = _p(r.get("final_p_holm", math.nan))
        row.update(
            {
                "relative Δ AUC (± CI)": r.get("auc_note")
                or _pct(r["auc_rel"], r["auc_rel_lo"], r["auc_rel_hi"], n),
                "labels to baseline's final MAE": (
                    f"{reach} (baseline: {_labels(r.get('ref_final_n_reference', math.nan))}"
                    f" labels, MAE {_num(r.get('ref_final_target_mae', math.nan))})"
                ),
                "labels to baseline's final MAE, per seed (± CI)": _seed_reach(r),
                "verdict (final MAE, Holm)" if holm_ else "verdict (final MAE)": r["verdict"],
                "verdict (AUC)": r["verdict_auc"],
            }
        )
        rows.append(row)
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
    shown = _pm(m, lo, hi, reached, None, lambda x: f"{x:.0f}", lambda h: f"{h:.0f}")
    return f"{bound}{shown} ({reached} of {pairs} seeds)"


def paired_final_display(paired: pd.DataFrame) -> pd.DataFrame:
    """Seed-paired differences *arm − baseline* of the final model's other errors and its
    uncertainty quality, with their CIs (``n/a (1 seed)`` with a single pair)."""
    rows = []
    for r in paired.to_dict("records"):
        n = int(r["n_pairs"])
        row: dict[str, Any] = {"arm": r["arm"], "baseline": r["baseline"], "pairs (seeds)": n}
        for m in (*FINAL_ERRORS[1:], *FINAL_UNCERTAINTY):
            key = f"final_{m}_diff"
            row[f"Δ {METRIC_TITLES[m]} (± CI)"] = _diff(
                r.get(key, math.nan), r.get(f"{key}_lo", math.nan), r.get(f"{key}_hi", math.nan), n
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _base_metric(metric: str) -> str:
    return metric.removeprefix(CONVERGED_PREFIX)


def checkpoint_display(converged: pd.DataFrame) -> pd.DataFrame:
    """Per arm and converged checkpoint, the converged errors on the test set: mean ±
    half-width of the CI over seeds (``(n=k)`` where fewer seeds than the row's runs)."""
    rows = []
    for r in converged.to_dict("records"):
        n_runs = int(r["n_runs"])
        row: dict[str, Any] = {"arm": r["arm"], "labels": _num(r["step"]), "seeds": n_runs}
        for m in CONVERGED_ERRORS:
            row[METRIC_TITLES[_base_metric(m)]] = _ci(
                r.get(m, math.nan),
                r.get(f"{m}_lo", math.nan),
                r.get(f"{m}_hi", math.nan),
                int(r.get(f"{m}_n", 0) or 0),
                n_runs,
            )
        rows.append(row)
    return pd.DataFrame(rows)


def converged_paired_display(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """The primary endpoint at each converged checkpoint: per arm, its reference and the
    label count, the seed-paired Δ converged MAE (± CI) and relative Δ, the t-test's p and
    its Holm-adjusted value, the paired bootstrap's percentile intervals ``[lo, hi]`` of Δ
    and relative Δ, and the verdict on the adjusted p-value."""
    pct = f"{level:.0%}"
    rows = []
    for r in frame[frame["metric"] == CONVERGED_ERRORS[0]].to_dict("records"):
        n = int(r["n_pairs"])
        n_boot = int(r["boot_n_resamples"]) if math.isfinite(r["boot_n_resamples"]) else 0
        boot_note = (
            f"{n_boot:,} resamples, {int(r['boot_n_molecules']):,} molecules"
            if n_boot
            else (ONE_SEED if n < 2 else "–")
        )
        rows.append(
            {
                "arm": r["arm"],
                "baseline": r["baseline"],
                "labels": _num(r["step"]),
                "pairs (seeds)": n,
                "Δ MAE (eV, ± CI)": _diff(r["mean"], r["lo"], r["hi"], n),
                "relative Δ MAE (± CI)": _pct(r["rel"], r["rel_lo"], r["rel_hi"], n),
                "p": _p(r["p"]),
                "p (Holm)": _p(r["p_holm"]),
                f"bootstrap Δ MAE (eV) [{pct}]": _bracket(
                    r["boot_lo"], r["boot_hi"], lambda x: f"{x:+.4f}"
                ),
                f"bootstrap relative Δ [{pct}]": _bracket(
                    r["boot_rel_lo"], r["boot_rel_hi"], lambda x: f"{x:+.1%}"
                ),
                "bootstrap": boot_note,
                "verdict (Holm)": r["verdict"],
            }
        )
    return pd.DataFrame(rows)


def converged_errors_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The other converged errors (RMSE, 95th/99th percentile, max), seed-paired Δ ± CI
    with the unadjusted p-value of each, per arm and checkpoint."""
    rows = []
    others = CONVERGED_ERRORS[1:]
    sub = frame[frame["metric"].isin(others)]
    for (arm, base, step), f in sub.groupby(["arm", "baseline", "step"], sort=True):
        by = f.set_index("metric")
        row: dict[str, Any] = {"arm": arm, "baseline": base, "labels": _num(step)}
        row["pairs (seeds)"] = int(by["n_pairs"].max())
        for m in others:
            title = f"Δ {METRIC_TITLES[_base_metric(m)]} (± CI; p)"
            if m not in by.index:
                row[title] = "–"
                continue
            r = by.loc[m]
            n = int(r["n_pairs"])
            shown = _diff(r["mean"], r["lo"], r["hi"], n, int(row["pairs (seeds)"]))
            row[title] = shown if n < 2 else f"{shown}; p {_p(r['p'])}"
        rows.append(row)
    return pd.DataFrame(rows)


def calibration_display(calibration: pd.DataFrame) -> pd.DataFrame:
    """Per arm and step, how the predicted std describes the test errors, pooled over the
    seeds: the z-scores' mean (0 when unbiased) and sd (1 when calibrated), the share of
    molecules within ±1.96 std (95 % when calibrated), RMSE and RMV (root mean variance).
    Arms without a predicted std say so."""
    rows = []
    for r in calibration.to_dict("records"):
        row: dict[str, Any] = {
            "arm": r["arm"],
            "labels": _num(r["step"]),
            "predictions": r["source"],
            "seeds": int(r["n_runs"]),
        }
        if not r["has_std"]:
            row["molecules × seeds"] = "no predicted std"
            rows.append(row)
            continue
        row.update(
            {
                "molecules × seeds": int(r["n"]),
                "mean z": _num(r["mean_z"], 3),
                "sd z": _num(r["sd_z"], 3),
                "within ±1.96 std": f"{r['coverage_95']:.1%}",
                "RMSE (eV)": _num(r["rmse"]),
                "RMV (eV)": _num(r["rmv"]),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


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
