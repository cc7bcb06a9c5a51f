"""Study runner: Optuna storage, workers, and the study's MLflow run.

One study lives in an RDB storage (SQLite alone, PostgreSQL for a team) and is shared by
every worker that names it, on this machine or others. A running trial sends heartbeats;
the trial of a worker that died is failed after ``grace_period`` seconds and queued again
with the same settings (Optuna's heartbeat retry callback), so it is retried, not lost.

``n_trials`` counts finished trials (complete or pruned) over all workers. A worker only
starts a trial while fewer than ``n_trials`` are finished, running or queued, and a trial
that still finds itself beyond the budget (two workers starting at the same moment) is
dropped before it trains (see :func:`hpo.objective.within_budget`). Optuna's
``MaxTrialsCallback`` alone would not do: each worker checks it only after its own trial
ended, so N workers overshoot by up to N - 1.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from al import tracking
from al.config import SecretMaskingFilter, mask_secrets, mask_values, to_dict
from al.progress import bar as progress_bar
from al.progress import guard_logging
from al.runtime import configure_threads, threads_per_process
from al.tracking.runs import set_experiment
from hpo.config import HPOConfig, build_pruner, build_sampler
from hpo.objective import (
    ATTR_CONFIG,
    ATTR_RUN_ID,
    ATTR_SURPLUS,
    Objective,
    SurplusTrialError,
    labelled_set,
)
from hpo.space import SearchSpace, parse_fixed

log = logging.getLogger(__name__)

#: Study user attribute: the MLflow run of the study, joined by later invocations.
ATTR_PARENT_RUN = "al.mlflow_parent_run_id"


# --- storage -------------------------------------------------------------------------------
def storage_url(template: str) -> str:
    """The storage URL with ``${VAR}`` read from the environment (keeps passwords out of
    configs and logged params)."""
    url = os.path.expandvars(template)
    missing = re.findall(r"\$\{?(\w+)\}?", url)
    if missing:
        raise ValueError(f"storage URL: environment variable {missing[0]} is not set")
    return url


def redacted(url: str) -> str:
    """``url`` with any literal password replaced by ``***`` (for logs and params); see
    :func:`al.config.mask_secrets`."""
    return mask_secrets(url)


class _RetryDeadTrial:
    """Queue a dead worker's trial again (Optuna's retry) and close its MLflow run."""

    def __init__(self, max_retry: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(ATTR_RUN_ID)
        log.warning("event=trial_dead trial=%d run_id=%s", trial.number, run_id)
        if run_id:
            try:
                tracking.mark_trial_killed(run_id)
            except mlflow.exceptions.MlflowException as err:
                log.warning("event=mark_killed_failed run_id=%s error=%s", run_id, err)
        self.retry(study, trial)


def open_storage(config: HPOConfig) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats and retry of dead workers' trials."""
    url = storage_url(config.storage)
    if url.startswith("sqlite"):
        # several worker processes share one file: wait for its lock instead of failing
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=config.heartbeat_interval,
                grace_period=config.grace_period or None,
                heartbeat_stale_trial_callback=_RetryDeadTrial(config.max_retry),
            )
        except Exception as err:  # SQLAlchemy, the driver or its import: one line for users
            raise ValueError(
                f"cannot open the Optuna storage {redacted(config.storage)!r}: "
                f"{_first_line(err, url)}; expected a reachable SQLAlchemy database URL, "
                "e.g. sqlite:///optuna.db or postgresql+psycopg2://user:${PASSWORD}@host/db"
            ) from None


def _first_line(err: BaseException, url: str) -> str:
    """The first line of ``err`` (the driver's own message where SQLAlchemy wraps it),
    passwords masked: the expanded ``url``'s password too, wherever it appears."""
    cause = getattr(err, "orig", None) or err
    if isinstance(err, ImportError) and err.__cause__ is not None:
        cause = err.__cause__  # Optuna's wrapper hides which driver module is missing
    text = str(cause).strip() or type(cause).__name__
    line = f"{type(cause).__name__}: {text.splitlines()[0].strip()}"
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:  # not parseable: the URL-form masking below still applies
        password = None
    if password:
        line = line.replace(str(password), "***")
    return mask_secrets(line)


