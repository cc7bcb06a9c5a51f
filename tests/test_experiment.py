"""Experiment grids: every shipped file validates; the smoke grid runs, resumes and reports."""

import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from al.config import ConfigError
from al.entrypoints.experiment import TAG_CELL, TAG_GRID, load_grid

REPO = Path(__file__).resolve().parents[1]
GRIDS = sorted((REPO / "experiments").glob("*.yaml"))


def test_grids_are_shipped() -> None:
    names = {p.stem for p in GRIDS}
    assert {"smoke", "strategies", "batch_sizes", "surrogates", "labeller", "multi_fidelity",
            "stream"} <= names  # fmt: skip


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_every_shipped_grid_validates(path: Path) -> None:
    grid = load_grid(path)
    assert grid.expanded and len(grid.expanded) == len(grid.cells) * len(grid.seeds)
    if grid.name != "smoke":
        assert len(grid.seeds) >= 3, "the standing questions need at least 3 seeds"


@pytest.mark.parametrize(
    "text, match",
    [
        ("cells: [{name: a, strategy: random}]\nfoo: 1\n", "unknown grid key"),
        ("cells: [{name: a}, {name: a}]\n", "two cells are named 'a'"),
        ("cells: [{name: a, epochz: 3}]\n", "cell 'a': unknown config key"),
        ("cells: [{name: a, batch_size: 0}]\n", "cell 'a': config key 'batch_size'"),
        ("cells: [{name: a, seed: 3}]\n", "'seed' is set by the grid runner"),
        ("seeds: [1, 1]\ncells: [{name: a}]\n", "repeats a seed"),
        ("cells: [{name: a, oracles: 'xtb,dft', costs: '1'}]\n", "cell 'a': config key 'costs'"),
        ("cells: []\n", "non-empty list"),
    ],
)
def test_bad_grids_fail_with_one_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_grid(path)
    assert "\n" not in str(err.value) and "bad.yaml" in str(err.value)


def _al(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "al.cli", *args], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_smoke_grid_runs_resumes_and_reports(subprocess_env, tmp_path: Path) -> None:
    grid = REPO / "experiments" / "smoke.yaml"
    spec = load_grid(grid)
    client = MlflowClient()

    dry = _al("experiment", "--grid", str(grid), "--dry-run", "true", env=subprocess_env)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry.stdout.count(" new ") == 4 and "max_std" in dry.stdout
    assert client.get_experiment_by_name(spec.experiment_name) is None  # nothing created

    res = _al("experiment", "--grid", str(grid), "--workers", "2",
              "--log-dir", str(tmp_path / "logs"), env=subprocess_env)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # one line per campaign as it ends, counted (no terminal here, so no bar is drawn)
    assert sorted(re.findall(r"\[(\d)/4\] \S+: done", res.stdout)) == ["1", "2", "3", "4"]
    exp = client.get_experiment_by_name(spec.experiment_name)
    parents = client.search_runs([exp.experiment_id], "tags.`al.kind` = 'experiment'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    runs = client.search_runs([exp.experiment_id], "tags.`al.kind` = 'campaign'")
    assert len(runs) == 4
    keys = set()
    for run in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent and tags[TAG_GRID] == "smoke"
        keys.add((tags[TAG_CELL], tags["al.seed"]))
        name = rf"{tags[TAG_CELL]}-s{tags['al.seed']}-[0-9a-f]{{6}}"
        assert re.fullmatch(name, run.info.run_name)  # readable, and unique across grids
        assert run.data.params["seed"] == tags["al.seed"]
    assert keys == {(c, s) for c in ("random", "max_std") for s in ("0", "1")}

    # an interrupted cell is resumed, finished ones are skipped: no new campaign run
    victim = next(r for r in runs if r.data.tags[TAG_CELL] == "max_std")
    client.set_terminated(victim.info.run_id, "KILLED")
    again = _al("experiment", "--grid", str(grid), env=subprocess_env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "3 already finished, 1 to run" in again.stdout
    after = client.search_runs([exp.experiment_id], "tags.`al.kind` = 'campaign'")
    assert len(after) == 4
    assert client.get_run(victim.info.run_id).info.status == "FINISHED"

    # the report, read back from the server and logged as a run of its own
    out = tmp_path / "report"
    rep = _al("compare", "--experiment-name", spec.experiment_name, "--output-dir", str(out),
              env=subprocess_env)  # fmt: skip
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert "max_std" in text and "random" in text
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 1
    reports = client.search_runs([exp.experiment_id], "tags.`al.kind` = 'report'")
    assert len(reports) == 1
    assert reports[0].data.tags["mlflow.parentRunId"] == parent  # nested under its grid
    # the best arm's registered model gets the alias best; the report says by what metric
    best = client.get_model_version_by_alias("smoke-surrogate", "best")
    best_run = client.get_run(best.run_id)
    assert best_run.data.tags[TAG_CELL] == reports[0].data.tags["al.best_arm"]
    assert "by mean final test_mae over seeds" in text
    page = (out / "report.html").read_text()
    url = f"{subprocess_env['MLFLOW_TRACKING_URI']}/#/experiments/{exp.experiment_id}/runs/"
    assert f'<a href="{url}{best.run_id}">{best.run_id}</a>' in page
    assert any(p.name.startswith("calibration_") for p in (out / "plots").iterdir())
    names = {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    assert any(n.endswith("report.md") for n in names) or names
    mlflow.end_run()


def test_an_explicitly_chosen_experiment_holds_the_grid(
    tracking, tmp_path: Path, monkeypatch
) -> None:
    """`--experiment-name` and `mlflow run --experiment-name` (MLFLOW_EXPERIMENT_ID) are
    honoured; MLflow's Default (id 0, passed when nothing was chosen) keeps grid-<name>."""
    from dataclasses import replace

    from click.testing import CliRunner

    from al.cli import main
    from al.entrypoints.experiment import GridRunner, chosen_experiment

    path = tmp_path / "named.yaml"
    path.write_text("name: named\nseeds: [0]\ncells: [{name: a, strategy: random}]\n")
    run = CliRunner().invoke(
        main, ["experiment", "--grid", str(path), "--dry-run", "true", "--experiment-name", "x1"]
    )
    assert run.exit_code == 0, run.output
    assert "experiment 'x1'" in run.output
    client = MlflowClient()
    env_id = client.create_experiment("chosen-by-mlflow-run")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", env_id)
    assert chosen_experiment() == "chosen-by-mlflow-run"
    assert chosen_experiment("x2") == "x2"
    runner = GridRunner(replace(load_grid(path), experiment_name=chosen_experiment()))
    parent = runner._ensure_parent()
    assert client.get_run(parent).info.experiment_id == env_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    assert chosen_experiment() == ""
    run = CliRunner().invoke(main, ["experiment", "--grid", str(path), "--dry-run", "true"])
    assert "experiment 'grid-named'" in run.output, run.output
