"""Your molecules, your labeller: a campaign on a pool proposes a batch and waits, ``al
ingest`` records the answers, resume goes on; killed on the way, nothing is lost and
nothing recorded twice. Against a real ``mlflow server``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase.io import read
from click.testing import CliRunner
from conftest import al_loop_until, one_line_error
from mlflow.tracking import MlflowClient

from al import api
from al.cli import main
from al.data.pools import load_pool
from al.entrypoints.al_loop import run_campaign
from al.loop import campaign as campaign_module
from al.loop.config import CampaignConfig
from al.loop.journal import LabelJournal, journal_path
from al.oracles import build_oracle
from al.tracking import TAG_AWAITING_LABELS, TAG_EVALUATED_ON, TAG_POOL, CampaignRun

SMALL = dict(
    oracle="external", heldout_size=10, val_size=10, initial_size=20, batch_size=8, rounds=2,
    hidden=8, n_interactions=1, filter_groups=4, epochs=1, min_steps=0, val_min=0,
    ensemble_size=2, pool_subsample=100, progress=False, train_batch_size=32, threads=1,
    experiment_name="external",
)  # fmt: skip


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing catches it on its way out."""


@pytest.fixture(autouse=True)
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AL_JOURNAL_DIR", str(tmp_path / "journal"))


def truth(pool: str, batch: pd.DataFrame) -> pd.DataFrame:
    """``batch`` labelled by the shipped network (standing for one's own DFT code)."""
    data = load_pool(pool).data
    result = build_oracle("pretrained", data=data).label(batch["number"].to_numpy(np.int64))
    return batch.assign(label=result.value)


def waiting(run_id: str) -> tuple[str, str | None]:
    run = MlflowClient().get_run(run_id)
    return run.info.status, run.data.tags.get(TAG_AWAITING_LABELS)


def queried(run_id: str) -> pd.DataFrame:
    run = CampaignRun(run_id)
    return pd.concat([run.read_queried(r) for r in run.queried_rounds()], ignore_index=True)


