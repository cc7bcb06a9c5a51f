"""Kill a campaign (for real with SIGKILL, or by fault injection in-process), resume it, and
check that no label is lost, none is paid twice, and the run reads back faithfully."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import al_loop_until, one_line_error
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from al.cli import main
from al.config import ConfigError
from al.entrypoints import al_loop
from al.entrypoints.al_loop import run_campaign
from al.loop.config import CampaignConfig
from al.loop.journal import LabelJournal, LabelsNotRecordedError, journal_path
from al.loop.tracker import MlflowTracker
from al.oracles.dft import DFTOracle
from al.tracking import (
    KIND_ROUND,
    TAG_COMPLETED_ROUND,
    TAG_JOURNAL,
    TAG_KIND,
    TAG_MODEL_URI,
    TAG_PARENT,
    TAG_ROUND,
    TAG_SEED,
    TAG_STOP_REASON,
    Artifacts,
    CampaignMetrics,
    CampaignRun,
    queried_path,
)

TINY = dict(
    initial_size=20, batch_size=8, rounds=2, hidden=8, n_interactions=1, filter_groups=4,
    epochs=1, min_steps=0, val_min=0, val_size=20, ensemble_size=2, pool_subsample=100, n_test=50,
    progress=False, train_batch_size=32, threads=1, experiment_name="resume-inproc",
)  # fmt: skip


@pytest.fixture(autouse=True)
def journal_dir(tmp_path, monkeypatch) -> None:
    """Journals in the test's own folder (subprocesses inherit it)."""
    monkeypatch.setenv("AL_JOURNAL_DIR", str(tmp_path / "journal"))


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing catches it on its way out."""


@pytest.fixture
def paid(monkeypatch) -> list[int]:
    """Every QM9 index the DFT oracle is paid for, over all campaigns of the test."""
    out: list[int] = []
    label = DFTOracle.label

    def paying(self, qm9_index, **kw):
        out.extend(int(i) for i in qm9_index)
        return label(self, qm9_index, **kw)

    monkeypatch.setattr(DFTOracle, "label", paying)
    return out


def queried_tables(run_id: str) -> pd.DataFrame:
    run = CampaignRun(run_id)
    return pd.concat([run.read_queried(r) for r in run.queried_rounds()], ignore_index=True)


ARGS = [
    "--initial-size", "150", "--val-size", "30", "--batch-size", "40", "--rounds", "3",
    "--epochs", "4",
    "--min-steps", "0", "--val-min", "0",
    "--ensemble-size", "2", "--pool-subsample", "2000", "--n-test", "200", "--hidden", "32",
    "--filter-groups", "8", "--n-interactions", "2", "--progress", "false",
    "--experiment-name", "resume-test", "--seed", "7",
]  # fmt: skip


def run_until(env: dict, extra: list[str], marker: str | None, timeout: float = 300) -> str:
    """`al al-loop` with :data:`ARGS` and ``extra``, SIGKILLed at ``marker``
    (:func:`conftest.al_loop_until`)."""
    return al_loop_until(env, [*ARGS, *extra], marker, timeout)


@pytest.mark.slow
def test_kill_and_resume(subprocess_env: dict, tracking: str) -> None:
    # 1. killed while training round 1 (its labels are paid, its fit is not done)
    out = run_until(subprocess_env, [], "event=phase phase=fit round=1")
    client = MlflowClient()
    exp = client.get_experiment_by_name("resume-test")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`al.kind` = 'campaign'")
    run_id = run.info.run_id
    assert client.get_run(run_id).data.tags[TAG_COMPLETED_ROUND] == "0"

    # 2. resumed, then killed while scoring the pool for round 2
    out = run_until(subprocess_env, ["--resume", run_id], "event=phase phase=score round=2")
    assert "event=resume" in out

    # 3. resumed, then killed right after round 2's labels were paid for and recorded
    out = run_until(subprocess_env, ["--resume", run_id], "event=labels_paid round=2")
    paid = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=queried_path(2))
    )

    # 4. resumed to the end
    run_until(subprocess_env, ["--resume", run_id], None)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_COMPLETED_ROUND] == "3"
    frames = [
        pd.read_csv(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=queried_path(r))
        )
        for r in range(4)
    ]
    queried = pd.concat(frames, ignore_index=True)
    assert queried["qm9_index"].is_unique  # no molecule labelled twice
    assert queried.groupby("round").size().tolist() == [180, 40, 40, 40]  # 30 validation
    # the labels paid before the last kill are the ones the campaign used
    pd.testing.assert_frame_equal(frames[2].reset_index(drop=True), paid)
    steps = [m.step for m in client.get_metric_history(run_id, CampaignMetrics.N_LABELLED)]
    assert steps == [150, 190, 230, 270]
    cost = client.get_metric_history(run_id, CampaignMetrics.COST_SPENT)
    assert cost[-1].value == pytest.approx(queried["cost"].sum())
    # the killed child runs were closed, one finished child per round remains
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    finished = sorted(int(c.data.tags["al.round"]) for c in children if c.info.status == "FINISHED")
    assert finished == [0, 1, 2, 3]
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)


# --- in-process kills by fault injection -----------------------------------------------------
#: Smaller than ARGS (repeated options: the last one counts), for the PostgreSQL store.
SMALL = [
    "--initial-size", "40", "--val-size", "10", "--batch-size", "10", "--rounds", "1",
    "--epochs", "2", "--pool-subsample", "300", "--n-test", "50", "--hidden", "16",
    "--filter-groups", "4", "--n-interactions", "1",
]  # fmt: skip


def campaign_id(experiment: str) -> str:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`al.kind` = 'campaign'")
    return run.info.run_id


@pytest.mark.slow
def test_kill_and_resume_on_postgresql(postgres_tracking: str) -> None:
    """The team set-up: a tracking server whose store is PostgreSQL. A campaign killed right
    after round 1's labels were paid, then resumed, labels the same molecules, round by
    round, as the same campaign never killed, and pays for none twice."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": postgres_tracking, "PYTHONUNBUFFERED": "1"}
    run_until(env, [*SMALL, "--experiment-name", "pg-straight"], None)
    straight = queried_tables(campaign_id("pg-straight"))

    killed = [*SMALL, "--experiment-name", "pg-killed"]
    run_until(env, killed, "event=labels_paid round=1")
    run_id = campaign_id("pg-killed")
    assert MlflowClient().get_run(run_id).data.tags[TAG_COMPLETED_ROUND] == "0"
    out = run_until(env, [*killed, "--resume", run_id], None)
    # round 1's labels are read back from the store, not bought again
    assert f"event=resume run_id={run_id} queried_rounds=2 completed_round=0 labels=60" in out
    resumed = queried_tables(run_id)

    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert resumed["qm9_index"].is_unique  # no molecule bought twice
    assert resumed.groupby("round").size().tolist() == [50, 10]  # 10 validation
    columns = ["round", "role", "qm9_index", "label", "cost"]
    resumed, straight = (
        f[columns].sort_values(columns[:3], ignore_index=True) for f in (resumed, straight)
    )
    pd.testing.assert_frame_equal(resumed, straight)


