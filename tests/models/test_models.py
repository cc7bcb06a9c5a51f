"""Contract tests for every registered model, on tiny synthetic molecules.

Every test is parametrised over :data:`al.models.MODELS`, so a newly registered model is
checked automatically. Physics checks (invariances, locality, batch independence) run in
float64 so that their tolerances can be tight.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from al.models import MODELS, AtomisticModel, build_model, count_parameters, set_mc_dropout
from al.models.base import COMPOSITION_Z
from al.models.checkpoint import load_checkpoint, save_checkpoint
from al.models.ensemble import EnsembleModel
from al.models.geometry import (
    MIN_BLOCK,
    BatchGeometry,
    DenseGeometry,
    block_cuts,
    radial_filters,
)
from al.models.shallow import ShallowEnsembleModel

#: Small settings that every registered model accepts; keeps the suite fast.
SMALL = {"hidden": 32, "n_interactions": 2}
ELEMENTS = torch.tensor(COMPOSITION_Z)
ATOL = 1e-8


@pytest.fixture(params=sorted(MODELS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def make_model(name: str, seed: int = 0, **kwargs) -> AtomisticModel:
    """A float64 model in eval mode whose weights look trained.

    Fresh biases are zero, which hides whole paths (a filter bias, say, would make atoms
    beyond the cutoff interact); perturbing every parameter exposes them to the tests.
    """
    torch.manual_seed(seed)
    model = build_model(name, **{**SMALL, **kwargs}).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def random_molecule(n: int, gen: torch.Generator, bond: float = 1.5) -> tuple:
    """``z [n]`` and ``pos [n, 3]`` (float64): each atom ~``bond`` from an earlier one."""
    z = ELEMENTS[torch.randint(len(ELEMENTS), (n,), generator=gen)]
    pos = torch.zeros(n, 3, dtype=torch.float64)
    for i in range(1, n):
        while True:
            direction = torch.randn(3, generator=gen, dtype=torch.float64)
            anchor = pos[torch.randint(i, (1,), generator=gen)].squeeze(0)
            length = bond * (0.9 + 0.2 * torch.rand((), generator=gen, dtype=torch.float64))
            cand = anchor + length * direction / direction.norm()
            if (pos[:i] - cand).norm(dim=1).min() > 1.0:  # no two atoms closer than 1 A
                pos[i] = cand
                break
    return z, pos


def collate(mols: list[tuple]) -> tuple:
    """Molecules -> flat ``z``, ``pos``, ``batch`` and the number of molecules."""
    z = torch.cat([m[0] for m in mols])
    pos = torch.cat([m[1] for m in mols])
    batch = torch.cat([torch.full((len(m[0]),), i) for i, m in enumerate(mols)])
    return z, pos, batch, len(mols)


def random_batch(seed: int = 0, n_mol: int = 3, sizes: tuple[int, int] = (3, 9)) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(sizes[0], sizes[1] + 1, (n_mol,), generator=gen)
    return collate([random_molecule(int(c), gen) for c in counts])


def energies(model: AtomisticModel, z, pos, batch, num_graphs) -> tuple:
    with torch.no_grad():
        return model.energy_and_embedding(z, pos, batch, num_graphs)


# ---------------------------------------------------------------------------- shapes, size


@pytest.mark.parametrize("n_mol", [2, 3, 4])
def test_output_shapes_and_finite(name: str, n_mol: int) -> None:
    model = make_model(name)
    z, pos, batch, B = random_batch(seed=n_mol, n_mol=n_mol)
    energy, emb = energies(model, z, pos, batch, B)
    assert energy.shape == (B,)
    assert emb.shape == (B, model.hidden // 2)  # the readout's last hidden layer
    assert torch.isfinite(energy).all() and torch.isfinite(emb).all()
    # forward() is the energy; num_graphs is only a shortcut
    with torch.no_grad():
        assert torch.equal(model(z, pos, batch, B), energy)
        assert torch.equal(model(z, pos, batch), energy)


def test_float32_model_gives_float32_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, **SMALL).eval()
    z, pos, batch, B = random_batch()
    energy, emb = energies(model, z, pos.float(), batch, B)
    assert energy.dtype == torch.float32 and emb.dtype == torch.float32
    assert torch.isfinite(energy).all()


def test_parameter_count_below_one_million(name: str) -> None:
    assert count_parameters(build_model(name)) < 1_000_000


def test_forces_are_finite(name: str) -> None:
    """Gradients w.r.t. positions exist and are finite, padding and self-pairs included."""
    model = make_model(name)
    z, pos, batch, B = random_batch(seed=1, n_mol=3)
    pos = pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(z, pos, batch, B).sum(), pos)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_float64_model_energies_have_float64_precision(name: str) -> None:
    """Finite differences of a float64 model match its autograd forces."""
    model = make_model(name)
    z, pos, batch, B = random_batch(seed=2, n_mol=2, sizes=(3, 5))
    pos = pos.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: model(z, p, batch, B), (pos,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------- invariances


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def assert_same(a: tuple, b: tuple) -> None:
    torch.testing.assert_close(a[0], b[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=ATOL, rtol=0)


def test_rotation_invariance(name: str) -> None:
    model = make_model(name)
    z, pos, batch, B = random_batch(seed=3)
    gen = torch.Generator().manual_seed(3)
    rot = random_rotation(gen)
    assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert_same(energies(model, z, pos, batch, B), energies(model, z, pos @ rot.T, batch, B))


def test_translation_invariance(name: str) -> None:
    model = make_model(name)
    z, pos, batch, B = random_batch(seed=4)
    shift = torch.tensor([3.7, -12.1, 0.4], dtype=torch.float64)
    assert_same(energies(model, z, pos, batch, B), energies(model, z, pos + shift, batch, B))


def test_permutation_invariance_within_molecules(name: str) -> None:
    model = make_model(name)
    z, pos, batch, B = random_batch(seed=5, n_mol=4)
    gen = torch.Generator().manual_seed(5)
    counts = torch.bincount(batch, minlength=B)
    start = torch.cumsum(counts, 0) - counts
    perm = torch.cat(
        [int(s) + torch.randperm(int(c), generator=gen) for s, c in zip(start, counts, strict=True)]
    )
    assert not torch.equal(perm, torch.arange(len(z)))
    assert torch.equal(batch[perm], batch)  # atoms stay in their molecule's block
    assert_same(energies(model, z, pos, batch, B), energies(model, z[perm], pos[perm], batch, B))


def test_output_changes_when_an_atom_moves(name: str) -> None:
    """The invariance tests above can fail: geometry does matter."""
    model = make_model(name)
    z, pos, batch, B = random_batch(seed=6)
    moved = pos.clone()
    moved[1] += torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64)
    e0, emb0 = energies(model, z, pos, batch, B)
    e1, emb1 = energies(model, z, moved, batch, B)
    assert (e0[0] - e1[0]).abs() > 1e-5
    assert (emb0[0] - emb1[0]).abs().max() > 1e-5
    torch.testing.assert_close(e0[1:], e1[1:], atol=ATOL, rtol=0)  # other molecules untouched


def test_energy_does_not_depend_on_the_rest_of_the_batch(name: str) -> None:
    model = make_model(name)
    gen = torch.Generator().manual_seed(7)
    mols = [random_molecule(n, gen) for n in (4, 9, 6)]
    e_all, emb_all = energies(model, *collate(mols))
    for i, mol in enumerate(mols):
        e_one, emb_one = energies(model, *collate([mol]))
        torch.testing.assert_close(e_all[i : i + 1], e_one, atol=ATOL, rtol=0)
        torch.testing.assert_close(emb_all[i : i + 1], emb_one, atol=ATOL, rtol=0)
    e_rev, _ = energies(model, *collate(mols[::-1]))
    torch.testing.assert_close(e_rev.flip(0), e_all, atol=ATOL, rtol=0)


def test_atoms_beyond_the_cutoff_do_not_interact(name: str) -> None:
    model = make_model(name)
    gen = torch.Generator().manual_seed(8)
    (za, pa), (zb, pb) = random_molecule(5, gen), random_molecule(4, gen)
    far = pb + torch.tensor([20.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.cdist(pa, far).min() > model.cutoff
    e_a, emb_a = energies(model, *collate([(za, pa)]))
    e_b, emb_b = energies(model, *collate([(zb, pb)]))
    e_ab, emb_ab = energies(model, *collate([(torch.cat([za, zb]), torch.cat([pa, far]))]))
    torch.testing.assert_close(e_ab, e_a + e_b, atol=ATOL, rtol=0)
    torch.testing.assert_close(emb_ab, emb_a + emb_b, atol=ATOL, rtol=0)  # summed over atoms


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_models(name: str) -> None:
    a, b = make_model(name, seed=11), make_model(name, seed=11)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    z, pos, batch, B = random_batch(seed=9)
    ea, eb = energies(a, z, pos, batch, B), energies(b, z, pos, batch, B)
    assert torch.equal(ea[0], eb[0]) and torch.equal(ea[1], eb[1])
    c = make_model(name, seed=12)
    assert not torch.equal(energies(c, z, pos, batch, B)[0], ea[0])


def test_reset_parameters_redraws_every_weight(name: str) -> None:
    model = make_model(name)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    model.reset_parameters()
    for k, p in model.named_parameters():
        assert torch.isfinite(p).all(), k
        if p.dim() >= 2:  # weights and embeddings; biases may reset to zero
            assert not torch.equal(p, before[k]), f"{k} was not re-drawn"
    # and the re-draw follows the global seed
    torch.manual_seed(5)
    model.reset_parameters()
    first = {k: p.detach().clone() for k, p in model.named_parameters()}
    torch.manual_seed(5)
    model.reset_parameters()
    assert all(torch.equal(p, first[k]) for k, p in model.named_parameters())


# ---------------------------------------------------------------------------- MC dropout


def test_mc_dropout(name: str) -> None:
    model = make_model(name, dropout=0.2)
    z, pos, batch, B = random_batch(seed=10)
    e1, e2 = energies(model, z, pos, batch, B)[0], energies(model, z, pos, batch, B)[0]
    assert torch.equal(e1, e2), "eval mode must be deterministic"

    assert set_mc_dropout(model, True) > 0
    draws = torch.stack([energies(model, z, pos, batch, B)[0] for _ in range(4)])
    assert not model.training
    assert (draws - draws[0]).abs().amax() > 1e-6, "MC dropout should sample"

    assert set_mc_dropout(model, False) > 0
    assert torch.equal(energies(model, z, pos, batch, B)[0], e1)


def test_mc_dropout_without_dropout_reports_zero_layers(name: str) -> None:
    model = make_model(name, dropout=0.0)
    assert set_mc_dropout(model, True) == 0
    z, pos, batch, B = random_batch(seed=10)
    assert torch.equal(energies(model, z, pos, batch, B)[0], energies(model, z, pos, batch, B)[0])


# ---------------------------------------------------------------------------- reference


def test_fit_reference_recovers_known_atomrefs(name: str) -> None:
    model = make_model(name)
    gen = torch.Generator().manual_seed(13)
    comp = torch.randint(0, 8, (200, 5), generator=gen).double()
    comp[:, 1] += 1  # every molecule has a carbon
    coefs = torch.tensor([-13.6, -1029.8, -1485.4, -2042.6, -2713.5], dtype=torch.float64)
    out = model.fit_reference(comp, comp @ coefs)
    assert out["baseline_mae"] < 1e-6
    torch.testing.assert_close(model.atomref[list(COMPOSITION_Z)], coefs, atol=1e-6, rtol=0)
    others = [i for i in range(model.atomref.numel()) if i not in COMPOSITION_Z]
    assert torch.equal(model.atomref[others], torch.zeros(len(others), dtype=torch.float64))
    assert math.isfinite(out["scale"]) and out["scale"] > 0
    assert float(model.scale) == out["scale"]


def test_without_the_composition_reference_only_the_scale_is_set(name: str) -> None:
    """``composition_reference=false`` (a scalar that does not grow with the atoms): the
    references stay 0, the scale is the labels' own."""
    model = make_model(name)
    comp = torch.randint(1, 8, (100, 5), generator=torch.Generator().manual_seed(3)).double()
    y = torch.linspace(5.0, 9.0, 100, dtype=torch.float64)  # e.g. a gap in eV
    out = model.fit_reference(comp, y, per_element=False)
    assert torch.equal(model.atomref, torch.zeros_like(model.atomref))
    assert out["baseline_mae"] == pytest.approx(float(y.abs().mean()))
    assert out["scale"] > 0 and float(model.scale) == pytest.approx(out["scale"])


