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

REPO = Path(__file__).resolve().parents[2]
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


def test_a_relative_grid_is_also_found_under_the_project_dir(tmp_path: Path, monkeypatch) -> None:
    """The image's copy of experiments/ is found from MLflow's working folder."""
    from al.entrypoints.experiment import PROJECT_DIR_ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROJECT_DIR_ENV, raising=False)
    with pytest.raises(ConfigError):
        load_grid("experiments/smoke.yaml")
    monkeypatch.setenv(PROJECT_DIR_ENV, str(REPO))
    assert load_grid("experiments/smoke.yaml").path == str(REPO / "experiments" / "smoke.yaml")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "smoke.yaml").write_text("name: here\ncells: [{name: a}]\n")
    assert load_grid("experiments/smoke.yaml").name == "here"  # the working folder first


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
    _dask_backend_reaches_the_same_labels(client, runs, grid, tmp_path, subprocess_env)

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


def _labelled(runs: list) -> dict[tuple[str, str], list[list[int]]]:
    """The labelled set of each cell and seed: its queried molecules, round by round."""
    from al.tracking.runs import CampaignRun

    out = {}
    for run in runs:
        stored = CampaignRun(run.info.run_id)
        rounds = stored.queried_rounds()
        assert rounds, run.info.run_id
        key = (run.data.tags[TAG_CELL], run.data.tags["al.seed"])
        out[key] = [sorted(stored.read_queried(r)["qm9_index"].tolist()) for r in rounds]
    return out


def _dask_backend_reaches_the_same_labels(
    client: MlflowClient, local_runs: list, grid: Path, tmp_path: Path, env: dict
) -> None:
    """The same grid as tasks of a local dask cluster (2 workers, 1 thread each) labels the
    same molecules as the local backend; a rerun skips the finished cells."""
    pytest.importorskip("distributed")
    name = "grid-smoke-dask"
    args = ("experiment", "--grid", str(grid), "--backend", "dask", "--workers", "2",
            "--experiment-name", name, "--log-dir", str(tmp_path / "dask-logs"))  # fmt: skip
    res = _al(*args, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "to run on a local dask cluster of 2 worker(s)" in res.stdout
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`al.kind` = 'campaign'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    (parent,) = client.search_runs([exp.experiment_id], "tags.`al.kind` = 'experiment'")
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert all(r.data.params["threads"] == "1" for r in runs)  # cores / workers, as local
    assert _labelled(runs) == _labelled(local_runs)

    # a rerun skips the finished cells (no cluster is started for nothing); the resume of
    # an interrupted cell is the local backend's code path, tested above
    again = _al(*args, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 already finished, 0 to run" in again.stdout
    assert len(client.search_runs([exp.experiment_id], "tags.`al.kind` = 'campaign'")) == 4


@pytest.mark.slow
def test_the_backend_is_checked_in_one_line(tracking, tmp_path: Path) -> None:
    """An unknown backend, a scheduler without dask and an unreachable scheduler."""
    from click.testing import CliRunner
    from conftest import one_line_error

    from al.cli import main
    from al.entrypoints.grid_backends import BackendError, DaskBackend, make_backend

    grid = str(REPO / "experiments" / "smoke.yaml")
    bad = CliRunner().invoke(main, ["experiment", "--grid", grid, "--backend", "slurm"])
    assert "unknown backend 'slurm'; expected one of: local, dask" in one_line_error(bad)
    bad = CliRunner().invoke(main, ["experiment", "--grid", grid, "--scheduler", "tcp://x:1"])
    assert "--scheduler needs --backend dask" in one_line_error(bad)
    with pytest.raises(BackendError, match="expected one of: local, dask"):
        make_backend("slurm")
    pytest.importorskip("distributed")
    with pytest.raises(BackendError, match=r"^cannot reach the dask scheduler at 'tcp://127"):
        DaskBackend(scheduler="tcp://127.0.0.1:1", connect_timeout=1).start()


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_grid_bar_counts_every_campaigns_rounds(tracking) -> None:
    """Rounds are read from each campaign's ``n_labelled`` steps on the server; a campaign
    that ends counts its planned rounds; campaigns of another grid are not counted."""
    from tqdm import tqdm

    from al.entrypoints.grid_progress import RoundCounter, planned_rounds
    from al.tracking.names import TAG_PARENT, TAG_SEED

    client = MlflowClient()
    exp = client.create_experiment(f"grid-rounds-{id(client)}")
    parent, other = (client.create_run(exp).info.run_id for _ in range(2))

    def campaign(parent_id: str, cell: str, seed: int, steps: list[int]) -> None:
        run = client.create_run(exp, tags={TAG_PARENT: parent_id, TAG_CELL: cell,
                                           TAG_SEED: str(seed)})  # fmt: skip
        for step in steps:
            client.log_metric(run.info.run_id, "n_labelled", step, step=step)

    campaign(parent, "random", 0, [100, 150, 200])  # 3 rounds done
    campaign(parent, "lcmd", 0, [100])
    campaign(other, "random", 1, [100, 150, 200, 250])  # another grid's
    cells = [("random/seed=0", {"rounds": 4}), ("lcmd/seed=0", {"rounds": 2}),
             ("random/seed=1", {"rounds": 4})]  # fmt: skip
    bar = tqdm(total=0, disable=True)
    counter = RoundCounter(client, exp, parent, cells, bar)
    assert counter.total == 5 + 3 + 5 and planned_rounds({"rounds": 0}) == 1
    counter.look()
    assert counter.done == {"random/seed=0": 3, "lcmd/seed=0": 1, "random/seed=1": 0}
    assert bar.n == 4
    counter.end("lcmd/seed=0")  # stopped early (a budget): its rounds count in full
    counter.look()
    assert counter.done["lcmd/seed=0"] == 3 and bar.n == 6
