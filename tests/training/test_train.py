import copy
import io
import math
import re
import sys
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from al import progress
from al.cli import main
from al.config import ConfigError, build_config
from al.models import build_model
from al.models.ensemble import EnsembleModel
from al.training.config import FitConfig, step_budget
from al.training.fit import fit, iterate_batches, member_batches, predict, resolve_device
from al.training.losses import ensemble_nll
from al.training.metrics import regression_report
from al.training.split import split_validation, validation_size


@pytest.fixture(scope="module")
def small_rows(qm9):
    gen = torch.Generator().manual_seed(1)
    rows = torch.randperm(len(qm9), generator=gen)[:240]
    return rows[:200], rows[200:]


def _fit(qm9, rows, **kw):
    torch.manual_seed(0)
    model = build_model("schnet", hidden=32, filter_groups=8, n_interactions=2)
    cfg = FitConfig(
        epochs=kw.pop("epochs", 6), batch_size=32, lr=3e-3, progress=False, seed=0, **kw
    )
    return model, fit(model, qm9, rows[0], rows[1], cfg)


def test_fit_learns_and_records_diagnostics(qm9, small_rows) -> None:
    model, result = _fit(qm9, small_rows, epochs=8)
    assert len(result.history) == 8
    first, best = result.history[0], result.best_val_mae
    assert best < first.val_mae
    pred, _ = predict(model, qm9, small_rows[1])
    # restored weights are the best epoch's
    assert regression_report(pred, qm9.y[small_rows[1]])["mae"] == pytest.approx(best, rel=1e-4)
    h = result.history[-1]
    assert set(h.grad_norm) == set(h.weight_norm)
    assert {"embedding", "interactions_0", "interactions_1", "readout"} <= set(h.grad_norm)
    assert set(h.act_norm) == {"block_0", "block_1"}
    assert all(math.isfinite(v) and v > 0 for v in h.grad_norm.values())
    assert h.mol_per_s > 0 and h.compute_s > 0 and h.data_s >= 0
    assert h.lr < FitConfig().lr  # cosine decay


def test_fit_is_deterministic(qm9, small_rows) -> None:
    _, a = _fit(qm9, small_rows, epochs=2)
    _, b = _fit(qm9, small_rows, epochs=2)
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]


def test_early_stopping(qm9, small_rows) -> None:
    # lr 0 never improves on epoch 0, so patience 2 stops after epoch 2
    torch.manual_seed(0)
    model = build_model("schnet", hidden=32, filter_groups=8, n_interactions=1)
    cfg = FitConfig(epochs=50, lr=0.0, patience=2, progress=False, batch_size=64)
    result = fit(model, qm9, small_rows[0], small_rows[1], cfg)
    assert result.stopped_early
    assert len(result.history) == 3


def test_predict_embeddings(qm9, small_rows) -> None:
    model = build_model("painn", hidden=32, filter_groups=8, n_interactions=1)
    mean, emb = predict(model, qm9, small_rows[1], batch_size=7, embeddings=True)
    assert mean.shape == (40,) and emb.shape == (40, 16)  # the last hidden layer, 32 // 2


def test_batches_cover_each_row_once() -> None:
    gen = torch.Generator().manual_seed(0)
    idx = torch.cat(list(iterate_batches(103, 10, gen)))
    assert sorted(idx.tolist()) == list(range(103))


def test_cuda_without_gpu_is_an_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


# ------------------------------------------------------------------ step budgets, validation


def _tiny_fit(qm9, rows, model=None, **kw):
    torch.manual_seed(0)
    model = model or build_model("schnet", hidden=16, filter_groups=4, n_interactions=1)
    cfg = FitConfig(progress=False, seed=0, **{"batch_size": 16, "epochs": 1, **kw})
    return model, fit(model, qm9, rows[0], rows[1], cfg)


def test_step_budget_is_epochs_capped_by_max_steps_and_floored_by_min_steps() -> None:
    cfg = FitConfig(epochs=3, batch_size=10)
    assert step_budget(cfg, 95) == 30  # 10 steps per epoch
    assert step_budget(FitConfig(epochs=3, batch_size=10, max_steps=7), 95) == 7
    # the floor wins over both caps, whatever the data size
    assert step_budget(FitConfig(epochs=3, batch_size=10, max_steps=7, min_steps=50), 95) == 50
    assert step_budget(FitConfig(epochs=3, batch_size=10, min_steps=50), 10_000) == 3000


def test_fit_runs_the_step_floor_and_evaluates_every_eval_every_steps(qm9, small_rows) -> None:
    rows = (small_rows[0][:32], small_rows[1][:8])  # 2 steps per epoch
    _, result = _tiny_fit(qm9, rows, epochs=1, min_steps=12, eval_every=5)
    assert result.steps == result.step_budget == 12
    assert [h.step for h in result.history] == [5, 10, 12]  # and after the last step
    assert [h.epoch for h in result.history] == [0, 1, 2]
    _, capped = _tiny_fit(qm9, rows, epochs=50, max_steps=3)
    assert capped.steps == 3 and [h.step for h in capped.history] == [2, 3]


