"""Multi-fidelity: several outputs from one trunk, cost-aware pair selection, campaigns."""

import math
from collections.abc import Iterator
from dataclasses import fields

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from al.acquisition.multifidelity import (
    CHEAP_NOISE_FLOOR,
    MF_ACQUISITIONS,
    NOISE_FLOOR,
    discrepancy_noise,
    fidelity_moments,
    fidelity_noise,
    greedy_by_score,
    select_pairs,
    variance_reduction_gain,
)
from al.config import ConfigError
from al.data.molecules import MolecularData
from al.entrypoints.al_loop import run_campaign
from al.loop.config import CampaignConfig
from al.models import build_model
from al.models.checkpoint import load_checkpoint, save_checkpoint
from al.models.config import ModelConfig
from al.models.ensemble import EnsembleModel
from al.oracles import DFTOracle, Oracle
from al.tracking import TAG_ORACLE, CampaignMetrics, queried_path
from al.training.config import FitConfig
from al.training.fit import fit, predict
from al.uncertainty import Prediction, build_surrogate


def test_config_names_match_registry() -> None:
    choices = {f.name: f.metadata.get("choices") for f in fields(CampaignConfig)}
    assert choices["mf_acquisition"] == tuple(MF_ACQUISITIONS)


def test_fidelities_config() -> None:
    assert CampaignConfig(oracle="xtb").fidelities() == [("xtb", None)]
    assert CampaignConfig(oracle="xtb", oracle_cost=0.5).fidelities() == [("xtb", 0.5)]
    cfg = CampaignConfig(oracles="xtb, dft", costs="0.01,1")
    assert cfg.fidelities() == [("xtb", 0.01), ("dft", 1.0)]
    assert CampaignConfig(oracles="xtb,dft").fidelities() == [("xtb", None), ("dft", None)]
    for bad, match in [
        (dict(oracles="xtb,dft", costs="0.01"), "1 cost"),
        (dict(oracles="xtb,dft", costs="a,b"), "not a comma-separated list"),
        (dict(oracles="dft,dft"), "twice"),
        (dict(oracles="xtb,dft", costs="0,1"), "> 0"),
        (dict(costs="1"), "without 'oracles'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            CampaignConfig(**bad).fidelities()


def _mf_data(qm9: MolecularData, n: int = 96) -> tuple[MolecularData, torch.Tensor]:
    rows = torch.arange(n)
    sub = qm9.subset(rows)
    hi = sub.y.clone()
    lo = hi * 1.02 + 0.3  # a cheap fidelity: a systematic error
    y = torch.stack([lo, hi], 1)
    y[::2, 1] = float("nan")  # half the molecules have only the cheap label
    return MolecularData(**{**sub.__dict__, "y": y}), torch.arange(n)


def test_two_output_model_shapes_and_masked_fit(qm9) -> None:
    data, rows = _mf_data(qm9)
    torch.manual_seed(0)
    model = build_model("schnet", hidden=16, n_interactions=1, filter_groups=4, n_outputs=2)
    assert model.atomref.shape == (10, 2) and model.scale.shape == (2,)
    info = model.fit_reference(data.composition(rows), data.y[rows])
    assert math.isfinite(info["baseline_mae"])
    # each column's reference is fitted on its own labels: the high one ignores the NaNs
    assert torch.isfinite(model.atomref).all()
    cfg = FitConfig(epochs=3, batch_size=32, progress=False, patience=5)
    result = fit(model, data, rows[:80], rows[80:], cfg)
    assert all(math.isfinite(h.train_loss) for h in result.history)
    assert math.isfinite(result.best_val_mae)
    energy, _ = predict(model, data, rows[:10])
    assert energy.shape == (10, 2)
    ens = EnsembleModel([model, model])
    energy, emb = predict(ens, data, rows[:10], batch_size=4, embeddings=True)
    assert energy.shape == (2, 10, 2) and emb.shape == (2, 10, 8)  # the last hidden layer, 16 // 2


def test_single_output_loss_unchanged(qm9) -> None:
    """One output: the masked loss is the plain mean (the first epoch's loss is the same as
    computing it by hand on the same batches)."""
    rows = torch.arange(64)
    torch.manual_seed(1)
    a = build_model("schnet", hidden=16, n_interactions=1, filter_groups=4)
    torch.manual_seed(1)
    b = build_model("schnet", hidden=16, n_interactions=1, filter_groups=4, n_outputs=2)
    data2 = MolecularData(**{**qm9.subset(rows).__dict__, "y": qm9.y[rows, None].repeat(1, 2)})
    cfg = FitConfig(epochs=1, batch_size=64, progress=False, lr=0.0)
    ra = fit(a, qm9.subset(rows), rows, rows[:0], cfg)
    # lr=0: no weight changes; with identical targets in both columns the loss of a
    # two-output model averages the two columns' squared errors
    rb = fit(b, data2, rows, rows[:0], cfg)
    assert math.isfinite(ra.history[0].train_loss) and math.isfinite(rb.history[0].train_loss)


def test_checkpoint_round_trip_keeps_outputs(tmp_path, qm9) -> None:
    model = build_model("schnet", hidden=16, n_interactions=1, filter_groups=4, n_outputs=3)
    path = save_checkpoint([model], tmp_path / "m.pt")
    (back,), _ = load_checkpoint(path)
    assert back.n_outputs == 3
    z, pos, batch, _ = qm9.batch(torch.arange(4))
    assert torch.allclose(back(z, pos, batch, 4), model.eval()(z, pos, batch, 4))


def test_surrogates_give_fidelity_members(qm9) -> None:
    data, rows = _mf_data(qm9, 64)
    fit_cfg = FitConfig(epochs=1, batch_size=32, progress=False)
    for name in ("ensemble", "mc_dropout"):
        model_cfg = ModelConfig(hidden=16, n_interactions=1, filter_groups=4, dropout=0.1)
        s = build_surrogate(
            name, model_cfg, fit_cfg, torch.device("cpu"), ensemble_size=3, mc_samples=4,
            n_outputs=2,
        )  # fmt: skip
        s.fit(data, rows[:48], rows[48:])
        pred = s.predict(data, rows[:8])
        k = 3 if name == "ensemble" else 4
        assert pred.fidelity_members.shape == (k, 8, 2)
        assert torch.allclose(pred.mean, pred.fidelity_members[..., 1].mean(0))
        assert torch.allclose(pred.std_raw, pred.fidelity_members[..., 1].std(0))
        assert torch.allclose(pred.std, pred.std_raw * s.std_scale)


def _pred(samples: torch.Tensor) -> Prediction:
    return Prediction.from_samples(samples, None)


def test_fidelity_moments_known_values() -> None:
    # members: low = 2 * high + noise-free -> cov(h, l) = 2 var(h), var(l) = 4 var(h)
    h = torch.tensor([[1.0], [-1.0], [0.0]])  # K=3, n=1
    samples = torch.stack([2 * h, h], -1)  # [3, 1, 2]
    var, cov = fidelity_moments(samples)
    assert torch.allclose(var, torch.tensor([[4.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(cov, torch.tensor([[2.0, 1.0]], dtype=torch.float64))


def test_variance_reduction_prefers_cheap_correlated_labels() -> None:
    gen = torch.Generator().manual_seed(0)
    k, n = 8, 6
    h = torch.randn(k, n, generator=gen)
    correlated = torch.stack([h * 0.9, h], -1)
    uncorrelated = torch.stack([torch.randn(k, n, generator=gen), h], -1)
    costs = torch.tensor([0.01, 1.0])
    bought = torch.zeros(n, 2, dtype=torch.bool)
    sel = select_pairs("variance_reduction", _pred(correlated), bought, costs, 0.03,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert sel.fidelity.tolist() == [0, 0, 0]  # cheap and fully informative
    assert sel.cost(costs) <= 0.03 + 1e-12
    # a cheap fidelity that says (almost) nothing about the high one is not worth half the
    # price: the high fidelity wins
    costs = torch.tensor([0.5, 1.0])
    sel = select_pairs("variance_reduction", _pred(uncorrelated), bought, costs, 3.0,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert sel.fidelity.tolist().count(1) >= 2


def test_variance_reduction_gain_is_the_conditioning_formula() -> None:
    # members: f_hi = f_lo + delta, delta independent of f_lo
    lo = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None]  # var 4/3
    delta = torch.tensor([1.0, 1.0, -1.0, -1.0])[:, None]  # var 4/3, cov(delta, lo) = 0
    samples = torch.stack([lo, lo + delta], -1)  # [4, 1, 2]
    s2 = torch.tensor([0.5, 0.0], dtype=torch.float64)
    gain = variance_reduction_gain(samples, s2)
    var_lo, var_hi = 4 / 3, 8 / 3
    # a cheap label removes cov(f_hi, f_lo)^2 / (var(f_lo) + s^2): cov = var(f_lo) here,
    # so the discrepancy's variance stays whatever the cheap label says
    assert float(gain[0, 0]) == pytest.approx(var_lo**2 / (var_lo + 0.5))
    assert float(gain[0, 1]) == pytest.approx(var_hi**2 / (var_hi + NOISE_FLOOR))
    assert float(gain[0, 0]) < var_hi - var_lo / 2


def test_discrepancy_noise_from_labelled_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    hi = 10 * torch.randn(400, generator=gen, dtype=torch.float64)
    r = 0.3 * torch.randn(400, generator=gen, dtype=torch.float64)
    lo = (hi - 1.0 - r) / 2  # hi = 1 + 2 lo + r: residual variance 0.09, b = 2
    labels = torch.stack([lo, hi], 1)
    labels[:100, 1] = float("nan")  # cheap-only molecules do not count
    s2 = discrepancy_noise(labels)
    assert float(s2[0]) == pytest.approx(0.09 / 4, rel=0.2) and float(s2[1]) == 0.0
    assert torch.isnan(discrepancy_noise(labels[98:102]))[0]  # fewer than 3 pairs
    costs = torch.tensor([0.1, 1.0])
    # no labels: a cheap fidelity gets the floor, the highest the numerical floor
    assert fidelity_noise(costs).tolist() == [CHEAP_NOISE_FLOOR, NOISE_FLOOR]
    assert fidelity_noise(costs, cheap_noise_floor=0.0).tolist() == [NOISE_FLOOR, NOISE_FLOOR]
    big = torch.stack([lo, hi + 3 * torch.randn(400, generator=gen, dtype=torch.float64)], 1)
    assert float(fidelity_noise(costs, labels=big)[0]) == pytest.approx(
        float(discrepancy_noise(big)[0])
    )
    assert float(fidelity_noise(costs, labels=big)[0]) > 1.0  # ~ (9 + 0.09) / 4
    explicit = torch.tensor([0.2, 0.0], dtype=torch.float64)
    assert fidelity_noise(costs, explicit, big).tolist() == [0.2, NOISE_FLOOR]


def test_variance_reduction_counts_the_cheap_fidelitys_error() -> None:
    """Cheap labels the members find perfectly correlated with the high fidelity, at half
    the price: worth buying only while their error relative to the high fidelity is small
    against the members' spread."""
    gen = torch.Generator().manual_seed(0)
    k, n = 8, 6
    h = 0.01 * torch.randn(k, n, generator=gen)  # var ~1e-4 eV^2
    samples = torch.stack([h, h], -1)
    costs = torch.tensor([0.5, 1.0])
    bought = torch.zeros(n, 2, dtype=torch.bool)

    def chosen(**options: object) -> list[int]:
        sel = select_pairs("variance_reduction", _pred(samples), bought, costs, 2.0,
                           generator=torch.Generator().manual_seed(1), **options)  # fmt: skip
        return sel.fidelity.tolist()

    # a cheap model fidelity is never taken as exact: by default its noise is the floor
    # ((0.1 eV)^2 >> the members' 1e-4 eV^2), so the high fidelity wins
    assert chosen() == [1, 1]
    # with a negligible error, the cheap label is as informative and half the price
    assert chosen(cheap_noise_floor=0.0) == [0, 0, 0, 0]
    # labelled molecules with both fidelities: a discrepancy of ~1 eV^2 after the linear map
    lab_gen = torch.Generator().manual_seed(2)
    hi = torch.randn(50, generator=lab_gen, dtype=torch.float64)
    labels = torch.stack([hi + torch.randn(50, generator=lab_gen, dtype=torch.float64), hi], 1)
    assert chosen(cheap_noise_floor=0.0, labels=labels) == [1, 1]


def test_pairs_never_bought_twice_and_budget_respected() -> None:
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(5, 10, 2, generator=gen)
    costs = torch.tensor([0.1, 1.0])
    bought = torch.zeros(10, 2, dtype=torch.bool)
    bought[0, 1] = True  # high bought: molecule 0 is closed
    bought[1, 0] = True  # cheap bought: only the high one is left for molecule 1
    for name in MF_ACQUISITIONS:
        sel = select_pairs(name, _pred(samples), bought, costs, 2.5,
                           generator=torch.Generator().manual_seed(2))  # fmt: skip
        pairs = list(zip(sel.index.tolist(), sel.fidelity.tolist(), strict=True))
        assert len(set(sel.index.tolist())) == len(pairs), name  # one fidelity per molecule
        assert all(not bought[i, f] for i, f in pairs), name
        assert 0 not in sel.index.tolist(), name
        assert sel.cost(costs) <= 2.5 + 1e-9, name
    sel = select_pairs("high_only", _pred(samples), bought, costs, 2.5,
                       generator=torch.Generator().manual_seed(2))  # fmt: skip
    assert sel.fidelity.tolist() == [1, 1]
    sel = select_pairs("cheap_first", _pred(samples), bought, costs, 2.0,
                       generator=torch.Generator().manual_seed(2), cheap_share=0.5)  # fmt: skip
    cheap = sel.fidelity == 0
    assert sel.cost(costs) <= 2.0 + 1e-9 and int(cheap.sum()) == 8  # 8 x 0.1 of the 1.0 share
    # the high labels go to screened molecules (only molecule 1 has a cheap label)
    assert sel.index[~cheap].tolist() == [1]


def test_greedy_stops_and_breaks_ties_by_generator() -> None:
    score = torch.zeros(6, 1, dtype=torch.float64)
    a = greedy_by_score(score, torch.tensor([1.0]), 3, torch.Generator().manual_seed(0))
    b = greedy_by_score(score, torch.tensor([1.0]), 3, torch.Generator().manual_seed(5))
    assert len(a) == len(b) == 3
    assert a.index.tolist() != b.index.tolist()


class _NoisyOracle(Oracle):
    """A cheap fidelity for tests: the ground truth with a systematic error, failing on
    every 7th molecule (so failures of a cheap oracle are exercised too)."""

    default_cost = 0.05

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = self.data.y.numpy().astype(np.float64)[rows] * 1.01 + 0.2
        status = np.where(rows % 7 == 0, "scf_not_converged", "ok").astype(object)
        return y, status


@pytest.fixture
def noisy_oracle() -> Iterator[type[_NoisyOracle]]:
    """:class:`_NoisyOracle` registered as the oracle ``noisy`` while a test runs."""
    from al import oracles

    with oracles.ORACLES.registered("noisy", _NoisyOracle):
        yield _NoisyOracle


@pytest.mark.slow
@pytest.mark.usefixtures("noisy_oracle")
@pytest.mark.parametrize("mf_acquisition", ["variance_reduction", "cheap_first"])
def test_multi_fidelity_campaign(mf_acquisition: str, tracking, qm9) -> None:
    cfg = CampaignConfig(
        oracles="noisy,dft", costs="0.05,1.0", mf_acquisition=mf_acquisition,
        initial_size=100, batch_size=10, rounds=2, epochs=2, ensemble_size=2,
        min_steps=0, val_min=0, val_size=20,
        pool_subsample=400, n_test=200, hidden=32, filter_groups=8, n_interactions=1,
        progress=False, experiment_name="multi-fidelity",
    )  # fmt: skip
    run_id = run_campaign(cfg)
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_ORACLE] == "noisy,dft"
    frames = []
    for r in range(3):
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=queried_path(r))
        frames.append(pd.read_csv(path))
    q = pd.concat(frames, ignore_index=True)
    # no (molecule, fidelity) pair is bought twice, and every row names its oracle
    assert not q.duplicated(["qm9_index", "oracle"]).any()
    assert set(q["oracle"]) == {"noisy", "dft"}
    # round 0: every initial molecule at both fidelities
    r0 = q[(q["round"] == 0) & (q["role"] == "train")]
    assert r0.groupby("oracle").size().to_dict() == {"noisy": 100, "dft": 100}
    validation = q[q["role"] == "validation"]  # at the target fidelity only
    assert len(validation) == 20 and (validation["oracle"] == "dft").all()
    # a round spends at most batch_size x the high cost, and no molecule gets two labels
    for r in (1, 2):
        rq = q[q["round"] == r]
        assert 0 < rq["cost"].sum() <= 10 * 1.0 + 1e-9
        assert rq["qm9_index"].is_unique
    # a high label is never bought for a molecule that had one
    high = q[q["oracle"] == "dft"]
    assert high["qm9_index"].is_unique
    # cost accounting: the metric is the sum of the rows' costs, failures included
    cost = client.get_metric_history(run_id, CampaignMetrics.COST_SPENT)
    assert cost[-1].value == pytest.approx(q["cost"].sum())
    per_round = q.groupby("round")["cost"].sum().cumsum().tolist()
    assert [m.value for m in sorted(cost, key=lambda m: m.step)] == pytest.approx(per_round)
    failed = q[q["status"] != "ok"]
    assert len(failed) and (failed["oracle"] == "noisy").all() and failed["label"].isna().all()
    # per-fidelity counts of successful labels
    ok = q[q["status"] == "ok"].groupby("oracle").size()
    for name in ("noisy", "dft"):
        hist = client.get_metric_history(run_id, CampaignMetrics.labels_from(name))
        assert max(hist, key=lambda m: m.step).value == ok[name]
    n_lab = client.get_metric_history(run_id, CampaignMetrics.N_LABELLED)
    train = q[q["role"] == "train"]  # n_labelled counts training labels, not validation
    assert max(m.value for m in n_lab) == len(train[train["status"] == "ok"])
    # the ground truth is what dft answered
    data_y = dict(zip(qm9.qm9_index.tolist(), qm9.y.tolist(), strict=True))
    assert np.allclose(high["label"], [data_y[i] for i in high["qm9_index"]])


@pytest.mark.slow
def test_stream_with_two_oracles_is_refused(tracking) -> None:
    cfg = CampaignConfig(strategy="stream", oracles="xtb,dft", experiment_name="mf-bad")
    with pytest.raises(ValueError, match="does not support several oracles"):
        run_campaign(cfg)


def test_dft_oracle_is_a_fidelity(qm9) -> None:
    # the registry's dft oracle keeps its default cost when costs are not given
    assert DFTOracle(qm9).cost_per_label == 1.0


def test_an_oracle_key_keeps_only_what_a_metric_name_may_hold() -> None:
    """Label counts and the report's cost columns are keyed by the same name, in which a
    registry alias's "@" (refused by MLflow in a metric name), ":" and "/" are "_"."""
    assert CampaignMetrics.oracle_key("dft") == "dft"
    assert CampaignMetrics.oracle_key("model:models:/qm9-oracle@hifi") == (
        "model_models__qm9-oracle_hifi"
    )
    assert CampaignMetrics.labels_from("model:runs:/abc/model") == "n_labels.model_runs__abc_model"
