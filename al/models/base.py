"""Pieces shared by the models: the base class (reference energies, readout, energy), MC
dropout, the shifted softplus. The pair geometry is in :mod:`al.models.geometry`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from al.data.reference import fit_composition
from al.models.geometry import BatchGeometry, DenseGeometry, GaussianRBF
from al.registry import Registry

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
    def fit_reference(
        self, composition: Tensor, y: Tensor, per_element: bool = True
    ) -> dict[str, float]:
        """Fit per-element reference energies by least squares and set the target scale.

        An element no molecule contains gets a fallback from the packaged prior instead of
        0 (:func:`al.data.reference.fit_composition`, which logs it). ``per_element=False``
        (``composition_reference=false``: a scalar that does not grow with the molecule's
        atoms) leaves the references at 0 and only sets the scale.

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
            coef = (
                fit_composition(A, b, context="model.fit_reference")
                if per_element else torch.zeros(A.shape[1], dtype=torch.float64)
            )  # fmt: skip
            resid = b - A @ coef
            n_atoms = A.sum(1).clamp(min=1)
            scale = float((resid / n_atoms.sqrt()).std()) if resid.numel() > 1 else 1.0
            scales.append(scale if math.isfinite(scale) and scale > 1e-6 else 1.0)
            maes.append(float(resid.abs().mean()) if resid.numel() else math.nan)
            ref[list(COMPOSITION_Z), d] = coef
        self.atomref.copy_(ref.reshape(self.atomref.shape).to(self.atomref))
        self.scale.copy_(torch.tensor(scales).reshape(self.scale.shape))
        return {"baseline_mae": maes[-1], "scale": scales[-1]}

    def atom_features(self, z: Tensor, geo: BatchGeometry) -> Tensor:  # pragma: no cover
        """``z [N]`` and the batch geometry -> atom features ``[N, F]``."""
        raise NotImplementedError

    def forward(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor,
        num_graphs: int | None = None,
        embedding: bool = False,
        geo: BatchGeometry | DenseGeometry | None = None,
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
        geo: BatchGeometry | DenseGeometry | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Energies ``[B]`` (or ``[B, n_outputs]``) in eV and molecule embeddings
        ``[B, F_last]``: the last-layer features, the inputs of the readout's last linear
        layer summed over each molecule's atoms, so that the energy is linear in them (up to
        the per-atom bias and reference energies). Batch acquisitions (``lcmd``, ``bait``,
        ``k_center``) measure distances in this space, as bmdal_reg's last-layer kernel."""
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1
        if geo is None:
            geo = BatchGeometry.build(pos, batch, num_graphs, self.cutoff)
        elif isinstance(geo, DenseGeometry):
            geo = BatchGeometry.single(geo)
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


#: The model registry (the ``model`` key, checkpoints): each architecture registers itself
#: where it is defined; :mod:`al.models.registry` imports them all.
MODELS: Registry[type[AtomisticModel]] = Registry("model")
