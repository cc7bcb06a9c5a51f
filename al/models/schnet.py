"""An invariant continuous-filter network in the spirit of SchNet (Schütt et al., 2017)."""

from __future__ import annotations

from torch import Tensor, nn

from al.models.base import MODELS, AtomisticModel, MCDropout, ShiftedSoftplus
from al.models.geometry import BatchGeometry, filter_conv, radial_filters


class CFConvBlock(nn.Module):
    """One interaction: ``x + lin2(drop(act(lin_out(sum_j W_ij * lin_in(x_j)))))``.

    ``forward(x [N, F], edges, geo) -> [N, F]``, ``W_ij`` one filter per group; ``edges``
    holds one ``[H, B_g, n_g, n_g]`` per block of the geometry.
    """

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.lin_in = nn.Linear(hidden, hidden, bias=False)
        self.lin_out = nn.Linear(hidden, hidden)
        self.act = ShiftedSoftplus()
        self.dropout = MCDropout(dropout)
        self.lin2 = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, edges: list[Tensor], geo: BatchGeometry) -> Tensor:
        agg = filter_conv(edges, self.lin_in(x)[:, None], geo)[:, 0]
        return x + self.lin2(self.dropout(self.act(self.lin_out(agg))))


@MODELS.register("schnet")
class SchNet(AtomisticModel):
    """Continuous-filter convolutions within a cutoff; invariant to rotations.

    Differences from the original, both for speed at equal width and depth: filters are a
    linear map of the radial basis (the original's is a two-layer MLP on every atom pair),
    shared by groups of ``F / filter_groups`` channels (as heads are in attention), and
    messages are batched matrix products over dense per-molecule blocks (see
    :mod:`~al.models.geometry`).

    Args:
        hidden: feature width F.
        n_interactions: number of interaction blocks.
        n_rbf: number of Gaussians in the radial basis.
        cutoff: interaction radius in Angstrom.
        filter_groups: number H of radial filters per block (F must be divisible by H).
        dropout: dropout rate in the interaction and readout MLPs (kept for MC dropout).
        n_outputs: energies per molecule (one per fidelity), read out from a shared trunk.
    """

    def __init__(
        self,
        hidden: int = 128,
        n_interactions: int = 3,
        n_rbf: int = 32,
        cutoff: float = 5.0,
        filter_groups: int = 16,
        dropout: float = 0.0,
        n_outputs: int = 1,
    ) -> None:
        super().__init__(hidden, n_interactions, n_rbf, cutoff, filter_groups, dropout, n_outputs)
        # Filters of all blocks from one linear map of the radial basis (as in PaiNN): a
        # nonlinear filter MLP on every atom pair cost more than the rest of the model.
        self.filter_net = nn.Linear(n_rbf, n_interactions * filter_groups)
        self.interactions = nn.ModuleList(
            CFConvBlock(hidden, dropout) for _ in range(n_interactions)
        )
        self.readout = nn.Sequential(
            nn.Linear(hidden, hidden // 2),
            ShiftedSoftplus(),
            MCDropout(dropout),
            nn.Linear(hidden // 2, n_outputs),
        )
        self.reset_parameters()

    def atom_features(self, z: Tensor, geo: BatchGeometry) -> Tensor:
        """``z [N]`` -> atom features ``[N, F]``."""
        K, H = self.n_interactions, self.filter_groups
        # per block [K * H, B, n, n] -> [K, H, B, n, n]
        edges = [e.view(K, H, *e.shape[1:]) for e in radial_filters(self.filter_net, self.rbf, geo)]
        x = self.embedding(z)
        for k, block in enumerate(self.interactions):
            x = block(x, [e[k] for e in edges], geo)
        return x
