"""The ANI-1x and ANI-1ccx labellers with real TorchANI and the published weights: labels on
QM9's scale, F unsupported, the weights' checks and their one-line errors, and a tiny
campaign with each as oracle and as Δ baseline.

The weights are fetched once into the default cache (``al weights ani``'s folder) by the
first test that needs them; later test runs find them there.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import one_line_error

from al.baselines import ANI1xBaseline, ResidualSurrogate, build_baseline
from al.cli import main
from al.config import subset
from al.data.elements import ELEMENTS
from al.data.molecules import molecules_frame
from al.data.splits import SplitConfig, make_splits
from al.entrypoints.al_loop import labellable_pool, prior_labels
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig
from al.loop.schemes import build_scheme
from al.loop.selection import build_selection
from al.loop.stopping import build_rules
from al.loop.tracker import MemoryTracker
from al.models.config import ModelConfig
from al.oracles import (
    ANI_DIR_ENV,
    ANI_DOWNLOAD_ENV,
    ANI_MODELS,
    ORACLES,
    OracleError,
    ani_dir,
    build_oracle,
    fetch_ani_weights,
)
from al.oracles.ani_weights import ANI_WHEEL_FILE, weights_problem
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.tracking.pyfunc import MoleculeEnergyModel, pip_requirements
from al.uncertainty import build_surrogate

F = list(ELEMENTS).index("F")


@pytest.fixture(scope="module")
def weights() -> Path:
    """The default weights folder, filled (from the package registry) if it is not yet."""
    return fetch_ani_weights()


pytestmark = pytest.mark.usefixtures("one_thread")


def sample(qm9, n: int, fluorine: bool, seed: int = 0) -> np.ndarray:
    """``n`` seeded QM9 indices of the test split, with or without F."""
    test = make_splits(qm9.qm9_index.numpy()).test
    has_f = (qm9.composition(qm9.rows_of(test))[:, F] > 0).numpy()
    pick = test[has_f] if fluorine else test[~has_f]
    return np.random.default_rng(seed).choice(pick, n, replace=False)


# --- labels --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ANI_MODELS))
def test_labels_are_on_qm9s_scale_with_the_ensembles_std(name: str, qm9, weights) -> None:
    """After the packaged per-element fit, held-out test molecules are within ~0.2 eV of
    QM9's H298 atomization enthalpy (measured on 2,000: MAE 0.18 eV ANI-1x, 0.16 ANI-1ccx)."""
    request = sample(qm9, 64, fluorine=False)
    oracle = build_oracle(name, data=qm9)
    result = oracle.label(request)
    assert result.ok.all() and np.isfinite(result.value).all()
    error = np.abs(result.value - qm9.y[qm9.rows_of(request)].numpy())
    assert error.mean() < 0.3 and error.max() < 2.0, (error.mean(), error.max())
    assert np.isfinite(result.std).all() and (result.std > 0).all() and (result.std < 1).all()
    frame = result.to_frame()
    np.testing.assert_array_equal(frame["label_std"].to_numpy(), result.std)
    assert result.total_cost == pytest.approx(64 * 0.001)
    # a batch is the same molecules one at a time (padding changes nothing)
    one = np.concatenate([oracle.label(request[k : k + 1]).value for k in range(3)])
    np.testing.assert_allclose(one, result.value[:3], atol=1e-6)
    prior = oracle.prior_labels()
    assert prior.n == 2500 and prior.source.startswith("ANI per-element reference")
    assert (
        oracle.describe()["reference_split_digest"] == make_splits(qm9.qm9_index.numpy()).digest()
    )


def test_fluorine_is_an_unsupported_element_recorded_like_any_failure(qm9, weights) -> None:
    request = np.concatenate([sample(qm9, 2, fluorine=True), sample(qm9, 1, fluorine=False)])
    result = build_oracle("ani1ccx", data=qm9).label(request)
    assert list(result.status) == ["unsupported_element", "unsupported_element", "ok"]
    assert np.isnan(result.value[:2]).all() and np.isnan(result.std[:2]).all()
    assert result.cost.tolist() == [0.001] * 3  # the oracle was asked: charged as any failure
    assert ORACLES["ani1ccx"].supported_elements == frozenset({1, 6, 7, 8})


