"""Oracle pretraining (``al pretrain``), the shipped ``pretrained`` oracle and ``pyg_schnet``.

Everything MLflow-related runs against the real tracking server of ``conftest.py``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
import types
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from torch import nn

from al.config import ConfigError
from al.data.elements import ATOM_REF_H298_HA
from al.data.splits import SplitConfig, make_splits
from al.entrypoints.al_loop import run_campaign
from al.entrypoints.label import run_label
from al.entrypoints.pretrain import (
    PRESETS,
    TRAIN_INDEX_ARTIFACT,
    reproduce_command,
    resolve_pretrain_config,
    run_pretrain,
)
from al.loop.config import CampaignConfig
from al.models.checkpoint import load_checkpoint
from al.oracles import (
    ORACLES,
    PYG_HARTREE_TO_EV,
    PYG_SCHNET_FOLDER,
    PYG_SCHNET_MODEL,
    PYG_SCHNET_URL,
    ModelOracle,
    OracleError,
    PretrainedOracle,
    PyGSchNetOracle,
    build_oracle,
    network_problem,
    packaged_checkpoint,
)
from al.tracking import CampaignMetrics, registry
from al.tracking.registry import (
    PRETRAINED_ALIAS,
    PRETRAINED_REGISTERED_NAME,
    file_sha256,
    register_oracles,
)
from al.training.fit import predict

#: Methane, ammonia, water, acetylene, hydrogen cyanide.
SMALL = [1, 2, 3, 4, 5]
UNKNOWN = 999_999


def _direct_prediction(path: Path, qm9, qm9_index: list[int]) -> np.ndarray:
    """The checkpoint's own prediction, ``[n]`` eV, without any oracle machinery."""
    models, _ = load_checkpoint(path)
    mean, _ = predict(models[0], qm9, qm9.rows_of(qm9_index), amp=False)
    return mean.numpy()


# --- config -----------------------------------------------------------------------------------
def test_presets_apply_below_explicit_keys() -> None:
    lofi = resolve_pretrain_config({})
    assert lofi.fidelity == "lofi" and lofi.hidden == PRESETS["lofi"]["hidden"]
    assert lofi.train_size == PRESETS["lofi"]["train_size"] and lofi.dropout == 0.0
    hifi = resolve_pretrain_config({"fidelity": "hifi", "epochs": "7"})
    assert hifi.hidden == PRESETS["hifi"]["hidden"] and hifi.epochs == 7
    assert (hifi.register_as, hifi.experiment_name) == ("qm9-oracle", "al-oracles")
    assert reproduce_command(resolve_pretrain_config({"fidelity": "hifi"})) == (
        "al pretrain --fidelity hifi"
    )
    assert reproduce_command(hifi) == "al pretrain --fidelity hifi --epochs 7"
    with pytest.raises(ConfigError, match="'fidelity': 'medium' is not one of lofi, hifi"):
        resolve_pretrain_config({"fidelity": "medium"})
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_pretrain_config({"strategy": "random"})


def test_cli_rejects_a_bad_fidelity_in_one_line() -> None:
    from al.cli import main

    result = CliRunner().invoke(main, ["pretrain", "--fidelity", "medium"])
    assert result.exit_code != 0
    assert "'fidelity': 'medium' is not one of lofi, hifi" in result.output