@pytest.mark.slow
def test_history_by_step_and_stale_children(tracking: str) -> None:
    """A step logged twice keeps its latest value; a killed round run is closed, and the
    logged models an upload left PENDING (a round's, the campaign's final) are marked FAILED."""
    mlflow.set_experiment("resume-history")
    with mlflow.start_run() as parent:
        run = CampaignRun(parent.info.run_id)
        for step, value in ((20, 1.0), (28, 0.9), (28, 0.8), (36, 0.7)):
            mlflow.log_metric(CampaignMetrics.TEST_MAE, value, step=step)
        assert run.metric_by_step(CampaignMetrics.TEST_MAE) == {20: 1.0, 28: 0.8, 36: 0.7}
        assert run.metric_history(CampaignMetrics.TEST_MAE) == [1.0, 0.8, 0.7]
        client = MlflowClient()
        tags = {TAG_KIND: KIND_ROUND, TAG_ROUND: "0", TAG_PARENT: parent.info.run_id}
        cid = client.create_run(parent.info.experiment_id, tags=tags).info.run_id
        # the process dies while uploading: the child stays RUNNING, its model PENDING
        model = mlflow.initialize_logged_model(
            name="model", source_run_id=cid, experiment_id=parent.info.experiment_id
        )
        # ... or while uploading the campaign's final model
        final = mlflow.initialize_logged_model(
            name="model", source_run_id=parent.info.run_id, experiment_id=parent.info.experiment_id
        )
        run.close_stale_children()
    assert client.get_run(cid).info.status == "KILLED"
    assert client.get_logged_model(model.model_id).status == LoggedModelStatus.FAILED
    assert client.get_logged_model(final.model_id).status == LoggedModelStatus.FAILED


