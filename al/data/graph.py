"""Radius graphs in plain, vectorised torch (no ``torch_cluster`` / ``pyg-lib``)."""

from __future__ import annotations

import torch
from torch import Tensor


def radius_graph(
    pos: Tensor, batch: Tensor, cutoff: float, num_graphs: int | None = None
) -> Tensor:
    """All directed pairs ``(j -> i)`` of distinct atoms of one molecule closer than ``cutoff``.

    QM9 molecules have at most 29 atoms, so enumerating every within-molecule pair is cheap
    and needs no cell list; it runs the same on CPU and GPU.

    Args:
        pos: positions, ``[N, 3]``.
        batch: molecule of each atom, ``[N]``, sorted (atoms of a molecule contiguous).
        cutoff: radius in Angstrom.
        num_graphs: number of molecules ``B`` (saves a device sync when given).

    Returns:
        ``edge_index [2, E]`` as ``(source j, target i)``, sorted by target ``i``.
    """
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.cumsum(counts, 0) - counts
    n_pairs = counts * counts
    mol = torch.repeat_interleave(torch.arange(num_graphs, device=pos.device), n_pairs)
    offset = torch.cumsum(n_pairs, 0) - n_pairs
    local = torch.arange(mol.numel(), device=pos.device) - offset[mol]
    c = counts[mol]
    i = ptr[mol] + torch.div(local, c, rounding_mode="floor")
    j = ptr[mol] + local % c
    d2 = (pos[i] - pos[j]).square().sum(-1)
    keep = (i != j) & (d2 < cutoff * cutoff)
    return torch.stack([j[keep], i[keep]])
