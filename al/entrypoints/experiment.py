"""Experiment grids: named campaign settings x seeds, run as campaigns under one parent run.

A grid file (``experiments/*.yaml``)::

    name: strategies                 # the grid's name (tag al.grid)
    experiment_name: grid-strategies # MLflow experiment (default: grid-<name>)
    description: which acquisition beats random at a small budget?
    question: strategies             # what the report answers (free text)
    seeds: [0, 1, 2]
    base: {initial_size: 200, batch_size: 100, rounds: 3, ...}   # campaign keys
    cells:                           # each: a name and the keys it changes
      - {name: random, strategy: random}
      - {name: max_std, strategy: ensemble}

Every cell x seed is validated as a :class:`~al.config.CampaignConfig` when the file is
loaded, so a typo fails before anything runs. Each campaign is a run tagged ``al.grid``,
``al.cell`` and ``al.seed`` under the grid's parent run (``al.kind=experiment``), named
``<cell>-s<seed>-<short id>``. A rerun
reuses that parent, skips finished cells and resumes interrupted ones from their last
completed round (the campaign's own resume), so no label is paid twice.

What a campaign runs is :func:`run_cell` (an ``al-loop`` subprocess), on every backend of
:mod:`al.entrypoints.grid_backends`: here, ``workers`` at a time, or as tasks of a dask
cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from al import progress
from al.config import ConfigError, build_config, read_yaml
from al.entrypoints.grid_backends import Backend, make_backend
from al.entrypoints.grid_progress import RoundCounter
from al.loop.config import CampaignConfig
from al.tracking.names import (
    KIND_EXPERIMENT,
    TAG_CELL,
    TAG_GRID,
    TAG_GRID_DIGEST,
    TAG_GRID_PARENT_RUN,
    TAG_KIND,
    TAG_NOTE,
    TAG_PARENT,
    TAG_SEED,
    TAG_STOP_REASON,
    run_name,
)

log = logging.getLogger(__name__)

#: tracking URIs that other machines can reach as well
REMOTE_STORES = ("http://", "https://", "postgresql", "mysql", "mssql", "databricks")

#: where relative grid paths are also looked up (the Docker image sets it to /app)
PROJECT_DIR_ENV = "AL_PROJECT_DIR"

GRID_KEYS = {"name", "experiment_name", "description", "question", "seeds", "base", "cells"}


@dataclass(frozen=True)
class Cell:
    """One campaign of a grid: a cell name, a seed and the resolved settings."""

    name: str
    seed: int
    settings: dict[str, Any]
    #: the keys the cell itself sets (on top of the grid's base)
    own: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}/seed={self.seed}"


@dataclass
class Grid:
    """A validated grid file."""

    name: str
    experiment_name: str
    description: str
    seeds: list[int]
    base: dict[str, Any]
    cells: list[dict[str, Any]]
    path: str = ""
    question: str = ""
    expanded: list[Cell] = field(default_factory=list)

    def digest(self) -> str:
        """Identity of the grid's content (cells, settings and seeds), 12 hex digits."""
        payload = json.dumps(
            {"base": self.base, "cells": self.cells, "seeds": self.seeds}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def grid_path(path: str | Path) -> Path:
    """``path``, or for a relative one not found here, the same path under
    ``$AL_PROJECT_DIR`` (the image's copy of the project: MLflow runs an entry point in a
    folder of its own, where ``experiments/smoke.yaml`` is not)."""
    path = Path(path)
    home = os.environ.get(PROJECT_DIR_ENV, "")
    if not path.is_absolute() and not path.exists() and home and (Path(home) / path).exists():
        return Path(home) / path
    return path


def load_grid(path: str | Path, experiment_name: str = "") -> Grid:
    """Read and validate a grid file (:func:`grid_path`); every error is one line naming the
    file and cell. ``experiment_name`` (when given) holds the campaigns instead of the
    grid's own."""
    path = grid_path(path)
    where = str(path)
    raw = read_yaml(path)
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown grid key(s) {', '.join(map(repr, unknown))}; valid keys: "
            f"{', '.join(sorted(GRID_KEYS))}"
        )
    name = str(raw.get("name") or Path(path).stem)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: 'seeds' repeats a seed: {seeds}")
    base = raw.get("base") or {}
    cells = raw.get("cells")
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: 'base' must be a mapping of campaign keys")
    if not isinstance(cells, list) or not cells:
        raise ConfigError(f"{where}: 'cells' must be a non-empty list of mappings with a name")
    for forbidden in ("seed", "resume", "experiment_name"):
        if forbidden in base or any(forbidden in c for c in cells if isinstance(c, dict)):
            raise ConfigError(f"{where}: {forbidden!r} is set by the grid runner, not in cells")
    names: list[str] = []
    expanded: list[Cell] = []
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or not cell.get("name"):
            raise ConfigError(f"{where}: cell {i} must be a mapping with a 'name'")
        cname = str(cell["name"])
        if cname in names:
            raise ConfigError(f"{where}: two cells are named {cname!r}")
        names.append(cname)
        settings = {**base, **{k: v for k, v in cell.items() if k != "name"}}
        for seed in seeds:
            try:
                cfg = build_config(CampaignConfig, {**settings, "seed": seed})
                cfg.fidelities()
            except ConfigError as err:
                raise ConfigError(f"{where}: cell {cname!r}: {err}") from None
            own = {k: v for k, v in cell.items() if k != "name"}
            expanded.append(Cell(cname, seed, {**settings, "seed": seed}, own))
    # Seed-major order: an interrupted grid leaves whole seeds done, so its arms stay paired.
    order = {seed: i for i, seed in enumerate(seeds)}
    expanded.sort(key=lambda c: order[c.seed])
    return Grid(
        name=name,
        experiment_name=experiment_name or str(raw.get("experiment_name") or f"grid-{name}"),
        description=str(raw.get("description", "")),
        seeds=list(seeds),
        base=base,
        cells=cells,
        path=where,
        question=str(raw.get("question", "")),
        expanded=expanded,
    )


