"""Acquisition functions: every registered one is held to the same contract."""

from __future__ import annotations

import pytest
import torch

from al.acquisition.functions import ACQUISITIONS, KNOWN_NEEDS, Selection, register, resolve, select
from al.uncertainty import Prediction

NAMES = sorted(ACQUISITIONS)
N, F, K = 60, 8, 5


def full_prediction(n: int = N, seed: int = 0) -> Prediction:
    """A synthetic pool providing every field."""
    g = torch.Generator().manual_seed(seed)
    members = torch.randn(K, n, generator=g, dtype=torch.float64) * torch.rand(n, generator=g)
    return Prediction(
        mean=members.mean(0),
        std=members.std(0),
        embedding=torch.randn(n, F, generator=g),
        members=members,
    )


def labelled(m: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, F, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(name: str, pred: Prediction, k: int, seed: int = 0, **kw) -> Selection:
    kw.setdefault("labelled_embedding", labelled())
    return select(name, pred, k, generator=gen(seed), **kw)


def same(a: Selection, b: Selection) -> bool:
    return torch.equal(a.index, b.index) and torch.allclose(a.score, b.score, equal_nan=True)


@pytest.mark.parametrize("with_labelled", [True, False])
@pytest.mark.parametrize("k", [1, 7, N])
@pytest.mark.parametrize("name", NAMES)
def test_contract(name: str, k: int, with_labelled: bool) -> None:
    kw = {} if with_labelled else {"labelled_embedding": None}
    if not with_labelled and "labelled_embedding" in ACQUISITIONS[name].needs:
        with pytest.raises(ValueError, match=r"missing: \['labelled_embedding'\]"):
            run(name, full_prediction(), k, **kw)
        kw = {"labelled_embedding": torch.zeros(0, F)}  # an empty labelled set is fine
    sel = run(name, full_prediction(), k, **kw)
    assert sel.index.shape == (k,) and sel.score.shape == (k,)
    assert sel.index.dtype == torch.int64 and sel.score.dtype == torch.float64
    assert len(sel.index.unique()) == k
    assert int(sel.index.min()) >= 0 and int(sel.index.max()) < N  # candidate rows only


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_equal_seeds(name: str) -> None:
    pred = full_prediction()
    assert same(run(name, pred, 10, seed=3), run(name, pred, 10, seed=3))


def test_random_depends_on_seed() -> None:
    pred = full_prediction()
    assert not torch.equal(
        run("random", pred, 10, seed=1).index, run("random", pred, 10, seed=2).index
    )


@pytest.mark.parametrize("name", NAMES)
def test_k_zero_is_empty(name: str) -> None:
    for k in (0, -3):
        sel = run(name, full_prediction(), k)
        assert len(sel) == 0 and sel.index.dtype == torch.int64


@pytest.mark.parametrize("name", NAMES)
def test_k_above_pool_raises(name: str) -> None:
    with pytest.raises(ValueError, match=rf"k={N + 1}.*n={N}"):
        run(name, full_prediction(), N + 1)


@pytest.mark.parametrize("name", NAMES)
def test_missing_needs_raise(name: str) -> None:
    full = full_prediction()
    needs = ACQUISITIONS[name].needs
    assert needs <= KNOWN_NEEDS
    mean_only = Prediction(mean=full.mean)
    if needs <= {"mean"}:
        assert len(run(name, mean_only, 5)) == 5
    else:
        with pytest.raises(ValueError, match="missing"):
            run(name, mean_only, 5)
    for need in needs - {"mean", "labelled_embedding"}:
        without = Prediction(**{**vars(full), need: None})
        with pytest.raises(ValueError, match=rf"missing: \['{need}'\]"):
            run(name, without, 5)


def test_random_works_with_mean_only() -> None:
    pred = Prediction(mean=torch.zeros(N, dtype=torch.float64))
    sel = select("random", pred, 5, generator=gen())
    assert len(sel.index.unique()) == 5 and sel.score.isnan().all()


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="unknown acquisition 'nope'") as err:
        select("nope", full_prediction(), 3, generator=gen())
    for name in ACQUISITIONS:
        assert name in str(err.value)


def test_select_takes_an_instance_and_forwards_options() -> None:
    pred = full_prediction()
    by_name = run("diverse", pred, 5, prefilter=1)
    by_instance = select(
        resolve("diverse"), pred, 5, generator=gen(), labelled_embedding=labelled(), prefilter=1
    )
    assert same(by_name, by_instance)
    # prefilter=1 leaves exactly the k most uncertain to choose from
    assert set(by_name.index.tolist()) == set(run("max_std", pred, 5).index.tolist())


def test_register_rejects_duplicates_and_unknown_needs() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("random", description="x")(lambda *a, **k: None)
    with pytest.raises(ValueError, match="unknown needs"):
        register("new", needs={"variance"}, description="x")
    assert "new" not in ACQUISITIONS


def test_selection_shapes_must_agree() -> None:
    with pytest.raises(ValueError):
        Selection(torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.float64))


def test_max_std_picks_the_top_k() -> None:
    pred = full_prediction()
    sel = run("max_std", pred, 8)
    assert set(sel.index.tolist()) == set(pred.std.topk(8).indices.tolist())
    assert torch.equal(sel.score, pred.std[sel.index])
    assert (sel.score[:-1] >= sel.score[1:]).all()  # most uncertain first


