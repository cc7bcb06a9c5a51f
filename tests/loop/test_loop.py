"""Campaigns against a real tracking server: every strategy, read back via the public API."""

import json
import re
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from al.acquisition.strategies import STRATEGIES, resolve_strategy
from al.data.load import load_data
from al.data.molecules import molecules_frame
from al.entrypoints.al_loop import resolve_plan, run_campaign
from al.loop.config import CampaignConfig
from al.loop.ledger import Labelled
from al.loop.seeds import round_generator
from al.tracking import (
    QUERIED_COLUMNS,
    TAG_KIND,
    TAG_MODEL_URI,
    TAG_ROUND,
    TAG_STRATEGY,
    CampaignMetrics,
    queried_path,
    run_name,
)
from al.training.fit import seed_everything
from al.uncertainty import UNCERTAINTIES

SMALL = dict(
    initial_size=200, batch_size=50, rounds=2, epochs=2, ensemble_size=2, mc_samples=4,
    min_steps=0, val_min=0, val_size=20,
    pool_subsample=1500, n_test=200, hidden=32, filter_groups=8, n_interactions=2,
    progress=False, train_batch_size=64, stream_chunk=1000, retrain_fraction=0.25,
    checkpoints="250", converged_steps=3,
)  # fmt: skip


def small_config(**kw) -> CampaignConfig:
    return CampaignConfig(**{**SMALL, **kw})


