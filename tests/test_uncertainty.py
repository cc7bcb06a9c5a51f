import copy

import pytest
import torch

from al.models import build_model
from al.models.config import ModelConfig
from al.models.ensemble import EnsembleModel
from al.training.config import FitConfig
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
    assert pred.mean.shape == (40,) and pred.std.shape == (40,)
    assert pred.embedding.shape == (40, 32)
    assert (pred.std > 0).all()
    assert torch.allclose(pred.mean, pred.members.mean(0))
    # the saved members reproduce the surrogate's predictions
    other = build_surrogate(name, SMALL, FIT, torch.device("cpu"), ensemble_size=3, mc_samples=4)
    other.load_members(s.members())
    again = other.predict(qm9, rows[2], batch_size=16)
    if name == "ensemble":
        torch.testing.assert_close(again.mean, pred.mean)
    else:
        torch.testing.assert_close(again.embedding, pred.embedding)


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
    with pytest.raises(ValueError, match="expected one of: ensemble, mc_dropout"):
        build_surrogate("gp", SMALL, FIT, torch.device("cpu"))