def test_fit_reference_enters_the_energy(name: str) -> None:
    """After the fit, each atom contributes ``atomref[z]`` on top of the network's output."""
    model = make_model(name)
    z, pos, batch, B = random_batch(seed=14)
    e0 = energies(model, z, pos, batch, B)[0]
    gen = torch.Generator().manual_seed(14)
    comp = torch.randint(0, 6, (50, 5), generator=gen).double()
    coefs = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0], dtype=torch.float64)
    model.fit_reference(comp, comp @ coefs)
    e1 = energies(model, z, pos, batch, B)[0]
    shift = torch.zeros(B, dtype=torch.float64).index_add_(0, batch, model.atomref[z])
    torch.testing.assert_close(e1 - e0, shift, atol=1e-5, rtol=0)


def test_fit_reference_gives_absent_elements_a_fallback(name: str) -> None:
    """An element no training molecule has gets the shipped per-element fallback (scaled
    to the fitted elements), never 0: on the DFT scale fluorine's is far below 0 eV."""
    model = make_model(name)
    gen = torch.Generator().manual_seed(15)
    comp = torch.randint(1, 6, (40, 5), generator=gen).double()
    comp[:, 4] = 0  # no fluorine
    coefs = torch.tensor([-0.5, -38.0, -54.0, -75.0, 0.0], dtype=torch.float64)
    out = model.fit_reference(comp, comp @ coefs)
    assert out["baseline_mae"] < 1e-6
    assert float(model.atomref[9]) < -10.0
    torch.testing.assert_close(model.atomref[[1, 6, 7, 8]], coefs[:4], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- factory


def _sorted_batch(sizes: list[int], seed: int = 1) -> tuple:
    """``z``, ``pos`` (float64) and ``batch`` of random molecules with these atom counts."""
    gen = torch.Generator().manual_seed(seed)
    mols = [random_molecule(n, gen) for n in sizes]
    z = torch.cat([m[0] for m in mols])
    pos = torch.cat([m[1] for m in mols])
    batch = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    return z, pos, batch


def test_radial_filters_are_the_linear_map_of_the_basis_times_the_cutoff(name: str) -> None:
    model = make_model(name)
    _, pos, batch = _sorted_batch([3, 6, 5])
    geo = DenseGeometry.build(pos, batch, 3, model.cutoff)
    (got,) = radial_filters(model.filter_net, model.rbf, BatchGeometry.single(geo))
    want = model.filter_net(model.rbf(geo.dist)) * geo.fcut[..., None]  # [B, n, n, O]
    assert torch.allclose(got, want.permute(3, 0, 1, 2), atol=1e-12)  # [O, B, n, n]
    assert got.shape[1:] == (3, 6, 6) and bool((got[:, 0, 3:, :] == 0).all())  # padding


def test_block_cuts_minimise_the_padded_pair_work() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        counts = torch.randint(3, 30, (int(torch.randint(16, 70, (1,), generator=gen)),),
                               generator=gen).sort().values  # fmt: skip
        B = counts.numel()

        def work(cuts: list[int], counts: torch.Tensor = counts) -> int:
            starts = [0, *cuts[:-1]]
            return sum((e - s) * int(counts[e - 1]) ** 2 for s, e in zip(starts, cuts, strict=True))

        options = [[B]]
        options += [[i, B] for i in range(MIN_BLOCK, B - MIN_BLOCK + 1)]
        for i in range(MIN_BLOCK, B):
            options += [[i, j, B] for j in range(i + MIN_BLOCK, B - MIN_BLOCK + 1)]
        cuts = block_cuts(counts)
        assert cuts[-1] == B and all(
            b - a >= MIN_BLOCK for a, b in zip([0, *cuts[:-1]], cuts, strict=True)
        )
        assert work(cuts) == min(work(c) for c in options)


def test_a_batch_in_order_of_size_is_cut_into_blocks_that_give_the_same_energies(
    name: str,
) -> None:
    model = make_model(name)
    sizes = sorted(
        int(n) for n in torch.randint(2, 12, (40,), generator=torch.Generator().manual_seed(3))
    )
    z, pos, batch = _sorted_batch(sizes)
    geo = BatchGeometry.build(pos, batch, len(sizes), model.cutoff)
    assert len(geo.blocks) > 1 and sum(g.num_graphs for g in geo.blocks) == len(sizes)
    assert [g.n for g in geo.blocks] == sorted(g.n for g in geo.blocks) and geo.blocks[
        -1
    ].n == sizes[-1]
    one = BatchGeometry.single(DenseGeometry.build(pos, batch, len(sizes), model.cutoff))
    e_blocks, emb_blocks = model(z, pos, batch, len(sizes), embedding=True, geo=geo)
    e_one, emb_one = model(z, pos, batch, len(sizes), embedding=True, geo=one)
    assert torch.allclose(e_blocks, e_one, atol=1e-10)
    assert torch.allclose(emb_blocks, emb_one, atol=1e-10)
    # a batch not in order of size stays one block, and gives the same energies too
    order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(0))
    parts = [(z[batch == k], pos[batch == k]) for k in order.tolist()]
    zs, ps = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    bs = torch.cat([torch.full((len(p[0]),), k) for k, p in enumerate(parts)])
    assert len(BatchGeometry.build(ps, bs, len(sizes), model.cutoff).blocks) == 1
    assert torch.allclose(model(zs, ps, bs, len(sizes)), e_one[order], atol=1e-10)