@pytest.mark.slow
def test_outage_keeps_paid_labels_and_resume_uses_the_campaign_settings(
    tracking: str, paid: list[int], monkeypatch: pytest.MonkeyPatch, qm9
) -> None:
    """The server goes away after round 1 was paid: one error line says where the labels
    are; resume with the run id alone continues with the campaign's own settings, buys no
    label twice, refuses other settings, and leaves the finished campaign alone."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    closed = "http://127.0.0.1:9"
    log_queried = MlflowTracker.log_queried

    def outage(self, round_: int, frame: pd.DataFrame) -> None:
        if round_ == 1:  # the tracking server is gone from here on
            mlflow.set_tracking_uri(closed)
            self.client = MlflowClient(closed)
            self.client.set_tag(self.run_id, "probe", "1")  # raises: connection refused
        log_queried(self, round_, frame)

    monkeypatch.setattr(MlflowTracker, "log_queried", outage)
    with pytest.raises(LabelsNotRecordedError) as err:
        run_campaign(CampaignConfig(**TINY, seed=3))
    run_id = err.value.run_id
    message = str(err.value)
    assert "\n" not in message and str(journal_path(run_id)) in message
    assert f"al al-loop --resume {run_id}" in message and "once the server is back" in message
    assert len(paid) == 48  # round 0 (20 + 20 validation) and round 1 paid; round 1 is only
    # in the journal

    monkeypatch.setattr(MlflowTracker, "log_queried", log_queried)  # the server is back
    mlflow.set_tracking_uri(tracking)
    paid_before = list(paid)
    paid.clear()
    with pytest.raises(ConfigError, match=r"batch_size \(given 5, campaign 8\)"):
        run_campaign(CampaignConfig(resume=run_id, batch_size=5))
    # a setting given explicitly is compared even when it is the default's value
    error = one_line_error(CliRunner().invoke(main, ["al-loop", "--resume", run_id, "--seed", "0"]))
    assert "seed (given 0, campaign 3)" in error
    assert run_campaign(CampaignConfig(resume=run_id, progress=False)) == run_id

    table = queried_tables(run_id)
    assert table.groupby("round").size().tolist() == [40, 8, 8]  # the campaign's own sizes
    everything = paid_before + paid
    assert len(everything) == len(table) == len(set(everything))  # none lost, none twice
    journalled = LabelJournal(journal_path(run_id)).paid(1)
    assert sorted(journalled["qm9_index"]) == sorted(table.loc[table["round"] == 1, "qm9_index"])
    run = MlflowClient().get_run(run_id)
    assert run.data.tags[TAG_COMPLETED_ROUND] == "2" and TAG_STOP_REASON in run.data.tags

    said: list[str] = []
    models = MlflowClient().search_logged_models([run.info.experiment_id])
    assert run_campaign(CampaignConfig(resume=run_id), echo=said.append) == run_id
    assert said == [f"campaign {run_id} is already finished (rounds: 2 of 2 done); left as it is"]
    assert len(MlflowClient().search_logged_models([run.info.experiment_id])) == len(models)


@pytest.mark.slow
def test_resume_refuses_a_run_that_is_not_a_campaign(tracking: str) -> None:
    mlflow.set_experiment("resume-not-campaign")
    with mlflow.start_run(tags={TAG_KIND: "train"}) as run:
        pass
    with pytest.raises(ValueError, match=r"is not a campaign \(al.kind=train\)"):
        run_campaign(CampaignConfig(**{**TINY, "resume": run.info.run_id}))
    # another tool's run, even one that looks finished: refused, left exactly as it was
    with mlflow.start_run(tags={"al.stop_reason": "x", "al.model_uri": "y"}) as other:
        pass
    before = MlflowClient().get_run(other.info.run_id)
    with pytest.raises(ValueError, match=r"is not a campaign \(no al.kind tag\)"):
        run_campaign(CampaignConfig(**{**TINY, "resume": other.info.run_id}))
    after = MlflowClient().get_run(other.info.run_id)
    assert after.data.tags == before.data.tags and after.info.status == before.info.status
    assert not MlflowClient().list_artifacts(other.info.run_id)


@pytest.mark.slow
def test_killed_right_after_the_run_was_created(
    tracking: str, paid: list[int], monkeypatch: pytest.MonkeyPatch, qm9
) -> None:
    """The resumed run gets the tags, params, config and split it never got."""
    start = MlflowTracker.start.__func__
    started: list[str] = []

    def dies(cls, *args, **kwargs):
        run = start(cls, *args, **kwargs)
        started.append(run.run_id)
        # killed here; what a real kill leaves behind expires: the lease, the local run stack
        if getattr(run, "lease", None) is not None:
            run.lease.release()
        mlflow.end_run("KILLED")
        raise Killed

    monkeypatch.setattr(MlflowTracker, "start", classmethod(dies))
    with pytest.raises(Killed):
        run_campaign(CampaignConfig(**{**TINY, "rounds": 1}))
    monkeypatch.setattr(MlflowTracker, "start", classmethod(start))
    (run_id,) = started
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags[TAG_KIND] == "campaign" and TAG_SEED not in tags  # known at once, nothing else

    run_campaign(CampaignConfig(**{**TINY, "rounds": 1, "resume": run_id}))
    run = MlflowClient().get_run(run_id)
    assert run.data.tags[TAG_KIND] == "campaign" and run.data.tags[TAG_SEED] == "0"
    assert run.data.tags[TAG_JOURNAL] == str(journal_path(run_id))
    assert TAG_MODEL_URI in run.data.tags and run.data.params["batch_size"] == "8"
    files = {a.path for a in MlflowClient().list_artifacts(run_id)}
    files |= {a.path for a in MlflowClient().list_artifacts(run_id, "splits")}
    assert {Artifacts.CONFIG, Artifacts.SPLITS} <= files
    assert len(paid) == len(queried_tables(run_id)) == 48
    assert al_loop.read_stored_campaign(run_id).config["initial_size"] == 20


@pytest.mark.slow
def test_server_killed_and_restarted_loses_no_label(tmp_path, tracking: str) -> None:
    """A real server killed while a round is being chosen: the round's labels are paid and
    cannot be recorded; the campaign ends with one line naming the journal. The server is
    started again on the same store and port; the resume records the journalled labels
    and buys none of them again."""
    from conftest import start_mlflow_server, stop_mlflow_server

    root = tmp_path / "server"
    root.mkdir()
    proc, uri = start_mlflow_server(root)
    port = int(uri.rsplit(":", 1)[1])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}  # fmt: skip
    cmd = [sys.executable, "-m", "al.cli", "al-loop", *ARGS, "--rounds", "2"]
    campaign = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert campaign.stdout is not None
    seen: list[str] = []
    try:
        for line in campaign.stdout:
            seen.append(line)
            if "event=phase phase=score round=1" in line:
                stop_mlflow_server(proc, signal.SIGKILL)  # the outage: no reply at all
        campaign.wait(120)
    finally:
        if campaign.poll() is None:
            campaign.kill()
        stop_mlflow_server(proc)
    out = "".join(seen)
    assert campaign.returncode != 0 and "Traceback" not in out, out[-3000:]
    errors = [line for line in seen if line.startswith("Error:")]
    assert len(errors) == 1, out[-3000:]
    journal = next(p for p in (tmp_path / "journal").glob("*.jsonl"))
    run_id = journal.stem
    assert str(journal) in errors[0] and f"--resume {run_id}" in errors[0]
    journalled = LabelJournal(journal).paid(1)
    assert len(journalled) == 40  # round 1 was paid before the outage was met

    proc, uri = start_mlflow_server(root, port)  # the server is back, same store
    try:
        resumed = subprocess.run(
            [sys.executable, "-m", "al.cli", "al-loop", "--resume", run_id],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        log = resumed.stdout + resumed.stderr
        assert "event=journal_resume round=1 requested=40 paid=40" in log
        mlflow.set_tracking_uri(uri)
        queried = queried_tables(run_id)
        assert queried.groupby("round").size().tolist() == [180, 40, 40]
        assert queried["qm9_index"].is_unique  # no molecule bought twice
        round1 = queried.loc[queried["round"] == 1].sort_values("qm9_index")
        assert round1["qm9_index"].tolist() == sorted(journalled["qm9_index"].tolist())
        assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(tracking)
        stop_mlflow_server(proc)


def test_a_refused_write_is_not_called_an_outage(tmp_path: Path) -> None:
    """A server that answers "invalid value" is up: the line says it refused, not that it is
    gone, and still where the paid labels are and how to resume."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    cause = MlflowException('Invalid value "a@b" for metric name', INVALID_PARAMETER_VALUE)
    message = str(LabelsNotRecordedError("r1", tmp_path / "r1.jsonl", cause, round_=0))
    assert message.startswith("the tracking server refused a value of campaign r1 round 0")
    assert "once what it refused is fixed" in message and "server is back" not in message
    assert str(tmp_path / "r1.jsonl") in message and "al al-loop --resume r1" in message


