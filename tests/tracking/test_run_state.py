"""A campaign's run never lies about its state, and one process at a time owns it.

Real signals go to real ``al al-loop`` subprocesses once a log line shows where they are;
the lease is exercised against the real tracking server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.tracking import MlflowClient

from al.tracking import TAG_COMPLETED_ROUND, TAG_LEASE, queried_path
from al.tracking.lease import CampaignLease, LeaseHeldError, LeaseRecord

ARGS = [
    "--initial-size", "30", "--batch-size", "10", "--rounds", "2", "--epochs", "2",
    "--min-steps", "0", "--val-min", "0", "--val-size", "20",
    "--ensemble-size", "2", "--pool-subsample", "200", "--n-test", "100", "--hidden", "16",
    "--filter-groups", "8", "--n-interactions", "1", "--train-batch-size", "32",
    "--progress", "false", "--seed", "3",
]  # fmt: skip


def _default_sigint() -> None:
    # a shell's background job may start with SIGINT ignored; a terminal's Ctrl-C is not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(env: dict[str, str], extra: list[str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "al.cli", "al-loop", *ARGS, *extra]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip


def signal_at(proc: subprocess.Popen[str], marker: str, sig: int) -> tuple[int, str, str]:
    """Send ``sig`` as soon as ``marker`` shows in the log (stderr); returns the exit
    code, stdout and stderr."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.time() + 600
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig)
            break
        if time.time() > deadline:
            break
    else:
        out, _ = proc.communicate(timeout=60)
        pytest.fail(f"campaign ended before {marker!r}:\n{''.join(seen)[-3000:]}{out[-1000:]}")
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, "".join(seen) + err


def campaign_run(client: MlflowClient, experiment: str) -> Any:
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`al.kind` = 'campaign'")
    return run


def children(client: MlflowClient, run: Any) -> dict[int, list[str]]:
    """Round -> statuses of the run's round child runs."""
    flt = f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    out: dict[int, list[str]] = {}
    for child in client.search_runs([run.info.experiment_id], filter_string=flt):
        out.setdefault(int(child.data.tags["al.round"]), []).append(child.info.status)
    return out


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_signals_kill_the_run_and_one_of_two_resumes_proceeds(subprocess_env: dict) -> None:
    client = MlflowClient()
    env = {**subprocess_env, "AL_LEASE_TTL": "60"}

    # 1. Ctrl-C while round 1 trains: KILLED (its round child too), exit 130, one line
    rc, _, err = signal_at(
        start(env, ["--experiment-name", "state-signals"]),
        "event=phase phase=fit round=1", signal.SIGINT,
    )  # fmt: skip
    run = campaign_run(client, "state-signals")
    run_id = run.info.run_id
    assert rc == 130, err[-3000:]
    assert run.info.status == "KILLED"
    assert last_line(err) == (
        f"campaign {run_id} interrupted by SIGINT; resume it with the same settings and "
        f"--resume {run_id}"
    )
    assert run.data.tags[TAG_COMPLETED_ROUND] == "0"
    assert TAG_LEASE not in run.data.tags  # released on the way out
    assert children(client, run) == {0: ["FINISHED"], 1: ["KILLED"]}

    # 2. resumed, then SIGTERM (a scheduler) while round 2 trains: KILLED, exit 143
    rc, _, err = signal_at(
        start(env, ["--experiment-name", "state-signals", "--resume", run_id]),
        "event=phase phase=fit round=2", signal.SIGTERM,
    )  # fmt: skip
    run = client.get_run(run_id)
    assert rc == 143, err[-3000:]
    assert run.info.status == "KILLED"
    assert last_line(err).startswith(f"campaign {run_id} interrupted by SIGTERM; resume it")
    assert TAG_LEASE not in run.data.tags
    states = children(client, run)
    assert states[2] == ["KILLED"] and all("RUNNING" not in v for v in states.values())

    # 3. two resumes at once: exactly one proceeds, the other is refused in one line
    procs = [start(env, ["--experiment-name", "state-signals", "--resume", run_id]) for _ in "ab"]
    results = [(p.wait(600), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], [r[2][-2000:] for r in results]
    refused = next(err for rc, _, err in results if rc == 1)
    line = last_line(refused)
    assert line.startswith(f"Error: run {run_id} is being run by {socket.gethostname()}:")
    assert line.endswith("wait, or take it over after 60 s without heartbeat")

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_COMPLETED_ROUND] == "2"
    assert TAG_LEASE not in run.data.tags
    queried = pd.concat(
        [
            pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=p))
            for p in (queried_path(r) for r in range(3))
        ],
        ignore_index=True,
    )
    assert queried["qm9_index"].is_unique  # no label paid twice
    assert queried.groupby("round").size().tolist() == [50, 10, 10]  # 20 validation labels
    assert all("RUNNING" not in v for v in children(client, run).values())


@pytest.mark.slow
def test_an_exception_fails_the_run_and_its_open_child(
    tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from al.config import build_config
    from al.entrypoints.al_loop import run_campaign
    from al.loop.config import CampaignConfig
    from al.loop.tracker import MlflowTracker

    def broken(self: MlflowTracker, artifacts: Any) -> None:
        if artifacts.round == 1:
            raise RuntimeError("injected fault")
        original(self, artifacts)

    original = MlflowTracker.log_round_artifacts
    monkeypatch.setattr(MlflowTracker, "log_round_artifacts", broken)
    settings = {
        "initial_size": 30, "batch_size": 10, "rounds": 2, "epochs": 1, "ensemble_size": 2,
        "min_steps": 0, "val_min": 0, "val_size": 20,
        "pool_subsample": 200, "n_test": 100, "hidden": 16, "filter_groups": 8,
        "n_interactions": 1, "train_batch_size": 32, "progress": False, "threads": 1,
        "experiment_name": "state-exception",
    }  # fmt: skip
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="injected fault"):
        run_campaign(build_config(CampaignConfig, settings))
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    assert mlflow.active_run() is None
    client = MlflowClient()
    run = campaign_run(client, "state-exception")
    assert run.info.status == "FAILED"
    assert TAG_LEASE not in run.data.tags
    assert children(client, run) == {0: ["FINISHED"], 1: ["FAILED"]}