def test_build_model_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown model") as err:
        build_model("no-such-model")
    for valid in MODELS:
        assert valid in str(err.value)


def test_build_model_returns_an_instance_unchanged(name: str) -> None:
    model = make_model(name)
    assert build_model(model) is model


def test_registry_builds_the_registered_class(name: str) -> None:
    model = build_model(name, **SMALL)
    assert type(model) is MODELS[name]
    assert isinstance(model, AtomisticModel)


def test_repr_lists_hyper_parameters(name: str) -> None:
    model = build_model(name, **SMALL, dropout=0.1)
    text = repr(model)
    hp = model.hparams()
    assert text.startswith(MODELS[name].__name__ + "(")
    assert {"hidden", "n_interactions", "dropout"} <= hp.keys()
    assert hp["hidden"] == SMALL["hidden"] and hp["n_interactions"] == SMALL["n_interactions"]
    for key, value in hp.items():
        assert f"{key}={value}" in text
    # the hyper-parameters rebuild the same architecture
    rebuilt = MODELS[name](**hp)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


# ---------------------------------------------------------------------------- training


def test_a_few_gradient_steps_reduce_the_loss(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, **SMALL).train()
    z, pos, batch, B = random_batch(seed=16, n_mol=4)
    pos = pos.float()
    y = torch.tensor([-1.0, 0.5, 2.0, -0.3])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(z, pos, batch, B), y)
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