@pytest.mark.slow
def test_resume_finds_its_own_journal_and_refuses_to_rebuy_without_it(
    tracking: str, paid: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Round 1's labels are paid but never recorded (the server refused them). A resume from
    a shell with another journal setting reads the journal the run names and buys nothing
    twice; with the journal gone, resume is one line that says where it was and how to go
    on, and journal_lost=true goes on knowingly."""
    log_queried = MlflowTracker.log_queried

    def refused(self, round_: int, frame: pd.DataFrame) -> None:
        if round_ == 1:
            raise MlflowException("refused", error_code="INVALID_PARAMETER_VALUE")
        log_queried(self, round_, frame)

    monkeypatch.setattr(MlflowTracker, "log_queried", refused)
    with pytest.raises(LabelsNotRecordedError) as err:
        run_campaign(CampaignConfig(**TINY))
    run_id, first = err.value.run_id, list(paid)
    journal = journal_path(run_id)
    assert journal.exists() and len(first) == 48  # 20 + 20 validation, then round 1's 8
    monkeypatch.setattr(MlflowTracker, "log_queried", log_queried)

    # another shell: AL_JOURNAL_DIR points elsewhere, the run's tag names the journal
    monkeypatch.setenv("AL_JOURNAL_DIR", str(tmp_path / "elsewhere"))
    moved = journal.with_name("kept.jsonl")
    journal.rename(moved)
    with pytest.raises(ValueError, match="journal_lost=true") as missing:
        run_campaign(CampaignConfig(resume=run_id, progress=False))
    assert "\n" not in str(missing.value) and str(journal) in str(missing.value)
    assert paid == first  # nothing bought
    moved.rename(journal)
    assert run_campaign(CampaignConfig(resume=run_id, progress=False)) == run_id
    table = queried_tables(run_id)
    assert len(paid) == len(table) == len(set(paid))  # round 1 taken from the journal
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").iterdir())


@pytest.mark.slow
def test_a_process_that_lost_its_lease_stops_at_once(
    tracking: str, paid: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While round 1 is being labelled, another process takes the run over (as after this
    one was paused past the TTL): this one pays no further label, writes nothing more to the
    run (status, tags, metrics stay as the new owner finds them) and says so in one line."""
    from al.tracking import TAG_LEASE
    from al.tracking.lease import CampaignLease, LeaseLostError, LeaseRecord

    monkeypatch.setattr(CampaignLease, "RECHECK_S", 0.0)  # read the tag at every check
    label = DFTOracle.label
    calls: list[int] = []

    def taken_over_during_round_1(self, qm9_index, **kw):
        calls.append(len(qm9_index))  # one label a call (the DFT table's journal_chunk)
        out = label(self, qm9_index, **kw)
        if len(calls) == 41:  # round 1's first label: another process takes the run now
            run_id = mlflow.active_run().info.run_id
            now = time.time()
            record = LeaseRecord("other-host:1:abc", now, now).to_tag()
            MlflowClient().set_tag(run_id, TAG_LEASE, record)
        return out

    monkeypatch.setattr(DFTOracle, "label", taken_over_during_round_1)
    with pytest.raises(LeaseLostError) as err:
        run_campaign(CampaignConfig(**{**TINY, "batch_size": 130}))
    message = str(err.value)
    assert "\n" not in message and "other-host:1:abc" in message
    assert calls == [1] * 41  # round 0's 40, then only the label in flight of round 1
    run_id = message.split()[1]
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "RUNNING"  # not ours to end
    assert LeaseRecord.parse(run.data.tags[TAG_LEASE]).owner == "other-host:1:abc"
    assert CampaignMetrics.N_LABELLED not in run.data.metrics or (
        run.data.metrics[CampaignMetrics.N_LABELLED] == 20
    )  # round 1 was never recorded