# --- al pretrain against the tracking server --------------------------------------------------
@pytest.mark.slow
def test_pretrain_registers_an_oracle_trained_on_the_oracle_split(
    tracking: str, qm9, tmp_path: Path
) -> None:
    name = f"test-oracle-{uuid.uuid4().hex[:8]}"
    config = resolve_pretrain_config(
        {
            "fidelity": "lofi", "train_size": 64, "epochs": 2, "batch_size": 32, "n_test": 200,
            "register_as": name, "experiment_name": "pretrain-tests", "progress": False,
            "export": str(tmp_path / "export"),
        }
    )  # fmt: skip
    result = run_pretrain(config)
    client = MlflowClient()

    # the run: kind tag, resolved params, metrics
    run = client.get_run(result.run_id)
    assert run.data.tags["al.kind"] == "pretrain" and run.data.tags["al.fidelity"] == "lofi"
    splits = make_splits(qm9.qm9_index.numpy(), SplitConfig(0, 200, 50_000))
    assert run.data.params["split_digest"] == splits.digest()
    assert run.data.params["train_size"] == "64" and run.data.params["hidden"] == "32"
    for key in ("test_mae", "test_rmse", "baseline_test_mae"):
        assert np.isfinite(run.data.metrics[key])

    # every molecule it saw is in the oracle split
    path = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path=TRAIN_INDEX_ARTIFACT, dst_path=str(tmp_path)
    )
    used = pd.read_csv(path)
    assert len(used) == 64 and set(used["role"]) == {"train", "val"}
    assert np.isin(used["qm9_index"], splits.oracle).all()
    assert not np.isin(used["qm9_index"], np.concatenate([splits.test, splits.pool])).any()

    # the registered version: alias = fidelity, tags
    mv = client.get_model_version_by_alias(name, "lofi")
    assert mv.version == result.version
    assert mv.tags["fidelity"] == "lofi" and mv.tags["train_size"] == "64"
    assert mv.tags["split_digest"] == splits.digest()
    assert float(mv.tags["test_mae"]) == pytest.approx(result.test_mae, abs=1e-6)
    assert result.registered_uri == f"models:/{name}@lofi"

    # the export: checkpoint + provenance
    prov = json.loads((tmp_path / "export" / "qm9_oracle.json").read_text())
    assert prov["sha256"] == file_sha256(result.export) == mv.tags["sha256"]
    assert prov["command"].startswith("al pretrain --fidelity lofi --")
    assert "--train-size 64" in prov["command"] and prov["split_digest"] == splits.digest()
    assert prov["n_train"] + prov["n_val"] == 64 and prov["model"]["hidden"] == 32

    # the registered model is an oracle
    oracle = build_oracle(f"model:models:/{name}@lofi", data=qm9)
    labels = oracle.label([*SMALL, UNKNOWN])
    assert list(labels.status) == ["ok"] * len(SMALL) + ["unknown_molecule"]
    direct = _direct_prediction(result.export, qm9, SMALL)
    np.testing.assert_allclose(labels.value[:-1], direct, atol=1e-4)

    # ... and a campaign's cheap fidelity by its alias: MLflow refuses "@" in a metric name,
    # so its label count is logged under the oracle's key
    spec = f"model:models:/{name}@lofi"
    run_id = run_campaign(
        CampaignConfig(
            oracles=f"{spec},dft", costs="0.001,1.0", initial_size=40, batch_size=5, rounds=1,
            epochs=1, ensemble_size=2, min_steps=0, val_min=0, val_size=20, pool_subsample=60,
            n_test=50,
            hidden=16, filter_groups=8, n_interactions=1, progress=False,
            experiment_name="pretrain-tests",
        )
    )  # fmt: skip
    metrics = client.get_run(run_id).data.metrics
    assert CampaignMetrics.labels_from(spec) == f"n_labels.model_models__{name}_lofi"
    assert metrics[CampaignMetrics.labels_from(spec)] >= 40
    assert metrics[CampaignMetrics.labels_from("dft")] >= 40
    # its 64 DFT training labels, read from its lineage, are a cost of their own
    assert metrics[CampaignMetrics.N_PRIOR_LABELS] == 64
    assert metrics[CampaignMetrics.COST_TOTAL] == pytest.approx(
        metrics[CampaignMetrics.COST_SPENT] + 64.0
    )


