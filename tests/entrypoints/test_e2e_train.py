"""End to end: `mlflow run . -e train` against a real tracking server, read back via the API."""

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from al.data.molecules import molecules_frame
from al.tracking import TAG_KIND, TAG_MODEL_URI, Artifacts, Metrics

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_mlflow_run_train(tmp_path: Path, subprocess_env: dict, qm9) -> None:
    cfg = {
        "train_size": 80, "epochs": 5, "batch_size": 16, "hidden": 32, "filter_groups": 8,
        "n_interactions": 2, "n_test": 200, "progress": False, "dropout": 0.1,
    }  # fmt: skip
    cfg_file = tmp_path / "small.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [
        str(mlflow_bin), "run", str(REPO), "-e", "train", "--env-manager", "local",
        "--experiment-name", "e2e-train", "-P", f"config={cfg_file}", "-P", "epochs=3",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=subprocess_env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client = MlflowClient()
    exp = client.get_experiment_by_name("e2e-train")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_KIND] == "train"
    params = run.data.params
    assert params["epochs"] == "3"  # explicit parameter beats the config file
    assert params["train_size"] == "80" and params["hidden"] == "32"
    assert params["lr"] == "0.001"  # the resolved default is logged too
    assert len(params["split_digest"]) == 16

    history = client.get_metric_history(run.info.run_id, Metrics.VAL_MAE)
    assert sorted(m.step for m in history) == [0, 1, 2]
    for key in (Metrics.grad_norm("readout"), Metrics.act_norm("block_1"), Metrics.THROUGHPUT):
        assert len(client.get_metric_history(run.info.run_id, key)) == 3, key
    test_mae = run.data.metrics[Metrics.TEST_MAE]
    assert 0 < test_mae < 50

    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "splits", "plots", "predictions"} <= files
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {Artifacts.PARITY, Artifacts.CURVES} <= plots
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml")
    logged = yaml.safe_load(Path(local).read_text())
    assert logged["epochs"] == 3 and logged["train_size"] == 80
    inputs = {d.dataset.name.split("-")[-2] for d in run.inputs.dataset_inputs}
    assert inputs == {"train", "test"}

    model = mlflow.pyfunc.load_model(run.data.tags[TAG_MODEL_URI])
    rows = qm9.rows_of([1, 2, 3])
    mols = []
    for r in rows.tolist():
        a, b = int(qm9.ptr[r]), int(qm9.ptr[r + 1])
        mols.append((qm9.z[a:b].numpy(), qm9.pos[a:b].numpy()))
    out = model.predict(molecules_frame(mols))
    assert list(out.columns) == ["mean_ev", "std_ev"]
    assert np.isfinite(out["mean_ev"]).all()
    assert (out["std_ev"] > 0).all()  # dropout 0.1 -> MC-dropout spread
    pred_csv = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=Artifacts.PREDICTIONS
    )
    assert len(Path(pred_csv).read_text().splitlines()) == 201
