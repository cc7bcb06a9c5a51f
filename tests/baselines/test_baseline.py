"""Δ-learning: baselines, the residual surrogate, absent-element fallbacks, a tiny campaign
and the logged model's prediction."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import al.baselines.base as baseline_module
from al.baselines import (
    BASELINES,
    ResidualSurrogate,
    XTBBaseline,
    baseline_choices,
    baseline_spec_problem,
    build_baseline,
)
from al.config import subset
from al.data.elements import ELEMENTS
from al.data.molecules import molecules_frame
from al.data.reference import composition_prior, fit_composition
from al.data.splits import SplitConfig, make_splits
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig
from al.loop.schemes import build_scheme
from al.loop.selection import build_selection
from al.loop.stopping import build_rules
from al.loop.tracker import MemoryTracker
from al.models import build_model
from al.models.checkpoint import load_checkpoint
from al.models.config import ModelConfig
from al.oracles import XTBOracle, build_oracle
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.tracking.pyfunc import MoleculeEnergyModel
from al.training.metrics import baseline_mae
from al.uncertainty import Prediction, Surrogate, build_surrogate

REPO = Path(__file__).resolve().parents[2]
F = list(ELEMENTS).index("F")


def fluorine_split(qm9, n_train: int = 90, n_test: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_train`` rows without fluorine and ``n_test`` rows with it (fixed seed)."""
    comp = qm9.composition()
    gen = torch.Generator().manual_seed(0)
    has_f = torch.nonzero(comp[:, F] > 0).flatten()
    no_f = torch.nonzero(comp[:, F] == 0).flatten()
    train = no_f[torch.randperm(no_f.numel(), generator=gen)[:n_train]]
    test = has_f[torch.randperm(has_f.numel(), generator=gen)[:n_test]]
    return train, test


# --- absent elements ---------------------------------------------------------------------------
def test_no_fluorine_in_training_no_multi_ev_error_on_fluorine(qm9, caplog) -> None:
    """Without a fallback, F's reference is 0: several eV off on every F molecule (checked
    here as the contrast); with it, the composition model stays near its usual error."""
    train, test = fluorine_split(qm9)
    A, y = qm9.composition(train), qm9.y[train]
    A_test, y_test = qm9.composition(test), qm9.y[test]
    plain = torch.zeros(5, dtype=torch.float64)
    plain[:F] = torch.linalg.lstsq(A[:, :F], y[:, None]).solution[:, 0]
    assert (A_test @ plain - y_test).abs().mean() > 3.0  # what an absent element cost

    with caplog.at_level(logging.WARNING):
        model = build_model("schnet", hidden=16, n_interactions=1)
        model.fit_reference(A, y)
    assert "element=F" in caplog.text
    ref = model.atomref[list(ELEMENTS.values())].double()
    assert (A_test @ ref - y_test).abs().mean() < 1.5
    assert baseline_mae(qm9, train, test) < 1.5


def test_absent_element_of_a_residual_target_falls_back_to_about_zero(qm9) -> None:
    """A Δ-learning residual has no per-element part: the prior's scale goes to about 0."""
    train, _ = fluorine_split(qm9)
    A = qm9.composition(train)
    residual = qm9.y[train] - A @ composition_prior()  # the per-element part removed
    coef = fit_composition(A, residual)
    assert abs(float(coef[F])) < 0.2


# --- the registry and the key ----------------------------------------------------------------
def test_baseline_specs_and_the_config_key() -> None:
    assert baseline_choices() == [
        "none", "composition", "xtb", "pretrained", "model:<MLflow model URI>", "ani1x", "ani1ccx",
    ]  # fmt: skip
    assert set(BASELINES) == {
        "none", "composition", "xtb", "ani1x", "ani1ccx", "pretrained", "model",
    }  # fmt: skip
    assert build_baseline("none") is None
    assert baseline_spec_problem("model:models:/m-1") is None
    assert "needs an argument" in (baseline_spec_problem("model") or "")
    assert "takes no argument" in (baseline_spec_problem("xtb:1") or "")
    assert build_baseline("pretrained").cost_per_molecule == 0.001
    assert build_baseline("xtb").cost_per_molecule == pytest.approx(1e-4)
    assert build_baseline("xtb", cost=0.01).cost_per_molecule == 0.01
    from al.cli import main

    result = CliRunner().invoke(main, ["al-loop", "--baseline", "xtbb"])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "config key 'baseline'" in lines[0] and "composition" in lines[0]
    listed = f"baseline ({'|'.join(baseline_choices())})"
    for path in (REPO / "MLproject", REPO / "docker" / "MLproject"):
        assert listed in path.read_text(), path