def read_queried(run_id: str, rounds: int) -> pd.DataFrame:
    frames = []
    for r in range(rounds + 1):
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=queried_path(r))
        frames.append(pd.read_csv(path))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_campaign_every_strategy(strategy: str, tracking, qm9) -> None:
    register = f"loop-{strategy}@candidate" if strategy == "ensemble" else ""
    cfg = small_config(strategy=strategy, experiment_name=f"loop-{strategy}", register_as=register)
    run_id = run_campaign(cfg)
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert re.fullmatch(rf"{strategy}-s0-[0-9a-f]{{6}}", run.info.run_name)
    assert run.data.tags[TAG_KIND] == "campaign" and run.data.tags[TAG_STRATEGY] == strategy
    assert run.data.params["resolved_acquisition"] == STRATEGIES[strategy].acquisition

    steps = [m.step for m in client.get_metric_history(run_id, CampaignMetrics.N_LABELLED)]
    assert steps == [200, 250, 300]
    for key in (CampaignMetrics.TEST_MAE, CampaignMetrics.TEST_NLL, CampaignMetrics.TEST_SPEARMAN,
                CampaignMetrics.COST_SPENT, CampaignMetrics.TIME_FIT):  # fmt: skip
        hist = client.get_metric_history(run_id, key)
        assert [m.step for m in hist] == steps, key
    assert [m.step for m in client.get_metric_history(run_id, CampaignMetrics.TIME_SCORE)] == steps[
        1:
    ]
    # the converged checkpoint at 250 labels: its metrics at that step, its predictions
    converged = client.get_metric_history(run_id, CampaignMetrics.converged("test_mae"))
    assert [m.step for m in converged] == [250]
    table = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="converged/labels_00250/test.csv"
        )
    )
    assert len(table) == 200
    assert (table["mean"] - table["target"]).abs().mean() == pytest.approx(converged[0].value)
    cost = client.get_metric_history(run_id, CampaignMetrics.COST_SPENT)
    assert [m.value for m in cost] == [220.0, 270.0, 320.0]  # 20 validation labels paid
    retrained = [m.value for m in client.get_metric_history(run_id, CampaignMetrics.RETRAINED)]
    # the stream scheme retrains only after 25 % growth: 200 -> 250 yes, 250 -> 300 no
    assert retrained == ([1, 1, 0] if strategy == "stream" else [1, 1, 1])

    queried = read_queried(run_id, 2)
    assert list(queried.columns) == list(QUERIED_COLUMNS)
    assert queried.groupby("round").size().tolist() == [220, 50, 50]
    assert queried["qm9_index"].is_unique
    # the validation set: on the run for anyone to check, round 0, never trained on
    validation = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="validation.csv")
    )
    assert len(validation) == 20 and (validation["round"] == 0).all()
    assert set(validation["qm9_index"]) == set(
        queried.loc[queried["role"] == "validation", "qm9_index"]
    )
    _, splits = load_data(cfg)
    assert set(queried["qm9_index"]) <= set(splits.pool.tolist())
    assert (queried["status"] == "ok").all()
    if strategy == "stream":  # round r offers only the r-th chunk of a seeded permutation
        import torch

        pool = qm9.rows_of(splits.pool)
        order = torch.randperm(pool.numel(), generator=round_generator(cfg.seed, 0, "stream"))
        for r in (1, 2):
            chunk = set(qm9.qm9_index[pool[order[(r - 1) * 1000 : r * 1000]]].tolist())
            assert set(queried.loc[queried["round"] == r, "qm9_index"]) <= chunk
    later = queried[queried["round"] > 0]
    assert later["pred_mean"].notna().all() and later["pred_std"].notna().all()
    np.testing.assert_allclose(
        queried["label"], qm9.y[qm9.rows_of(queried["qm9_index"].to_numpy())].numpy()
    )

    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    fitted = [r for r, flag in enumerate(retrained) if flag]
    assert sorted(int(c.data.tags[TAG_ROUND]) for c in children) == fitted
    versions = {c.data.tags["al.data_version"] for c in children}
    assert len(versions) == len(fitted)  # each model records the labelled set it saw
    for child in children:
        assert child.info.status == "FINISHED"
        assert len(client.get_metric_history(child.info.run_id, "val_mae")) >= 1
        files = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
        assert "checkpoint/model.pt" in files

    # datasets: the pool, the test set and each fit's labelled set, by digest and size
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    contexts = Counter(d.tags[0].value for d in inputs.values())
    assert contexts == {"pool": 1, "evaluation": 1, "training": sum(retrained)}
    test_set = next(d.dataset for d in inputs.values() if d.tags[0].value == "evaluation")
    assert json.loads(test_set.profile)["num_rows"] == 200 and len(test_set.digest) == 16
    last = max(children, key=lambda c: int(c.data.tags[TAG_ROUND]))
    child_inputs = {d.dataset.name: d.dataset for d in last.inputs.dataset_inputs}
    labelled = child_inputs[f"{test_set.name.rsplit('-', 2)[0]}-labelled-round_{fitted[-1]:03d}"]
    assert labelled.digest == last.data.tags["al.data_version"]
    assert test_set.name in child_inputs and len(child_inputs) == 3
    assert "plots/calibration.png" in {
        a.path for a in client.list_artifacts(last.info.run_id, "plots")
    }
    # the final model: the campaign's final test metrics linked to it and the test set
    model_id = run.data.tags[TAG_MODEL_URI].removeprefix("models:/")
    linked = {m.key: m for m in client.get_logged_model(model_id).metrics}
    assert linked["test_mae"].value == pytest.approx(run.data.metrics["test_mae"])
    assert linked["test_mae"].dataset_name == test_set.name and "test_rmse" in linked
    assert [m.step for m in client.get_metric_history(run_id, "test_mae")] == steps  # no copy
    if register:
        version = client.get_model_version_by_alias(f"loop-{strategy}", "candidate")
        assert version.run_id == run_id and version.tags["run_id"] == run_id

    model = mlflow.pyfunc.load_model(run.data.tags[TAG_MODEL_URI])
    r = int(qm9.rows_of([1])[0])
    a, b = int(qm9.ptr[r]), int(qm9.ptr[r + 1])
    out = model.predict(molecules_frame([(qm9.z[a:b].numpy(), qm9.pos[a:b].numpy())]))
    assert np.isfinite(out["mean_ev"]).all() and (out["std_ev"] > 0).all()


def test_run_names_of_the_same_settings_differ_after_seeding() -> None:
    """Two seed-0 campaigns of one strategy: the seeded generators do not repeat names."""
    names = set()
    for _ in range(2):
        seed_everything(0)
        names.add(run_name("random", "s0"))
    assert len(names) == 2 and all(re.fullmatch(r"random-s0-[0-9a-f]{6}", n) for n in names)