def load_study(config: HPOConfig, worker_index: int = 0) -> optuna.Study:
    """Create the study or join it. Each worker's sampler gets its own seed, so parallel
    workers do not propose the same settings (on other machines: ``sampler_seed``).

    Optuna's own log lines (from here on) are masked and, on a terminal, written above the
    trials bar, as ours are (:func:`al.progress.guard_logging`)."""
    guard_logging(SecretMaskingFilter, ("optuna",))
    seed = config.seed if config.sampler_seed < 0 else config.sampler_seed
    return optuna.create_study(
        study_name=config.study_name,
        storage=open_storage(config),
        sampler=build_sampler(config.sampler, seed + 1000 * worker_index),
        pruner=build_pruner(config.pruner, config.epochs),
        direction="minimize",
        load_if_exists=True,
    )


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; ``failed`` leaves out trials dropped as beyond the budget."""
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    failed = sum(t.state == TrialState.FAIL and not t.user_attrs.get(ATTR_SURPLUS) for t in trials)
    return {
        "complete": count[TrialState.COMPLETE],
        "pruned": count[TrialState.PRUNED],
        "finished": count[TrialState.COMPLETE] + count[TrialState.PRUNED],
        "running": count[TrialState.RUNNING],
        "waiting": count[TrialState.WAITING],
        "failed": failed,
    }


# --- workers -------------------------------------------------------------------------------
def run_worker(
    config: HPOConfig,
    parent_run_id: str,
    experiment_id: str,
    worker_index: int = 0,
    study: optuna.Study | None = None,
    show_bar: bool = False,
) -> int:
    """Run trials until the study has ``n_trials`` finished ones; returns how many ran here.

    A worker whose budget is all taken keeps watching until the running trials end, so
    that it can take over the trial of a worker that dies. ``timeout`` stops it from
    starting new trials; the one in progress finishes.
    """
    study = study or load_study(config, worker_index)
    configure_threads(config.threads)
    space = SearchSpace(config.epochs, config.epochs_min, parse_fixed(config.fixed))
    objective = Objective(config, space, labelled_set(config), parent_run_id, experiment_id)
    progress = _ProgressLogger(parent_run_id, trials_bar(config, study) if show_bar else None)
    deadline = time.monotonic() + config.timeout if config.timeout else None
    poll = min(5.0, config.heartbeat_interval)
    ran = 0
    while True:
        counts = trial_counts(study)
        if counts["finished"] >= config.n_trials:
            break
        if deadline is not None and time.monotonic() >= deadline:
            log.info("event=worker_timeout worker=%d ran=%d", worker_index, ran)
            break
        if counts["failed"] >= config.n_trials:
            raise RuntimeError(
                f"study {config.study_name!r}: {counts['failed']} trials failed; see the "
                "failed trial runs"
            )
        if counts["waiting"] or counts["finished"] + counts["running"] < config.n_trials:
            ran += optimize_one(study, objective, [progress], worker_index)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(poll)
    log.info("event=worker_done worker=%d ran=%d", worker_index, ran)
    if progress.bar is not None:
        progress.bar.close()
    return ran


def optimize_one(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    callbacks: list[Any],
    worker_index: int = 0,
) -> int:
    """Run one trial of ``objective``; returns 1, or 0 when another worker took it over.

    A worker that misses its heartbeats for ``grace_period`` (a machine under heavy load)
    has its trial failed by another worker, which queues a retry of the same parameters;
    when the slow worker then reports or finishes, Optuna refuses the update. That trial's
    result is dropped (the retry stands for it) and the worker goes on, instead of dying.
    """
    numbers: list[int] = []

    def guarded(trial: optuna.Trial) -> float:
        numbers.append(trial.number)
        value = objective(trial)
        if _state(study, trial.number).is_finished():  # failed meanwhile by another worker
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial {trial.number} was failed by another worker"
            )
        return value

    try:
        study.optimize(guarded, n_trials=1, catch=(SurplusTrialError,), callbacks=callbacks)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as err:
        # Optuna refuses to tell a finished trial with a ValueError "Cannot tell a FAIL
        # trial."; any other error (the objective's own) stays fatal
        refused = isinstance(err, optuna.exceptions.UpdateFinishedTrialError) or str(
            err
        ).startswith("Cannot tell a ")
        if not (refused and numbers and _state(study, numbers[0]).is_finished()):
            raise
        log.warning(
            "event=trial_taken_over worker=%d trial=%d: another worker failed this trial for "
            "missed heartbeats and queued its retry; its result here is dropped",
            worker_index, numbers[0],
        )  # fmt: skip
        return 0
    return 1


def _state(study: optuna.Study, number: int) -> TrialState:
    """The stored state of trial ``number`` of ``study``."""
    return next(t.state for t in study.get_trials(deepcopy=False) if t.number == number)


def trials_bar(config: HPOConfig, study: optuna.Study) -> tqdm:
    """A bar of the study's finished trials (all workers), with an ETA; silent when output is
    not a terminal or ``progress=false``."""
    done = trial_counts(study)["finished"]
    return progress_bar(
        total=config.n_trials, initial=min(done, config.n_trials), desc=config.study_name,
        unit="trial", enabled=config.progress,
    )  # fmt: skip


def _show(bar: tqdm, counts: dict[str, int], best: float | None) -> None:
    bar.n = min(counts["finished"], int(bar.total or 0))
    bar.set_postfix(best_val_mae=f"{best:.4f}" if best is not None else "-", refresh=False)
    bar.refresh()


class _ProgressLogger:
    """Optuna callback: the study's progress as metrics of its MLflow run (and on a bar)."""

    def __init__(self, parent_run_id: str, bar: tqdm | None = None) -> None:
        self.parent_run_id, self.bar = parent_run_id, bar

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(ATTR_SURPLUS):
            return
        counts = _log_progress(study, self.parent_run_id)
        if self.bar is not None:
            _show(self.bar, counts, study.best_value if counts["complete"] else None)


