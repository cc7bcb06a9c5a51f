"""Bad input to the command line is one line on the terminal, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import one_line_error

from al.cli import main
from al.config import ConfigError, build_config
from al.loop.config import CampaignConfig


@pytest.mark.parametrize("uri", ["models:/m-doesnotexist", "runs:/0123456789abcdef/model"])
@pytest.mark.slow
def test_predict_with_a_missing_model_is_one_line(tracking: str, tmp_path: Path, uri: str) -> None:
    xyz = tmp_path / "h2.xyz"
    xyz.write_text("2\nH2\nH 0 0 0\nH 0 0 0.74\n")
    line = one_line_error(CliRunner().invoke(main, ["predict", "--model", uri, str(xyz)]))
    assert f"model {uri!r} cannot be loaded" in line and "not found" in line


@pytest.mark.parametrize(
    "storage", ["sqlite:////nonexistent/dir/x.db", "postgresql://al:s3cret@nohost/db"]
)
def test_hpo_with_a_storage_it_cannot_open_is_one_line(storage: str) -> None:
    line = one_line_error(CliRunner().invoke(main, ["hpo", "--storage", storage]))
    assert "cannot open the Optuna storage" in line and "s3cret" not in line
    assert "nohost" in line or "nonexistent" in line


@pytest.mark.parametrize("cost", ["-5", "0", "-0.5"])
def test_oracle_cost_other_than_the_default_sentinel_must_be_positive(
    cost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import al.entrypoints.al_loop as al_loop

    def started(*args: object, **kwargs: object) -> str:
        raise AssertionError("the campaign started")

    monkeypatch.setattr(al_loop, "run_campaign", started)
    line = one_line_error(CliRunner().invoke(main, ["al-loop", "--oracle-cost", cost]))
    assert "oracle_cost" in line and "-1 for the oracle's default" in line
    with pytest.raises(ConfigError):
        build_config(CampaignConfig, {"oracle_cost": float(cost)})
    assert build_config(CampaignConfig, {"oracle_cost": -1}).fidelities() == [("dft", None)]
    assert build_config(CampaignConfig, {"oracle_cost": 2}).fidelities() == [("dft", 2.0)]


def test_batch_larger_than_the_pool_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import al.entrypoints.al_loop as al_loop

    def went_on(*args: object, **kwargs: object) -> None:
        raise AssertionError("the campaign went on")

    monkeypatch.setattr(al_loop, "build_surrogate", went_on)
    args = ["al-loop", "--batch-size", "200000", "--n-test", "1000", "--n-oracle", "1000"]
    line = one_line_error(CliRunner().invoke(main, args))
    pool = 130_831 - 2_000
    assert "batch_size 200000 is larger than the pool" in line and f"{pool:,}" in line


@pytest.mark.slow
def test_tracking_server_unreachable_at_start_is_one_line(tmp_path: Path) -> None:
    """No server behind the URI: bounded retries (a warning line each), then one error line
    that says nothing was paid; no traceback, no hang of minutes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "AL_JOURNAL_DIR": str(tmp_path)}  # fmt: skip
    args = ["--initial-size", "20", "--n-test", "200", "--progress", "false"]
    out = subprocess.run(
        [sys.executable, "-m", "al.cli", "al-loop", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "cannot reach the tracking server http://127.0.0.1:9" in errors[0]
    assert "no label was paid" in errors[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--initial-size", "200000"], "initial_size 200000 + val_size 500 is more than the pool"),
        (["--rounds", "0"], "rounds=0 sets no limit, and no budget_labels, budget_cost"),
        (["--baseline-cost", "-5"], "expected a number >= 0, or -1 for its default"),
        (["--oracles", "dft,xtb", "--costs", "1.0,0.01"], "is not cheapest first"),
    ],
)
def test_campaign_inputs_refused_before_anything_starts(
    args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizes the pool cannot serve, a campaign without any limit, a negative baseline cost
    and costs out of order: one line each, before any model, oracle or run exists."""
    import al.entrypoints.al_loop as al_loop

    def went_on(*args: object, **kwargs: object) -> None:
        raise AssertionError("the campaign went on")

    monkeypatch.setattr(al_loop, "build_surrogate", went_on)
    line = one_line_error(CliRunner().invoke(main, ["al-loop", *args]))
    assert expected in line


def test_predict_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    """Checked before the model is loaded or anything is predicted."""
    xyz = tmp_path / "h2.xyz"
    xyz.write_text("2\nH2\nH 0 0 0\nH 0 0 0.74\n")
    out = tmp_path / "no" / "such" / "folder" / "p.csv"
    args = ["predict", "--model", "models:/m-never-loaded", "-o", str(out), str(xyz)]
    line = one_line_error(CliRunner().invoke(main, args))
    assert "does not exist" in line and str(out.parent) in line


def test_an_unwritable_journal_folder_is_one_line_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("AL_JOURNAL_DIR", str(tmp_path / "a-file" / "journal"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = ["al-loop", "--initial-size", "20", "--n-test", "100", "--experiment-name", "jd"]
    line = one_line_error(CliRunner().invoke(main, args))
    assert "label journal folder" in line and "AL_JOURNAL_DIR" in line
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("jd") is None  # no run was created


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--oracle", "model:models:/no-such-model@x"], "cannot load the oracle model"),
        (["--baseline", "model:models:/no-such-model@x"], "baseline 'model:models:/no-such"),
        (["--val-size", "10", "--budget-labels", "5"], "do not pay for the validation set"),
        (
            [
                "--oracles",
                "xtb,dft",
                "--costs",
                "0.01,1",
                "--val-size",
                "10",
                "--budget-cost",
                "10.5",
            ],
            "pay for no initial molecule",
        ),
    ],
)
def test_settings_that_cannot_work_are_one_line_before_any_run(
    args: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("AL_JOURNAL_DIR", str(tmp_path / "journal"))
    base = ["al-loop", "--initial-size", "20", "--n-test", "100", "--experiment-name", "lazy"]
    line = one_line_error(CliRunner().invoke(main, [*base, *args]))
    assert expected in line
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("lazy") is None  # no run was created


def test_an_experiment_id_the_server_lacks_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that answers but lacks the experiment is not called unreachable."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "99")
    monkeypatch.setenv("AL_JOURNAL_DIR", str(tmp_path / "journal"))
    args = ["al-loop", "--initial-size", "20", "--n-test", "100", "--progress", "false"]
    line = one_line_error(CliRunner().invoke(main, args))
    assert "does not have what the campaign starts in" in line and "no label was paid" in line
