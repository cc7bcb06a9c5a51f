"""LCMD and BAIT against bmdal_reg's own choices, and their edge cases.

``tests/fixtures/bmdal/selections.json`` holds bmdal-reg 3.0.2's selections on small fixed
examples, written by ``tests/fixtures/bmdal/generate.py`` (bmdal-reg is not installed for
the tests: it imports ``dill`` and uses ``np.Inf``, which NumPy 2 removed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from al.acquisition import ACQUISITIONS, STRATEGIES, select
from al.acquisition.batch import BAIT_SIGMA
from al.uncertainty import Prediction

FIXTURE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "bmdal" / "selections.json").read_text()
)
CASES = {case["name"]: case for case in FIXTURE["cases"]}


def pred_of(x: torch.Tensor) -> Prediction:
    return Prediction(mean=torch.zeros(x.shape[0], dtype=torch.float64), embedding=x)


def choose(name: str, case: dict, dtype: torch.dtype, seed: int = 0, **kw) -> list[int]:
    pool = torch.tensor(case["pool"], dtype=torch.float64).to(dtype)
    lab = torch.tensor(case["labelled"], dtype=torch.float64).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    sel = select(name, pred_of(pool), case["k"], generator=gen, labelled_embedding=lab, **kw)
    return sel.index.tolist()


def test_fixture_settings_are_the_defaults() -> None:
    assert FIXTURE["sigma"] == BAIT_SIGMA


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", ["lcmd", "bait"])
def test_same_choice_as_bmdal_reg(name: str, case: str) -> None:
    """Same molecules in the same order, whatever the generator's tie-breaking order."""
    for seed in (0, 1):
        assert choose(name, CASES[case], torch.float64, seed) == CASES[case][name]


@pytest.mark.parametrize("case", ["small", "tall"])  # more labelled molecules than features
@pytest.mark.parametrize("name", ["lcmd", "bait"])
def test_float32_features_give_the_same_choice(name: str, case: str) -> None:
    assert choose(name, CASES[case], torch.float32) == CASES[case][name]


def test_registered_needs_and_presets() -> None:
    for name in ("lcmd", "bait"):
        assert ACQUISITIONS[name].needs == {"embedding", "labelled_embedding"}
        # the shallow ensemble's embedding is the last-layer features the heads are linear in
        assert STRATEGIES[name].uncertainty == "shallow"
        assert STRATEGIES[name].acquisition == name


def test_lcmd_without_labelled_starts_at_the_largest_norm() -> None:
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    x[17] *= 10
    sel = select("lcmd", pred_of(x), 5, generator=torch.Generator(), labelled_embedding=x[:0])
    assert int(sel.index[0]) == 17 and math.isnan(sel.score[0])
    assert (sel.score[1:] > 0).all()


def test_lcmd_covers_the_largest_cluster_first() -> None:
    """A large, poorly covered blob beats a lone far outlier (k-center takes the outlier)."""
    g = torch.Generator().manual_seed(0)
    blob = torch.randn(200, 2, generator=g) * 0.5 + torch.tensor([5.0, 0.0])
    x = torch.cat([blob, torch.tensor([[-12.0, 0.0]])])
    lab = torch.tensor([[3.5, 0.0], [-2.0, 0.0]])  # the second owns only the outlier
    lcmd = select("lcmd", pred_of(x), 1, generator=g, labelled_embedding=lab)
    coreset = select("coreset", pred_of(x), 1, generator=g, labelled_embedding=lab)
    assert int(coreset.index[0]) == 200 and int(lcmd.index[0]) < 200


def test_bait_fills_up_at_random_when_nothing_is_left_to_learn() -> None:
    x = torch.zeros(30, 3)
    x[:4] = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    sel = select("bait", pred_of(x), 10, generator=torch.Generator(), labelled_embedding=x[:0])
    assert len(sel.index.unique()) == 10
    assert set(sel.index[:4].tolist()) == {0, 1, 2, 3}  # the informative ones first
    assert sel.score[4:].isnan().all() and (sel.score[:4] > 0).all()


def test_bait_forward_only_is_greedy_variance_reduction() -> None:
    """overselection=1: each pick maximises the drop of the summed GP posterior variance."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    lab = torch.randn(5, 3, generator=g, dtype=torch.float64)
    sel = select("bait", pred_of(x), 3, generator=g, labelled_embedding=lab, overselection=1.0)
    s2 = BAIT_SIGMA**2
    scale = lab.square().sum(1).mean().rsqrt()
    xs, ls = x * scale, lab * scale
    everything = torch.cat([xs, ls])

    def total_variance(observed: torch.Tensor) -> float:
        prec = torch.eye(3, dtype=torch.float64) * s2 + observed.T @ observed
        return float(s2 * (everything @ torch.linalg.inv(prec) * everything).sum())

    picked: list[int] = []
    for step in range(3):
        base = torch.cat([ls, xs[picked]])
        now = total_variance(base)
        drops = torch.tensor([
            -math.inf if i in picked else now - total_variance(torch.cat([base, xs[i : i + 1]]))
            for i in range(40)
        ])  # fmt: skip
        best = int(drops.argmax())
        assert int(sel.index[step]) == best
        assert float(sel.score[step]) == pytest.approx(float(drops[best]), rel=1e-6)
        picked.append(best)


@pytest.mark.parametrize("name", ["lcmd", "bait"])
def test_wrong_labelled_width_raises(name: str) -> None:
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match=r"expected \[m, 4\]"):
        select(name, pred_of(x), 3, generator=torch.Generator(), labelled_embedding=x[:, :3])


def test_bait_options_are_checked() -> None:
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match="sigma"):
        select("bait", pred_of(x), 3, generator=torch.Generator(), labelled_embedding=x, sigma=0)
    with pytest.raises(ValueError, match="overselection"):
        select("bait", pred_of(x), 3, generator=torch.Generator(), labelled_embedding=x,
               overselection=0.5)  # fmt: skip
