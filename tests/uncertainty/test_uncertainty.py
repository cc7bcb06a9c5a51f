import copy
import math
from dataclasses import replace

import pytest
import torch

from al.models import build_model
from al.models.checkpoint import load_checkpoint, save_checkpoint
from al.models.config import ModelConfig
from al.models.ensemble import EnsembleModel
from al.models.shallow import ShallowEnsembleModel
from al.training.config import FitConfig
from al.training.metrics import calibration_scale, regression_report
from al.uncertainty import UNCERTAINTIES, build_surrogate

SMALL = ModelConfig(hidden=32, filter_groups=8, n_interactions=1, dropout=0.1)
FIT = FitConfig(epochs=2, batch_size=32, progress=False)


@pytest.fixture(scope="module")
def rows(qm9):
    perm = torch.randperm(len(qm9), generator=torch.Generator().manual_seed(3))
    return perm[:120], perm[120:150], perm[150:190]


@pytest.mark.parametrize("name", list(UNCERTAINTIES))
def test_every_surrogate_predicts_what_it_provides(name: str, qm9, rows) -> None:
    s = build_surrogate(name, SMALL, FIT, torch.device("cpu"), ensemble_size=3, mc_samples=4)
    s.fit(qm9, rows[0], rows[1])
    pred = s.predict(qm9, rows[2], batch_size=16)
    assert pred.provides() == s.provides
    assert pred.mean.shape == (40,) and pred.std.shape == (40,) and pred.std_raw.shape == (40,)
    # the features the energy is linear in (the readout's last hidden layer, 32 // 2 wide);
    # a deep ensemble's members side by side
    assert pred.embedding.shape == (40, 16 * 3 if name == "ensemble" else 16)
    assert (pred.std > 0).all()
    assert torch.allclose(pred.mean, pred.members.mean(0))
    torch.testing.assert_close(pred.std, pred.std_raw * s.std_scale)
    # the saved members (and calibration) reproduce the surrogate's predictions
    other = build_surrogate(name, SMALL, FIT, torch.device("cpu"), ensemble_size=3, mc_samples=4)
    other.load_members(s.members(), s.checkpoint_meta())
    assert other.std_scale == s.std_scale
    again = other.predict(qm9, rows[2], batch_size=16)
    if name in ("ensemble", "shallow"):
        torch.testing.assert_close(again.mean, pred.mean)
        torch.testing.assert_close(again.std, pred.std)
    else:
        torch.testing.assert_close(again.embedding, pred.embedding)


@pytest.mark.parametrize("name", list(UNCERTAINTIES))
def test_std_is_calibrated_on_the_validation_set(name: str, qm9, rows) -> None:
    s = build_surrogate(name, SMALL, FIT, torch.device("cpu"), ensemble_size=3, mc_samples=4)
    result = s.fit(qm9, rows[0], rows[1])
    assert result.std_scale == s.std_scale != 1.0
    assert s.checkpoint_meta()["std_scale"] == s.std_scale
    if name == "mc_dropout":
        return  # MC passes are random: the validation std is not reproducible
    val = s.predict(qm9, rows[1])
    target = qm9.y[rows[1]]
    # by construction the calibrated std has mean(err^2 / std^2) = 1 on validation
    assert calibration_scale(val.mean, val.std, target) == pytest.approx(1.0, rel=1e-6)
    assert calibration_scale(val.mean, val.std_raw, target) == pytest.approx(s.std_scale)
    report = regression_report(val.mean, target, val.std, val.std_raw)
    assert report["nll"] <= report["nll_raw"] + 1e-9  # the scale minimises the NLL