def test_early_stopping_waits_for_the_step_floor(qm9, small_rows) -> None:
    rows = (small_rows[0][:32], small_rows[1][:8])
    # lr 0 never improves: patience 1 would stop at the second evaluation (step 4)
    _, result = _tiny_fit(qm9, rows, epochs=100, lr=0.0, patience=1, eval_every=2, min_steps=10)
    assert result.stopped_early
    assert result.steps == 10 and result.step_budget == 200


def test_validation_size_floor_and_cap() -> None:
    cfg = FitConfig(val_fraction=0.1, val_min=200, val_max_fraction=0.25)
    assert validation_size(cfg, 5000) == 500  # the fraction is above the floor
    assert validation_size(cfg, 1000) == 200  # the floor
    assert validation_size(cfg, 100) == 25  # the floor, capped at a quarter
    assert validation_size(FitConfig(val_fraction=0.1), 1000) == 100  # no floor by default
    assert validation_size(FitConfig(val_fraction=0.0, val_min=200), 1000) == 0


def test_split_validation_holds_out_the_fraction_then_fills_the_floor() -> None:
    rows = torch.randperm(1000, generator=torch.Generator().manual_seed(2)) + 5000
    train, val = split_validation(rows, FitConfig(val_fraction=0.1))
    assert torch.equal(val, rows[:100]) and torch.equal(train, rows[100:])  # the first rows
    assert split_validation(rows, FitConfig(val_fraction=0.0))[1].numel() == 0
    floor = FitConfig(val_fraction=0.1, val_min=200, seed=3)
    train, val = split_validation(rows, floor)
    assert val.numel() == validation_size(floor, 1000) == 200 and train.numel() == 800
    assert torch.equal(val[:100], rows[:100])  # the fraction's rows, then the floor's
    assert sorted(torch.cat([train, val]).tolist()) == sorted(rows.tolist())
    again, other = split_validation(rows, floor), split_validation(rows, replace(floor, seed=4))
    assert torch.equal(again[1], val) and not torch.equal(other[1], val)  # seeded
    # rows already held out at the front count: 10 held, the floor takes 20 more
    train, val = split_validation(rows[:160], replace(floor, val_min=30, val_max_fraction=0.5), 10)
    assert val.numel() == 30 and torch.equal(val[:10], rows[:10]) and train.numel() == 130


def test_fit_uses_the_rows_as_given(qm9, small_rows) -> None:
    train, val = small_rows[0][:150], small_rows[1][:10]
    _, result = _tiny_fit(qm9, (train, val), val_min=30, val_max_fraction=0.5)
    assert torch.equal(result.val_rows, val) and result.n_train == 150


# -------------------------------------------------------------------------- deep ensembles


def test_member_batches_give_each_member_its_own_order() -> None:
    gen = torch.Generator().manual_seed(0)
    stream = member_batches(50, 10, 3, gen)
    epoch = torch.cat([next(stream) for _ in range(5)], dim=1)  # [3, 50]
    for k in range(3):
        assert sorted(epoch[k].tolist()) == list(range(50))  # each row once per epoch
    assert not torch.equal(epoch[0], epoch[1]) and not torch.equal(epoch[1], epoch[2])
    again = torch.cat([next(stream) for _ in range(5)], dim=1)
    assert not torch.equal(again, epoch)  # a new permutation every epoch


def test_ensemble_members_with_equal_weights_diverge_through_their_batch_order(
    qm9, small_rows
) -> None:
    torch.manual_seed(0)
    one = build_model("schnet", hidden=16, filter_groups=4, n_interactions=1)
    ens = EnsembleModel([copy.deepcopy(one), copy.deepcopy(one)])
    rows = (small_rows[0][:64], small_rows[1][:8])
    _tiny_fit(qm9, rows, model=ens, epochs=1)
    weights = [p.detach() for p in ens.stacked]
    assert all(w[0].shape == w[1].shape for w in weights)
    assert any(not torch.allclose(w[0], w[1]) for w in weights)


def test_gradient_clipping_is_per_member() -> None:
    torch.manual_seed(0)
    members = [build_model("schnet", hidden=16, filter_groups=4, n_interactions=1) for _ in "ab"]
    ens = EnsembleModel(members)
    for p in ens.stacked:
        p.grad = torch.full_like(p, 1e-3)
        p.grad[0] *= 1e5  # member 0's gradient explodes, member 1's does not
    kept = [p.grad[1].clone() for p in ens.stacked]
    norms = ens.clip_grad_norms_(1.0)
    assert norms[0] > 1.0 > norms[1]

    def norm(k: int) -> float:
        return float(torch.stack([p.grad[k].norm() for p in ens.stacked]).norm())

    assert norm(0) == pytest.approx(1.0, rel=1e-4)
    # one global norm would have shrunk member 1's gradient by the same factor
    assert all(torch.equal(p.grad[1], k) for p, k in zip(ens.stacked, kept, strict=True))


