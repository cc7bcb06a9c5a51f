"""Campaign runs and their metric histories, read from the tracking server.

Only the public MLflow API is used (``MlflowClient.search_runs`` and
``get_metric_history``): the report is built from what the tracking server holds, so it
can be rebuilt anywhere from the server alone.

Frames:

* *runs*: one row per campaign run, columns :data:`RUN_COLUMNS`
  (``run_id, arm, grid, seed, strategy, oracle, cell, start_time, run_name`` and the
  settings an arm is matched on with its reference arm: ``uncertainty, acquisition,
  batch_size``);
* *histories*: one row per (run, step), columns ``run_id, arm, grid, seed, step`` plus
  one column per metric of :data:`REPORT_METRICS` (NaN where the run did not log it), one
  per oracle's label count (``n_labels.<oracle>``) and one per oracle's cumulative cost
  (``cost_from.<oracle>``, from the queried tables of multi-fidelity runs); the metrics of
  converged checkpoints (``converged.<metric>``) at the checkpoints' steps;
* *predictions*: one row per (run, step, test molecule), columns
  :data:`PREDICTION_FRAME_COLUMNS` (``run_id, step, source`` and the columns of the
  logged tables, :data:`~al.tracking.PREDICTION_COLUMNS`): the test-set predictions of
  each converged checkpoint (``source`` ``converged``) or, for a grid without any, of each
  run's final round (``final round``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from al.report.stats import (
    CONVERGED_METRICS,
    CONVERGED_PREFIX,
    COST_FROM_PREFIX,
    COST_METRICS,
    TIME_METRICS,
    seed_key,
)
from al.tracking import (
    EVALUATED_ON_TEST,
    KIND_CAMPAIGN,
    KIND_ROUND,
    PREDICTION_COLUMNS,
    TAG_ACQUISITION,
    TAG_CELL,
    TAG_EVALUATED_ON,
    TAG_GRID,
    TAG_KIND,
    TAG_ORACLE,
    TAG_PARENT,
    TAG_ROUND,
    TAG_SEED,
    TAG_STRATEGY,
    TAG_UNCERTAINTY,
    Artifacts,
    converged_predictions_path,
    queried_path,
)
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key

#: Metric histories read per campaign run.
REPORT_METRICS: tuple[str, ...] = (
    CM.TEST_MAE,
    CM.COST_SPENT,
    CM.N_LABELLED,
    CM.ROUND,
    CM.TEST_RMSE,
    CM.TEST_P95_AE,
    CM.TEST_P99_AE,
    CM.TEST_MAX_AE,
    CM.TEST_NLL,
    CM.TEST_SPEARMAN,
    CM.TEST_MISCALIBRATION,
    *TIME_METRICS,
    CM.VAL_MAE,
    *COST_METRICS,
    *CONVERGED_METRICS,
)
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
    "uncertainty",
    "acquisition",
    "batch_size",
    "baseline",
    "evaluated_on",
)
#: Settings (columns of the *runs* frame) an arm shares with the reference arm it is
#: compared with: the surrogate (uncertainty method), the labeller, the batch size and
#: what the surrogate learns on top of (``baseline``: ``none`` or a Δ-learning baseline).
MATCH_SETTINGS: tuple[str, ...] = ("uncertainty", "oracle", "batch_size", "baseline")
KEY_COLUMNS: tuple[str, ...] = ("run_id", "arm", "grid", "seed")


class CompareError(ValueError):
    """A problem the user can fix (unknown experiment, nothing to compare); one line."""


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
    """Sort seeds numerically (:func:`~al.report.stats.seed_key`), other columns as they are."""
    if col.name == "seed":
        return col.map(lambda s: seed_key(str(s)))
    return col


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
    """All runs of ``search_runs`` (every page)."""
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
            raise CompareError(f"no run with id {parent_run!r} on {tracking_uri()}") from None
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
            f"{source} on {tracking_uri()}: {what}"
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
                uncertainty=t.get(TAG_UNCERTAINTY, r.data.params.get("resolved_uncertainty", "")),
                acquisition=t.get(TAG_ACQUISITION, r.data.params.get("resolved_acquisition", "")),
                batch_size=r.data.params.get("batch_size", ""),
                baseline=r.data.params.get("baseline") or "none",
                evaluated_on=t.get(TAG_EVALUATED_ON, EVALUATED_ON_TEST),
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
    thread pool; the per-oracle label counts (``n_labels.<oracle>``) and every metric of a
    converged checkpoint (``converged.<metric>``) come too. A step
    logged twice (a resumed round) keeps its latest value. The cost spent on each oracle
    (``cost_from.<oracle>``, cumulative) is the whole ``cost_spent`` of a single-oracle run,
    and is summed from the queried tables of a run with several (:func:`fidelity_costs`).
    """
    names = {*metrics, CM.COST_BASELINE}  # a Δ-learning baseline's cost, for the cost table
    prefixes = (CM.LABELS_FROM_PREFIX, CONVERGED_PREFIX)
    jobs = [
        (r.info.run_id, m)
        for r in runs
        for m in r.data.metrics
        if m in names or m.startswith(prefixes)
    ]

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
    for m in (*metrics, CM.COST_BASELINE):
        if m not in wide:
            wide[m] = np.nan
    extra = sorted(c for c in wide if c.startswith(prefixes) and c not in metrics)
    wide = wide[["run_id", "step", *metrics, CM.COST_BASELINE, *extra]]
    return _with_fidelity_costs(client, runs, wide)


