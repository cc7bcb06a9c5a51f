"""Molecules as flat tensors: atomic numbers, positions, per-molecule offsets and targets."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from al.data.elements import ELEMENTS

#: Column of each atomic number in :meth:`MolecularData.composition` (H, C, N, O, F).
_COLUMN_OF_Z = torch.zeros(max(ELEMENTS.values()) + 1, dtype=torch.int64)
_COLUMN_OF_Z[list(ELEMENTS.values())] = torch.arange(len(ELEMENTS))
#: QM9 indices run from 1 to this (a few were removed from the data set).
MAX_QM9_INDEX = 133885


@dataclass
class MolecularData:
    """Molecules stored as flat tensors.

    Attributes:
        z: atomic numbers, ``[n_atoms]`` (int64).
        pos: positions in Angstrom, ``[n_atoms, 3]`` (float32).
        ptr: offsets of each molecule's atoms, ``[n_mol + 1]`` (int64).
        y: target in eV, ``[n_mol]`` (float64); NaN where unknown.
        qm9_index: QM9 index of every molecule, ``[n_mol]`` (int64).
        smiles: SMILES of every molecule (empty strings where unknown).
        source: where the molecules come from (``qm9pack``, ``pool:<name>``).
        ids: a pool's molecule ids, one per molecule (empty for QM9, whose id is the index).
        geometry: where the positions come from: ``dft`` (the data set's own), or
            ``xtb:<settings digest>`` (GFN2-xTB geometries from the SMILES).
    """

    z: Tensor
    pos: Tensor
    ptr: Tensor
    y: Tensor
    qm9_index: Tensor
    smiles: list[str]
    source: str = "qm9pack"
    ids: list[str] = field(default_factory=list)
    geometry: str = "dft"

    def __len__(self) -> int:
        return int(self.ptr.numel() - 1)

    @property
    def n_atoms(self) -> Tensor:
        """Atoms per molecule, ``[n_mol]``."""
        return self.ptr[1:] - self.ptr[:-1]

    def rows_of(self, qm9_index: Tensor | np.ndarray | list[int]) -> Tensor:
        """Rows of the given QM9 indices; a ``KeyError`` names any index not in the set."""
        if isinstance(qm9_index, Tensor):
            idx = qm9_index.detach().to("cpu", torch.long).reshape(-1)
        else:
            idx = torch.as_tensor(np.array(qm9_index, dtype=np.int64)).reshape(-1)
        lookup = self._lookup()
        bad = (idx < 0) | (idx >= lookup.numel())
        rows = torch.full_like(idx, -1)
        rows[~bad] = lookup[idx[~bad]]
        missing = idx[rows < 0]
        if missing.numel():
            shown = ", ".join(str(int(i)) for i in missing[:10])
            more = f" (and {missing.numel() - 10} more)" if missing.numel() > 10 else ""
            if self.source.startswith("pool:"):
                raise KeyError(
                    f"molecule number not in {self.source}: {shown}{more}; its molecules are "
                    f"numbered 1..{len(self)}"
                )
            raise KeyError(
                f"QM9 index not in the data set: {shown}{more}; valid indices lie in "
                f"1..{MAX_QM9_INDEX} ({len(self)} molecules, 3,054 were removed by the "
                "QM9 authors' consistency check)"
            )
        return rows

    def _lookup(self) -> Tensor:
        if getattr(self, "_lookup_cache", None) is None:
            size = max(int(self.qm9_index.max()) + 1, MAX_QM9_INDEX + 1)
            lookup = torch.full((size,), -1, dtype=torch.long)
            lookup[self.qm9_index.cpu()] = torch.arange(len(self))
            self._lookup_cache = lookup
        return self._lookup_cache

    def batch(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gather molecules ``rows`` (``[B]``) into one flat batch.

        Returns:
            ``z [N]``, ``pos [N, 3]``, ``batch [N]`` (molecule of each atom, 0..B-1),
            ``y [B]``. Works on whatever device the data lives on, with no Python loop.
        """
        rows = rows.to(self.ptr.device)
        start = self.ptr[rows]
        counts = self.ptr[rows + 1] - start
        batch = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts)
        first = torch.cumsum(counts, 0) - counts
        atom = start[batch] + torch.arange(batch.numel(), device=rows.device) - first[batch]
        return self.z[atom], self.pos[atom], batch, self.y[rows]

    def subset(self, rows: Tensor) -> MolecularData:
        """A new :class:`MolecularData` holding only ``rows``, contiguous."""
        z, pos, batch, y = self.batch(rows)
        counts = torch.bincount(batch, minlength=rows.numel())
        ptr = torch.zeros(rows.numel() + 1, dtype=torch.long, device=counts.device)
        ptr[1:] = torch.cumsum(counts, 0)
        rows_cpu = rows.cpu().tolist()
        return MolecularData(
            z=z,
            pos=pos,
            ptr=ptr,
            y=y,
            qm9_index=self.qm9_index[rows],
            smiles=[self.smiles[r] for r in rows_cpu] if self.smiles else [],
            source=self.source,
            ids=[self.ids[r] for r in rows_cpu] if self.ids else [],
            geometry=self.geometry,
        )

    def to(self, device: torch.device | str) -> MolecularData:
        """Move every tensor to ``device`` (the whole of QM9 is ~40 MB)."""
        return MolecularData(
            z=self.z.to(device),
            pos=self.pos.to(device),
            ptr=self.ptr.to(device),
            y=self.y.to(device),
            qm9_index=self.qm9_index.to(device),
            smiles=self.smiles,
            source=self.source,
            ids=self.ids,
            geometry=self.geometry,
        )

    def composition(self, rows: Tensor | None = None) -> Tensor:
        """Element counts per molecule, ``[n_mol, 5]`` for H, C, N, O, F (float64)."""
        rows = torch.arange(len(self), device=self.ptr.device) if rows is None else rows
        z, _, batch, _ = self.batch(rows)
        col = _COLUMN_OF_Z.to(z.device)[z]
        out = torch.zeros(rows.numel(), len(ELEMENTS), dtype=torch.float64, device=z.device)
        out.index_put_((batch, col), torch.ones_like(col, dtype=torch.float64), accumulate=True)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the compact ``.pt`` form (atomically), e.g. to carry QM9 to another machine."""
        path = Path(path)
        _save_atomic(_to_record(self), path)
        return path

    @staticmethod
    def load(path: str | Path) -> MolecularData:
        """Read a file written by :meth:`save` (or a cache file)."""
        return _from_record(torch.load(path, weights_only=True))

    def structure_digest(self) -> str:
        """A short hash of the molecules themselves (indices, atoms, positions), not their
        targets: what a store of computed energies is keyed by. Computed once."""
        if getattr(self, "_structure_digest", None) is None:
            h = hashlib.sha256(self.geometry.encode())
            for t in (self.qm9_index, self.ptr, self.z, self.pos):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            self._structure_digest = h.hexdigest()[:16]
        return self._structure_digest

    def digest(self) -> str:
        """A short content hash of indices, atoms and target (dataset lineage)."""
        h = hashlib.sha256()
        for t in (self.qm9_index, self.ptr, self.z, self.pos, self.y):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _save_atomic(obj: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _to_record(data: MolecularData) -> dict:
    return {
        "z": data.z.to(torch.uint8),
        "pos": data.pos,
        "ptr": data.ptr,
        "y": data.y,
        "qm9_index": data.qm9_index,
        "smiles": "\n".join(data.smiles),
        "source": data.source,
        "ids": "\n".join(data.ids),
        "geometry": data.geometry,
    }


def _from_record(rec: dict) -> MolecularData:
    return MolecularData(
        z=rec["z"].long(),
        pos=rec["pos"],
        ptr=rec["ptr"],
        y=rec["y"],
        qm9_index=rec["qm9_index"],
        smiles=rec["smiles"].split("\n") if rec["smiles"] else [],
        source=rec["source"],
        ids=rec["ids"].split("\n") if rec.get("ids") else [],
        geometry=rec.get("geometry", "dft"),
    )


def molecules_frame(molecules: list[tuple[Any, Any]]) -> pd.DataFrame:
    """The input of a logged model: one row per molecule, ``z`` (atomic numbers, ``[n]``)
    and ``pos`` (positions in Angstrom, ``[n, 3]``, as nested lists)."""
    return pd.DataFrame(
        {
            "z": [np.asarray(z, dtype=np.int64).tolist() for z, _ in molecules],
            "pos": [np.asarray(p, dtype=np.float64).reshape(-1, 3).tolist() for _, p in molecules],
        }
    )