@pytest.mark.slow
def test_propose_ingest_resume_loses_nothing_and_records_nothing_twice(
    qm9_pool: str, tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = tmp_path / "batches"
    config = CampaignConfig(**SMALL, pool=qm9_pool, batch_dir=str(batches))
    run_id = run_campaign(config)
    assert waiting(run_id) == ("SCHEDULED", "round 0: 40 molecules")
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags[TAG_POOL] == qm9_pool and tags[TAG_EVALUATED_ON] == "held-out labelled molecules"
    path = batches / run_id / "round_000.csv"
    batch = pd.read_csv(path, dtype={"id": str})
    assert batch["role"].value_counts().to_dict() == {"train": 20, "validation": 10, "heldout": 10}
    assert batch["label"].isna().all() and (batch["unit"] == "eV").all()
    frames = read(path.with_suffix(".xyz"), index=":")
    assert [f.info["id"] for f in frames] == batch["id"].tolist()
    on_run = {a.path for a in MlflowClient().list_artifacts(run_id, "rounds/round_000")}
    assert {"rounds/round_000/round_000.csv", "rounds/round_000/round_000.xyz"} <= on_run

    # a partial answer with every kind of bad row: the good rows are recorded, each bad
    # one refused in one line, and nothing else is lost
    labelled = truth(qm9_pool, batch)
    part = labelled.iloc[:25].astype({"label": object}).assign(status="")
    part.loc[part.index[24], ["label", "status"]] = ["", "scf_not_converged"]
    bad = pd.DataFrame({
        "id": ["nope", batch["id"][30], batch["id"][30], batch["id"][31], batch["id"][32]],
        "label": ["-1.0", "-2.0", "-2.1", "abc", "-3.0"],
        "unit": ["eV", "eV", "eV", "eV", "kcal/mol"],
    })  # fmt: skip
    labels = tmp_path / "labels.csv"
    pd.concat([part, bad], ignore_index=True).to_csv(labels, index=False)
    result = CliRunner().invoke(main, ["ingest", run_id, str(labels)])
    assert result.exit_code == 1, result.output
    refused = [line for line in result.output.splitlines() if " refused: " in line]
    assert len(refused) == 5
    assert "not a molecule of qm9x" in refused[0] and "more than once" in refused[1]
    assert "not a finite number" in refused[3] and "unit 'kcal/mol'" in refused[4]
    assert "25 label(s) recorded (1 failed), 5 row(s) refused" in result.output

    # resume: the campaign asks again for the 15 molecules still without an answer only
    assert run_campaign(CampaignConfig(resume=run_id, progress=False)) == run_id
    assert waiting(run_id) == ("SCHEDULED", "round 0: 15 molecules")
    rest = pd.read_csv(path, dtype={"id": str})
    assert sorted(rest["id"]) == sorted(batch["id"][25:])

    # the rest through the Python API, killed after the journal took it and before the run
    # heard of it: asked again, every row is refused as already recorded
    set_tag = MlflowClient.set_tag

    def killed_set_tag(self, run, key, value, *args, **kwargs):
        if key == TAG_AWAITING_LABELS:
            raise Killed
        return set_tag(self, run, key, value, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_tag", killed_set_tag)
    with pytest.raises(Killed):
        api.ingest(run_id, truth(qm9_pool, rest))
    monkeypatch.setattr(MlflowClient, "set_tag", set_tag)
    again = api.ingest(run_id, truth(qm9_pool, rest))
    assert again.recorded == 0 and len(again.refused) == 15 and again.waiting == 0
    journal = LabelJournal(journal_path(run_id))
    assert len(journal.paid(0)) == 40  # each answer once

    # resume, killed in round 0's fit: the next resume fits it and proposes round 1
    fit = campaign_module.Campaign.fit_and_evaluate

    def killed_fit(self, round_):
        raise Killed

    monkeypatch.setattr(campaign_module.Campaign, "fit_and_evaluate", killed_fit)
    with pytest.raises(Killed):
        run_campaign(CampaignConfig(resume=run_id, progress=False))
    monkeypatch.setattr(campaign_module.Campaign, "fit_and_evaluate", fit)
    proposal = api.propose(resume=run_id, progress=False)
    assert (proposal.round, len(proposal.table)) == (1, 8)
    assert waiting(run_id) == ("SCHEDULED", "round 1: 8 molecules")
    assert proposal.table["pred_std"].notna().all() and proposal.table["score"].notna().all()

    # round 1's answers, then round 2's: the campaign ends FINISHED, waiting no more
    api.ingest(run_id, truth(qm9_pool, proposal.table))
    proposal = api.propose(resume=run_id, progress=False)
    assert proposal.round == 2
    api.ingest(run_id, truth(qm9_pool, proposal.table))
    final = api.propose(resume=run_id, progress=False)
    assert final.round is None and waiting(run_id) == ("FINISHED", None)

    q = queried(run_id)
    assert q.groupby("round").size().tolist() == [40, 8, 8]
    assert q["qm9_index"].is_unique and q["id"].notna().all() and q["smiles"].notna().all()
    assert (q["status"] != "ok").sum() == 1  # the failed label, recorded and charged
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["cost_spent"] == 56.0  # each label paid once, at the external cost 1
    assert metrics["n_heldout"] + metrics["n_validation"] + metrics["n_labelled"] == 55


def test_what_a_pool_campaign_cannot_do_is_one_line(
    qm9_pool: str, tracking: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    base = ["al-loop", "--pool", qm9_pool, "--heldout-size", "10", "--val-size", "10",
            "--initial-size", "20", "--experiment-name", "external-errors"]  # fmt: skip
    error = one_line_error(runner.invoke(main, [*base, "--oracle", "dft"]))
    assert "reads QM9's table" in error and "external" in error
    error = one_line_error(runner.invoke(main, [*base, "--oracle", "xtb", "--unit", "kcal/mol"]))
    assert "give eV" in error
    error = one_line_error(runner.invoke(main, [*base, "--heldout-size", "150"]))
    assert "heldout_size 150 leaves no molecule" in error
    error = one_line_error(runner.invoke(main, [*base[:2], "no_such_pool"]))
    assert "no pool 'no_such_pool'" in error
    labels = tmp_path / "labels.csv"
    labels.write_text("name,value\nm1,-1.0\n")
    run_id = MlflowClient().create_run(MlflowClient().create_experiment("x")).info.run_id
    error = one_line_error(runner.invoke(main, ["ingest", run_id, str(labels)]))
    assert "is not a campaign" in error


@pytest.mark.slow
def test_killed_with_sigkill_the_cycle_resumes_and_loses_nothing(
    qm9_pool: str, subprocess_env: dict, tmp_path: Path
) -> None:
    env = {**subprocess_env, "AL_POOL_DIR": os.environ["AL_POOL_DIR"],
           "AL_JOURNAL_DIR": str(tmp_path / "journal")}  # fmt: skip
    args = ["--pool", qm9_pool, "--oracle", "external", "--heldout-size", "10", "--val-size",
            "10", "--initial-size", "20", "--batch-size", "8", "--rounds", "1", "--hidden", "8",
            "--n-interactions", "1", "--filter-groups", "4", "--epochs", "1", "--min-steps", "0",
            "--ensemble-size", "2", "--progress", "false", "--threads", "1", "--batch-dir",
            str(tmp_path / "batches"), "--experiment-name", "external-kill"]  # fmt: skip
    # killed once its batch is written, before its run says it waits: ingest says to resume
    al_loop_until(env, args, "event=awaiting_labels")
    run_id = next((tmp_path / "batches").iterdir()).name
    path = tmp_path / "batches" / run_id / "round_000.csv"
    labels = tmp_path / "labels.csv"
    truth(qm9_pool, pd.read_csv(path, dtype={"id": str})).to_csv(labels, index=False)
    error = one_line_error(CliRunner().invoke(main, ["ingest", run_id, str(labels)]))
    assert "is not waiting for labels (status RUNNING)" in error and "--resume" in error
    out = al_loop_until(env, ["--resume", run_id], None)
    assert f"campaign {run_id} waits for labels: round 0, 40 molecules" in out
    assert CliRunner().invoke(main, ["ingest", run_id, str(labels)]).exit_code == 0

    # killed in round 0's fit, after the round's labels were recorded: resumed, it fits and
    # proposes round 1 with nothing asked again
    al_loop_until(env, ["--resume", run_id], "phase=fit round=0")
    out = al_loop_until(env, ["--resume", run_id], None)
    assert "waits for labels: round 1, 8 molecules" in out
    q = queried(run_id)
    given = pd.read_csv(labels, dtype={"id": str}).set_index("id")["label"]
    assert len(q) == 40 and q["qm9_index"].is_unique
    assert np.allclose(q["label"].to_numpy(), given[q["id"]].to_numpy())  # as ingested
    assert len(LabelJournal(journal_path(run_id)).paid(0)) == 40
