"""An equivariant message-passing network with vector features, after PaiNN
(Schütt, Unke & Gastegger, 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from al.models.base import MODELS, AtomisticModel, MCDropout
from al.models.geometry import BatchGeometry, filter_conv, radial_filters


class PaiNNMessage(nn.Module):
    """Messages from neighbours: scalar ``ds [N, F]`` and vector ``dv [N, 3, F]`` updates.

    ``forward(s [N, F], v [N, 3, F], edges, geo) -> (s + ds, v + dv)``, ``edges`` one
    ``[3H, B_g, n_g, n_g]`` per block of the geometry.
    """

    def __init__(self, hidden: int, groups: int) -> None:
        super().__init__()
        self.hidden, self.groups = hidden, groups
        self.phi = nn.Sequential(
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3 * hidden)
        )

    def forward(
        self, s: Tensor, v: Tensor, edges: list[Tensor], geo: BatchGeometry
    ) -> tuple[Tensor, Tensor]:
        a, b, c = self.phi(s).split(self.hidden, -1)
        H = self.groups
        e_s, e_v, e_dir = [], [], []
        for edge, block in zip(edges, geo.blocks, strict=True):
            es, ev, er = edge.split(H, 0)  # each [H, B, n, n]
            B, n = block.num_graphs, block.n
            e_s.append(es)
            e_v.append(ev)
            # directional filter: rows (i, component), e_ij * unit_ij
            unit = block.unit.permute(0, 1, 3, 2)[None]  # [1, B, i, 3, j]
            e_dir.append((er[:, :, :, None, :] * unit).reshape(H, B, 3 * n, n))
        ds = filter_conv(e_s, a[:, None], geo)[:, 0]
        dv = filter_conv(e_v, v * b[:, None], geo) + filter_conv(e_dir, c[:, None], geo)
        return s + ds, v + dv


class PaiNNUpdate(nn.Module):
    """Per-atom mixing of scalar and vector channels (equivariant).

    ``forward(s [N, F], v [N, 3, F]) -> (s + ds, v + dv)``.
    """

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.hidden = hidden
        self.U = nn.Linear(hidden, hidden, bias=False)
        self.V = nn.Linear(hidden, hidden, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden, hidden),
            nn.SiLU(),
            MCDropout(dropout),
            nn.Linear(hidden, 3 * hidden),
        )

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        Uv, Vv = self.U(v), self.V(v)
        norm = torch.sqrt(Vv.square().sum(1) + 1e-8)
        a_vv, a_sv, a_ss = self.mlp(torch.cat([s, norm], -1)).split(self.hidden, -1)
        return s + a_ss + a_sv * (Uv * Vv).sum(1), v + a_vv[:, None] * Uv


class PaiNNBlock(nn.Module):
    """A message step then an update step; returns the new ``(s, v)``."""

    def __init__(self, hidden: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.message = PaiNNMessage(hidden, groups)
        self.update = PaiNNUpdate(hidden, dropout)

    def forward(
        self, s: Tensor, v: Tensor, edges: list[Tensor], geo: BatchGeometry
    ) -> tuple[Tensor, Tensor]:
        return self.update(*self.message(s, v, edges, geo))


@MODELS.register("painn")
class PaiNN(AtomisticModel):
    """Polarizable atom interaction network: scalar and vector features per atom.

    Vector features carry directions, so the model distinguishes geometries that an
    invariant distance-only model cannot; the energy stays invariant to rotations. As in
    :class:`~al.models.schnet.SchNet`, radial filters are shared by channel groups and
    messages are batched matrix products over dense per-molecule blocks.

    Args:
        hidden: feature width F.
        n_interactions: number of message + update blocks.
        n_rbf: number of Gaussians in the radial basis.
        cutoff: interaction radius in Angstrom.
        filter_groups: radial filters per message kind and block (F divisible by it).
        dropout: dropout rate in the update and readout MLPs (kept for MC dropout).
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
        self.filter_net = nn.Linear(n_rbf, n_interactions * 3 * filter_groups)
        self.interactions = nn.ModuleList(
            PaiNNBlock(hidden, filter_groups, dropout) for _ in range(n_interactions)
        )
        self.readout = nn.Sequential(
            nn.Linear(hidden, hidden // 2),
            nn.SiLU(),
            MCDropout(dropout),
            nn.Linear(hidden // 2, n_outputs),
        )
        self.reset_parameters()

    def atom_features(self, z: Tensor, geo: BatchGeometry) -> Tensor:
        """``z [N]`` -> scalar atom features ``[N, F]``."""
        K, H3 = self.n_interactions, 3 * self.filter_groups
        # per block [K * 3H, B, n, n] -> [K, 3H, B, n, n]
        edges = [
            e.view(K, H3, *e.shape[1:]) for e in radial_filters(self.filter_net, self.rbf, geo)
        ]
        s = self.embedding(z)
        v = s.new_zeros(s.shape[0], 3, self.hidden)
        for k, block in enumerate(self.interactions):
            s, v = block(s, v, [e[k] for e in edges], geo)
        return s