# --- the shipped oracle -------------------------------------------------------------------------
def test_shipped_oracle_labels_offline_like_its_checkpoint(qm9) -> None:
    oracle = PretrainedOracle(qm9, register="never")
    assert oracle.kind() == "pretrained" and oracle.cost_per_label == 0.001
    result = oracle.label([*SMALL, UNKNOWN, 1])
    assert list(result.status) == ["ok"] * len(SMALL) + ["unknown_molecule", "ok"]
    direct = _direct_prediction(packaged_checkpoint(), qm9, [*SMALL, 1])
    np.testing.assert_allclose(result.value[[0, 1, 2, 3, 4, 6]], direct, rtol=0, atol=1e-9)
    dft = qm9.y[qm9.rows_of(SMALL)].numpy()
    assert np.abs(result.value[: len(SMALL)] - dft).max() < 1.5  # eV: a usable stand-in


def test_shipped_oracle_provenance(qm9) -> None:
    path = packaged_checkpoint()
    assert path.is_file() and path.stat().st_size < 1_000_000
    oracle = build_oracle("pretrained", data=qm9)
    prov = oracle.provenance
    default_split = make_splits(qm9.qm9_index.numpy())
    assert prov["split_digest"] == default_split.digest() == oracle.split_digest
    assert prov["split"] == {"seed": 0, "n_test": 10_000, "n_oracle": 50_000}
    assert prov["sha256"] == file_sha256(path) and prov["command"].startswith("al pretrain")
    assert 0 < prov["test_mae_ev"] < 0.5 and prov["n_train"] >= 1000
    info = oracle.describe()
    assert info["sha256"] == prov["sha256"] and info["test_mae_ev"] == prov["test_mae_ev"]
    assert info["split_digest"] == default_split.digest()
    # the campaign's split is checked against the oracle's
    assert oracle.check_split(default_split.digest())


def test_shipped_oracle_warns_on_another_split(qm9, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="al.oracles"):
        PretrainedOracle(qm9, register="never", split_digest="0123456789abcdef")
    assert "event=oracle_split_mismatch" in caplog.text


def test_shipped_oracle_prediction_error_is_recorded(qm9) -> None:
    oracle = PretrainedOracle(qm9, register="never")

    class Broken(nn.Linear):
        def energy_and_embedding(self, *args: object) -> None:
            raise RuntimeError("out of memory")

    oracle.model = Broken(1, 1)
    result = oracle.label([1, UNKNOWN, 2])
    assert list(result.status) == ["error:RuntimeError", "unknown_molecule", "error:RuntimeError"]
    assert np.isnan(result.value).all()


