import math

import pytest
import torch

from al.models import build_model
from al.training.config import FitConfig
from al.training.fit import fit, iterate_batches, predict, resolve_device
from al.training.metrics import regression_report


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
    assert mean.shape == (40,) and emb.shape == (40, 32)


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
