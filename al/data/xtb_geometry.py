"""QM9 at GFN2-xTB geometries built from its SMILES (``geometry=xtb``): inputs a campaign has.

QM9's positions are the B3LYP optimum: the answer of the expensive calculation, which a
molecule not yet computed does not have. With ``geometry=xtb`` every molecule's atoms and
positions are instead those of its GFN2-xTB geometry from the SMILES pipeline
(:mod:`al.data.conformers`: RDKit ETKDG, MMFF94, tblite through ASE's LBFGS), read from the
geometry store, so that the surrogate, the xTB baseline and the model oracles all see the
cheap geometry; the labels stay QM9's DFT H298.

Only molecules whose geometry is ``ok`` are kept: one not computed yet, or whose pipeline
failed (``embedding_failed``, ``bonds_changed``, ...), is left out, and
:func:`xtb_geometry_data` says how many of each in one log line (the split is drawn on all
of QM9 first, then restricted to the molecules kept, :func:`restrict_splits`, so that a
molecule's split does not depend on the geometry). The store is filled by
``al geometry --qm9-split 20000`` (the test split and 20,000 molecules of the pool split).
The result is cached beside QM9's (``qm9-xtb-<key>.pt``), keyed by the store file's size
and time and by QM9's own cache key.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from al.data.cache import cache_dir
from al.data.config import GEOMETRIES
from al.data.conformers.pipeline import GeometrySettings, canonical_smiles
from al.data.conformers.store import GeometryStore
from al.data.molecules import MolecularData, _from_record, _save_atomic, _to_record
from al.data.splits import Splits

log = logging.getLogger(__name__)

__all__ = ["GEOMETRIES", "restrict_splits", "xtb_geometry_data"]


#: Status of a molecule the store has no line for.
NOT_COMPUTED = "not_computed"


def xtb_geometry_data(
    data: MolecularData, folder: str | Path | None = None,
    settings: GeometrySettings | None = None,
) -> tuple[MolecularData, Counter[str]]:  # fmt: skip
    """``data`` (QM9) with every molecule's atoms and positions from its GFN2-xTB geometry
    in the store (``folder``, default the geometry cache; ``settings`` the pipeline's),
    molecules without an ``ok`` one left out; and how many molecules had each status
    (``ok``, ``not_computed``, the pipeline's failures). Cached on disk."""
    settings = settings or GeometrySettings()
    store = GeometryStore(settings, folder)
    stat = store.path.stat() if store.path.exists() else None
    key = f"{data.structure_digest()}|{store.path}|{stat.st_size if stat else 0}|" + (
        f"{stat.st_mtime_ns}" if stat else "0"
    )
    path = cache_dir() / f"qm9-xtb-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if path.exists():
        rec = torch.load(path, weights_only=True)
        return _from_record(rec["data"]), Counter(rec["counts"])
    records = store.read()
    kept, counts = [], Counter()
    for row, smiles in enumerate(data.smiles):
        record = records.get(canonical_smiles(smiles))
        status = record.status if record is not None else NOT_COMPUTED
        if record is not None and record.ok and _same_atoms(data, row, record.z):
            kept.append((row, record))
        elif record is not None and record.ok:
            status = "composition_differs"  # the SMILES is not the molecule's formula
        counts[status] += 1
    out = _assemble(data, kept, f"xtb:{settings.digest()}")
    _save_atomic({"data": _to_record(out), "counts": dict(counts)}, path)
    return out, counts


def _same_atoms(data: MolecularData, row: int, z: np.ndarray) -> bool:
    a, b = int(data.ptr[row]), int(data.ptr[row + 1])
    return np.array_equal(np.sort(data.z[a:b].numpy()), np.sort(np.asarray(z, dtype=np.int64)))


def _assemble(data: MolecularData, kept: list, geometry: str) -> MolecularData:
    """The molecules ``kept`` (``(row, record)``) with the records' atoms and positions."""
    rows = [r for r, _ in kept]
    sizes = torch.tensor([len(rec.z) for _, rec in kept], dtype=torch.long)
    ptr = torch.zeros(len(kept) + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(sizes, 0)
    z = np.concatenate([np.asarray(rec.z, dtype=np.int64) for _, rec in kept]) if kept else []
    pos = np.concatenate([np.asarray(rec.pos, np.float32) for _, rec in kept]) if kept else []
    index = torch.as_tensor(rows, dtype=torch.long)
    return MolecularData(
        z=torch.as_tensor(np.asarray(z, dtype=np.int64)),
        pos=torch.as_tensor(np.asarray(pos, dtype=np.float32)).reshape(-1, 3),
        ptr=ptr, y=data.y[index].clone(), qm9_index=data.qm9_index[index].clone(),
        smiles=[data.smiles[r] for r in rows], source=data.source, geometry=geometry,
    )  # fmt: skip


def restrict_splits(splits: Splits, qm9_index: np.ndarray) -> Splits:
    """``splits`` with only the molecules ``qm9_index`` (``[n]``) in each split."""
    keep = np.asarray(qm9_index, dtype=np.int64)
    return Splits(
        seed=splits.seed, **{name: np.intersect1d(getattr(splits, name), keep)
                             for name in ("test", "oracle", "pool")},
    )  # fmt: skip