def test_strategy_overrides() -> None:
    s = resolve_strategy("ensemble", acquisition="coreset")
    assert (s.uncertainty, s.acquisition) == ("ensemble", "coreset")
    with pytest.raises(ValueError, match="expected one of: random, ensemble"):
        resolve_strategy("nope")


def test_the_plan_asks_the_surrogate_and_the_scheme() -> None:
    """A surrogate class declares the dropout a campaign gives it when the config sets none
    (MC dropout needs some), a scheme whether several oracles can run on it."""
    config, strategy, scheme = resolve_plan(CampaignConfig(strategy="mc_dropout"))
    assert config.dropout == UNCERTAINTIES[strategy.uncertainty].default_dropout > 0
    assert scheme.multi_fidelity
    assert resolve_plan(CampaignConfig(strategy="mc_dropout", dropout=0.2))[0].dropout == 0.2
    config, _, scheme = resolve_plan(CampaignConfig(strategy="stream"))
    assert config.dropout == 0 and not scheme.multi_fidelity
    with pytest.raises(ValueError, match="does not support several oracles"):
        resolve_plan(CampaignConfig(strategy="stream", oracles="xtb,dft"))


def test_round_generator_is_stable() -> None:
    import torch

    a = torch.randperm(100, generator=round_generator(3, 2, "select"))
    b = torch.randperm(100, generator=round_generator(3, 2, "select"))
    c = torch.randperm(100, generator=round_generator(3, 3, "select"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_labelled_set_digest_changes_with_labels() -> None:
    lab = Labelled.empty()
    row = {c: [0.0] for c in QUERIED_COLUMNS}
    lab.add(pd.DataFrame({**row, "qm9_index": [5], "status": ["ok"], "label": [1.0]}))
    d1 = lab.digest()
    lab.add(pd.DataFrame({**row, "qm9_index": [6], "status": ["failed"], "label": [np.nan]}))
    assert lab.digest() == d1  # failures do not change the training data
    assert len(lab.table) == 2 and len(lab.ok) == 1
    lab.add(pd.DataFrame({**row, "qm9_index": [7], "status": ["ok"], "label": [2.0]}))
    assert lab.digest() != d1


@pytest.mark.slow
def test_bad_strategy_is_one_clear_error(tracking) -> None:
    from click.testing import CliRunner

    from al.cli import main

    result = CliRunner().invoke(main, ["al-loop", "--strategy", "bogus"])
    assert result.exit_code != 0
    first, *rest = result.output.strip().splitlines()
    assert first.startswith("Error: config key 'strategy': 'bogus' is not one of random, ")
    assert not rest


def test_config_keys_in_mlproject_comment() -> None:
    text = (Path(__file__).resolve().parents[2] / "MLproject").read_text()
    assert "al_loop:" in text and "al.cli al-loop --config {config}" in text


@pytest.mark.slow
def test_campaign_with_live_xtb_labels(tracking, qm9) -> None:
    cfg = small_config(
        oracle="xtb", initial_size=60, batch_size=20, rounds=1, experiment_name="loop-xtb"
    )
    run_id = run_campaign(cfg)
    queried = read_queried(run_id, 1)
    assert (queried["oracle"] == "xtb").all()
    assert queried["cost"].sum() == pytest.approx(0.01 * 100)  # 80 + 20 validation
    ok = queried[queried["status"] == "ok"]
    dft = qm9.y[qm9.rows_of(ok["qm9_index"].to_numpy())].numpy()
    err = np.abs(ok["label"].to_numpy() - dft)
    assert 0.01 < err.mean() < 2.0  # a real, cheaper, less accurate labeller
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics[CampaignMetrics.labels_from("xtb")] == len(ok)
    assert run.data.metrics[CampaignMetrics.COST_SPENT] == pytest.approx(1.0)
    # the xTB reference was fitted on DFT labels: counted beside cost_spent, not in it
    assert run.data.metrics[CampaignMetrics.N_PRIOR_LABELS] == 2500
    assert run.data.metrics[CampaignMetrics.COST_TOTAL] == pytest.approx(2501.0)