# --- the xTB baseline -------------------------------------------------------------------------
def test_xtb_baseline_is_the_xtb_label_cached_on_disk_and_paid_once(
    qm9, tmp_path, monkeypatch
) -> None:
    rows = torch.arange(12)
    base = XTBBaseline(cache=tmp_path)
    base.free(qm9.qm9_index[rows[:4]])  # e.g. the test set: not paid
    value = base.values(qm9, rows)
    assert value.shape == (12,) and value.dtype == torch.float64
    label = XTBOracle(qm9).label(qm9.qm9_index[rows].numpy()).value
    np.testing.assert_allclose(value.numpy(), label, atol=1e-9)
    base.values(qm9, rows[::2])
    assert base.n_paid == 8 and base.cost_spent == pytest.approx(8e-4)
    assert base.path.exists()

    def refuse(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(baseline_module, "_xtb_energy_hartree", refuse)
    again = XTBBaseline(cache=tmp_path).values(qm9, rows)  # read back from the disk
    torch.testing.assert_close(again, value)


def test_a_pool_numbered_like_qm9_gets_its_own_energy_store(qm9, tmp_path) -> None:
    """A pool's molecules are numbered 1..n, as QM9's first ones are indexed: its energies
    must never be read from QM9's store (nor written into it)."""
    from dataclasses import replace

    rows = torch.arange(6)
    base = XTBBaseline(cache=tmp_path)
    qm9_values = base.values(qm9, rows)  # QM9 indices 1..6 (and a few more) in the store
    other = qm9.subset(torch.arange(100, 106))
    pool = replace(other, qm9_index=torch.arange(1, 7), source="pool:mine")
    assert set(pool.qm9_index.tolist()) <= set(qm9.qm9_index[rows].tolist())
    pooled = XTBBaseline(cache=tmp_path)  # a campaign on the pool: another process
    value = pooled.values(pool, torch.arange(6))
    label = XTBOracle(pool).label(np.arange(1, 7)).value
    np.testing.assert_allclose(value.numpy(), label, atol=1e-9)
    assert not np.allclose(value.numpy(), qm9_values.numpy())
    assert pooled.path.exists() and pooled.path != base.path  # a store of its own
    again = XTBBaseline(cache=tmp_path).values(qm9, rows)  # QM9's store is untouched
    torch.testing.assert_close(again, qm9_values)


def test_a_failed_xtb_molecule_falls_back_to_composition_and_is_recorded(
    qm9, tmp_path, monkeypatch
) -> None:
    rows = torch.arange(20, 25)
    real = baseline_module._xtb_energy_hartree
    bad = int(qm9.qm9_index[22])

    def flaky(z, pos, **kw):
        if len(z) == int(qm9.n_atoms[22]) and np.allclose(pos, qm9.pos[qm9.ptr[22] :][: len(z)]):
            raise RuntimeError("SCF not converged")
        return real(z, pos, **kw)

    monkeypatch.setattr(baseline_module, "_xtb_energy_hartree", flaky)
    base = XTBBaseline(cache=tmp_path)
    value = base.values(qm9, rows)
    assert torch.isfinite(value).all()
    expected = float(qm9.composition(torch.tensor([22])) @ composition_prior())
    assert float(value[2]) == pytest.approx(expected)
    assert base.failed.tolist() == [bad]
    with np.load(base.path) as rec:  # recorded as NaN, not dropped
        stored = dict(zip(rec["qm9_index"].tolist(), rec["energy_ha"].tolist(), strict=True))
    assert math.isnan(stored[bad]) and len(stored) == 5


# --- the residual surrogate -------------------------------------------------------------------
class Fixed(Surrogate):
    """Remembers its training targets; predicts 1 for every molecule, members 0 and 2."""

    name = "fixed"
    provides = frozenset({"mean", "std", "members"})

    def __init__(self) -> None:
        self.seen: torch.Tensor | None = None
        self.std_scale, self.n_outputs = 1.0, 1

    def fit(self, data, train_rows, val_rows, on_epoch=None, warm=0.0, steps=0):
        self.seen = data.y[torch.cat([train_rows, val_rows])].clone()
        return SimpleNamespace(std_scale=1.0)

    def predict(self, data, rows, batch_size=512):
        members = torch.stack([torch.zeros(rows.numel()), 2 * torch.ones(rows.numel())])
        return Prediction.from_samples(members.double(), None)


def test_residual_surrogate_learns_target_minus_baseline_and_adds_it_back(qm9, tmp_path) -> None:
    base = XTBBaseline(cache=tmp_path)
    inner = Fixed()
    surrogate = ResidualSurrogate(inner, base)
    train, val = torch.arange(30, 36), torch.arange(36, 38)
    surrogate.fit(qm9, train, val)
    b = base.values(qm9, torch.arange(30, 38))
    torch.testing.assert_close(inner.seen, qm9.y[30:38] - b)
    pred = surrogate.predict(qm9, train)
    torch.testing.assert_close(pred.mean, 1 + b[:6])
    torch.testing.assert_close(pred.members[1], 2 + b[:6])
    torch.testing.assert_close(pred.std, torch.full((6,), math.sqrt(2), dtype=torch.float64))
    assert surrogate.name == "fixed" and surrogate.baseline_cost == pytest.approx(8e-4)
    assert surrogate.checkpoint_meta()["baseline"] == "xtb"


# --- a tiny campaign, and its model -----------------------------------------------------------
TINY = dict(
    initial_size=30, batch_size=10, rounds=1, hidden=16, n_interactions=1, epochs=2,
    min_steps=0, val_min=0, val_size=20,
    ensemble_size=2, pool_subsample=200, n_test=100, progress=False, train_batch_size=32,
    seed=0,
)  # fmt: skip


def tiny_campaign(qm9, tracker: MemoryTracker, baseline: str, cache: Path, **kw) -> Campaign:
    cfg = CampaignConfig(**{**TINY, **kw}, baseline=baseline)
    splits = make_splits(qm9.qm9_index.numpy(), SplitConfig(cfg.split_seed, cfg.n_test))
    torch.manual_seed(cfg.seed)
    surrogate = build_surrogate(
        "ensemble", subset(ModelConfig, cfg), cfg.fit_config(), torch.device("cpu"),
        ensemble_size=cfg.ensemble_size,
    )  # fmt: skip
    if baseline == "xtb":
        base = XTBBaseline(cache=cache)
        base.free(splits.test)
        surrogate = ResidualSurrogate(surrogate, base)
    oracles = [build_oracle("dft", data=qm9)]
    return Campaign(
        cfg, qm9, splits, surrogate, oracles, build_rules(cfg.stopping_settings()),
        scheme=build_scheme("pool", cfg),
        selection=build_selection(qm9, oracles, cfg, "max_std", surrogate),
        tracker=tracker,
    )  # fmt: skip


@pytest.mark.slow
def test_tiny_xtb_campaign_pays_its_baseline_and_beats_none(qm9, tmp_path) -> None:
    """Same seed, same labels budget (30 + 10): learning DFT - xTB must have a test MAE
    below 0.7 x that of learning DFT directly (measured: 0.42 against 0.86 eV)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {}
        for name in ("none", "xtb"):
            tracker = MemoryTracker(tmp_path / name)
            campaign = tiny_campaign(qm9, tracker, name, tmp_path / "cache")
            assert campaign.execute() == "rounds: 1 of 1 done"
            runs[name] = (campaign, tracker.metrics_frame())
        # resumed: the checkpoint's baseline is loaded back, the campaign goes on
        resumed = tiny_campaign(qm9, tracker, "xtb", tmp_path / "cache", rounds=2)
        assert resumed.execute() == "rounds: 2 of 2 done"
        assert tracker.metric_history("cost_baseline")[-1] > 0
    finally:
        torch.set_num_threads(threads)
    none, xtb = runs["none"][1], runs["xtb"][1]
    assert xtb[CM.N_LABELLED].tolist() == none[CM.N_LABELLED].tolist() == [30, 40]
    assert "cost_baseline" not in none.columns
    # round 0 paid the 30 training and 20 validation molecules; round 1 also the 200 scored
    # pool molecules (the 10 chosen among them), never the test set
    assert xtb["cost_baseline"].tolist() == pytest.approx([50e-4, 250e-4])
    assert (xtb[CM.COST_SPENT] - xtb["cost_baseline"]).tolist() == pytest.approx([50.0, 60.0])
    assert xtb[CM.TEST_MAE].iloc[-1] < 0.7 * none[CM.TEST_MAE].iloc[-1]

    # the checkpoint records the baseline; the logged model's predict adds it back
    campaign = resumed  # its last fit is the tracker's last checkpoint
    _, meta = load_checkpoint(campaign.tracker.fits[-1].checkpoint)
    assert meta["baseline"] == "xtb"
    model = MoleculeEnergyModel()
    checkpoint = campaign.tracker.fits[-1].checkpoint
    model.load_context(SimpleNamespace(artifacts={"checkpoint": checkpoint}))
    rows = campaign.test[:5]
    frame = molecules_frame(
        [(qm9.z[qm9.ptr[r] : qm9.ptr[r + 1]], qm9.pos[qm9.ptr[r] : qm9.ptr[r + 1]]) for r in rows]
    )
    out = model.predict(None, frame)
    expected = campaign.surrogate.predict(qm9, rows).mean.numpy()
    np.testing.assert_allclose(out["mean_ev"].to_numpy(), expected, atol=1e-3)


def test_molecules_paid_survive_the_checkpoint_so_a_resume_never_charges_twice(qm9) -> None:
    """The baseline's charged molecules go into the checkpoint metadata; a baseline rebuilt
    from it (a resumed campaign) charges only molecules it has not charged before."""
    base = build_baseline("composition", cost=0.5)
    base.values(qm9, torch.tensor([3, 7, 11, 200]))
    meta = base.meta()
    assert base.n_paid == 4 and isinstance(meta["baseline_paid"], str)
    again = build_baseline("composition", cost=0.5)
    again.load_meta(meta)
    assert again.n_paid == 4 and again.cost_spent == pytest.approx(2.0)
    again.values(qm9, torch.tensor([3, 7, 11, 200, 12]))
    assert again.n_paid == 5
    empty = build_baseline("composition")
    empty.load_meta(empty.meta())
    assert empty.n_paid == 0


@pytest.mark.slow
def test_delta_learning_does_not_depend_on_the_xtb_reference(qm9) -> None:
    """The surrogate fits per-element reference energies on its own targets, so any
    per-element offset in the baseline (the packaged xTB reference, fitted on 2,500 DFT
    labels, or none at all) leaves its predictions unchanged: the reference's DFT labels
    are not a cost of Δ-learning on xTB."""
    from al.baselines import ResidualSurrogate, XTBBaseline
    from al.training.config import FitConfig

    rng = np.random.default_rng(0)
    rows = torch.as_tensor(rng.choice(len(qm9.ptr) - 1, 300, replace=False))
    train, val, test = rows[:200], rows[200:250], rows[250:]
    means = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for zero in (False, True):
            baseline = XTBBaseline()
            if zero:  # raw xTB energies: no reference at all
                baseline.coef = torch.zeros_like(baseline.coef)
            inner = build_surrogate(
                "shallow", ModelConfig(hidden=16, n_interactions=1, filter_groups=4),
                FitConfig(epochs=3, batch_size=32, progress=False, seed=0),
                torch.device("cpu"), ensemble_size=2,
            )  # fmt: skip
            surrogate = ResidualSurrogate(inner, baseline)
            surrogate.fit(qm9, train, val)
            means.append(surrogate.predict(qm9, test).mean)
    finally:
        torch.set_num_threads(threads)
    offsets = qm9.composition(test) @ XTBBaseline().coef  # what the reference adds, [100]
    assert offsets.abs().min() > 1.0  # the two baselines differ by eV per molecule...
    torch.testing.assert_close(means[0], means[1], atol=2e-4, rtol=0)  # ...the model does not
