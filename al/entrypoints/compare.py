"""The ``compare`` entry point: select finished campaign runs on the tracking server, compare
them (:mod:`al.report`), write ``report.md``/``report.html`` and log them back as a run
tagged ``al.kind=report``."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from al.report import (
    BOOTSTRAP_SEED,
    N_RESAMPLES,
    CompareError,
    Report,
    Selection,
    alias_best,
    best_arm,
    build_report,
    dedupe_runs,
    fetch_histories,
    fetch_predictions,
    find_campaign_runs,
    grid_parent,
    join_histories,
    log_report,
    runs_frame,
    tracking_uri,
    write_report,
)
from al.tracking import BEST_ALIAS, TAG_BEST_ARM
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CompareError", "CompareResult", "parse_targets", "reproduce_command", "run_compare"]


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
    arms: Sequence[str] = (),
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
    if arms:
        args += ["--arms", ",".join(arms)]
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
    if arms:
        project += ["-P", "arms=" + ",".join(arms)]
    uri = f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri())} "
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


def _compared_runs(
    client: Any, sel: Selection, arms: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame, list[Any], list[str]]:
    """The runs of ``sel`` to compare: one row per run (``arms`` only, when given), their
    joined histories, their MLflow runs, and notes on the runs left out (duplicates, runs
    without a ``test_mae`` history, unfinished ones)."""
    runs, notes = dedupe_runs(runs_frame(sel.runs))
    if arms:
        missing = sorted(set(arms) - set(runs["arm"]))
        if missing:
            raise CompareError(
                f"--arms: no finished campaign of arm(s) {', '.join(missing)} among the "
                f"{sel.source} (arms: {', '.join(sorted(set(runs['arm'])))})"
            )
        runs = runs[runs["arm"].isin(arms)].reset_index(drop=True)
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
    kept = [r for r in kept if r.info.run_id in set(runs["run_id"])]
    return runs, histories, kept, notes


def run_compare(
    experiment_name: str = "",
    parent_run: str = "",
    output_dir: str | Path = "report",
    baseline: str = "random",
    mae_targets: Sequence[float] | None = None,
    log: bool = True,
    level: float = 0.95,
    echo: Callable[[str], None] = print,
    arms: Sequence[str] = (),
    n_resamples: int = N_RESAMPLES,
    bootstrap_seed: int = BOOTSTRAP_SEED,
) -> CompareResult:
    """Select, read, compare, write, and (with ``log``) log the report back to MLflow.

    ``arms``: only these arms (all when empty); an arm that is not there is an error.
    The test-set prediction tables of the runs (converged checkpoints, else final rounds)
    are read too, for the paired bootstrap (``n_resamples`` resamples, seeded with
    ``bootstrap_seed``) and the uncertainty figures. With ``log``, the alias ``best`` points
    at the registered model of the best arm (:func:`al.report.alias_best`; the report says
    by which metric), and the report run is nested under the grid's parent run when all
    runs compared belong to one grid."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    sel = find_campaign_runs(client, experiment_name, parent_run)
    if sel.n_unfinished:
        echo(f"skipped {sel.n_unfinished} unfinished campaign run(s) (status not FINISHED)")
    runs, histories, kept, notes = _compared_runs(client, sel, arms)
    predictions, missing = fetch_predictions(client, kept, runs, histories)
    notes += missing
    name = experiment_name if parent_run else sel.experiment_name
    command = reproduce_command(name, parent_run, str(output_dir), baseline, mae_targets, arms)
    report = build_report(
        runs,
        histories,
        baseline=baseline,
        targets=mae_targets,
        level=level,
        experiment_name=sel.experiment_name,
        source=sel.source,
        command=command,
        predictions=predictions,
        n_resamples=n_resamples,
        bootstrap_seed=bootstrap_seed,
    )
    report.notes = notes
    report.experiment_id = sel.experiment_id
    best = alias_best(report, BEST_ALIAS) if log else best_arm(report)
    if best is not None and not log:
        report.notes.append(f"Best arm: {best.arm}, by {best.metric} ({best.value:.4g} eV).")
    md, page = write_report(report, Path(output_dir))
    run_id = None
    if log:
        params = dict(
            experiment_name=sel.experiment_name,
            parent_run=parent_run or "",
            baseline=baseline,
            arms=",".join(arms),
            resolved_mae_targets=_targets_param(report),
            n_runs=len(runs),
            n_unfinished=sel.n_unfinished,
        )
        tags = {TAG_BEST_ARM: best.arm} if best is not None else {}
        parent = grid_parent(client, kept)
        run_id = log_report(
            client, Path(output_dir), sel.experiment_id, sel.report_of, params, parent, tags
        )
    return CompareResult(md, page, run_id, report, sel.n_unfinished)