def test_ties_are_broken_by_the_generator() -> None:
    pred = Prediction(mean=torch.zeros(100, dtype=torch.float64), std=torch.ones(100))
    picks = {tuple(select("max_std", pred, 5, generator=gen(s)).index.tolist()) for s in range(5)}
    assert len(picks) > 1 and (0, 1, 2, 3, 4) not in picks


def test_max_std_does_not_depend_on_pool_order() -> None:
    pred = full_prediction()
    perm = torch.randperm(N, generator=gen(7))
    shuffled = Prediction(mean=pred.mean[perm], std=pred.std[perm])
    original = set(run("max_std", pred, 10).index.tolist())
    assert {int(perm[i]) for i in run("max_std", shuffled, 10).index} == original


def test_bald_ranks_like_max_std_on_the_members_spread() -> None:
    pred = full_prediction()
    bald, by_std = run("bald", pred, 10), run("max_std", pred, 10)
    assert torch.equal(bald.index, by_std.index)
    expected = 0.5 * torch.log1p(pred.members.var(0) / 0.05**2)
    torch.testing.assert_close(bald.score, expected[bald.index])


def test_bald_needs_two_members() -> None:
    pred = full_prediction()
    pred.members = pred.members[:1]
    with pytest.raises(ValueError, match="K >= 2"):
        run("bald", pred, 3)


def test_coreset_picks_the_far_cluster_first() -> None:
    g = gen(5)
    near = torch.randn(50, F, generator=g)
    far = torch.randn(5, F, generator=g) * 0.1 + 100.0
    order = torch.randperm(55, generator=g)
    emb = torch.cat([near, far])[order]
    is_far = (order >= 50).tolist()
    pred = Prediction(mean=torch.zeros(55, dtype=torch.float64), embedding=emb)
    sel = select("coreset", pred, 3, generator=gen(), labelled_embedding=torch.randn(20, F))
    assert is_far[int(sel.index[0])]
    assert not is_far[int(sel.index[1])]  # the far cluster is covered now
    assert sel.score[0] > 90 and sel.score[1] < sel.score[0]


@pytest.mark.parametrize("with_labelled", [True, False])
def test_diverse_skips_near_duplicates(with_labelled: bool) -> None:
    g = gen(11)
    groups = torch.randn(3, F, generator=g) * 5
    dup_emb = groups.repeat_interleave(4, dim=0)  # 3 groups of 4 identical molecules
    other_emb = torch.randn(40, F, generator=g) * 5
    emb = torch.cat([dup_emb, other_emb])
    std = torch.cat([1.0 + 0.01 * torch.rand(12, generator=g), 0.1 * torch.rand(40, generator=g)])
    group = [i // 4 if i < 12 else None for i in range(52)]
    pred = Prediction(mean=torch.zeros(52, dtype=torch.float64), std=std, embedding=emb)
    kw = {"labelled_embedding": torch.randn(10, F, generator=g) * 5 if with_labelled else None}

    def groups_hit(name: str) -> list[int]:
        sel = select(name, pred, 5, generator=gen(), **kw)
        return [group[i] for i in sel.index.tolist() if group[i] is not None]

    diverse = groups_hit("diverse")
    assert sorted(diverse) == [0, 1, 2]  # one of each group, none twice
    by_std = groups_hit("max_std")
    assert len(by_std) == 5 and len(set(by_std)) < len(by_std)


def reference_k_center(
    emb: torch.Tensor, k: int, centers: torch.Tensor, weight: torch.Tensor
) -> list[int]:
    """The textbook loop: all pairwise distances, float64, no tricks."""
    chosen: list[int] = []
    for _ in range(k):
        d = torch.cdist(emb.double(), torch.cat([centers, emb[chosen]]).double()).amin(1)
        value = weight.double() * d
        value[chosen] = -1.0
        chosen.append(int(value.argmax()))
    return chosen


@pytest.mark.parametrize("name", ["coreset", "diverse"])
def test_k_center_matches_the_textbook_loop(name: str) -> None:
    pred, lab = full_prediction(n=300, seed=4), labelled(m=25)
    pred.embedding = pred.embedding * 3 + 10  # off-centre, as real embeddings are
    options = {"prefilter": 10**6} if name == "diverse" else {}  # diverse: no prefilter
    sel = run(name, pred, 30, labelled_embedding=lab, **options)
    weight = pred.std if name == "diverse" else torch.ones(300)
    assert sel.index.tolist() == reference_k_center(pred.embedding, 30, lab, weight)
    first = (pred.embedding[sel.index[0]] - lab).norm(dim=1).min() * weight[sel.index[0]]
    torch.testing.assert_close(sel.score[0], first.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["coreset", "diverse"])
def test_k_center_scales_to_a_qm9_pool(name: str) -> None:
    # A dense [n, n] distance matrix would need ~20 GB here; the greedy loop needs O(n).
    g = gen(0)
    n = 70_000
    pred = Prediction(
        mean=torch.zeros(n, dtype=torch.float64),
        std=torch.rand(n, generator=g),
        embedding=torch.randn(n, 128, generator=g),
    )
    sel = select(name, pred, 20, generator=g, labelled_embedding=torch.randn(200, 128))
    assert len(sel.index.unique()) == 20