def test_corrupt_checkpoint_is_detected(qm9, tmp_path: Path) -> None:
    src = packaged_checkpoint()
    pt = tmp_path / src.name
    shutil.copyfile(src, pt)
    shutil.copyfile(src.with_suffix(".json"), pt.with_suffix(".json"))
    assert PretrainedOracle(qm9, path=pt, register="never").label([1]).ok.all()
    raw = bytearray(pt.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = bytes(b ^ 0xFF for b in raw[len(raw) // 2 :][:8])
    pt.write_bytes(bytes(raw))
    with pytest.raises(OracleError, match=r"is corrupt: its sha256 .* differs"):
        PretrainedOracle(qm9, path=pt)
    pt.with_suffix(".json").unlink()
    with pytest.raises(OracleError, match=r"provenance .* does not exist"):
        PretrainedOracle(qm9, path=pt)


@pytest.mark.slow
def test_shipped_oracle_is_registered_once_when_a_campaign_or_al_label_starts(
    tracking: str, qm9, tmp_path: Path
) -> None:
    client = MlflowClient()
    mlflow.set_experiment("pretrain-tests-campaign")
    with mlflow.start_run() as campaign:  # as al_loop: oracles built, then registered
        first = PretrainedOracle(qm9)
        assert first.registered_uri is None  # building it touches no tracking server
        register_oracles([first])
        assert mlflow.active_run().info.run_id == campaign.info.run_id  # untouched
        assert first.label(SMALL).ok.all()
        second = PretrainedOracle(qm9)
        register_oracles([second])
        assert second.label([6, 7]).ok.all()
    assert first.registered_uri == second.registered_uri is not None
    versions = [
        mv
        for mv in client.search_model_versions(f"name='{PRETRAINED_REGISTERED_NAME}'")
        if mv.tags.get("sha256") == first.sha256
    ]
    assert len(versions) == 1  # the second instance found the first one's version
    alias = client.get_model_version_by_alias(PRETRAINED_REGISTERED_NAME, PRETRAINED_ALIAS)
    assert alias.version == versions[0].version
    assert versions[0].tags["split_digest"] == first.split_digest
    # the registration run lives in al-oracles; the campaign run got no model
    reg_run = client.get_run(versions[0].tags["run_id"])
    assert reg_run.data.tags["al.kind"] == "pretrain"
    assert reg_run.data.tags["al.registered_model"] == first.registered_uri
    assert client.get_experiment(reg_run.info.experiment_id).name == "al-oracles"
    outputs = client.get_run(campaign.info.run_id).outputs
    assert not (outputs.model_outputs if outputs else [])
    # the registered model answers like the in-process oracle
    via_mlflow = ModelOracle(qm9, f"models:/{PRETRAINED_REGISTERED_NAME}@{PRETRAINED_ALIAS}")
    np.testing.assert_allclose(
        via_mlflow.label(SMALL).value, first.label(SMALL).value, rtol=0, atol=1e-4
    )
    # `al label` with the shipped oracle registers it (the same version) before labelling
    src = tmp_path / "in.csv"
    src.write_text("qm9_index\n1\n2\n")
    run_id = run_label("pretrained", src, experiment_name="pretrain-tests-label")
    assert client.get_run(run_id).data.params["oracle.registered_uri"] == first.registered_uri
    same = client.search_model_versions(f"name='{PRETRAINED_REGISTERED_NAME}'")
    assert [mv.tags.get("sha256") for mv in same].count(first.sha256) == 1


def test_registration_failure_never_fails_a_label(
    qm9, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # nothing listens on port 9; the module variable is what mlflow.set_tracking_uri sets
    monkeypatch.setattr(
        "mlflow.tracking._tracking_service.utils._tracking_uri", "http://127.0.0.1:9"
    )
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    oracle = PretrainedOracle(qm9, register="always")
    again = PretrainedOracle(qm9, register="always")  # the same checkpoint: tried once
    with caplog.at_level(logging.WARNING, logger="al.tracking"):
        register_oracles([oracle, again])
    assert caplog.text.count("event=oracle_registration_failed") == 1
    assert oracle.registered_uri is None and again.registered_uri is None
    assert oracle.label([1, 2]).ok.all()


def test_registration_needs_a_tracking_uri_or_a_run_unless_asked(
    qm9, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)
    assert not registry.tracking_configured()
    tried: list[str] = []
    monkeypatch.setattr(
        registry, "register_pretrained_oracle", lambda o: tried.append(o.register_mode) or "x"
    )
    modes = [PretrainedOracle(qm9, register=m) for m in ("auto", "never", "always")]
    with caplog.at_level(logging.WARNING):
        register_oracles([*modes, build_oracle("dft", data=qm9)])
    assert tried == ["always"] and not caplog.text  # auto: no tracking URI, no warning
    assert [o.registered_uri for o in modes] == [None, None, "x"]


# --- PyG's pretrained SchNet --------------------------------------------------------------------
def test_pyg_schnet_offline_fails_fast_with_one_clear_error(qm9, tmp_path: Path) -> None:
    if network_problem(PYG_SCHNET_URL) is None:
        pytest.skip("the network is reachable here; the offline error cannot be shown")
    t0 = time.perf_counter()
    with pytest.raises(OracleError) as err:
        PyGSchNetOracle(qm9, root=tmp_path)
    assert time.perf_counter() - t0 < 5.0
    message = str(err.value)
    assert "\n" not in message and PYG_SCHNET_URL in message
    assert "network access" in message and "oracle=pretrained" in message
    assert str(tmp_path / PYG_SCHNET_FOLDER) in message
    assert ORACLES["pyg_schnet"] is PyGSchNetOracle


def _fake_schnetpack_model(mean: float, monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    """A schnetpack-0.3-shaped QM9 model whose outputs are ``mean`` per atom + the atom refs.

    Its classes live in a module named ``schnetpack.fake`` while it is pickled, so reading it
    back exercises the schnetpack-free unpickler.
    """
    fake = types.ModuleType("schnetpack.fake")

    def cls(name: str) -> type:
        c = type(name, (nn.Module,), {"__module__": "schnetpack.fake"})
        c.__qualname__ = name
        setattr(fake, name, c)
        return c

    Model, Rep, Inter, CFConv, Atomwise, MLP, Pool, Std = map(
        cls, ["Model", "Rep", "Inter", "CFConv", "Atomwise", "MLP", "Pool", "Std"]
    )
    monkeypatch.setitem(sys.modules, "schnetpack", types.ModuleType("schnetpack"))
    monkeypatch.setitem(sys.modules, "schnetpack.fake", fake)
    gen = torch.Generator().manual_seed(0)

    def lin(i: int, o: int, bias: bool = True) -> nn.Linear:
        layer = nn.Linear(i, o, bias=bias)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(o, i, generator=gen) * 0.05)
        return layer

    rep = Rep()
    rep.embedding = nn.Embedding(100, 128)
    rep.interactions = nn.ModuleList()
    for _ in range(6):
        block, conv = Inter(), CFConv()
        block.filter_network = nn.Sequential(lin(50, 128), lin(128, 128))
        block.dense = lin(128, 128)
        conv.in2f, conv.f2out = lin(128, 128, bias=False), lin(128, 128)
        block.cfconv = conv
        rep.interactions.append(block)
    mlp = MLP()
    mlp.out_net = nn.Sequential(lin(128, 64), lin(64, 1))
    with torch.no_grad():  # the last layer outputs 0: every atom then contributes mean + ref
        mlp.out_net[1].weight.zero_()
        mlp.out_net[1].bias.zero_()
    out, pool, std = Atomwise(), Pool(), Std()
    out.out_net = nn.Sequential(nn.Identity(), mlp)
    pool.average = False
    out.atom_pool = pool
    std.register_buffer("mean", torch.tensor([mean]))
    std.register_buffer("stddev", torch.tensor([2.0]))
    out.standardize = std
    out.atomref = nn.Embedding(100, 1)
    with torch.no_grad():
        out.atomref.weight.zero_()
        for z, h in ATOM_REF_H298_HA.items():
            out.atomref.weight[z] = h * PYG_HARTREE_TO_EV
    model = Model()
    model.representation = rep
    model.output_modules = nn.ModuleList([out])
    return model


def test_pyg_schnet_reads_schnetpack_weights_and_converts_units(
    qm9, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fake_schnetpack_model(-0.5, monkeypatch)
    weights = PyGSchNetOracle.weights_path(tmp_path)
    weights.parent.mkdir(parents=True)
    assert weights.parent.name == PYG_SCHNET_MODEL
    torch.save(model, weights)
    for name in ("schnetpack.fake", "schnetpack"):  # as on a machine without schnetpack
        monkeypatch.delitem(sys.modules, name)
    digest = file_sha256(weights)  # the pinned digest is that of the published file
    oracle = PyGSchNetOracle(qm9, root=tmp_path, sha256=digest)  # cached: no network
    result = oracle.label([*SMALL, UNKNOWN])
    assert list(result.status) == ["ok"] * len(SMALL) + ["unknown_molecule"]
    # -0.5 eV per atom on PyG's Hartree scale, atom references subtracted exactly
    n_atoms = qm9.n_atoms[qm9.rows_of(SMALL)].numpy()
    from al.data.elements import HARTREE_TO_EV

    expected = -0.5 * n_atoms * HARTREE_TO_EV / PYG_HARTREE_TO_EV
    # (atom references are float32 weights: ~1e-4 eV apart near 2,000 eV)
    np.testing.assert_allclose(result.value[:-1], expected, rtol=0, atol=1e-3)
