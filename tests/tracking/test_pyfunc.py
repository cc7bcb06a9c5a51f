"""The logged MLflow model and `al predict`, on a model trained against a real server."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from al.cli import main
from al.data.molecules import molecules_frame
from al.data.xyz import Molecule, write_xyz
from al.entrypoints.train import TrainRunConfig, run_train
from al.tracking import TAG_MODEL_URI

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_uri(mlflow_server: str) -> str:
    mlflow.set_tracking_uri(mlflow_server)
    cfg = TrainRunConfig(
        train_size=60, epochs=2, batch_size=16, hidden=32, filter_groups=8, n_interactions=1,
        n_test=50, progress=False, experiment_name="pyfunc-tests",
    )  # fmt: skip
    run_id = run_train(cfg)
    return mlflow.get_run(run_id).data.tags[TAG_MODEL_URI]


def _molecules(qm9, indices):
    out = []
    for r in qm9.rows_of(indices).tolist():
        a, b = int(qm9.ptr[r]), int(qm9.ptr[r + 1])
        out.append(
            Molecule(f"qm9_{int(qm9.qm9_index[r])}", qm9.z[a:b].numpy(), qm9.pos[a:b].numpy())
        )
    return out


def test_pyfunc_matches_between_python_and_cli(tracking, model_uri, qm9, tmp_path: Path) -> None:
    mols = _molecules(qm9, [1, 5, 100])
    model = mlflow.pyfunc.load_model(model_uri)
    direct = model.predict(molecules_frame([(m.z, m.pos) for m in mols]))
    assert direct.shape == (3, 2)
    assert np.isfinite(direct["mean_ev"]).all()
    assert direct["std_ev"].isna().all()  # one model, no dropout: no uncertainty claimed

    write_xyz(tmp_path / "a.xyz", mols[:2])
    write_xyz(tmp_path / "b.xyz", mols[2:])
    out_csv = tmp_path / "pred.csv"
    result = CliRunner().invoke(
        main,
        ["predict", "--model", model_uri, str(tmp_path / "a.xyz"), str(tmp_path / "b.xyz"),
         "-o", str(out_csv)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out_csv)
    assert list(table["name"]) == ["a", "a#1", "b"]
    assert list(table["n_atoms"]) == [len(m.z) for m in mols]
    np.testing.assert_allclose(table["mean_ev"], direct["mean_ev"], rtol=1e-6)
    # invariance survives the round trip: a rotated copy predicts the same energy
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    again = model.predict(molecules_frame([(mols[2].z, mols[2].pos @ rot.T + 3.0)]))
    assert again["mean_ev"][0] == pytest.approx(direct["mean_ev"][2], abs=1e-4)


def test_predict_reports_bad_files(tracking, model_uri, tmp_path: Path) -> None:
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\ncomment\nC 0 0 0\nH 0 zero 1\n")
    result = CliRunner().invoke(main, ["predict", "--model", model_uri, str(bad)])
    assert result.exit_code != 0
    assert "bad.xyz:4:" in result.output
    cl = tmp_path / "cl.xyz"
    cl.write_text("2\n\nC 0 0 0\nCl 0 0 1.7\n")
    result = CliRunner().invoke(main, ["predict", "--model", model_uri, str(cl)])
    assert result.exit_code != 0
    assert "cl.xyz:4:" in result.output and "'Cl'" in result.output
    result = CliRunner().invoke(main, ["predict", "--model", model_uri, str(tmp_path / "no.xyz")])
    assert result.exit_code != 0 and "no.xyz: no such file" in result.output


def test_a_logged_model_runs_on_the_package_stored_with_it(tracking, model_uri, qm9) -> None:
    """The model carries the package as one file, ``code/al.zip``; a process that has not
    imported ``al`` loads and predicts with that copy, the shipped oracle checkpoint
    included."""
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    assert sorted(p.name for p in (local / "code").iterdir()) == ["al.zip"]
    frame = molecules_frame([(m.z, m.pos) for m in _molecules(qm9, [1, 2, 3])])
    frame_file = local.parent / "frame.json"
    frame.to_json(frame_file, orient="split")
    script = f"""
import json, sys
import mlflow, pandas as pd
assert "al" not in sys.modules
model = mlflow.pyfunc.load_model({str(local)!r})
out = model.predict(pd.read_json({str(frame_file)!r}, orient="split"))
from al.oracles.pretrained import packaged_checkpoint
ckpt = packaged_checkpoint()
print(json.dumps({{"mean_ev": out["mean_ev"].tolist(), "al": sys.modules["al"].__file__,
                  "checkpoint": ckpt.is_file() and ckpt.with_suffix(".json").is_file()}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=local
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["al"] == str(local / "code" / "al.zip" / "al" / "__init__.py")
    assert got["checkpoint"]
    here = mlflow.pyfunc.load_model(model_uri).predict(frame)["mean_ev"].to_numpy()
    np.testing.assert_allclose(got["mean_ev"], here, rtol=1e-6)


def test_predict_rejects_bad_frames(tracking, model_uri) -> None:
    model = mlflow.pyfunc.load_model(model_uri)
    with pytest.raises(Exception, match="2 atomic numbers but 1 positions"):
        model.predict(pd.DataFrame({"z": [[6, 1]], "pos": [[[0.0, 0.0, 0.0]]]}))


def test_predict_molecules_batches_by_size_and_answers_in_the_order_given(qm9) -> None:
    import torch

    from al.models import build_model
    from al.tracking.pyfunc import predict_molecules

    torch.manual_seed(0)
    models = [build_model("schnet", hidden=16, filter_groups=4, n_interactions=1) for _ in "ab"]
    rows = torch.randperm(len(qm9), generator=torch.Generator().manual_seed(1))[:23].tolist()
    spans = [slice(int(qm9.ptr[r]), int(qm9.ptr[r + 1])) for r in rows]
    mols = [(qm9.z[s], qm9.pos[s]) for s in spans]
    sizes = [len(z) for z, _ in mols]
    assert sizes != sorted(sizes)  # the order given is not the order of size
    frame = molecules_frame(mols)
    together = predict_molecules(models, frame, batch_size=5)
    alone = pd.concat([predict_molecules(models, frame.iloc[[i]]) for i in range(len(frame))])
    np.testing.assert_allclose(together["mean_ev"], alone["mean_ev"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(together["std_ev"], alone["std_ev"], rtol=0, atol=1e-4)
    assert together["std_ev"].gt(0).all()
    # a malformed molecule is named by its row in the frame, not its place in a batch
    bad = frame.copy()
    bad.at[17, "pos"] = bad.at[17, "pos"][:-1]
    with pytest.raises(ValueError, match=r"^molecule 17: "):
        predict_molecules(models, bad, batch_size=5)