# --- the lease itself ---------------------------------------------------------------------
@pytest.fixture
def bare_run(tracking: str) -> str:
    client = MlflowClient()
    exp = client.get_experiment_by_name("state-lease")
    exp_id = exp.experiment_id if exp else client.create_experiment("state-lease")
    return client.create_run(exp_id).info.run_id


def put(run_id: str, owner: str, age: float) -> None:
    now = time.time()
    tag = json.dumps({"owner": owner, "since": now - age - 5, "heartbeat": now - age})
    MlflowClient().set_tag(run_id, TAG_LEASE, tag)


@pytest.mark.slow
def test_a_live_lease_refuses_a_second_owner(bare_run: str) -> None:
    put(bare_run, "elsewhere:12:abc", age=1)
    with pytest.raises(LeaseHeldError) as err:
        CampaignLease(bare_run, ttl=30).acquire()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"run {bare_run} is being run by elsewhere:12:abc since ")
    assert msg.endswith("; wait, or take it over after 30 s without heartbeat")
    tag = MlflowClient().get_run(bare_run).data.tags[TAG_LEASE]
    assert LeaseRecord.parse(tag).owner == "elsewhere:12:abc"  # untouched


@pytest.mark.slow
def test_a_lease_insert_refused_by_a_concurrent_one_is_a_refusal(bare_run: str) -> None:
    """Two processes set the lease tag of a run without one at the same moment: the store
    inserts one and refuses the other with an IntegrityError (seen with two resumes at
    once). The refused process reads the winner back and says who holds the run, not that
    the server cannot be reached."""
    winners: list[CampaignLease] = []

    class Refusing(MlflowClient):  # the real server, except that it refuses our insert
        def __init__(self, message: str, race: bool) -> None:
            super().__init__()
            self.message, self.race = message, race

        def set_tag(self, run_id: str, key: str, value: str, **kw: Any) -> None:
            if self.race:  # the other process's insert lands first
                winners.append(CampaignLease(run_id, ttl=30).acquire())
            raise MlflowException(self.message, BAD_REQUEST)

    with pytest.raises(MlflowException, match="disk I/O error"):  # other errors still raise
        CampaignLease(bare_run, ttl=30, client=Refusing("disk I/O error", False)).acquire()
    race = "(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid"
    try:
        with pytest.raises(LeaseHeldError) as err:
            CampaignLease(bare_run, ttl=30, client=Refusing(race, True)).acquire()
        (winner,) = winners
        assert str(err.value).startswith(f"run {bare_run} is being run by {winner.owner} since")
    finally:
        for w in winners:
            w.release()


@pytest.mark.slow
def test_a_stale_lease_is_taken_over_heartbeats_and_released(
    bare_run: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = MlflowClient()
    put(bare_run, "elsewhere:12:abc", age=10)  # older than the TTL
    caplog.set_level("INFO", logger="al.tracking.lease")
    lease = CampaignLease(bare_run, ttl=3).acquire()
    try:
        assert "event=lease_takeover" in caplog.text
        first = LeaseRecord.parse(client.get_run(bare_run).data.tags[TAG_LEASE])
        assert first is not None and first.owner == lease.owner
        assert first.owner.startswith(f"{socket.gethostname()}:{os.getpid()}:")
        deadline = time.time() + 20
        while time.time() < deadline:  # the heartbeat thread refreshes it every TTL / 3
            now = LeaseRecord.parse(client.get_run(bare_run).data.tags[TAG_LEASE])
            if now is not None and now.heartbeat > first.heartbeat:
                break
            time.sleep(0.1)
        else:
            pytest.fail("no heartbeat")
        with pytest.raises(LeaseHeldError):  # another owner, even in this process, is refused
            CampaignLease(bare_run, ttl=3).acquire()
    finally:
        lease.release()
    assert TAG_LEASE not in client.get_run(bare_run).data.tags


@pytest.mark.slow
def test_a_lease_of_a_dead_process_on_this_host_is_taken_over(bare_run: str) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    put(bare_run, f"{socket.gethostname()}:{dead.pid}:abc", age=0)  # fresh, but its pid is gone
    lease = CampaignLease(bare_run, ttl=300).acquire()
    try:
        tag = MlflowClient().get_run(bare_run).data.tags[TAG_LEASE]
        assert LeaseRecord.parse(tag).owner == lease.owner
    finally:
        lease.release()


def test_al_experiment_skips_only_campaigns_stopped_by_their_rules() -> None:
    from types import SimpleNamespace

    from al.entrypoints.experiment import finished
    from al.tracking import TAG_STOP_REASON

    def run(status: str, **tags: str) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(tags=tags))

    assert finished(run("FINISHED", **{TAG_STOP_REASON: "rounds"}))
    assert not finished(run("FINISHED"))  # ended early on Ctrl-C by an older version
    assert not finished(run("KILLED", **{TAG_STOP_REASON: "rounds"}))
    assert not finished(run("FAILED"))