def chosen_experiment(explicit: str = "") -> str:
    """The MLflow experiment the user chose for a grid's campaigns, or "" for the grid's own.

    In order: ``explicit`` (``al experiment --experiment-name``), the experiment that
    ``mlflow run --experiment-name/--experiment-id`` passes on (``MLFLOW_EXPERIMENT_ID``;
    ``0``, MLflow's "Default" that it passes when nothing was chosen, does not count), and
    ``MLFLOW_EXPERIMENT_NAME``. Without any of them the grid's ``experiment_name`` key, else
    ``grid-<name>``, holds the campaigns.
    """
    if explicit:
        return explicit
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID", "")
    if exp_id and exp_id != "0":
        return MlflowClient().get_experiment(exp_id).name
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", "")


@dataclass
class CellState:
    """Where a cell stands on the tracking server: ``new``, ``resume`` (an interrupted run
    exists: KILLED, FAILED, or left RUNNING) or ``done`` (a run stopped by its rules)."""

    cell: Cell
    status: str
    run_id: str = ""


@dataclass(frozen=True)
class CellJob:
    """What one campaign of a grid needs wherever it runs (picklable: a dask task takes it
    to another machine). :func:`run_cell` runs it."""

    cell: Cell
    grid: str
    experiment_id: str
    parent_id: str
    tracking_uri: str
    #: the campaign's folder for its config and log (made on the machine that runs it)
    log_dir: str
    #: the run of an interrupted campaign to resume; "" for a new one
    resume: str = ""


@dataclass(frozen=True)
class CellResult:
    """How a campaign ended: its state, and for a failure the exit status, the machine and
    log it ran with and the log's last lines."""

    state: CellState
    returncode: int = 0
    host: str = ""
    log: str = ""
    tail: tuple[str, ...] = ()


def _cell_run(client: MlflowClient, job: CellJob) -> Any:
    """The newest campaign run of ``job``'s cell under its parent, or None."""
    cell = job.cell
    runs = client.search_runs(
        [job.experiment_id],
        filter_string=(
            f"tags.`{TAG_PARENT}` = '{job.parent_id}' and tags.`{TAG_CELL}` = '{cell.name}' "
            f"and tags.`{TAG_SEED}` = '{cell.seed}'"
        ),
        order_by=["attributes.start_time DESC"],
    )
    return next((r for r in runs if finished(r)), runs[0] if runs else None)