# ------------------------------------------------------------------------- shallow ensemble


def test_ensemble_nll_value_and_gradient_on_a_toy_input() -> None:
    heads = torch.tensor([[1.0, 0.0], [2.0, 0.5], [4.0, -0.5]], dtype=torch.float64)
    heads.requires_grad_(True)
    y = torch.tensor([3.0, 1.0], dtype=torch.float64)
    K, eps = heads.shape[0], 1e-6
    loss = ensemble_nll(heads, y, eps=eps)
    m = heads.detach().mean(0)
    v = ((heads.detach() - m) ** 2).sum(0) / (K - 1) + eps
    expected = (0.5 * torch.log(v) + (y - m) ** 2 / (2 * v)).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-12)
    loss.backward()
    # d/dh_k: dm/dh_k = 1/K, dv/dh_k = 2 (h_k - m) / (K - 1), then the mean over molecules
    dv = 2 * (heads.detach() - m) / (K - 1)
    grad = (0.5 / v - (y - m) ** 2 / (2 * v**2)) * dv - (y - m) / v / K
    torch.testing.assert_close(heads.grad, grad / y.numel())
    # missing targets are left out, weights weigh molecules
    heads = heads.detach()
    y_nan = torch.tensor([3.0, float("nan")], dtype=torch.float64)
    first = ensemble_nll(heads[:, :1], y[:1], eps=eps)
    assert float(ensemble_nll(heads, y_nan, eps=eps)) == pytest.approx(float(first))
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert float(ensemble_nll(heads, y, w, eps=eps)) == pytest.approx(float(first) / 2)


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("max_steps", -1),
        ("min_steps", -5),
        ("eval_every", -1),
        ("patience", 0),
        ("val_min", -1),
        ("val_max_fraction", 0.9),
        ("nll_warmup", 1.5),
        ("min_steps", "many"),
    ],
)
def test_new_fit_keys_reject_bad_values_in_one_line(key: str, bad: object) -> None:
    with pytest.raises(ConfigError, match=f"config key {key!r}") as err:
        build_config(FitConfig, {key: bad})
    assert "\n" not in str(err.value)
    result = CliRunner().invoke(main, ["train", f"--{key.replace('_', '-')}", str(bad)])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"Error: {err.value}"]


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_predict_batches_by_size_and_answers_in_the_order_asked(qm9, n_outputs) -> None:
    """Molecules are scored in batches of similar size, but each answer lands on its row:
    a shuffled request in batches of 3 equals scoring every molecule on its own."""
    torch.manual_seed(0)
    model = EnsembleModel(
        [build_model("schnet", hidden=16, n_interactions=1, n_outputs=n_outputs) for _ in "ab"]
    ).eval()
    rows = torch.randperm(200)[:17]
    with torch.no_grad():
        energy, emb = predict(model, qm9, rows, batch_size=3, amp=False, embeddings=True)
        alone = [predict(model, qm9, r[None], amp=False, embeddings=True) for r in rows]
    want_e = torch.cat([e for e, _ in alone], dim=-2 if n_outputs > 1 else -1)
    want_f = torch.cat([f for _, f in alone], dim=-2)
    assert energy.shape == want_e.shape and emb.shape == want_f.shape
    torch.testing.assert_close(energy, want_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb, want_f, rtol=1e-5, atol=1e-5)


class _Terminal(io.StringIO):
    """Standard error as a terminal: where the progress bar draws."""

    def isatty(self) -> bool:
        return True


def test_the_bar_and_the_profiler_watch_without_changing_the_fit(
    qm9, small_rows, tmp_path, monkeypatch
) -> None:
    rows = (small_rows[0][:64], small_rows[1][:8])
    plain, plain_result = _tiny_fit(qm9, rows, epochs=2)
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.delenv(progress.ENV, raising=False)
    torch.manual_seed(0)
    model = build_model("schnet", hidden=16, filter_groups=4, n_interactions=1)
    cfg = FitConfig(progress=True, seed=0, batch_size=16, epochs=2)
    result = fit(model, qm9, rows[0], rows[1], cfg, profile_dir=tmp_path / "profile")
    assert (tmp_path / "profile" / "trace.json").is_file()
    assert re.search(r"fit 64 mol: .*8/8 ", screen.getvalue())  # 4 steps per epoch
    assert [h.train_loss for h in result.history] == [h.train_loss for h in plain_result.history]
    for name, value in model.state_dict().items():
        assert torch.equal(value, plain.state_dict()[name]), name
