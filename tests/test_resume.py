"""Kill a campaign for real (SIGKILL) at three points, resume it, and check nothing is lost."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from al.tracking import TAG_COMPLETED_ROUND, CampaignMetrics, queried_path

pytestmark = pytest.mark.slow

ARGS = [
    "--initial-size", "150", "--batch-size", "40", "--rounds", "3", "--epochs", "4",
    "--ensemble-size", "2", "--pool-subsample", "20000", "--n-test", "200", "--hidden", "32",
    "--filter-groups", "8", "--n-interactions", "2", "--progress", "false",
    "--experiment-name", "resume-test", "--seed", "7",
]  # fmt: skip


def run_until(env: dict, extra: list[str], marker: str | None, timeout: float = 300) -> str:
    """Run `al al-loop`; SIGKILL it as soon as ``marker`` appears in its log.

    Returns the output seen. With ``marker=None`` the run must finish by itself.
    """
    cmd = [sys.executable, "-m", "al.cli", "al-loop", *ARGS, *extra]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: list[str] = []
    deadline = time.time() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker is not None and marker in line:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return "".join(seen)
        if time.time() > deadline:
            proc.kill()
            pytest.fail("campaign did not reach " + str(marker) + "\n" + "".join(seen[-40:]))
    proc.wait(30)
    out = "".join(seen)
    if marker is not None:
        pytest.fail(f"campaign ended before {marker!r}:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


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
    assert queried.groupby("round").size().tolist() == [150, 40, 40, 40]
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