def fidelity_costs(client: Any, run_id: str) -> pd.DataFrame:
    """Cost spent on each oracle by the end of each round of a run, from its queried
    tables (``rounds/round_NNN/queried.csv``, failed requests included): columns
    ``round, oracle, cost`` (cumulative over rounds; every oracle at every round)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    frames = []
    for entry in client.list_artifacts(run_id, "rounds"):
        if not entry.is_dir:
            continue
        try:
            round_ = int(entry.path.rsplit("_", 1)[-1])
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=queried_path(round_)
            )
        except (ValueError, OSError, MlflowException):  # no table for this round
            continue
        frames.append(pd.read_csv(local, usecols=["round", "oracle", "cost"]))
    if not frames:
        return pd.DataFrame(columns=["round", "oracle", "cost"])
    q = pd.concat(frames, ignore_index=True)
    per = q.pivot_table(index="round", columns="oracle", values="cost", aggfunc="sum")
    per = per.fillna(0.0).sort_index().cumsum()
    return per.reset_index().melt(id_vars="round", var_name="oracle", value_name="cost")


def _with_fidelity_costs(client: Any, runs: Sequence[Any], wide: pd.DataFrame) -> pd.DataFrame:
    """``wide`` with a ``cost_from.<oracle>`` column per oracle (NaN where unknown), and a
    ``cost_from.<spec> (baseline)`` column for the cheap labels of a Δ-learning baseline
    (its ``cost_baseline`` metric, the part of ``cost_spent`` no oracle was paid)."""
    out = wide.copy()
    for r in runs:
        rid, oracles = r.info.run_id, [o for o in r.data.tags.get(TAG_ORACLE, "").split(",") if o]
        mine = out["run_id"] == rid
        paid_baseline = out.loc[mine, CM.COST_BASELINE]
        if paid_baseline.notna().any():
            spec = r.data.params.get("baseline", "baseline")
            out.loc[mine, f"{COST_FROM_PREFIX}{spec} (baseline)"] = paid_baseline
        if len(oracles) == 1:
            spent = out.loc[mine, CM.COST_SPENT] - paid_baseline.fillna(0.0)
            out.loc[mine, COST_FROM_PREFIX + CM.oracle_key(oracles[0])] = spent
            continue
        costs = fidelity_costs(client, rid) if len(oracles) > 1 else pd.DataFrame()
        for oracle, f in costs.groupby("oracle") if len(costs) else ():
            by_round = dict(zip(f["round"].astype(float), f["cost"], strict=True))
            column = COST_FROM_PREFIX + CM.oracle_key(str(oracle))
            out.loc[mine, column] = out.loc[mine, CM.ROUND].map(by_round)
    return out


#: Columns of the *predictions* frame, and the two sources of its tables.
PREDICTION_FRAME_COLUMNS: tuple[str, ...] = ("run_id", "step", "source", *PREDICTION_COLUMNS)
SOURCE_CONVERGED, SOURCE_FINAL_ROUND = "converged", "final round"
_CONVERGED_DIR = re.compile(r"labels_(\d+)$")


def _read_predictions(client: Any, run_id: str, path: str) -> pd.DataFrame | None:
    """The prediction table at ``path`` of a run (:data:`~al.tracking.PREDICTION_COLUMNS`;
    a missing ``std``/``std_raw`` reads NaN), or None when there is none or it lacks
    ``qm9_index``, ``target`` or ``mean``."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="al-report-") as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
            frame = pd.read_csv(local)
        except (OSError, MlflowException, pd.errors.ParserError, pd.errors.EmptyDataError):
            return None
    if not {"qm9_index", "target", "mean"} <= set(frame.columns):
        return None
    for c in ("std", "std_raw"):
        if c not in frame:
            frame[c] = np.nan
    frame = frame[list(PREDICTION_COLUMNS)].copy()
    for c in ("target", "mean", "std", "std_raw"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    return frame


def _tagged(frame: pd.DataFrame, run_id: str, step: float, source: str) -> pd.DataFrame:
    out = frame.assign(run_id=run_id, step=float(step), source=source)
    return out[list(PREDICTION_FRAME_COLUMNS)]


def _empty_predictions() -> pd.DataFrame:
    return pd.DataFrame(columns=list(PREDICTION_FRAME_COLUMNS))


def fetch_converged_predictions(
    client: Any, run_ids: Sequence[str], max_workers: int = 8
) -> pd.DataFrame:
    """The *predictions* frame of every converged checkpoint of ``run_ids``: the tables
    ``converged/labels_NNNNN/test.csv`` (:func:`~al.tracking.converged_predictions_path`)
    found on each run, ``step = NNNNN``, ``source = converged``."""

    def one(run_id: str) -> list[pd.DataFrame]:
        out = []
        for entry in client.list_artifacts(run_id, "converged"):
            m = _CONVERGED_DIR.search(entry.path)
            if not (entry.is_dir and m):
                continue
            n = int(m.group(1))
            frame = _read_predictions(client, run_id, converged_predictions_path(n))
            if frame is not None:
                out.append(_tagged(frame, run_id, n, SOURCE_CONVERGED))
        return out

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(run_ids) or 1))) as pool:
        frames = [f for chunk in pool.map(one, run_ids) for f in chunk]
    return pd.concat(frames, ignore_index=True) if frames else _empty_predictions()


