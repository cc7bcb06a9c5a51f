"""HPO against a real tracking server and real Optuna storages (SQLite and PostgreSQL)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
import yaml
from click.testing import CliRunner
from conftest import PG_PASSWORD_VAR, Postgres
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from al import tracking
from al.cli import _resolve, main
from al.config import ConfigError, build_config, resolve_config
from al.entrypoints.train import TrainRunConfig
from al.loop.config import CampaignConfig
from hpo.config import PRUNERS, SAMPLERS, HPOConfig, build_pruner, build_sampler
from hpo.objective import ATTR_RUN_ID, ATTR_SURPLUS
from hpo.space import SearchSpace, parse_fixed
from hpo.study import ATTR_PARENT_RUN, redacted, run_study, storage_url

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TINY = dict(
    train_size=60, epochs=2, fixed="model=schnet,hidden=32,n_interactions=1", n_test=200,
    heartbeat_interval=1, grace_period=2, progress=False,
)  # fmt: skip


def tiny(storage: str, **kw: object) -> HPOConfig:
    return build_config(HPOConfig, {**TINY, "storage": storage, **kw})


def sqlite_storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


# --- registries, space, settings (no server) ------------------------------------------------
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_builds(name: str) -> None:
    assert isinstance(build_sampler(name, seed=1), optuna.samplers.BaseSampler)


@pytest.mark.parametrize("name", list(PRUNERS))
def test_every_pruner_builds(name: str) -> None:
    assert isinstance(build_pruner(name, epochs=10), optuna.pruners.BasePruner)


def test_unknown_sampler_and_pruner_list_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'cma'; expected one of: tpe, gp, random"):
        build_sampler("cma", seed=0)
    with pytest.raises(
        ValueError, match="unknown pruner 'sha'; expected one of: median, hyperband"
    ):
        build_pruner("sha", epochs=10)
    result = CliRunner().invoke(main, ["hpo", "--sampler", "cma"])
    assert result.exit_code != 0
    assert (
        result.output.strip() == "Error: config key 'sampler': 'cma' is not one of tpe, gp, random"
    )


def test_space_fixed_keys_and_divisibility() -> None:
    assert parse_fixed("model=painn, hidden=64") == {"model": "painn", "hidden": 64}
    with pytest.raises(ConfigError, match="unknown search-space key"):
        parse_fixed("patience=3")
    with pytest.raises(ConfigError, match="'hidden': expected an integer"):
        parse_fixed("hidden=wide")
    with pytest.raises(ConfigError, match="hidden=40 is not divisible by filter_groups=16"):
        SearchSpace(epochs=5, fixed={"hidden": 40})
    space = SearchSpace(epochs=30, epochs_min=10, fixed={"model": "schnet"})
    tuned = space.describe()["tuned"]
    assert "model" not in tuned and tuned["epochs"] == {"type": "int", "low": 10, "high": 30}
    study = optuna.create_study()
    values = space.sample(study.ask())
    assert values["model"] == "schnet" and 10 <= values["epochs"] <= 30
    build_config(TrainRunConfig, values)  # every sample is a valid surrogate config


def test_storage_url_reads_environment_and_params_hide_passwords(monkeypatch) -> None:
    monkeypatch.setenv("AL_TEST_SECRET", "s3cret")
    template = "postgresql+psycopg2://al:${AL_TEST_SECRET}@db:5432/optuna"
    assert storage_url(template) == "postgresql+psycopg2://al:s3cret@db:5432/optuna"
    assert redacted("postgresql://al:s3cret@db/optuna") == "postgresql://al:***@db/optuna"
    monkeypatch.delenv("AL_TEST_SECRET")
    with pytest.raises(ValueError, match="AL_TEST_SECRET is not set"):
        storage_url(template)


def test_surrogate_config_priority_and_unknown_keys(tmp_path: Path) -> None:
    best = tmp_path / "best_params.yaml"
    best.write_text("model: painn\nhidden: 64\nlr: 0.0005\nbatch_size: 32\nepochs: 7\n")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"surrogate_config: {best}\nhidden: 96\n")
    # defaults < surrogate_config < config file < explicit options
    cfg = _resolve(TrainRunConfig, str(cfg_file), {"epochs": "3", "lr": None})
    assert (cfg.model, cfg.hidden, cfg.lr, cfg.batch_size, cfg.epochs) == (
        "painn", 96, 0.0005, 32, 3,
    )  # fmt: skip
    # al_loop: the surrogate's batch size is its training batch, not labels per round
    camp = _resolve(CampaignConfig, None, {"surrogate_config": str(best)})
    assert camp.train_batch_size == 32 and camp.batch_size == CampaignConfig().batch_size
    assert camp.fit_config().batch_size == 32 and camp.epochs == 7

    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.001\nrounds: 3\n")
    result = CliRunner().invoke(main, ["train", "--surrogate-config", str(bad)])
    assert result.exit_code != 0
    assert result.output.startswith(f"Error: surrogate config '{bad}': unknown key(s) 'rounds'")
    assert len(result.output.strip().splitlines()) == 1
    missing = CliRunner().invoke(main, ["al-loop", "--surrogate-config", "nope.yaml"])
    assert missing.output.strip() == "Error: config file 'nope.yaml' does not exist"


def test_mlproject_hpo_entry_point() -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "MLproject").read_text())
    hpo = spec["entry_points"]["hpo"]
    assert set(hpo["parameters"]) == {"config"}
    assert "al.cli hpo --config {config}" in hpo["command"]


# --- studies against the tracking server --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("tracking")
def test_study_logs_parent_trials_and_reusable_best_params(tmp_path: Path) -> None:
    cfg = tiny(sqlite_storage(tmp_path), study_name="a", n_trials=4, experiment_name="hpo-a")
    parent_id = run_study(cfg)
    client = MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.TAG_KIND] == tracking.KIND_HPO
    assert parent.data.params["n_trials"] == "4" and parent.data.params["sampler"] == "tpe"
    assert parent.data.metrics[tracking.HPOMetrics.BEST_VALUE] > 0

    runs = tracking.trial_runs(parent_id)
    assert sorted(int(r.data.tags[tracking.TAG_TRIAL_NUMBER]) for r in runs) == [0, 1, 2, 3]
    for r in runs:
        state = r.data.tags[tracking.TAG_TRIAL_STATE]
        assert state in (tracking.TRIAL_COMPLETE, tracking.TRIAL_PRUNED)
        history = client.get_metric_history(r.info.run_id, tracking.Metrics.VAL_MAE)
        epochs = sorted(m.step for m in history)
        assert epochs[:1] == [0]  # a pruned trial has at least its first epoch
        if state == tracking.TRIAL_COMPLETE:
            assert epochs == [0, 1]
        assert r.data.params["hidden"] == "32" and "lr" in r.data.params

    files = {a.path for a in client.list_artifacts(parent_id)}
    assert {tracking.BEST_PARAMS, tracking.SEARCH_SPACE} <= files
    plots = {a.path for a in client.list_artifacts(parent_id, "plots")}
    assert tracking.PLOT_OPTIMIZATION_HISTORY in plots
    assert tracking.PLOT_PARAM_IMPORTANCES in plots or tracking.NOTE_PARAM_IMPORTANCES in plots

    local = mlflow.artifacts.download_artifacts(
        run_id=parent_id, artifact_path=tracking.BEST_PARAMS
    )
    best = yaml.safe_load(Path(local).read_text())
    cfg_train = resolve_config(TrainRunConfig, local)
    assert cfg_train.hidden == 32 and cfg_train.lr == best["lr"]
    best_run = next(
        r
        for r in runs
        if r.data.tags[tracking.TAG_TRIAL_NUMBER] == parent.data.tags[tracking.TAG_BEST_TRIAL]
    )
    assert float(best_run.data.params["lr"]) == pytest.approx(best["lr"])
    # `al train --surrogate-config runs:/...`: the URI is downloaded, explicit options win
    uri = f"runs:/{parent_id}/{tracking.BEST_PARAMS}"
    train = _resolve(TrainRunConfig, None, {"surrogate_config": uri, "epochs": "1"})
    assert (train.lr, train.batch_size, train.epochs) == (best["lr"], best["batch_size"], 1)
    assert train.surrogate_config == uri


def check_parallel_study(storage: str, name: str, workers: int = 3, trials: int = 6) -> str:
    """``workers`` processes, ``trials`` trials: exactly that many finished, one MLflow run
    per trial."""
    # no worker dies here: a grace period long enough that a loaded machine's late
    # heartbeats do not fail a live trial (that case: test_a_trial_taken_over_...)
    cfg = tiny(storage, study_name=name, n_trials=trials, n_workers=workers, experiment_name=name,
               heartbeat_interval=2, grace_period=60)  # fmt: skip
    parent_id = run_study(cfg)
    study = optuna.load_study(study_name=name, storage=storage_url(storage))
    all_trials = study.get_trials()
    finished = [t for t in all_trials if t.state in FINISHED]
    assert len(finished) == trials, [(t.number, t.state) for t in all_trials]
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers))
    runs = tracking.trial_runs(parent_id)
    run_numbers = [int(r.data.tags[tracking.TAG_TRIAL_NUMBER]) for r in runs]
    assert len(run_numbers) == len(set(run_numbers)), "a trial has two MLflow runs"
    trained = [t for t in all_trials if not t.user_attrs.get(ATTR_SURPLUS)]
    assert sorted(run_numbers) == sorted(t.number for t in trained)
    by_id = {r.info.run_id: r for r in runs}
    for t in finished:
        run = by_id[t.user_attrs[ATTR_RUN_ID]]
        assert run.data.tags[tracking.TAG_TRIAL_NUMBER] == str(t.number)
        assert run.data.tags[tracking.TAG_TRIAL_STATE] == t.state.name.lower()
    assert study.user_attrs[ATTR_PARENT_RUN] == parent_id
    return parent_id


@pytest.mark.slow
@pytest.mark.usefixtures("tracking")
def test_parallel_workers_on_sqlite_stop_at_exactly_n_trials(tmp_path: Path) -> None:
    check_parallel_study(sqlite_storage(tmp_path), "parallel-sqlite")


@pytest.mark.slow
@pytest.mark.usefixtures("tracking")
def test_two_workers_on_postgresql(postgres: Postgres) -> None:
    """The team set-up's storage: a real PostgreSQL server, the role's password read from
    the environment by each worker, never logged."""
    storage = postgres.database("optuna_parallel")
    parent_id = check_parallel_study(storage, "parallel-postgres", workers=2, trials=4)
    logged = MlflowClient().get_run(parent_id).data.params["storage"]
    assert f"${{{PG_PASSWORD_VAR}}}" in logged and postgres.password not in logged
    # the server checks that password: a wrong one is refused
    wrong = storage.replace(f"${{{PG_PASSWORD_VAR}}}", "wrong")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
        optuna.load_study(study_name="parallel-postgres", storage=wrong)


@pytest.mark.slow
def test_killed_worker_trial_is_retried(tmp_path: Path, subprocess_env: dict) -> None:
    storage = sqlite_storage(tmp_path)
    name = "killed"
    # a worker in the middle of a long trial, killed with SIGKILL
    cmd = [
        sys.executable, "-m", "al.cli", "hpo", "--study-name", name, "--storage", storage,
        "--n-trials", "2", "--epochs", "400", "--train-size", "60", "--n-test", "200",
        "--fixed", TINY["fixed"], "--heartbeat-interval", "1", "--grace-period", "2",
        "--pruner", "none", "--experiment-name", name,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=subprocess_env, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, "the worker ended before it could be killed"
            assert time.time() < deadline, "no trial reported an epoch within 2 minutes"
            try:
                study = optuna.load_study(study_name=name, storage=storage)
                running = study.get_trials(states=(TrialState.RUNNING,))
            except (KeyError, optuna.exceptions.StorageInternalError):
                running = []  # not created yet
            if running and running[0].intermediate_values and ATTR_RUN_ID in running[0].user_attrs:
                break
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = running[0]

    # the next invocation fails the stale trial, queues it again and runs it to the end
    parent_id = run_study(tiny(storage, study_name=name, n_trials=2, experiment_name=name))
    study = optuna.load_study(study_name=name, storage=storage)
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    assert sum(t.state in FINISHED for t in trials.values()) == 2

    client = MlflowClient()
    dead_run = client.get_run(killed.user_attrs[ATTR_RUN_ID])
    assert dead_run.info.status == "KILLED"
    assert dead_run.data.tags[tracking.TAG_TRIAL_STATE] == tracking.TRIAL_FAILED
    assert dead_run.data.tags["mlflow.parentRunId"] == parent_id  # one study run, re-opened
    retry_run = client.get_run(retries[0].user_attrs[ATTR_RUN_ID])
    assert retry_run.data.tags[tracking.TAG_TRIAL_STATE] == tracking.TRIAL_COMPLETE
    assert len(tracking.trial_runs(parent_id)) == 3


@pytest.mark.slow
def test_a_study_that_recovered_from_a_dead_worker_exits_0(
    tmp_path: Path, subprocess_env: dict
) -> None:
    """Of two workers, one is killed in the middle of its trial: the other fails that trial
    for its missed heartbeats, runs it again and finishes the study, which then exits 0,
    says what it recovered from, and tags its run so."""
    import psutil

    storage, name = sqlite_storage(tmp_path), "recovered"
    cmd = [
        sys.executable, "-m", "al.cli", "hpo", "--study-name", name, "--storage", storage,
        "--n-trials", "2", "--n-workers", "2", "--epochs", "80", "--train-size", "60",
        "--n-test", "200", "--fixed", TINY["fixed"], "--heartbeat-interval", "1",
        "--grace-period", "2", "--pruner", "none", "--experiment-name", name,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=subprocess_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, "the study ended before a worker could be killed"
            assert time.time() < deadline, "no trial reported an epoch within 3 minutes"
            try:
                running = optuna.load_study(study_name=name, storage=storage).get_trials(
                    states=(TrialState.RUNNING,)
                )
            except (KeyError, optuna.exceptions.StorageInternalError):
                running = []  # not created yet
            if any(t.intermediate_values for t in running):
                break
            time.sleep(0.3)
        workers = [
            c for c in psutil.Process(proc.pid).children() if "hpo-worker" in c.cmdline()
        ]  # fmt: skip
        assert len(workers) == 2
        args = workers[0].cmdline()
        index = args[args.index("--worker-index") + 1]
        workers[0].kill()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:]
    study = optuna.load_study(study_name=name, storage=storage)
    assert sum(t.state in FINISHED for t in study.get_trials()) == 2
    assert f"recovered: worker {index} exited with code -9" in out
    parent = MlflowClient(subprocess_env["MLFLOW_TRACKING_URI"]).get_run(
        study.user_attrs[ATTR_PARENT_RUN]
    )
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.TAG_RECOVERED_WORKERS].startswith(f"recovered: worker {index}")


def test_a_trial_taken_over_by_another_worker_is_dropped_not_fatal(tmp_path: Path) -> None:
    """A worker whose trial another worker failed (missed heartbeats) goes on; the
    objective's own errors stay fatal."""
    from hpo.study import optimize_one

    study = optuna.create_study(storage=storage_url(sqlite_storage(tmp_path)), study_name="t")

    def taken_over(trial: optuna.Trial) -> float:
        study.tell(trial.number, state=TrialState.FAIL)  # what fail_stale_trials does
        return 1.0

    def reports_after_being_taken_over(trial: optuna.Trial) -> float:
        study.tell(trial.number, state=TrialState.FAIL)
        trial.report(1.0, 0)  # Optuna refuses: UpdateFinishedTrialError
        return 1.0

    def broken(trial: optuna.Trial) -> float:
        raise ValueError("bad input")

    assert optimize_one(study, taken_over, []) == 0
    assert optimize_one(study, reports_after_being_taken_over, []) == 0
    assert optimize_one(study, lambda trial: 2.0, []) == 1
    with pytest.raises(ValueError, match="bad input"):
        optimize_one(study, broken, [])
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL]
    assert study.best_value == 2.0