def run_cell(job: CellJob) -> CellResult:
    """Run one campaign of a grid as an ``al-loop`` subprocess and wait for it.

    Every backend runs this (in a thread here, or as a dask task on a worker), so a
    campaign runs the same wherever it runs: the tracking URI, the experiment and the grid's
    tags travel in ``job``; the rest of the environment is the one it runs in. A new cell's
    run is made here, just before its campaign starts. A job that the engine runs again
    (its worker was lost) finds the run that its first try made and resumes it.
    """
    cell = job.cell
    client = MlflowClient(job.tracking_uri)
    run_id, args = job.resume, ["--resume", job.resume] if job.resume else []
    if not run_id:
        earlier = _cell_run(client, job)
        if earlier is not None and finished(earlier):
            return CellResult(CellState(cell, "done", earlier.info.run_id))
        if earlier is not None:
            run_id, args = earlier.info.run_id, ["--resume", earlier.info.run_id]
    if not run_id:
        run = client.create_run(
            job.experiment_id,
            run_name=run_name(cell.name, f"s{cell.seed}"),
            tags={TAG_PARENT: job.parent_id, TAG_GRID: job.grid,
                  TAG_CELL: cell.name, TAG_SEED: str(cell.seed)},
        )  # fmt: skip
        run_id = run.info.run_id
    log_dir = Path(job.log_dir)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError:  # a folder of the machine that started the grid, not of this one
        log_dir = Path(tempfile.mkdtemp(prefix="al-grid-"))
    cfg_path = log_dir / f"{cell.name}-s{cell.seed}.yaml"
    cfg_path.write_text(yaml.safe_dump(cell.settings, sort_keys=True))
    env = dict(os.environ)
    env.pop("MLFLOW_RUN_ID", None)
    if not args:
        env["MLFLOW_RUN_ID"] = run_id
    env["MLFLOW_EXPERIMENT_ID"] = job.experiment_id
    env["MLFLOW_TRACKING_URI"] = job.tracking_uri
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "al.cli", "al-loop", "--config", str(cfg_path), *args]
    out = log_dir / f"{cell.name}-s{cell.seed}.log"
    with open(out, "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if rc == 0:
        return CellResult(CellState(cell, "done", run_id))
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
    except Exception:  # the run record is the campaign's; never hide the failure
        pass
    tail = tuple(out.read_text().strip().splitlines()[-3:])
    return CellResult(CellState(cell, "failed", run_id), rc, socket.gethostname(), str(out), tail)


class GridRunner:
    """Runs a grid's campaigns on a backend (:mod:`al.entrypoints.grid_backends`): as
    subprocesses here, ``workers`` at a time, or as tasks of a dask cluster."""

    def __init__(
        self,
        grid: Grid,
        workers: int = 1,
        threads: int = 0,
        echo: Callable[[str], None] | None = None,
        backend: str | Backend = "local",
        scheduler: str = "",
    ) -> None:
        """``echo`` receives a line per event for the user (the command line passes
        ``click.echo``); None logs them instead. ``backend`` is a name of
        :data:`~al.entrypoints.grid_backends.BACKENDS` (with ``scheduler``, an existing
        dask cluster's address) or a backend."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.grid, self.workers = grid, workers
        self.backend = (
            make_backend(backend, workers, scheduler) if isinstance(backend, str) else backend
        )
        self.threads = threads or self.backend.default_threads()
        self.client = MlflowClient()
        self.echo = echo or log.info
        self.experiment_id = ""
        self.parent_id = ""

    # --- tracking ---------------------------------------------------------------------------
    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.grid.experiment_name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(self.grid.experiment_name)

    def _find_parent(self) -> str:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{TAG_KIND}` = '{KIND_EXPERIMENT}' and "
                f"tags.`{TAG_GRID}` = '{self.grid.name}' and "
                f"tags.`{TAG_GRID_DIGEST}` = '{self.grid.digest()}'"
            ),
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else ""

    def states(self) -> list[CellState]:
        """Each cell's state, read from the tracking server (nothing is created)."""
        self.experiment_id = self.experiment_id or self._lookup_experiment()
        self.parent_id = self.parent_id or (self._find_parent() if self.experiment_id else "")
        by_key: dict[str, list[Any]] = {}
        if self.parent_id:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{TAG_PARENT}` = '{self.parent_id}'",
                max_results=5000,
            )
            for run in runs:
                cell, seed = run.data.tags.get(TAG_CELL), run.data.tags.get(TAG_SEED)
                if cell is not None and seed is not None:
                    by_key.setdefault(f"{cell}/seed={seed}", []).append(run)
        out = []
        for cell in self.grid.expanded:
            runs = by_key.get(cell.key, [])
            # done: stopped by its rules (a FINISHED run without a stop reason was ended
            # early by an older version on Ctrl-C); KILLED and FAILED ones are resumed
            done = [r for r in runs if finished(r)]
            if done:
                out.append(CellState(cell, "done", done[0].info.run_id))
            elif runs:
                latest = max(runs, key=lambda r: r.info.start_time)
                out.append(CellState(cell, "resume", latest.info.run_id))
            else:
                out.append(CellState(cell, "new"))
        return out

    def _lookup_experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.grid.experiment_name)
        return exp.experiment_id if exp is not None else ""

    def _ensure_parent(self) -> str:
        self.experiment_id = self.experiment_id or self._experiment()
        self.parent_id = self.parent_id or self._find_parent()
        if not self.parent_id:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"grid-{self.grid.name}",
                tags={
                    TAG_KIND: KIND_EXPERIMENT,
                    TAG_GRID: self.grid.name,
                    TAG_GRID_DIGEST: self.grid.digest(),
                    TAG_NOTE: self.grid.description,
                },
            )
            self.parent_id = run.info.run_id
            self.client.log_param(self.parent_id, "grid_file", self.grid.path)
            self.client.log_param(self.parent_id, "n_cells", len(self.grid.expanded))
            self.client.log_text(
                self.parent_id,
                yaml.safe_dump(
                    {"name": self.grid.name, "seeds": self.grid.seeds, "base": self.grid.base,
                     "cells": self.grid.cells}, sort_keys=False,
                ),
                "grid.yaml",
            )  # fmt: skip
        else:
            self.client.update_run(self.parent_id, status="RUNNING")
        return self.parent_id

    # --- running ----------------------------------------------------------------------------
    def run(self, log_dir: Path | None = None) -> list[CellState]:
        """Run every cell that is not done; returns the final states (failed ones too).

        A backend that cannot start (an unreachable scheduler) raises
        :class:`~al.entrypoints.grid_backends.BackendError` before anything is tracked.
        """
        states = self.states()
        todo = [s for s in states if s.status != "done"]
        if todo:
            self.backend.start()
        try:
            return self._run(states, todo, log_dir)
        finally:
            self.backend.close()

    def _run(
        self, states: list[CellState], todo: list[CellState], log_dir: Path | None
    ) -> list[CellState]:
        parent = self._ensure_parent()
        wrapper = os.environ.get("MLFLOW_RUN_ID")
        if wrapper and wrapper != parent:  # `mlflow run -e experiment` made a run: link it
            self.client.set_tag(wrapper, TAG_GRID_PARENT_RUN, parent)
        self.echo(
            f"grid {self.grid.name!r}: {len(states)} campaigns, {len(states) - len(todo)} "
            f"already finished, {len(todo)} to run on {self.backend.describe()}; "
            f"experiment {self.grid.experiment_name!r}, parent run {parent}"
        )
        uri = mlflow.get_tracking_uri()
        if todo and self.backend.default_threads() == 0 and not uri.startswith(REMOTE_STORES):
            self.echo(
                f"warning: the tracking URI {uri!r} is local to this machine; campaigns on "
                "other machines need a tracking server (MLFLOW_TRACKING_URI=http://...)"
            )
        log_dir = Path(log_dir or tempfile.mkdtemp(prefix="al-grid-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        jobs = [self._job(state, log_dir) for state in todo]
        results: dict[str, CellState] = {}
        cells = [(job.cell.key, job.cell.settings) for job in jobs]
        with (
            progress.bar(total=0, desc=f"grid {self.grid.name}", unit="round") as bar,
            RoundCounter(self.client, self.experiment_id, parent, cells, bar) as rounds,
        ):
            bar.total = rounds.total
            for job, result in self.backend.run(run_cell, jobs):
                state = self._report(result)
                results[job.cell.key] = state
                if state.status == "done":
                    rounds.end(job.cell.key)
                progress.note(
                    bar,
                    f"[{len(results)}/{len(todo)}] {job.cell.key}: {state.status} "
                    f"(run {state.run_id}, {time.perf_counter() - t0:.0f} s since start)",
                    self.echo,
                )
        final = [results.get(s.cell.key, s) for s in states]
        failed = [s for s in final if s.status == "failed"]
        self.client.set_terminated(parent, "FAILED" if failed else "FINISHED")
        return final

    def _job(self, state: CellState, log_dir: Path) -> CellJob:
        """The job of one cell: its settings with this grid's thread count, its tracking."""
        cell = state.cell
        settings = dict(cell.settings)
        settings.setdefault("threads", self.threads)
        settings.setdefault("progress", False)
        return CellJob(
            cell=replace(cell, settings=settings),
            grid=self.grid.name,
            experiment_id=self.experiment_id,
            parent_id=self.parent_id,
            tracking_uri=mlflow.get_tracking_uri(),
            log_dir=str(log_dir.resolve()),
            resume=state.run_id if state.status == "resume" else "",
        )

    def _report(self, result: CellResult) -> CellState:
        if result.state.status == "failed":
            self.echo(
                f"{result.state.cell.key} failed (exit {result.returncode}); log "
                f"{result.host}:{result.log}: {' | '.join(result.tail)}"
            )
        return result.state


def finished(run: Any) -> bool:
    """True for a campaign run that stopped by its rules (FINISHED, with its stop reason)."""
    return run.info.status == "FINISHED" and TAG_STOP_REASON in run.data.tags


def dry_run_table(states: list[CellState]) -> str:
    """The cells as a text table: cell, seed, state, run id and the keys the cell sets."""
    rows = [("cell", "seed", "state", "run", "cell settings (on top of base)")]
    for s in states:
        own = ", ".join(f"{k}={v}" for k, v in s.cell.own.items())
        rows.append((s.cell.name, str(s.cell.seed), s.status, s.run_id or "-", own))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows)
