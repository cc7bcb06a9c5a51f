"""Pieces shared by the models: radial basis, cutoff, MC dropout, reference energies."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from al.data.reference import fit_composition

#: Columns of the composition matrix: H, C, N, O, F.
COMPOSITION_Z = (1, 6, 7, 8, 9)
MAX_Z = 10


class ShiftedSoftplus(nn.Module):
    """``softplus(x) - log 2``, SchNet's smooth activation (zero at zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = math.log(2.0)

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x) - self.shift


class MCDropout(nn.Dropout):
    """Dropout that can stay on at inference (``always_on``), for MC-dropout uncertainty."""

    always_on: bool = False

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training or self.always_on, self.inplace)


def set_mc_dropout(model: nn.Module, on: bool) -> int:
    """Switch MC dropout on or off in every :class:`MCDropout` of ``model``.

    Returns the number of dropout layers with ``p > 0`` (0 means MC dropout has no effect).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, MCDropout):
            m.always_on = on
            n += int(m.p > 0)
    return n


def cosine_cutoff(d: Tensor, cutoff: float) -> Tensor:
    """``[E] -> [E]``: 1 at d = 0, smoothly 0 at and beyond ``cutoff``.

    Multiplying every filter by it keeps the energy continuous when atoms cross the cutoff.
    """
    return 0.5 * (torch.cos(d * (math.pi / cutoff)) + 1.0) * (d < cutoff)


class GaussianRBF(nn.Module):
    """Gaussians on distances: ``forward(d [*S]) -> [*S, n_rbf]``."""

    def __init__(self, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
        width = cutoff / max(n_rbf - 1, 1)
        self.coeff = -0.5 / width**2

    def forward(self, d: Tensor) -> Tensor:
        # The floor keeps far tails at exp(-30) instead of underflowing: subnormal floats
        # made exp, and every product downstream, up to ten times slower on CPU.
        arg = self.coeff * (d[..., None] - self.centers).square()
        return torch.exp(arg.clamp_min_(-30.0))

    def channels_first(self, d: Tensor) -> Tensor:
        """``d [P] -> [n_rbf, P]``: the same Gaussians, one row per centre."""
        arg = self.coeff * (d[None] - self.centers[:, None]).square()
        return torch.exp(arg.clamp_min_(-30.0))


@dataclass
class DenseGeometry:
    """Molecules of a flat batch laid out as padded blocks ``[B, n, ...]``.

    QM9 graphs are nearly complete (89 % of atom pairs lie within 5 Angstrom), so the models
    compute every within-molecule pair densely and mask by the cutoff instead of building a
    sparse edge list: messages then become batched matrix products instead of gathers and
    scatters over ``E x F`` tensors, which were the bottleneck on CPU and GPU alike.

    Attributes:
        index: flat position of each atom in the padded ``[B * n]`` layout, ``[N]``.
        n: padded size (atoms of the largest molecule in the batch).
        dist: pair distances, ``[B, n, n]`` (0 where no pair).
        unit: unit vectors from ``i`` to ``j``, ``[B, n, n, 3]``.
        fcut: cosine cutoff times the pair mask, ``[B, n, n]``; zero for ``i == j``,
            padding and pairs beyond the cutoff.
    """

    index: Tensor
    n: int
    num_graphs: int
    dist: Tensor
    unit: Tensor
    fcut: Tensor

    @classmethod
    def build(
        cls, pos: Tensor, batch: Tensor, num_graphs: int, cutoff: float, n: int | None = None
    ) -> DenseGeometry:
        """The geometry of ``pos [N, 3]`` grouped by ``batch [N]``; ``n`` pads every block to
        that many atoms (default: the largest molecule), so that blocks of several batches
        can be stacked."""
        counts = torch.bincount(batch, minlength=num_graphs)
        if n is None:
            n = int(counts.max()) if counts.numel() else 0
        first = torch.cumsum(counts, 0) - counts
        local = torch.arange(batch.numel(), device=pos.device) - first[batch]
        index = batch * n + local
        P = pos.new_zeros(num_graphs * n, 3).index_copy_(0, index, pos).view(num_graphs, n, 3)
        mask = torch.zeros(num_graphs * n, dtype=torch.bool, device=pos.device)
        mask[index] = True
        mask = mask.view(num_graphs, n)
        vec = P[:, None, :, :] - P[:, :, None, :]  # [B, i, j, 3] = r_j - r_i
        pair = mask[:, :, None] & mask[:, None, :]
        pair &= ~torch.eye(n, dtype=torch.bool, device=pos.device)
        # clamp: the gradient of sqrt at 0 (diagonal, padding) would be NaN
        dist = vec.square().sum(-1).clamp_min(1e-12).sqrt()
        fcut = cosine_cutoff(dist, cutoff) * pair
        return cls(index, n, num_graphs, dist, vec / dist[..., None], fcut)

    def to_dense(self, x: Tensor) -> Tensor:
        """``[N, *S] -> [B, n, *S]``, zero-padded."""
        out = x.new_zeros((self.num_graphs * self.n, *x.shape[1:]))
        # out of place, so that torch.func.vmap can batch it over ensemble members
        return out.index_copy(0, self.index, x).view(self.num_graphs, self.n, *x.shape[1:])

    def to_flat(self, x: Tensor) -> Tensor:
        """``[B, n, *S] -> [N, *S]``."""
        return x.reshape(self.num_graphs * self.n, *x.shape[2:])[self.index]


def radial_filters(linear: nn.Linear, rbf: GaussianRBF, geo: DenseGeometry) -> Tensor:
    """``linear(rbf(d_ij)) * fcut_ij`` for every pair, channel-major: ``[O, B, n, n]``.

    The same function as applying ``linear`` to ``[B, n, n, n_rbf]`` features and
    multiplying by the cutoff, computed as one ``[O, R + 1] @ [R + 1, pairs]`` product on a
    basis that already carries the cutoff (its last row is the cutoff itself, which takes
    the bias): the result comes out in the layout the convolutions read, so neither an
    ``[pairs, O]`` product with the cutoff nor a permuted copy of it is made, in the forward
    or the backward pass (they were a fifth of a training step on CPU).
    """
    fcut = geo.fcut.reshape(1, -1)  # [1, P]
    basis = torch.cat([rbf.channels_first(geo.dist.reshape(-1)) * fcut, fcut])  # [R + 1, P]
    weight = torch.cat([linear.weight, linear.bias[:, None]], 1)  # [O, R + 1]
    return torch.matmul(weight, basis).view(-1, *geo.dist.shape)


def filter_conv(edge: Tensor, x: Tensor, geo: DenseGeometry) -> Tensor:
    """Continuous-filter convolution with one radial filter per channel group.

    Computes ``out_i,c,s,f = sum_j edge_h(f),i,c,j * x_j,s,f``: the ``F`` channels fall into
    ``H`` groups that share a filter, so the sum over neighbours is one batched matrix
    product per group and no ``[pairs, F]`` tensor is ever formed (it was the bottleneck).

    Args:
        edge: pair weights (already times the cutoff), ``[H, B, n * C, n]``, rows
            ``i``-major and component ``c``-minor (``C = 1`` for scalar filters, 3 for
            directional ones); group-major, as :func:`radial_filters` makes them.
        x: source features, ``[N, S, F]`` (``S`` = 1 for scalars, 3 for vectors).

    Returns:
        ``[N, C * S, F]``.
    """
    H, B, n = edge.shape[0], geo.num_graphs, geo.n
    S, F = x.shape[1:]
    C = edge.shape[2] // n
    xg = geo.to_dense(x).view(B, n, S, H, F // H).permute(3, 0, 1, 2, 4)
    out = torch.matmul(edge, xg.reshape(H, B, n, S * F // H))  # [H, B, n * C, S * F/H]
    out = out.view(H, B, n, C * S, F // H).permute(1, 2, 3, 0, 4).reshape(B, n, C * S, F)
    return geo.to_flat(out)


class AtomisticModel(nn.Module):
    """Base class: energy = sum over atoms of ``scale * network(atom) + ref[z]``.

    The per-element reference energies ``atomref`` come from a least-squares fit on the
    training molecules' composition (:meth:`fit_reference`); the network learns the
    residual, in units of ``scale`` eV. Both are buffers, saved with the weights.

    Subclasses implement :meth:`atom_features` (per-atom features ``[N, F]`` after the
    interaction blocks) and own ``readout`` (``[N, F] -> [N, n_outputs]``).

    With ``n_outputs = D > 1`` the model predicts D energies per molecule from one shared
    trunk (one per oracle fidelity, lowest first): ``atomref`` is ``[MAX_Z, D]`` and
    ``scale`` ``[D]``, and energies are ``[B, D]``. With one output they stay ``[B]``.
    """

    cutoff: float
    hidden: int
    #: hyper-parameters every model takes; ``hparams()`` returns them
    HPARAMS = (
        "hidden", "n_interactions", "n_rbf", "cutoff", "filter_groups", "dropout", "n_outputs"
    )  # fmt: skip

    def __init__(
        self,
        hidden: int,
        n_interactions: int,
        n_rbf: int,
        cutoff: float,
        filter_groups: int,
        dropout: float,
        n_outputs: int = 1,
    ) -> None:
        super().__init__()
        if n_outputs < 1:
            raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
        if hidden % filter_groups:
            raise ValueError(f"hidden={hidden} is not divisible by filter_groups={filter_groups}")
        self.hidden, self.n_interactions, self.n_rbf = hidden, n_interactions, n_rbf
        self.cutoff, self.filter_groups, self.dropout = cutoff, filter_groups, dropout
        self.n_outputs = n_outputs
        shape = () if n_outputs == 1 else (n_outputs,)
        self.register_buffer("atomref", torch.zeros(MAX_Z, *shape))
        self.register_buffer("scale", torch.ones(shape))
        self.embedding = nn.Embedding(MAX_Z, hidden)
        self.rbf = GaussianRBF(n_rbf, cutoff)

    @torch.no_grad()
    def fit_reference(self, composition: Tensor, y: Tensor) -> dict[str, float]:
        """Fit per-element reference energies by least squares and set the target scale.

        An element no molecule contains gets a fallback from the packaged prior instead of
        0 (:func:`al.data.reference.fit_composition`, which logs it).

        Args:
            composition: element counts, ``[n_mol, 5]`` (H, C, N, O, F).
            y: targets in eV, ``[n_mol]``, or ``[n_mol, n_outputs]`` with NaN where a
                molecule has no label of that output; each output is fitted on its own rows.

        Returns:
            ``{"baseline_mae": ..., "scale": ...}``: the MAE of the composition-only model
            on these molecules and the residual scale (per-atom std) in eV (of the last,
            highest-fidelity output when there are several).
        """
        A_all = composition.double().cpu()
        Y = y.double().cpu().reshape(A_all.shape[0], -1)
        ref = torch.zeros(MAX_Z, Y.shape[1], dtype=torch.float64)
        scales, maes = [], []
        for d in range(Y.shape[1]):
            keep = torch.isfinite(Y[:, d])
            A, b = A_all[keep], Y[keep, d]
            # an element absent from the data gets the scaled prior (al.data.reference)
            coef = fit_composition(A, b, context="model.fit_reference")
            resid = b - A @ coef
            n_atoms = A.sum(1).clamp(min=1)
            scale = float((resid / n_atoms.sqrt()).std()) if resid.numel() > 1 else 1.0
            scales.append(scale if math.isfinite(scale) and scale > 1e-6 else 1.0)
            maes.append(float(resid.abs().mean()) if resid.numel() else math.nan)
            ref[list(COMPOSITION_Z), d] = coef
        self.atomref.copy_(ref.reshape(self.atomref.shape).to(self.atomref))
        self.scale.copy_(torch.tensor(scales).reshape(self.scale.shape))
        return {"baseline_mae": maes[-1], "scale": scales[-1]}

    def atom_features(self, z: Tensor, geo: DenseGeometry) -> Tensor:  # pragma: no cover
        """``z [N]`` and the batch geometry -> atom features ``[N, F]``."""
        raise NotImplementedError

    def forward(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor,
        num_graphs: int | None = None,
        embedding: bool = False,
        geo: DenseGeometry | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Energies in eV.

        Args:
            z: atomic numbers, ``[N]``; pos: positions in Angstrom, ``[N, 3]``;
            batch: molecule of each atom, ``[N]`` (atoms of a molecule contiguous);
            num_graphs: ``B`` (saves a device sync when given).

            embedding: also return the molecule embeddings.
            geo: the batch geometry, when already built (an ensemble builds it once).

        Returns:
            ``[B]`` energies in eV (``[B, n_outputs]`` with several outputs), and ``[B, F]``
            embeddings when asked for.
        """
        energy, emb = self.energy_and_embedding(z, pos, batch, num_graphs, geo)
        return (energy, emb) if embedding else energy

    def energy_and_embedding(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor,
        num_graphs: int | None = None,
        geo: DenseGeometry | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Energies ``[B]`` (or ``[B, n_outputs]``) in eV and molecule embeddings
        ``[B, F_last]``: the last-layer features, the inputs of the readout's last linear
        layer summed over each molecule's atoms, so that the energy is linear in them (up to
        the per-atom bias and reference energies). Batch acquisitions (``lcmd``, ``bait``,
        ``k_center``) measure distances in this space, as bmdal_reg's last-layer kernel."""
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1
        if geo is None:
            geo = DenseGeometry.build(pos, batch, num_graphs, self.cutoff)
        phi = self.readout_features(self.atom_features(z, geo))  # [N, F_last]
        out = self.readout[-1](phi)  # [N, D]
        if self.n_outputs == 1:
            out = out.squeeze(-1)
        energy = self.molecule_energy(out, z, batch, num_graphs)
        # index_add, not scatter helpers, so that vmap can batch it over ensemble members
        emb = phi.new_zeros(num_graphs, phi.shape[-1]).index_add(0, batch, phi)
        return energy, emb

    def molecule_energy(self, out: Tensor, z: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Network outputs ``[N, *D]`` (units of ``scale``) -> energies ``[B, *D]`` in eV:
        ``sum over atoms of scale * out + atomref[z]``."""
        # bf16 under autocast is summed in float32; a float64 model stays float64
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        atom_e = out * self.scale + self.atomref[z]
        return atom_e.new_zeros(num_graphs, *atom_e.shape[1:]).index_add(0, batch, atom_e)

    def readout_features(self, h: Tensor) -> Tensor:
        """Atom features ``[N, F]`` -> the features the last readout layer is linear in,
        ``[N, F_last]`` (the readout without its last layer)."""
        return self.readout[:-1](h)

    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters grouped for diagnostics: embedding, each interaction, readout."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            parts = name.split(".")
            key = ".".join(parts[:2]) if parts[0] == "interactions" else parts[0]
            groups.setdefault(key.replace(".", "_"), []).append(p)
        return groups

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.hparams().items())
        return f"{self.__class__.__name__}({args})"

    def hparams(self) -> dict:
        return {name: getattr(self, name) for name in self.HPARAMS}

    def reset_parameters(self) -> None:
        """Re-draw every weight: Xavier-uniform linear layers, zero biases."""
        self.embedding.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
