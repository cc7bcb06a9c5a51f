"""Writing the report: one list of :class:`Section` rendered to ``report.md`` and to a
self-contained ``report.html`` by two Jinja2 templates (``templates/report.md.j2``,
``templates/report.html.j2``), with PNG plots and CSV tables beside them, and logged back
to the tracking server as a run tagged ``al.kind=report``.

Python decides *what* the report says (:func:`report_sections`); the templates decide only
how each format writes it, so the two files say the same things.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from al.config import mask_secrets
from al.report.build import (
    GridReport,
    Report,
)
from al.report.display import (
    arms_display,
    calibration_display,
    checkpoint_display,
    converged_errors_display,
    converged_paired_display,
    fidelity_display,
    final_model_display,
    paired_display,
    paired_final_display,
    savings_display,
    summary_display,
)
from al.report.read import tracking_uri
from al.report.server import run_links
from al.report.uncertainty import pooled, z_scores

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
    "over that budget); no AUC when that range has zero width or fewer than 2 logged points. "
    "Reference arm: each arm is compared with the baseline arm (e.g. random acquisition) "
    "that has the same surrogate (uncertainty method, tag `al.uncertainty`), oracle(s), "
    "batch size and Δ-learning baseline, never with one of another surrogate; an arm "
    "without one is not compared, and the grid's notes say so (with --baseline arm:NAME, "
    "the arm NAME is every other arm's reference, whatever its settings). A baseline arm "
    "that learns "
    "on a Δ-learning baseline (e.g. random acquisition on DFT − xTB) or from another "
    "labeller's labels is compared with the baseline arm of the same settings that learns "
    "DFT labels directly. "
    "Paired comparison: runs paired by seed; differences arm − baseline "
    "at each n_labelled both runs logged; final = the last n_labelled common to all pairs "
    "(where the shorter arm ends when one arm was run to fewer labels), or each run's last "
    "round when the runs end at different label counts that neither arm ends at (equal "
    "cost, e.g. multi-fidelity arms, whose labels of every fidelity are counted). "
    "Verdict (unadjusted comparisons): 'better' only when the whole CI of the difference "
    "is below 0, 'worse' when above, else 'no significant difference'; 'too few seeds' with "
    "fewer than 2 pairs, and every interval then reads 'n/a (1 seed)'; the primary "
    "endpoint's verdicts read its Holm-adjusted p-values instead (see Multiplicity). "
    "The paired AUC is over the range both arms cover. "
    "Labels to the baseline's final MAE: first crossing of the arm's mean curve "
    "of the last point of its reference's mean curve; per seed, the first crossing of each "
    "run's curve of its own seed's reference run's final MAE (mean and interval over the "
    "seeds that reached it). "
    "Final model: the errors (MAE, RMSE, 95th/99th percentile and max of |err|) and "
    "uncertainty quality (NLL, Spearman(std, |err|), miscalibration area) of each run's "
    "last round on the test set; paired differences of these at the label count of the "
    "paired final MAE (at the end of each run when that is each run's last round). "
    "Cost per fidelity: labels from each oracle (successful ones) and the cost spent on "
    "it, failed requests included (from the queried tables of multi-fidelity runs); the "
    "cheap labels of a Δ-learning baseline in a column of their own (its cost_baseline "
    "metric), counted in the total. "
    "Label savings = 1 − labels(arm) / labels(baseline) to reach the same mean MAE. "
    "p-values: two-sided one-sample t-test of mean 0 on the seed-paired differences "
    "(scipy.stats.ttest_1samp; p = 0 when every pair differs by the same non-zero amount). "
    "Multiplicity: the p-values of the primary endpoint's comparisons (every arm and, with "
    "converged checkpoints, every checkpoint, over all grids of the report) are adjusted "
    "by Holm-Bonferroni and its verdicts read the adjusted value (better/worse when it is "
    "below {alpha}); every other p-value and verdict is unadjusted. "
    "tables/per_seed.csv holds every metric of every run at every step (the histories "
    "every statistic above is computed from)."
)
#: The method of the converged checkpoints (a report with some).
CONVERGED_METHODS = (
    "Converged checkpoints: at the label counts the campaign names (`checkpoints`), its "
    "labelled set is refitted from scratch to convergence and evaluated on the same test "
    "set (metrics converged.*); the primary endpoint, when a run has them, is the "
    "converged test MAE at each checkpoint against the reference arm, seed-paired at the "
    "checkpoint. The warm chain (each round's model as the campaign fitted it, which the "
    "other sections show) is what the campaign saw. "
    "Paired bootstrap of the converged MAE: {n_resamples:,} resamples (numpy "
    "default_rng({boot_seed})); each draws the seed pairs with replacement and, within "
    "each drawn pair, the test molecules with replacement, the same molecules for both "
    "arms (they share the fixed test set; on the molecules every run of the comparison "
    "predicted); statistic: the mean over the drawn pairs of MAE(arm) − MAE(reference), "
    "and that over the mean MAE(reference) for the relative difference; {pct} percentile "
    "interval."
)
#: The method of the uncertainty section (a report with test prediction tables).
UNCERTAINTY_METHODS = (
    "Uncertainty: per arm, the test predictions of the converged checkpoints (else of each "
    "run's final round) pooled over seeds; std is the predicted std scaled by the factor "
    "fitted on the campaign's validation set; z = (target − mean) / std; the reliability "
    "diagram bins the molecules by predicted std into equal-count bins (at most 15, at "
    "least 20 molecules each) and plots each bin's RMSE against its RMV (root mean "
    "variance), which agree (y = x) for a calibrated Gaussian model."
)


# --- the section model -----------------------------------------------------------------------
@dataclass
class Table:
    """A table as text cells: ``columns`` names, ``rows`` of ``len(columns)`` cells each."""

    columns: list[str]
    rows: list[list[str]]
    #: text -> URL: a cell's space-separated word found here is a link in report.html
    links: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, frame: pd.DataFrame) -> Table:
        """The cells of a (display) frame; a missing value reads ``–``."""
        return cls(
            [str(c) for c in frame.columns],
            [[_cell(v) for v in row] for row in frame.itertuples(index=False)],
        )


def _cell(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


@dataclass
class Figure:
    """A PNG plot: ``src`` relative to the report folder (report.md links it), and the image
    itself as base64 (report.html inlines it)."""

    caption: str
    src: str
    png_base64: str

    @classmethod
    def of(cls, caption: str, path: Path, root: Path) -> Figure:
        """The figure saved at ``path`` inside the report folder ``root``."""
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return cls(caption, path.relative_to(root).as_posix(), data)


@dataclass
class Section:
    """One heading (``level`` 1-3) and its parts, rendered in this order: facts
    (``key: value`` bullets), quotes, paragraphs, a code block, notes (a bulleted list),
    a table, figures."""

    title: str
    level: int = 2
    facts: list[tuple[str, str]] = field(default_factory=list)
    quotes: list[str] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)
    code: str = ""
    notes: list[str] = field(default_factory=list)
    table: Table | None = None
    figures: list[Figure] = field(default_factory=list)


# --- what the report says --------------------------------------------------------------------
#: What the sections of the warm chain are called when a report also has converged
#: checkpoints.
WARM = "what the campaign saw (warm chain)"


def report_sections(
    report: Report,
    figures: dict[str, list[Figure]] | None = None,
    *,
    generated: str = "",
    server: str = "",
    uncertainty: dict[str, list[Figure]] | None = None,
) -> list[Section]:
    """The sections of the report: header, runs per arm, per grid (converged checkpoints
    when there are some, uncertainty, summary, paired comparison, label savings, plots),
    method. ``figures`` (:func:`draw_figures`) and ``uncertainty``
    (:func:`draw_uncertainty_figures`) are per grid name; ``generated`` and ``server``
    default to now and the current tracking URI (its password masked). With an http(s)
    server, the run ids in the tables link to the runs' pages there (report.html)."""
    pct = f"{report.level:.0%}"
    runs = report.runs
    facts = [
        ("Experiment", report.experiment_name),
        ("Runs", report.source),
        ("Tracking server", mask_secrets(server) if server else tracking_uri()),
        ("Generated", generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("Campaign runs compared", f"{len(runs)} finished, {runs['arm'].nunique()} arm(s)"),
        (
            "±",
            f"mean ± half-width of the two-sided {pct} Student-t interval over seeds "
            "(paired differences: over seed pairs), t·s/√n with n the seeds or pairs "
            "column of its table ('(n=k)' where fewer seeds logged the value); "
            f"[lo, hi] is a {pct} percentile bootstrap interval",
        ),
    ]
    if report.primary:
        facts.append(
            (
                "Primary endpoint",
                f"{report.primary}; {report.n_primary} comparison(s), p-values "
                f"Holm-Bonferroni adjusted (family-wise α = {1 - report.level:.2g}); other "
                "p-values and verdicts unadjusted",
            )
        )
    facts.append(("Per-seed values", "tables/per_seed.csv (every metric, run and step)"))
    head = Section(report.title, 1, facts=facts, paragraphs=["Reproduce:"], code=report.command)
    head.notes = list(report.notes)
    out = [head, Section("Runs per arm", table=Table.of(arms_display(runs)))]
    warm = WARM if report.has_converged else ""
    for g in report.grids:
        out += _grid_sections(
            g, report.level, (figures or {}).get(g.grid, []), warm,
            (uncertainty or {}).get(g.grid, []),
        )  # fmt: skip
    values = dict(
        pct=pct,
        alpha=f"{1 - report.level:.2g}",
        n_resamples=report.n_resamples,
        boot_seed=report.bootstrap_seed,
    )
    method = [METHODS.format(**values)]
    if report.has_converged:
        method.append(CONVERGED_METHODS.format(**values))
    if any(not g.calibration.empty for g in report.grids):
        method.append(UNCERTAINTY_METHODS.format(**values))
    out.append(Section("Method", paragraphs=method))
    links = run_links(runs["run_id"], report.experiment_id, server or tracking_uri())
    for section in out:
        if section.table is not None:
            section.table.links = links
    return out


def _converged_sections(g: GridReport, level: float) -> list[Section]:
    """The converged checkpoints of one grid: the errors per arm, the primary endpoint
    against the reference, the other errors against it."""
    if g.converged.empty:
        return []
    pct = f"{level:.0%}"
    out = [
        Section(
            "Converged checkpoints: the labelled set refitted from scratch "
            f"(test set, mean ± {pct} CI over seeds)",
            3,
            table=Table.of(checkpoint_display(g.converged)),
        )
    ]
    if g.baseline is not None and not g.converged_paired.empty:
        same = "" if g.named else " of the same surrogate"
        head = (
            f"Primary endpoint: converged test MAE against {g.baseline}{same} "
            "(arm − baseline, Holm-adjusted p)"
        )
        out.append(
            Section(head, 3, table=Table.of(converged_paired_display(g.converged_paired, level)))
        )
        others = converged_errors_display(g.converged_paired)
        if not others.empty:
            head = f"Other converged errors against {g.baseline}{same} (arm − baseline, unadjusted)"
            out.append(Section(head, 3, table=Table.of(others)))
    return out


def _grid_sections(
    g: GridReport,
    level: float,
    figures: list[Figure],
    warm: str = "",
    uncertainty: list[Figure] | None = None,
) -> list[Section]:
    """The sections of one grid; with ``warm`` (a report with converged checkpoints) the
    sections of the campaign's own rounds say so in their titles."""
    pct = f"{level:.0%}"
    tag = f" — {warm}" if warm else ""
    out = [Section(f"Grid: {_grid_name(g)}", quotes=list(g.notes))]
    out += _converged_sections(g, level)
    if not g.calibration.empty:
        sources = sorted(set(g.calibration["source"]))
        head = f"Uncertainty on the test set ({', '.join(sources)} predictions, pooled over seeds)"
        out.append(
            Section(head, 3, table=Table.of(calibration_display(g.calibration)),
                    figures=list(uncertainty or []))
        )  # fmt: skip
    out += [
        Section(f"Summary{tag}", 3, table=Table.of(summary_display(g.summary, g.targets, level))),
        Section(
            f"Final model on the test set (mean ± {pct} CI over seeds){tag}",
            3,
            table=Table.of(final_model_display(g.summary)),
        ),
    ]
    fidelities = fidelity_display(g.summary)
    if not fidelities.empty:
        out.append(Section("Labels and cost per fidelity", 3, table=Table.of(fidelities)))
    same = "" if g.named else " of the same surrogate"
    if g.baseline is not None and not g.paired.empty:
        head = f"Paired comparison with {g.baseline}{same} (arm − baseline, {pct} CI over seeds)"
        out.append(Section(head + tag, 3, table=Table.of(paired_display(g.paired))))
        head = f"Paired differences of the final model (arm − baseline, {pct} CI over seeds)"
        out.append(Section(head + tag, 3, table=Table.of(paired_final_display(g.paired))))
    if not g.savings.empty:
        head = f"Label savings against {g.baseline}{same}"
        out.append(Section(head + tag, 3, table=Table.of(savings_display(g.savings))))
    if figures:
        out.append(Section(f"Plots{tag}", 3, figures=figures))
    return out


def _grid_name(g: GridReport) -> str:
    return g.grid or "(no grid tag)"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "all"


# --- files -----------------------------------------------------------------------------------
#: The per-seed table: the *histories* frame, every metric of every run at every step.
PER_SEED_TABLE = "per_seed.csv"


def write_tables(report: Report, out: Path) -> None:
    """The numbers behind the report as CSV files in ``out/tables``: ``runs.csv``,
    ``per_seed.csv`` (the *histories* frame: ``run_id, arm, grid, seed, step`` and every
    metric read, from which every interval and p-value is computed) and, per grid, the
    summary, both learning curves, the paired comparison, the label savings, and when
    there are some the converged checkpoints (per arm and paired), the calibration
    summary and the reliability bins."""
    (out / "tables").mkdir(parents=True, exist_ok=True)
    report.runs.to_csv(out / "tables" / "runs.csv", index=False)
    report.histories.to_csv(out / "tables" / PER_SEED_TABLE, index=False)
    for g in report.grids:
        paired = g.baseline is not None and not g.paired.empty
        tables = {
            "summary": (g.summary, True),
            "curve_labels": (g.curves_labels, True),
            "curve_cost": (g.curves_cost, True),
            "curve_cost_total": (g.curves_cost_total, not g.curves_cost_total.empty),
            "paired": (g.paired, paired),
            "paired_steps": (g.paired_steps, paired),
            "savings": (g.savings, not g.savings.empty),
            "converged": (g.converged, not g.converged.empty),
            "converged_paired": (g.converged_paired, not g.converged_paired.empty),
            "calibration": (g.calibration, not g.calibration.empty),
            "reliability": (g.reliability, not g.reliability.empty),
        }
        for name, (frame, wanted) in tables.items():
            if wanted:
                frame.to_csv(out / "tables" / f"{name}_{_slug(g.grid)}.csv", index=False)


def draw_figures(report: Report, out: Path) -> dict[str, list[Figure]]:
    """Plot each grid's learning curves (on labels and on cost) and paired differences into
    ``out/plots``, each arm in its colour (:func:`al.plots.arm_colours`); returns the
    figures per grid name."""
    from al.plots import arm_colours, colour_cycle, plot_curves, plot_paired

    (out / "plots").mkdir(parents=True, exist_ok=True)
    pct = f"{report.level:.0%}"
    colours = arm_colours(report.runs["arm"])
    warm = f" — {WARM}" if report.has_converged else ""
    figures: dict[str, list[Figure]] = {}

    def cycle(arms: Any) -> Any:  # plot_curves/plot_paired draw the arms in sorted order
        return colour_cycle([colours[a] for a in sorted(set(arms))])

    for g in report.grids:
        slug, name, done = _slug(g.grid), _grid_name(g), figures.setdefault(g.grid, [])
        if not g.curves_labels.empty:
            path = out / "plots" / f"mae_vs_labels_{slug}.png"
            with cycle(g.curves_labels["arm"]):
                plot_curves(g.curves_labels, "labels (n_labelled)",
                            f"{name}: test MAE vs labels ({pct} CI)", path)  # fmt: skip
            done.append(Figure.of(f"Test MAE vs labels{warm}", path, out))
        if not g.curves_cost.empty:
            path = out / "plots" / f"mae_vs_cost_{slug}.png"
            with cycle(g.curves_cost["arm"]):
                plot_curves(g.curves_cost, "cumulative cost (cost_spent)",
                            f"{name}: test MAE vs cost ({pct} CI)", path, log_x=True)  # fmt: skip
            done.append(Figure.of(f"Test MAE vs cumulative cost{warm}", path, out))
        if not g.curves_cost_total.empty:
            path = out / "plots" / f"mae_vs_cost_total_{slug}.png"
            with cycle(g.curves_cost_total["arm"]):
                plot_curves(g.curves_cost_total, "cost incl. prior labels (cost_total)",
                            f"{name}: test MAE vs cost, every label counted ({pct} CI)", path,
                            log_x=True)  # fmt: skip
            done.append(Figure.of(
                "Test MAE vs cost with the DFT labels that built an oracle or baseline model "
                f"(cost_total){warm}", path, out,
            ))  # fmt: skip
        if g.baseline is not None and not g.paired_steps.empty:
            path = out / "plots" / f"paired_diff_{slug}.png"
            label = g.paired_steps["arm"] + " − " + g.paired_steps["baseline"]
            steps = g.paired_steps.assign(arm=label)
            by_label = dict(zip(label, g.paired_steps["arm"], strict=True))
            with colour_cycle([colours[by_label[lab]] for lab in sorted(by_label)]):
                plot_paired(steps, g.baseline,
                            f"{name}: paired difference with {g.baseline}", path)  # fmt: skip
            done.append(Figure.of(f"Paired difference with {g.baseline}{warm}", path, out))
    return figures


def draw_uncertainty_figures(report: Report, out: Path) -> dict[str, list[Figure]]:
    """Per grid and step of its prediction tables (each converged checkpoint, else the
    final round): a reliability diagram, a calibration plot (coverage; |err| against std)
    and a z-score histogram of each arm with a predicted std, pooled over its seeds, each
    arm in its colour; PNGs in ``out/plots``.
    Returns the figures per grid name."""
    import matplotlib.pyplot as plt

    from al.plots import arm_colours, calibration_figure, plot_reliability, plot_z_histograms

    (out / "plots").mkdir(parents=True, exist_ok=True)
    colours = arm_colours(report.runs["arm"])
    figures: dict[str, list[Figure]] = {}
    for g in report.grids:
        if g.calibration.empty:
            continue
        slug, name, done = _slug(g.grid), _grid_name(g), figures.setdefault(g.grid, [])
        runs = report.runs[report.runs["grid"] == g.grid]
        with_std = g.calibration[g.calibration["has_std"]]
        for (step, source), cal in with_std.groupby(["step", "source"], sort=True):
            arms = sorted(cal["arm"])
            rel = g.reliability[
                (g.reliability["step"] == step) & (g.reliability["source"] == source)
            ]
            panels = [
                (a, f["rmv"].to_numpy(float), f["rmse"].to_numpy(float))
                for a, f in rel.groupby("arm", sort=True)
            ]
            zs, coverage = [], []
            for a in arms:
                p = pooled(report.predictions, list(runs.loc[runs["arm"] == a, "run_id"]), step)
                zs.append((a, z_scores(p["target"], p["mean"], p["std"])))
                coverage.append((a, *_coverage(p)))
            what = f"{step:,.0f} labels, {source} predictions pooled over seeds"
            tag = f"{slug}_{source.replace(' ', '_')}_{step:.0f}"
            path = out / "plots" / f"reliability_{tag}.png"
            plot_reliability(panels, colours, f"{name}: reliability at {what}", path)
            done.append(
                Figure.of(
                    f"Reliability at {what}: RMSE of the test errors against RMV (root mean "
                    "predicted variance) in equal-count bins of predicted std; a calibrated "
                    "model lies on the dashed y = x line",
                    path,
                    out,
                )
            )
            path = out / "plots" / f"calibration_{tag}.png"
            fig = calibration_figure(coverage, colours, f"{name}: calibration at {what}")
            fig.savefig(path)
            plt.close(fig)
            done.append(
                Figure.of(
                    f"Calibration at {what}: observed against expected coverage of the central "
                    "Gaussian intervals mean ± z·std (a calibrated model lies on the diagonal), "
                    "and |error| against std with the identity line |err| = std",
                    path,
                    out,
                )
            )
            path = out / "plots" / f"z_scores_{tag}.png"
            plot_z_histograms(zs, colours, f"{name}: z-scores at {what}", path)
            done.append(
                Figure.of(
                    f"z-scores (target − mean) / std at {what}: histogram (density) against "
                    "the standard normal density N(0, 1) of a calibrated model",
                    path,
                    out,
                )
            )
    return figures


def _coverage(p: pd.DataFrame) -> tuple[Any, Any, Any, Any]:
    """Expected and observed coverage (``[99]`` each, :func:`al.training.metrics.
    calibration_curve`), std and |error| (``[n]`` each) of pooled predictions ``p``."""
    import torch

    from al.training.metrics import calibration_curve

    p = p[(p["std"] > 0) & p["std"].notna() & p["mean"].notna()]
    mean, std, target = (torch.tensor(p[c].to_numpy(float)) for c in ("mean", "std", "target"))
    expected, observed = calibration_curve(mean, std, target)
    return expected.numpy(), observed.numpy(), std.numpy(), (mean - target).abs().numpy()


@cache
def _templates() -> Any:
    """The Jinja2 environment of ``templates/`` (HTML autoescaped, Markdown not)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("al.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )


def render_sections(sections: list[Section], title: str, fmt: str) -> str:
    """The sections as one document; ``fmt`` is ``"md"`` or ``"html"``."""
    if fmt not in ("md", "html"):
        raise ValueError(f"unknown report format {fmt!r} (md, html)")
    text = _templates().get_template(f"report.{fmt}.j2").render(sections=sections, title=title)
    return text.rstrip("\n") + "\n"


def write_report(report: Report, output_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` (plots inlined as base64), ``plots/*.png`` and
    ``tables/*.csv`` (``per_seed.csv`` among them) to ``output_dir``. Returns the two
    report paths."""
    out = Path(output_dir)
    write_tables(report, out)
    sections = report_sections(
        report, draw_figures(report, out), uncertainty=draw_uncertainty_figures(report, out)
    )
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_sections(sections, report.title, "md"))
    html_path.write_text(render_sections(sections, report.title, "html"))
    return md_path, html_path
