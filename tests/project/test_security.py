"""Secrets stay out of runs and output; downloaded model files cannot run code."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import secrets
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from al import tracking
from al.config import SecretMaskingFilter, mask_secrets
from al.oracles import OracleError, PyGSchNetOracle
from al.oracles.pyg_schnet import PYG_SCHNET_SHA256_ENV, PYG_SCHNET_URL

REPO = Path(__file__).resolve().parents[2]


# --- masking ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://al:s3cret@db/optuna", "postgresql://al:***@db/optuna"),
        ("postgresql://:s3cret@db/optuna", "postgresql://:***@db/optuna"),
        ("sqlite:///x.db?password=s3cret", "sqlite:///x.db?password=***"),
        ("sqlite:///x.db?timeout=9&password=s3cret&a=1", "sqlite:///x.db?timeout=9&password=***&a=1"),
        ("mssql://h/db?odbc_connect=UID%3Du%3BPWD%3Ds3cret", "mssql://h/db?odbc_connect=UID%3Du%3BPWD%3D***"),
        ("Server=h;Uid=u;Pwd=s3cret;", "Server=h;Uid=u;Pwd=***;"),
        ("see storage=mysql://u:s3cret@h/db now", "see storage=mysql://u:***@h/db now"),
    ],
)  # fmt: skip
def test_mask_secrets_covers_every_url_form(url: str, masked: str) -> None:
    assert mask_secrets(url) == masked
    assert mask_secrets(masked) == masked


def test_mask_secrets_keeps_references_and_plain_urls() -> None:
    for text in (
        "postgresql+psycopg2://al:${POSTGRES_PASSWORD}@db:5432/optuna",
        "sqlite:///optuna.db",
        "http://127.0.0.1:5000",
        "sqlite:///x.db?password=${PW}",
        "runs:/0123abcd/best_params.yaml",
    ):
        assert mask_secrets(text) == text


def test_logging_filter_masks_formatted_messages(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("al.test_security")
    caplog.handler.addFilter(SecretMaskingFilter())
    with caplog.at_level(logging.INFO, logger="al.test_security"):
        logger.info("storage=%s", "postgresql://:s3cret@db/x")
    assert "s3cret" not in caplog.text and "postgresql://:***@db/x" in caplog.text


@pytest.mark.usefixtures("tracking")
@pytest.mark.slow
def test_params_and_artifacts_are_masked() -> None:
    secret = secrets.token_hex(8)
    with mlflow.start_run() as run:
        tracking.log_params({"uri": f"postgresql://:{secret}@h/db", "n": 3})
        tracking.log_dict_artifact({"storage": f"sqlite:///x.db?password={secret}"}, "c.json")
        tracking.log_text_artifact(f"url: mysql://u:{secret}@h/db\n", "c.yaml")
    client = MlflowClient()
    params = client.get_run(run.info.run_id).data.params
    assert params["uri"] == "postgresql://:***@h/db" and params["n"] == "3"
    for name in ("c.json", "c.yaml"):
        text = Path(client.download_artifacts(run.info.run_id, name)).read_text()
        assert secret not in text and "***" in text


@pytest.mark.slow
def test_hpo_with_a_literal_password_keeps_it_out_of_runs_and_output(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    secret = "pw" + secrets.token_hex(10)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}?password={secret}"
    cmd = [
        sys.executable, "-m", "al.cli", "hpo", "--storage", storage, "--study-name", "sec",
        "--n-trials", "1", "--train-size", "40", "--epochs", "1", "--n-test", "200",
        "--fixed", "model=schnet,hidden=32,n_interactions=1", "--progress", "false",
        "--experiment-name", "security",
    ]  # fmt: skip
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert secret not in output
    client = MlflowClient()
    experiment = client.get_experiment_by_name("security")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) >= 2  # the study's run and its trial
    study_run = next(r for r in runs if r.data.tags.get(tracking.TAG_KIND) == tracking.KIND_HPO)
    assert study_run.data.params["storage"].endswith("?password=***")
    for r in runs:
        assert secret not in repr(r.data.params) and secret not in repr(r.data.tags)
        for artifact in client.list_artifacts(r.info.run_id):
            if artifact.is_dir or not artifact.path.endswith((".yaml", ".json", ".txt")):
                continue
            text = Path(client.download_artifacts(r.info.run_id, artifact.path)).read_text()
            assert secret not in text, artifact.path


@pytest.mark.usefixtures("tracking")
@pytest.mark.slow
def test_hpo_warns_when_mlflow_run_logged_a_literal_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from hpo.study import _warn_literal_passwords

    with mlflow.start_run() as run:  # as `mlflow run -P storage=...` leaves its run
        mlflow.log_param("storage", "postgresql://al:s3cret@db/optuna")
    with caplog.at_level(logging.WARNING, logger="hpo.study"):
        _warn_literal_passwords(MlflowClient(), run.info.run_id)
    assert "event=literal_password_in_params" in caplog.text and "storage" in caplog.text
    assert "s3cret" not in caplog.text


# --- pyg_schnet weights ---------------------------------------------------------------------------
class _RunsCode:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _plant(root: Path, marker: Path, torch_format: bool) -> Path:
    weights = PyGSchNetOracle.weights_path(root)
    weights.parent.mkdir(parents=True)
    if torch_format:
        torch.save(_RunsCode(marker), weights)
    else:
        weights.write_bytes(pickle.dumps(_RunsCode(marker)))
    return weights


def test_pyg_schnet_uses_https() -> None:
    assert PYG_SCHNET_URL.startswith("https://")


@pytest.mark.parametrize("expected", ["", "0" * 64])
def test_planted_weights_with_another_digest_are_refused(
    qm9, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: str
) -> None:
    monkeypatch.delenv(PYG_SCHNET_SHA256_ENV, raising=False)
    marker = tmp_path / "marker"
    weights = _plant(tmp_path / "cache", marker, torch_format=True)
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(OracleError) as err:
        PyGSchNetOracle(qm9, root=tmp_path / "cache", sha256=expected or None)
    message = str(err.value)
    assert "\n" not in message and actual in message and str(weights) in message
    assert (expected or PYG_SCHNET_SHA256_ENV) in message
    assert not marker.exists()


@pytest.mark.parametrize("torch_format", [True, False])
def test_planted_pickle_never_runs_even_with_a_matching_digest(
    qm9, tmp_path: Path, torch_format: bool
) -> None:
    marker = tmp_path / "marker"
    weights = _plant(tmp_path / "cache", marker, torch_format)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    oracle = PyGSchNetOracle(qm9, root=tmp_path / "cache", sha256=digest)
    with pytest.raises(OracleError) as err:
        oracle.load()
    message = str(err.value)
    assert "\n" not in message and "is not allowed in a weights file" in message
    assert "system" in message
    assert not marker.exists()


class _Scripted(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def test_a_torchscript_archive_is_refused_even_with_a_matching_digest(qm9, tmp_path: Path) -> None:
    """torch.load hands a TorchScript archive to torch.jit.load, past the allow-list: it is
    refused before it is loaded, by the bytes whose digest was checked."""
    weights = PyGSchNetOracle.weights_path(tmp_path / "cache")
    weights.parent.mkdir(parents=True)
    torch.jit.save(torch.jit.script(_Scripted()), str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    oracle = PyGSchNetOracle(qm9, root=tmp_path / "cache", sha256=digest)
    with pytest.raises(OracleError, match="a TorchScript archive, not a weights file") as err:
        oracle.load()
    assert "\n" not in str(err.value) and oracle._net is None


@pytest.mark.slow
def test_no_line_a_campaign_prints_holds_the_password(subprocess_env: dict, tmp_path) -> None:
    """A tracking URI with a literal password: not one line of a passing campaign (MLflow's
    own "View run ... at" lines included) nor of one whose server cannot be reached holds
    it."""
    password = "pw" + secrets.token_hex(6)
    uri = subprocess_env["MLFLOW_TRACKING_URI"].replace("http://", f"http://alice:{password}@")
    env = {**subprocess_env, "MLFLOW_TRACKING_URI": uri, "AL_JOURNAL_DIR": str(tmp_path)}
    args = [
        sys.executable, "-m", "al.cli", "al-loop", "--initial-size", "20", "--val-size", "10",
        "--batch-size", "8", "--rounds", "1", "--epochs", "1", "--min-steps", "0",
        "--ensemble-size", "2", "--pool-subsample", "100", "--n-test", "50", "--hidden", "8",
        "--n-interactions", "1", "--filter-groups", "4", "--progress", "false",
        "--threads", "1", "--experiment-name", "secrets-printed",
    ]  # fmt: skip
    passing = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert passing.returncode == 0, passing.stderr[-2000:]
    closed = {**env, "MLFLOW_TRACKING_URI": f"http://alice:{password}@127.0.0.1:9",
              "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # fmt: skip
    failing = subprocess.run(args, env=closed, capture_output=True, text=True, timeout=600)
    assert failing.returncode != 0 and "alice:***@" in failing.stderr
    for out in (passing, failing):
        assert password not in out.stdout + out.stderr


@pytest.mark.slow
def test_a_campaign_on_a_server_with_basic_auth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The team set-up's server with MLflow's basic-auth app: without credentials a campaign
    stops in one line before anything is paid; with them (MLflow's own variables) it runs."""
    from click.testing import CliRunner
    from conftest import (
        _point_tracking_at,
        one_line_error,
        start_mlflow_server,
        stop_mlflow_server,
    )

    from al.cli import main
    from al.entrypoints.al_loop import run_campaign
    from al.loop.config import CampaignConfig

    password = "pw" + secrets.token_hex(8)
    ini = tmp_path / "auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        f"admin_username = admin\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server_env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini),
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}  # fmt: skip
    proc, uri = start_mlflow_server(tmp_path, app_name="basic-auth", env=server_env)
    monkeypatch.setenv("AL_JOURNAL_DIR", str(tmp_path / "journal"))
    point = _point_tracking_at(uri, monkeypatch)  # another test's experiment or run forgotten
    next(point)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    tiny = dict(
        initial_size=20, val_size=10, batch_size=8, rounds=1, epochs=1, min_steps=0,
        ensemble_size=2, pool_subsample=100, n_test=50, hidden=8, n_interactions=1,
        filter_groups=4, progress=False, threads=1, experiment_name="basic-auth",
    )  # fmt: skip
    try:
        args = ["al-loop", *(f"--{k.replace('_', '-')}={v}" for k, v in tiny.items())]
        line = one_line_error(CliRunner().invoke(main, args))
        assert "refused the credentials" in line and "no label was paid" in line
        assert password not in line
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        run_id = run_campaign(CampaignConfig(**tiny))
        run = MlflowClient(uri).get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["al.kind"] == "campaign"
    finally:
        next(point, None)  # ends a run the test left open
        stop_mlflow_server(proc)