def test_shallow_ensemble_learns_and_its_heads_differ(qm9, rows) -> None:
    cfg = FitConfig(epochs=4, batch_size=16, lr=3e-3, progress=False, nll_warmup=0.25)
    s = build_surrogate("shallow", SMALL, cfg, torch.device("cpu"), ensemble_size=4)
    result = s.fit(qm9, rows[0], rows[1])
    assert isinstance(s.model, ShallowEnsembleModel) and s.model.heads == 4
    assert result.best_val_mae < result.history[0].val_mae  # it learns
    assert result.best_step >= round(0.25 * result.step_budget)  # kept weights are NLL-trained
    pred = s.predict(qm9, rows[2])
    assert pred.members.shape == (4, 40)
    assert (pred.members[0] - pred.members[1]).abs().min() > 0  # heads differ
    assert (pred.std_raw > 0).all() and torch.isfinite(pred.std).all()


def test_shallow_ensemble_checkpoint_round_trip(qm9, rows, tmp_path) -> None:
    cfg = FitConfig(epochs=1, batch_size=32, progress=False)
    s = build_surrogate("shallow", SMALL, cfg, torch.device("cpu"), ensemble_size=3)
    s.fit(qm9, rows[0], rows[1])
    path = save_checkpoint(s.members(), tmp_path / "model.pt", meta=s.checkpoint_meta())
    models, meta = load_checkpoint(path)
    assert meta["uncertainty"] == "shallow" and meta["ensemble_size"] == 3
    back = build_surrogate(meta["uncertainty"], SMALL, cfg, torch.device("cpu"), ensemble_size=3)
    back.load_members(models, meta)
    a, b = s.predict(qm9, rows[2]), back.predict(qm9, rows[2])
    for field in ("mean", "std", "std_raw", "members", "embedding"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field))


def test_multi_fidelity_shallow_ensemble(qm9, rows) -> None:
    y = torch.stack([qm9.y + 0.3, qm9.y], dim=1)  # a biased cheap fidelity and the target
    y[rows[0][::2], 1] = float("nan")  # half the training molecules lack the target
    data = replace(qm9, y=y)
    cfg = FitConfig(epochs=1, batch_size=32, progress=False)
    s = build_surrogate("shallow", SMALL, cfg, torch.device("cpu"), ensemble_size=3, n_outputs=2)
    result = s.fit(data, rows[0], rows[1])
    assert math.isfinite(result.best_val_mae)
    pred = s.predict(data, rows[2])
    assert pred.fidelity_members.shape == (3, 40, 2)
    torch.testing.assert_close(pred.members, pred.fidelity_members[..., -1])


