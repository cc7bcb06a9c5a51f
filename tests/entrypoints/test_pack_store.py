"""experiments/pack_store.py: a grid's finished campaigns carried to another folder go on
being reported, and the grid reruns only what was not finished."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
GRID = """\
name: packed
description: two tiny campaigns (numbers mean nothing)
question: plumbing
seeds: [0]
base: {initial_size: 40, batch_size: 20, rounds: 1, epochs: 2, min_steps: 0, val_min: 0,
       ensemble_size: 2, hidden: 16, filter_groups: 4, n_interactions: 1,
       pool_subsample: 200, n_test: 200, train_batch_size: 32}
cells:
  - {name: random, strategy: random}
  - {name: max_std, strategy: ensemble}
"""


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_packed_finished_campaigns_report_alike_and_only_the_rest_rerun(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    grid = tmp_path / "packed.yaml"
    grid.write_text(GRID)
    db = here / "store.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
           "AL_JOURNAL_DIR": str(here / "journal"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    al = [sys.executable, "-m", "al.cli"]
    _run([*al, "experiment", "--grid", str(grid), "--threads", "1"], env, here)
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("grid-packed")
    runs = client.search_runs([exp.experiment_id], "tags.`al.kind` = 'campaign'")
    unfinished = next(r for r in runs if r.data.tags["al.cell"] == "max_std")
    finished = next(r for r in runs if r.data.tags["al.cell"] == "random")
    client.set_terminated(unfinished.info.run_id, "KILLED")  # as a kill mid-campaign leaves it
    history = {(m.step, m.value) for m in client.get_metric_history(finished.info.run_id,
                                                                    "test_mae")}  # fmt: skip

    archive = tmp_path / "store.tar.xz"
    packed = _run([sys.executable, str(REPO / "experiments" / "pack_store.py"), "pack",
                   "--db", str(db), "--experiment", "grid-packed", "--out", str(archive)],
                  env, here)  # fmt: skip
    assert "1 finished campaign(s)" in packed.stdout and "1 unfinished left out" in packed.stdout
    (here / "mlruns").rename(tmp_path / "gone")  # nothing of the old folder is read
    db.unlink()
    _run([sys.executable, str(REPO / "experiments" / "pack_store.py"), "unpack", str(archive),
          "--into", str(there)], env, tmp_path)  # fmt: skip

    env_there = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{there / 'store.db'}",
                 "AL_JOURNAL_DIR": str(there / "journal")}  # fmt: skip
    _run([*al, "compare", "--experiment-name", "grid-packed", "--output-dir",
          str(there / "report")], env_there, there)  # fmt: skip
    table = pd.read_csv(there / "report" / "tables" / "per_seed.csv").dropna(subset=["test_mae"])
    assert set(table["run_id"]) == {finished.info.run_id}
    assert set(zip(table["step"], table["test_mae"], strict=True)) == history
    for name in ("mae_vs_labels", "calibration"):  # figures from the packed predictions too
        assert any(p.name.startswith(name) for p in (there / "report" / "plots").iterdir())

    _run([*al, "experiment", "--grid", str(grid), "--threads", "1"], env_there, there)
    client = MlflowClient(f"sqlite:///{there / 'store.db'}")
    runs = client.search_runs([exp.experiment_id], "tags.`al.kind` = 'campaign'")
    assert sorted((r.data.tags["al.cell"], r.info.status) for r in runs) == [
        ("max_std", "FINISHED"), ("random", "FINISHED")]  # fmt: skip
    assert finished.info.run_id in {r.info.run_id for r in runs}  # not run again
