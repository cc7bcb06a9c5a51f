"""A shallow ensemble: one shared trunk, K linear last-layer heads.

After Kellner & Ceriotti, "Uncertainty quantification by direct propagation of shallow
ensembles", Mach. Learn.: Sci. Technol. 5, 035006 (2024), arXiv:2402.16621 (DPOSE). The heads
are trained together with a Gaussian negative log-likelihood on their mean and variance
(:func:`al.training.losses.ensemble_nll`), so their spread is the predicted uncertainty; the
whole ensemble costs about one model to train and to evaluate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from al.models.base import AtomisticModel
from al.models.geometry import BatchGeometry
from al.models.registry import build_model


class ShallowEnsembleModel(nn.Module):
    """K heads on one trunk: ``energy_and_embedding(z, pos, batch, B) -> ([K, B], [B, F'])``.

    The trunk is a registered model built with ``n_outputs = K x D`` (D fidelities, usually
    1): its last readout layer is the K heads (head-major columns). Reference energies and
    the target scale are the trunk's, fitted with the same targets for every head, so the
    heads differ only in their last-layer weights. Per-atom head outputs are summed per
    molecule, as in the other models.

    Energies are ``[K, B]`` (``[K, B, D]`` with several fidelities), like a deep ensemble's
    members; the embedding is ``[B, F']``: the per-atom features the heads are linear in
    (the readout's last hidden layer), summed over the molecule's atoms.

    Args:
        trunk: a model whose ``n_outputs`` is a multiple of ``heads``.
        heads: number of heads K (>= 2).
    """

    def __init__(self, trunk: AtomisticModel, heads: int) -> None:
        super().__init__()
        if heads < 2:
            raise ValueError(f"a shallow ensemble needs at least 2 heads, got {heads}")
        if trunk.n_outputs % heads:
            raise ValueError(f"trunk outputs {trunk.n_outputs} are not a multiple of {heads} heads")
        self.trunk, self.heads = trunk, heads
        #: energies per molecule and head (fidelities), as for the other models
        self.n_outputs = trunk.n_outputs // heads
        self.cutoff, self.hidden = trunk.cutoff, trunk.hidden

    @classmethod
    def build(
        cls, model: str, heads: int, n_outputs: int = 1, **hparams: object
    ) -> ShallowEnsembleModel:
        """A new shallow ensemble on a registered ``model`` with ``hparams``."""
        return cls(build_model(model, **hparams, n_outputs=heads * n_outputs), heads)

    @property
    def interactions(self) -> nn.ModuleList:
        """The trunk's interaction blocks (for the activation diagnostics of ``fit``)."""
        return self.trunk.interactions

    @property
    def scale(self) -> Tensor:
        """Target scale in eV, ``[]`` (``[D]`` with several fidelities); the same per head."""
        scale = self.trunk.scale.view(self.heads, self.n_outputs)[0]
        return scale[0] if self.n_outputs == 1 else scale

    @torch.no_grad()
    def fit_reference(
        self, composition: Tensor, y: Tensor, per_element: bool = True
    ) -> dict[str, float]:
        """Fit the trunk's reference energies with the same targets for every head.

        Args:
            composition: ``[n_mol, 5]``; y: ``[n_mol]`` or ``[n_mol, D]`` (NaN = no label).
        """
        tiled = y.reshape(y.shape[0], -1).repeat(1, self.heads)  # [n, K * D], head-major
        return self.trunk.fit_reference(composition, tiled, per_element)

    def energy_and_embedding(
        self, z: Tensor, pos: Tensor, batch: Tensor, num_graphs: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Energies of every head ``[K, B]`` (``[K, B, D]``) in eV and last-layer features
        summed per molecule ``[B, F']``.

        Args:
            z: ``[N]``; pos: ``[N, 3]``; batch: ``[N]``; num_graphs: ``B``.
        """
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1
        trunk = self.trunk
        geo = BatchGeometry.build(pos, batch, num_graphs, self.cutoff)
        phi = trunk.readout_features(trunk.atom_features(z, geo))  # [N, F']
        out = trunk.readout[-1](phi)  # [N, K * D]
        energy = trunk.molecule_energy(out, z, batch, num_graphs)  # [B, K * D]
        energy = energy.view(num_graphs, self.heads, self.n_outputs).transpose(0, 1)
        if self.n_outputs == 1:
            energy = energy.squeeze(-1)
        emb = phi.new_zeros(num_graphs, phi.shape[-1]).index_add(0, batch, phi)
        return energy, emb

    def forward(
        self, z: Tensor, pos: Tensor, batch: Tensor, num_graphs: int | None = None
    ) -> Tensor:
        """Energies of every head, ``[K, B]`` (``[K, B, D]``) in eV."""
        return self.energy_and_embedding(z, pos, batch, num_graphs)[0]

    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.trunk.layer_groups()

    def hparams(self) -> dict:
        return {**self.trunk.hparams(), "n_outputs": self.n_outputs, "heads": self.heads}

    def __repr__(self) -> str:
        return f"ShallowEnsembleModel(heads={self.heads}, trunk={self.trunk!r})"

    def reset_parameters(self) -> None:
        self.trunk.reset_parameters()