def fetch_final_round_predictions(
    client: Any, runs: Sequence[Any], histories: pd.DataFrame, max_workers: int = 8
) -> pd.DataFrame:
    """The *predictions* frame of each run's final round: the ``predictions/test.csv`` of
    its child run tagged ``al.kind=round`` with the highest ``al.round`` (``source = final
    round``; nothing for a run whose last fit has no such table), at the step where the
    run logged that round (its last step with a test MAE when it did not)."""

    def one(run: Any) -> pd.DataFrame | None:
        rid = run.info.run_id
        flt = f"tags.{TAG_PARENT} = '{rid}' and tags.`{TAG_KIND}` = '{KIND_ROUND}'"
        children = _search_all(client, run.info.experiment_id, flt)
        if not children:
            return None
        last = max(children, key=lambda c: _int(c.data.tags.get(TAG_ROUND, "")))
        frame = _read_predictions(client, last.info.run_id, Artifacts.PREDICTIONS)
        if frame is None:
            return None
        mine = histories[histories["run_id"] == rid]
        at = mine.loc[mine[CM.ROUND] == _int(last.data.tags.get(TAG_ROUND, "")), "step"]
        if at.empty:
            at = mine.dropna(subset=[CM.TEST_MAE])["step"]
        return _tagged(frame, rid, float(at.max()) if len(at) else np.nan, SOURCE_FINAL_ROUND)

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(runs) or 1))) as pool:
        frames = [f for f in pool.map(one, runs) if f is not None]
    return pd.concat(frames, ignore_index=True) if frames else _empty_predictions()


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow's progress bar per download off (one per table would flood the output)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def fetch_predictions(
    client: Any, runs: Sequence[Any], runs_table: pd.DataFrame, histories: pd.DataFrame
) -> tuple[pd.DataFrame, list[str]]:
    """The *predictions* frame of the compared runs and notes on what is missing.

    The converged checkpoints' tables of every run; for a grid where no run has one, the
    final round's table of each of its runs (:func:`fetch_final_round_predictions`).
    ``runs`` are the MLflow runs of ``runs_table`` (the *runs* frame); ``histories`` is
    the *histories* frame (it says which runs logged converged metrics).
    """
    with _no_progress_bars():
        return _fetch_predictions(client, runs, runs_table, histories)