def _log_progress(study: optuna.Study, parent_run_id: str) -> dict[str, int]:
    counts = trial_counts(study)
    metrics: dict[str, float] = {
        tracking.HPOMetrics.N_COMPLETE: counts["complete"],
        tracking.HPOMetrics.N_PRUNED: counts["pruned"],
        tracking.HPOMetrics.N_FAILED: counts["failed"],
    }
    if counts["complete"]:
        metrics[tracking.HPOMetrics.BEST_VALUE] = study.best_value
    tracking.log_metrics(metrics, step=counts["finished"], run_id=parent_run_id)
    return counts


def _start_worker_processes(config: HPOConfig, parent_run_id: str, experiment_id: str) -> list[int]:
    """``n_workers`` processes of ``al hpo-worker`` on the study; their exit codes."""
    threads = config.threads or threads_per_process(config.n_workers)
    worker_config = replace(config, n_workers=1, threads=threads)
    env = dict(os.environ)
    env.pop("MLFLOW_RUN_ID", None)  # the workers' runs are new, nested under the study's
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="al-hpo-") as tmp:
        path = Path(tmp) / "worker.yaml"
        path.touch(mode=0o600)  # the storage URL may hold a password
        path.write_text(yaml.safe_dump(to_dict(worker_config), sort_keys=False))
        cmd = [
            sys.executable, "-m", "al.cli", "hpo-worker", "--config", str(path),
            "--parent-run-id", parent_run_id, "--experiment-id", experiment_id,
        ]  # fmt: skip
        procs = [
            subprocess.Popen([*cmd, "--worker-index", str(k)], env=env)
            for k in range(config.n_workers)
        ]
        try:
            study = load_study(config)  # one storage connection for the polling
            with trials_bar(config, study) as bar:
                while any(p.poll() is None for p in procs):
                    if not bar.disable:
                        _show(bar, trial_counts(study), None)
                    time.sleep(2.0)
            return [p.wait() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()


# --- the study's MLflow run ------------------------------------------------------------------
def _open_parent_run(config: HPOConfig, study: optuna.Study) -> mlflow.ActiveRun:
    """Start the study's run, or re-open the one an earlier invocation recorded."""

    client = MlflowClient()
    wrapper = os.environ.get("MLFLOW_RUN_ID")
    if wrapper:
        _warn_literal_passwords(client, wrapper)
    recorded = study.user_attrs.get(ATTR_PARENT_RUN)
    if recorded and recorded != wrapper and _run_usable(client, recorded):
        if wrapper:
            # `mlflow run` made a fresh run for this process: point it at the study's run
            client.set_tag(wrapper, tracking.TAG_RESUMED_INTO, recorded)
            client.set_terminated(wrapper, "FINISHED")
            os.environ.pop("MLFLOW_RUN_ID")
        mlflow.set_experiment(experiment_id=client.get_run(recorded).info.experiment_id)
        return mlflow.start_run(run_id=recorded)
    set_experiment(config.experiment_name)
    run = mlflow.start_run(run_name=f"hpo-{config.study_name}")
    study.set_user_attr(ATTR_PARENT_RUN, run.info.run_id)
    return run


def _warn_literal_passwords(client: MlflowClient, run_id: str) -> None:
    """Warn when ``run_id`` already holds a literal password in a param: ``mlflow run``
    logs every ``-P`` value before this process starts, and MLflow can neither change nor
    delete a param afterwards. ``${VAR}`` in ``-P storage=...`` avoids it."""
    try:
        params = client.get_run(run_id).data.params
    except mlflow.exceptions.MlflowException:
        return
    leaked = sorted(k for k, v in params.items() if mask_secrets(v) != v)
    if leaked:
        log.warning(
            "event=literal_password_in_params run_id=%s params=%s: `mlflow run` logged them "
            "before the study started; delete that run and give the password as ${VAR}",
            run_id, ",".join(leaked),
        )  # fmt: skip


def _run_usable(client: MlflowClient, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False  # e.g. a study database reused with another tracking server


def best_params(study: optuna.Study) -> tuple[FrozenTrial, dict[str, Any]] | None:
    """The best trial and its surrogate config, or None before any trial completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    return best, dict(best.user_attrs.get(ATTR_CONFIG) or best.params)


def _log_results(study: optuna.Study, config: HPOConfig, parent_run_id: str) -> float | None:
    """best_params.yaml, the best value, and Optuna's plots on the study's run."""
    _log_progress(study, parent_run_id)
    found = best_params(study)
    if found is None:
        log.warning("event=no_complete_trial study=%s", config.study_name)
        return None
    best, values = found
    header = (
        f"# Best trial {best.number} of study {config.study_name!r}: validation MAE "
        f"{best.value:.5f} eV\n# ({config.train_size} labelled molecules, val_fraction "
        f"{config.val_fraction}). Use: al train --surrogate-config best_params.yaml\n"
    )
    tracking.log_text_artifact(
        header + yaml.safe_dump(values, sort_keys=False), tracking.BEST_PARAMS
    )
    mlflow.set_tag(tracking.TAG_BEST_TRIAL, str(best.number))
    _log_plots(study)
    return float(best.value)


def _log_plots(study: optuna.Study) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna_plots.plot_optimization_history(study)
        tracking.log_figure(ax.figure, tracking.PLOT_OPTIMIZATION_HISTORY)
        n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        note = ""
        if n_complete < 2:
            note = f"parameter importances need 2 complete trials, the study has {n_complete}"
        else:
            try:
                ax = optuna_plots.plot_param_importances(study)
                tracking.log_figure(ax.figure, tracking.PLOT_PARAM_IMPORTANCES)
            except (ValueError, RuntimeError) as err:  # e.g. no parameter varied
                note = f"parameter importances could not be computed: {err}"
    if note:
        log.info("event=importances_skipped reason=%r", note)
        tracking.log_text_artifact(note + "\n", tracking.NOTE_PARAM_IMPORTANCES)


def run_study(config: HPOConfig, echo: Callable[[str], None] | None = None) -> str:
    """Run (or continue) the study named in ``config``; returns its MLflow run id."""
    space = SearchSpace(config.epochs, config.epochs_min, parse_fixed(config.fixed))
    study = load_study(config)
    with _open_parent_run(config, study) as parent:
        parent_id, experiment_id = parent.info.run_id, parent.info.experiment_id
        mlflow.set_tags(
            {tracking.TAG_KIND: tracking.KIND_HPO, tracking.TAG_STUDY: config.study_name}
        )
        settings = mask_values(to_dict(config))
        tracking.log_params(settings)
        tracking.log_text_artifact(
            yaml.safe_dump(space.describe(), sort_keys=False), tracking.SEARCH_SPACE
        )
        log.info(
            "event=study_start study=%s storage=%s n_trials=%d workers=%d run_id=%s",
            config.study_name, redacted(config.storage), config.n_trials, config.n_workers,
            parent_id,
        )  # fmt: skip
        if config.n_workers == 1:
            run_worker(config, parent_id, experiment_id, 0, study, show_bar=True)
            codes = [0]
        else:
            codes = _start_worker_processes(config, parent_id, experiment_id)
        best = _log_results(study, config, parent_id)
        counts = trial_counts(study)
        recovered = _recovered_workers(codes, counts, config)
        if recovered:
            mlflow.set_tag(tracking.TAG_RECOVERED_WORKERS, recovered)
    summary = "no complete trial" if best is None else f"best validation MAE {best:.4f} eV"
    (echo or log.info)(
        f"study {config.study_name!r}: {summary}; {counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['failed']} failed trials"
        f"{f' ({recovered})' if recovered else ''}; run {parent_id}; "
        f"settings: runs:/{parent_id}/{tracking.BEST_PARAMS}"
    )
    return parent_id


def _recovered_workers(codes: list[int], counts: dict[str, int], config: HPOConfig) -> str:
    """What the study recovered from: the workers that did not exit cleanly, when the others
    still finished every trial (a dead worker's trial is failed and run again); "" when all
    exited cleanly. Raises when a worker failed and trials are missing."""
    lost = {k: code for k, code in enumerate(codes) if code}
    if not lost:
        return ""
    said = ", ".join(f"worker {k} exited with code {code}" for k, code in lost.items())
    if counts["finished"] < config.n_trials:
        raise RuntimeError(
            f"HPO workers failed ({said}) and {counts['finished']} of {config.n_trials} "
            "trials finished; see their output, and run the study again to continue it"
        )
    log.warning("event=workers_recovered %s; their trials were retried", said)
    return f"recovered: {said}; its trials were failed and retried"