# --- the weights ---------------------------------------------------------------------------
@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights folder, fetching forbidden."""
    monkeypatch.setenv(ANI_DIR_ENV, str(tmp_path / "ani"))
    monkeypatch.setenv(ANI_DOWNLOAD_ENV, "0")
    return tmp_path / "ani"


def test_missing_weights_that_cannot_be_fetched_are_one_line(qm9, no_weights, tmp_path) -> None:
    assert ani_dir() == no_weights
    with pytest.raises(OracleError) as err:
        build_oracle("ani1x", data=qm9)
    message = str(err.value)
    assert "\n" not in message and "al weights ani" in message and str(no_weights) in message
    assert ORACLES["ani1x"].unavailable_reason() == message
    with pytest.raises(ValueError, match="al weights ani"):
        build_baseline("ani1ccx")
    csv = tmp_path / "in.csv"
    csv.write_text("qm9_index\n1\n")
    result = CliRunner().invoke(main, ["label", "--oracle", "ani1x", "--input", str(csv)])
    line = one_line_error(result)
    assert "fetching them is off" in line and "al weights ani" in line


@pytest.mark.slow  # re-fetches the changed folder: a `pip download` subprocess
def test_a_wrong_wheel_or_changed_file_is_refused_in_one_line(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / ANI_WHEEL_FILE
    with zipfile.ZipFile(fake, "w") as zipped:
        zipped.writestr("torchani/resources/ani-1x_8x/sae_linfit.dat", "H,0=-0.5\n")
    monkeypatch.setenv(ANI_DIR_ENV, str(tmp_path / "ani"))
    result = CliRunner().invoke(main, ["weights", "ani", "--wheel", str(fake)])
    assert "is not the published" in one_line_error(result)
    assert "expected one of: ani" in one_line_error(CliRunner().invoke(main, ["weights", "anii"]))
    # a model folder whose file changed is refused before TorchANI reads it
    copy = tmp_path / "copy"
    shutil.copytree(weights / ANI_MODELS["ani1x"], copy / ANI_MODELS["ani1x"])
    assert weights_problem("ani1x", copy) is None
    (copy / ANI_MODELS["ani1x"] / "sae_linfit.dat").write_text("H,0=-0.5\n")
    assert "do not match" in (weights_problem("ani1x", copy) or "")
    monkeypatch.setenv(ANI_DIR_ENV, str(copy))
    monkeypatch.setenv(ANI_DOWNLOAD_ENV, "off")
    with pytest.raises(OracleError, match="do not match"):
        ORACLES["ani1x"](SimpleNamespace())  # fails before it looks at the data
    assert fetch_ani_weights(weights, wheel=fake) == weights  # all there: the wheel unread
    with pytest.raises(OracleError, match="is not the published"):
        fetch_ani_weights(wheel=fake)  # the changed folder would be fetched again
    assert fetch_ani_weights(copy, models=("ani1x",)) == copy  # from the package registry
    assert weights_problem("ani1x", copy) is None


def test_weights_already_there_are_kept(weights: Path) -> None:
    result = CliRunner().invoke(main, ["weights", "ani"])
    assert result.exit_code == 0 and str(weights) in result.output
    assert all(weights_problem(m, weights) is None for m in ANI_MODELS)


# --- campaigns -----------------------------------------------------------------------------
TINY = dict(
    initial_size=30, batch_size=10, rounds=1, hidden=16, n_interactions=1, epochs=2,
    min_steps=0, val_min=0, val_size=20, ensemble_size=2, pool_subsample=200, n_test=100,
    progress=False, train_batch_size=32, seed=0,
)  # fmt: skip


def tiny_campaign(qm9, tmp_path: Path, oracle: str, baseline: str, caplog) -> Campaign:
    cfg = CampaignConfig(**TINY, oracle=oracle, baseline=baseline)
    splits = make_splits(qm9.qm9_index.numpy(), SplitConfig(cfg.split_seed, cfg.n_test))
    torch.manual_seed(cfg.seed)
    surrogate = build_surrogate(
        "ensemble", subset(ModelConfig, cfg), cfg.fit_config(), torch.device("cpu"),
        ensemble_size=cfg.ensemble_size,
    )  # fmt: skip
    base = None
    if baseline != "none":
        base = ANI1xBaseline(cache=tmp_path / "cache")
        base.free(splits.test)
        surrogate = ResidualSurrogate(surrogate, base)
    oracles = [build_oracle(oracle, data=qm9)]
    with caplog.at_level(logging.INFO, logger="al.entrypoints.al_loop"):
        pool_splits = labellable_pool(qm9, splits, oracles, base)
    lines = [r.getMessage() for r in caplog.records if "pool_unsupported" in r.getMessage()]
    assert len(lines) == 1 and "left_out=" in lines[0], lines
    left_out = int(lines[0].split("left_out=")[1].split()[0])
    assert left_out == splits.pool.size - pool_splits.pool.size > 0
    assert (qm9.composition(qm9.rows_of(pool_splits.pool))[:, F] == 0).all()
    return Campaign(
        cfg, qm9, pool_splits, surrogate, oracles, build_rules(cfg.stopping_settings()),
        scheme=build_scheme("pool", cfg),
        selection=build_selection(qm9, oracles, cfg, "max_std", surrogate),
        tracker=MemoryTracker(tmp_path / "run"),
    )  # fmt: skip


@pytest.mark.slow
def test_a_tiny_campaign_labelled_by_ani(qm9, tmp_path, weights, caplog) -> None:
    campaign = tiny_campaign(qm9, tmp_path, "ani1x", "none", caplog)
    assert campaign.execute() == "rounds: 1 of 1 done"
    table = pd.concat(campaign.tracker.queried.values())
    assert (table["oracle"] == "ani1x").all() and (table["status"] == "ok").all()
    assert np.isfinite(table["label_std"]).all() and (table["label_std"] > 0).all()
    assert np.isfinite(campaign.mae_history).all()
    sources = prior_labels(campaign.oracles, None, qm9)
    assert [p.n for p in sources] == [2500]


@pytest.mark.slow
def test_a_tiny_campaign_with_an_ani_baseline(qm9, tmp_path, weights, caplog) -> None:
    campaign = tiny_campaign(qm9, tmp_path, "dft", "ani1x", caplog)
    assert campaign.execute() == "rounds: 1 of 1 done"
    metrics = campaign.tracker.metrics_frame()
    # round 0 paid 30 training and 20 validation molecules, round 1 the 200 scored as well
    assert metrics["cost_baseline"].tolist() == pytest.approx([50e-5, 250e-5])
    assert metrics[CM.TEST_MAE].iloc[-1] < 0.4  # measured 0.19; learning DFT directly: 0.86
    table = pd.concat(campaign.tracker.queried.values())
    assert table["label_std"].isna().all()  # DFT labels have no std of their own
    assert prior_labels(campaign.oracles, campaign.surrogate.baseline, qm9) == []
    assert pip_requirements("ani1x")[-1].startswith("torchani==")

    # the logged model's predict computes the ANI baseline of the given molecules
    model = MoleculeEnergyModel()
    checkpoint = campaign.tracker.fits[-1].checkpoint
    model.load_context(SimpleNamespace(artifacts={"checkpoint": checkpoint}))
    rows = campaign.test[:4]
    frame = molecules_frame(
        [(qm9.z[qm9.ptr[r] : qm9.ptr[r + 1]], qm9.pos[qm9.ptr[r] : qm9.ptr[r + 1]]) for r in rows]
    )
    expected = campaign.surrogate.predict(qm9, rows).mean.numpy()
    np.testing.assert_allclose(model.predict(None, frame)["mean_ev"], expected, atol=1e-3)