# ------------------------------------------------------------ shallow and deep ensembles


def make_shallow(name: str, heads: int = 4, n_outputs: int = 1) -> ShallowEnsembleModel:
    torch.manual_seed(0)
    model = ShallowEnsembleModel.build(name, heads, n_outputs=n_outputs, **SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.double().eval()


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_shallow_ensemble_shapes_heads_and_invariance(name: str, n_outputs: int) -> None:
    model = make_shallow(name, heads=4, n_outputs=n_outputs)
    z, pos, batch, B = random_batch(seed=3, n_mol=3)
    energy, emb = energies(model, z, pos, batch, B)
    assert energy.shape == ((4, B) if n_outputs == 1 else (4, B, 2))
    assert emb.shape == (B, model.hidden // 2)  # the features the heads are linear in
    assert not torch.allclose(energy[0], energy[1])  # the heads differ
    # every head is linear in the embedding: the last layer applied to the summed features
    last = model.trunk.readout[-1]
    n_atoms = torch.bincount(batch, minlength=B).double()
    ref = model.trunk.atomref[z]
    ref = torch.zeros(B, ref.shape[1], dtype=ref.dtype).index_add(0, batch, ref)
    linear = (emb @ last.weight.T + n_atoms[:, None] * last.bias) * model.trunk.scale + ref
    linear = linear.view(B, 4, n_outputs).transpose(0, 1)
    torch.testing.assert_close(linear.reshape(energy.shape), energy)
    rot = random_rotation(torch.Generator().manual_seed(0))
    assert_same((energy, emb), energies(model, z, pos @ rot.T + 1.0, batch, B))


def test_shallow_ensemble_costs_one_last_layer_more(name: str) -> None:
    single = build_model(name, **SMALL)
    shallow = ShallowEnsembleModel.build(name, 5, **SMALL)
    hidden_last = SMALL["hidden"] // 2
    assert count_parameters(shallow) - count_parameters(single) == 4 * (hidden_last + 1)


def test_shallow_reference_energies_are_shared_by_the_heads(name: str) -> None:
    model = ShallowEnsembleModel.build(name, 3, **SMALL)
    gen = torch.Generator().manual_seed(0)
    comp = torch.randint(0, 6, (40, 5), generator=gen).double()
    y = comp @ torch.tensor([-0.5, -37.8, -54.6, -75.1, -99.7], dtype=torch.float64)
    model.fit_reference(comp, y)
    ref = model.trunk.atomref[list(COMPOSITION_Z)]  # [5, K]
    torch.testing.assert_close(ref, ref[:, :1].expand_as(ref))
    assert ref[1, 0].item() == pytest.approx(-37.8, abs=1e-6)
    assert model.scale.shape == ()


def test_shallow_checkpoint_round_trip(name: str, tmp_path) -> None:
    model = make_shallow(name, heads=3).float()
    path = save_checkpoint([model], tmp_path / "m.pt", meta={"std_scale": 1.7})
    (back,), meta = load_checkpoint(path)
    assert isinstance(back, ShallowEnsembleModel) and back.heads == 3
    assert meta["std_scale"] == 1.7 and back.hparams() == model.hparams()
    z, pos, batch, B = random_batch(seed=5)
    a, b = energies(model, z, pos.float(), batch, B), energies(back, z, pos.float(), batch, B)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_ensemble_members_on_their_own_batches_loop_and_vmap_agree(name: str) -> None:
    torch.manual_seed(0)
    members = [build_model(name, **SMALL).double() for _ in range(3)]
    ens = EnsembleModel([copy.deepcopy(m) for m in members])
    # different molecules and atom counts per member, as in training
    inputs = [random_batch(seed=20 + k, n_mol=3, sizes=(3, 4 + 3 * k))[:3] for k in range(3)]
    ref = torch.stack([m(*inp, 3) for m, inp in zip(members, inputs, strict=True)]).detach()
    for vectorize in (False, True):
        ens.vectorize = vectorize
        torch.testing.assert_close(ens.forward_members(inputs, 3), ref, atol=1e-10, rtol=0)
    # a loss on member 1 reaches member 1's weights only
    ens.forward_members(inputs, 3)[1].sum().backward()
    grads = [p.grad for p in ens.stacked if p.grad is not None]
    assert all(g[[0, 2]].abs().sum() == 0 for g in grads)
    assert any(g[1].abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpus_energies_embeddings_and_forces(name: str) -> None:
    """The same float64 weights on a CUDA device: the CPU's outputs to float tolerance."""
    model = make_model(name)
    z, pos, batch, B = random_batch(seed=2, n_mol=4)
    on_cpu = pos.clone().requires_grad_(True)
    energy, emb = model.energy_and_embedding(z, on_cpu, batch, B)
    (forces,) = torch.autograd.grad(energy.sum(), on_cpu)
    gpu = copy.deepcopy(model).cuda()
    on_gpu = pos.cuda().requires_grad_(True)
    energy_gpu, emb_gpu = gpu.energy_and_embedding(z.cuda(), on_gpu, batch.cuda(), B)
    (forces_gpu,) = torch.autograd.grad(energy_gpu.sum(), on_gpu)
    assert energy_gpu.device.type == "cuda" and forces_gpu.device.type == "cuda"
    for cpu, cuda in ((energy, energy_gpu), (emb, emb_gpu), (forces, forces_gpu)):
        torch.testing.assert_close(cuda.detach().cpu(), cpu.detach(), rtol=1e-7, atol=ATOL)