def _fetch_predictions(
    client: Any, runs: Sequence[Any], runs_table: pd.DataFrame, histories: pd.DataFrame
) -> tuple[pd.DataFrame, list[str]]:
    ids = list(runs_table["run_id"])
    frame = fetch_converged_predictions(client, ids)
    notes = []
    have = set(zip(frame["run_id"], frame["step"].astype(float), strict=True))
    key = CONVERGED_METRICS[0]
    if key in histories:
        logged = histories.dropna(subset=[key])
        missing = sorted(
            {(r, float(s)) for r, s in zip(logged["run_id"], logged["step"], strict=True)} - have
        )
        if missing:
            shown = ", ".join(f"{r} at {s:,.0f} labels" for r, s in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            notes.append(
                f"{len(missing)} converged checkpoint(s) without a test prediction table "
                f"({shown}{more}): left out of the bootstrap and the uncertainty plots"
            )
    by_id = {r.info.run_id: r for r in runs}
    frames = [frame]
    for grid, g in runs_table.groupby("grid", sort=True):
        if frame["run_id"].isin(g["run_id"]).any():
            continue
        final = fetch_final_round_predictions(client, [by_id[i] for i in g["run_id"]], histories)
        where = f"grid {grid!r}" if grid else "the runs"
        if final.empty:
            notes.append(
                f"{where}: no test prediction tables (converged or final round): "
                "no uncertainty plots"
            )
        else:
            notes.append(
                f"{where}: no converged checkpoint predictions; uncertainty read from the "
                f"final round's predictions of {final['run_id'].nunique()} run(s)"
            )
        frames.append(final)
    frames = [f for f in frames if len(f)]
    out = pd.concat(frames, ignore_index=True) if frames else _empty_predictions()
    return out, notes


def join_histories(runs: pd.DataFrame, wide: pd.DataFrame) -> pd.DataFrame:
    """The *histories* frame: ``wide`` (:func:`fetch_histories`) with arm, grid and seed."""
    out = runs[list(KEY_COLUMNS)].merge(wide, on="run_id", how="inner")
    out["step"] = out["step"].astype(float)
    return out.sort_values(["grid", "arm", "run_id", "step"]).reset_index(drop=True)


def tracking_uri() -> str:
    """The tracking server the runs are read from (``mlflow.get_tracking_uri()``), its
    password masked (:func:`al.config.mask_secrets`): what the report and its messages
    print."""
    import mlflow

    from al.config import mask_secrets

    return mask_secrets(mlflow.get_tracking_uri())