def test_ensemble_members_are_independent_and_match_loop_and_vmap(qm9) -> None:
    members = [build_model("schnet", hidden=32, filter_groups=8) for _ in range(3)]
    ens = EnsembleModel(copy.deepcopy(members))
    z, pos, batch, _ = qm9.batch(torch.arange(20))
    ref = torch.stack([m(z, pos, batch, 20) for m in members])
    for vectorize in (False, True):
        ens.vectorize = vectorize
        torch.testing.assert_close(ens(z, pos, batch, 20), ref, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(ref[0], ref[1])
    # a loss on member 0 only reaches member 0's weights
    ens.vectorize = False
    ens(z, pos, batch, 20)[0].sum().backward()
    grads = [p.grad for p in ens.parameters() if p.grad is not None]
    assert grads and all(g[1:].abs().sum() == 0 for g in grads)
    assert any(g[0].abs().sum() > 0 for g in grads)


def test_mc_dropout_needs_dropout() -> None:
    with pytest.raises(ValueError, match="dropout > 0"):
        build_surrogate("mc_dropout", ModelConfig(dropout=0.0), FIT, torch.device("cpu"))
    with pytest.raises(ValueError, match="expected one of: ensemble, mc_dropout, shallow"):
        build_surrogate("gp", SMALL, FIT, torch.device("cpu"))
    with pytest.raises(ValueError, match="at least 2 heads"):
        build_surrogate("shallow", SMALL, FIT, torch.device("cpu"), ensemble_size=1)


def test_bootstrap_ensemble_with_the_validation_floor(qm9, rows) -> None:
    """Rows moved to validation take their bootstrap weights with them."""
    cfg = FitConfig(epochs=1, batch_size=32, progress=False, val_min=40, val_max_fraction=0.5)
    s = build_surrogate("ensemble", SMALL, cfg, torch.device("cpu"), ensemble_size=2,
                        bootstrap=True)  # fmt: skip
    result = s.fit(qm9, rows[0], rows[1])
    assert result.val_rows.numel() == 40 and result.n_train == 110
    assert math.isfinite(result.best_val_mae)


@pytest.mark.parametrize("name", list(UNCERTAINTIES))
def test_a_warm_fit_continues_from_the_weights_on_a_shorter_schedule(name: str, qm9, rows) -> None:
    from al.training.config import step_budget

    fit = replace(FIT, epochs=4)
    s = build_surrogate(name, SMALL, fit, torch.device("cpu"), ensemble_size=2, mc_samples=3)
    cold = s.fit(qm9, rows[0], rows[1])
    assert not cold.warm and cold.steps == step_budget(fit, cold.n_train)
    model = s.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    warm = s.fit(qm9, rows[0], rows[1], warm=0.25)
    assert warm.warm and s.model is model  # the same weights, trained further
    assert warm.steps == math.ceil(0.25 * step_budget(fit, warm.n_train)) < cold.steps
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = s.fit(qm9, rows[0], rows[1])  # warm=0: from scratch, a new model
    assert not again.warm and s.model is not model and again.steps == cold.steps


def test_a_fit_of_given_steps_runs_them_all(qm9, rows) -> None:
    """``steps`` (the final refit's) runs its whole schedule: lr 0 never improves, so patience
    1 alone would stop at the second evaluation."""
    fit = replace(FIT, epochs=50, lr=0.0, patience=1, eval_every=2, nll_warmup=0.0)
    s = build_surrogate("shallow", SMALL, fit, torch.device("cpu"), ensemble_size=2)
    assert s.fit(qm9, rows[0], rows[1]).steps == 4  # stopped early
    result = s.fit(qm9, rows[0], rows[1], steps=9)
    assert not result.stopped_early and result.steps == result.step_budget == 9
    model = s.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    anneal = s.fit(qm9, rows[0], rows[1], warm=0.5, steps=7)  # a warm re-anneal: all 7 steps
    assert anneal.warm and s.model is model and anneal.steps == anneal.step_budget == 7
    assert not anneal.stopped_early
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # lr 0


@pytest.mark.parametrize("name", ["ensemble", "mc_dropout", "shallow"])
def test_embedding_is_the_last_layer_features_the_mean_energy_is_linear_in(
    name: str, qm9, rows
) -> None:
    """Mean energy = embedding @ w + per-molecule terms of composition only: a least-squares
    fit of the mean energy on [embedding, element counts] is exact (to float rounding)."""
    s = build_surrogate(name, SMALL, FIT, torch.device("cpu"), ensemble_size=3, mc_samples=4)
    s.fit(qm9, rows[0], rows[1])
    test = torch.cat([rows[2], rows[1]])  # 70 molecules > the 16 * 3 + 5 unknowns
    pred = s.predict(qm9, test, batch_size=16)
    counts = torch.stack([qm9.z[qm9.ptr[i] : qm9.ptr[i + 1]].bincount(minlength=10)[[1, 6, 7, 8, 9]]
                          for i in test.tolist()]).double()  # fmt: skip
    x = torch.cat([pred.embedding.double(), counts], dim=1)
    mean = pred.mean if name != "mc_dropout" else _deterministic_mean(s, qm9, test)
    assert x.shape[1] < len(test)  # overdetermined: an exact fit is not automatic

    def worst_residual(features):
        coef = torch.linalg.lstsq(features, mean[:, None]).solution
        return ((features @ coef).squeeze(1) - mean).abs().max()

    # what composition leaves unexplained, the embedding explains to float32 rounding
    assert worst_residual(x) < 1e-3 * worst_residual(counts)


def _deterministic_mean(s, qm9, rows):
    from al.training.fit import predict

    s.model.eval()
    return predict(s.model, qm9, rows, 16, amp=False)[0]
