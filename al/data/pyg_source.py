"""QM9 from a PyTorch Geometric ``torch_geometric.datasets.QM9`` root.

PyG's ``QM9`` stores the whole data set in ``<root>/processed/data_v3.pt``, written by
``InMemoryDataset.save``: one collated ``Data`` (every molecule's tensors concatenated) and a
``slices`` dict of per-attribute offsets. The file is read directly, without instantiating
``QM9``, because ``QM9.__init__`` tries to download its raw files when they are missing even
if the processed file is present.

Per molecule, PyG's QM9 holds ``z [n]``, ``pos [n, 3]`` (Angstrom), ``y [1, 19]`` (column 14 is
the atomization enthalpy at 298.15 K in eV), ``name`` (``"gdb_<QM9 index>"``), ``idx`` (the
0-based position in the SDF file, i.e. QM9 index - 1) and, in recent versions, ``smiles``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from al.data.elements import ELEMENTS
from al.data.molecules import MolecularData
from al.data.sources import SOURCES, DataSource
from al.extras import require

#: Column of PyG's ``QM9.y`` holding H_ATOM, the atomization enthalpy at 298.15 K (eV).
H_ATOM = 14
#: The file PyG's ``QM9`` processes its raw data into, under ``<root>/processed/``.
PROCESSED_FILE = "data_v3.pt"
_NAME_RE = re.compile(r"(\d+)\s*$")


def _qm9_index_from_names(names: Sequence[str]) -> np.ndarray:
    """``["gdb_1", "gdb_57"]`` -> ``[1, 57]`` (int64, ``[n_mol]``)."""
    out = np.empty(len(names), dtype=np.int64)
    for k, name in enumerate(names):
        match = _NAME_RE.search(str(name))
        if match is None:
            raise ValueError(f"cannot read a QM9 index from the molecule name {name!r}")
        out[k] = int(match.group(1))
    return out


def _qm9_index(names: Sequence[str] | None, idx: Tensor | None, n_mol: int) -> Tensor:
    """QM9 indices ``[n_mol]`` from ``name`` (preferred) or ``idx + 1``."""
    if names is not None:
        out = torch.from_numpy(_qm9_index_from_names(names))
    elif idx is not None:
        out = torch.as_tensor(idx, dtype=torch.long).reshape(-1) + 1
    else:
        raise ValueError(
            "the PyG molecules carry neither 'name' ('gdb_<index>') nor 'idx'; "
            "cannot tell their QM9 indices"
        )
    if out.numel() != n_mol:
        raise ValueError(f"found {out.numel()} QM9 indices for {n_mol} molecules")
    return out


def _assemble(
    z: Tensor,
    pos: Tensor,
    ptr: Tensor,
    y: Tensor,
    qm9_index: Tensor,
    smiles: list[str] | None,
) -> MolecularData:
    """Check, cast and sort by QM9 index.

    Args:
        z: ``[n_atoms]``; pos: ``[n_atoms, 3]``; ptr: ``[n_mol + 1]``;
        y: full PyG targets, ``[n_mol, 19]``; qm9_index: ``[n_mol]``.
    """
    n_mol = ptr.numel() - 1
    z = z.reshape(-1).long()
    pos = pos.reshape(-1, 3).float()
    ptr = ptr.long()
    if int(ptr[0]) != 0 or int(ptr[-1]) != z.numel() or pos.shape[0] != z.numel():
        raise ValueError(
            f"inconsistent PyG QM9 tensors: {z.numel()} atomic numbers, {pos.shape[0]} "
            f"positions, offsets ending at {int(ptr[-1])}"
        )
    if y.dim() != 2 or y.shape[0] != n_mol or y.shape[1] <= H_ATOM:
        raise ValueError(f"expected PyG QM9 targets of shape [{n_mol}, 19], got {list(y.shape)}")
    unknown = ~torch.isin(z, torch.tensor(sorted(ELEMENTS.values())))
    if bool(unknown.any()):
        raise ValueError(f"unexpected atomic numbers {sorted(set(z[unknown].tolist()))}")
    if torch.unique(qm9_index).numel() != n_mol:
        raise ValueError("duplicate QM9 indices in the PyG data")
    data = MolecularData(
        z=z,
        pos=pos,
        ptr=ptr,
        y=y[:, H_ATOM].to(torch.float64),
        qm9_index=qm9_index.long(),
        smiles=list(smiles) if smiles is not None else [""] * n_mol,
        source="pyg",
    )
    order = torch.argsort(data.qm9_index, stable=True)
    if bool((order == torch.arange(n_mol)).all()):
        return data
    return data.subset(order)


def from_pyg_collated(data: Any, slices: Mapping[str, Tensor] | None) -> MolecularData:
    """Convert PyG's collated storage (``InMemoryDataset._data`` and ``.slices``), vectorised.

    Args:
        data: a collated ``Data`` with ``z [n_atoms]``, ``pos [n_atoms, 3]``,
            ``y [n_mol, 19]`` and ``name`` (list of ``"gdb_<index>"``) or ``idx [n_mol]``;
            ``smiles`` (list) is used when present.
        slices: per-attribute offsets, ``slices["z"]`` is ``[n_mol + 1]``; ``None`` for a
            data set of one molecule (as ``InMemoryDataset.collate`` writes it).
    """
    keys = set(data.keys())
    missing = {"z", "pos", "y"} - keys
    if missing:
        raise ValueError(f"PyG QM9 data lacks {sorted(missing)}")
    if slices is None:
        ptr = torch.tensor([0, data.z.numel()], dtype=torch.long)
        names = [data.name] if "name" in keys else None
        idx = torch.as_tensor(data.idx).reshape(1) if "idx" in keys else None
        smiles = [data.smiles] if "smiles" in keys else None
    else:
        ptr = slices["z"]
        names = list(data.name) if "name" in keys else None
        idx = data.idx if "idx" in keys else None
        smiles = list(data.smiles) if "smiles" in keys else None
    y = data.y.reshape(ptr.numel() - 1, -1)
    qm9_index = _qm9_index(names, idx, ptr.numel() - 1)
    return _assemble(data.z, data.pos, ptr, y, qm9_index, smiles)


def from_pyg_data(items: Iterable[Any]) -> MolecularData:
    """Convert PyG QM9 molecules to :class:`MolecularData`, sorted by QM9 index.

    Args:
        items: PyG ``Data`` objects, each with ``z [n]``, ``pos [n, 3]``, ``y [1, 19]``
            (column 14: atomization enthalpy at 298.15 K, eV) and ``name`` (``"gdb_<index>"``)
            or ``idx`` (QM9 index - 1); ``smiles`` is kept when present. An unsliced,
            untransformed ``InMemoryDataset`` is read from its collated storage at once.

    Returns:
        ``MolecularData`` with ``z [n_atoms]`` int64, ``pos [n_atoms, 3]`` float32,
        ``ptr [n_mol + 1]``, ``y [n_mol]`` float64 (eV), ``qm9_index [n_mol]`` int64.
    """
    storage = getattr(items, "_data", None)
    if (
        storage is not None
        and getattr(items, "_indices", None) is None
        and getattr(items, "transform", None) is None
        and hasattr(items, "slices")
    ):
        return from_pyg_collated(storage, items.slices)

    zs, poss, ys, names, idxs, smiles = [], [], [], [], [], []
    for item in items:
        zs.append(item.z.reshape(-1))
        poss.append(item.pos.reshape(-1, 3))
        ys.append(item.y.reshape(1, -1))
        names.append(getattr(item, "name", None))
        idx = getattr(item, "idx", None)
        idxs.append(None if idx is None else int(torch.as_tensor(idx).reshape(-1)[0]))
        smiles.append(getattr(item, "smiles", None))
    if not zs:
        raise ValueError("no PyG molecules to convert")
    counts = torch.tensor([t.numel() for t in zs], dtype=torch.long)
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(counts, 0)
    qm9_index = _qm9_index(
        names if all(n is not None for n in names) else None,
        torch.tensor(idxs) if all(i is not None for i in idxs) else None,
        len(zs),
    )
    return _assemble(
        torch.cat(zs),
        torch.cat(poss),
        ptr,
        torch.cat(ys),
        qm9_index,
        [s or "" for s in smiles] if any(s is not None for s in smiles) else None,
    )


def processed_file(root: str | Path) -> Path:
    """``<root>/processed/data_v3.pt``; a ``ValueError`` says what is missing."""
    root = Path(root).expanduser()
    path = root / "processed" / PROCESSED_FILE
    if path.is_file():
        return path
    raise ValueError(
        f"{root} holds no processed PyTorch Geometric QM9: expected the file "
        f"{path} (run `torch_geometric.datasets.QM9({str(root)!r})` once to download and "
        "process it, or use the default source 'qm9pack')"
    )


def load_pyg_qm9(root: str | Path) -> MolecularData:
    """Read a PyG ``QM9`` root (already processed; no network) as :class:`MolecularData`.

    Args:
        root: the folder given to ``torch_geometric.datasets.QM9(root)``; it must contain
            ``processed/data_v3.pt`` (as written by ``InMemoryDataset.save``).

    Raises:
        MissingExtraError: PyTorch Geometric is not installed (the ``pyg`` extra).

    Returns:
        All molecules sorted by QM9 index; target ``y [n_mol]`` = ``QM9.y[:, 14]`` (eV).
    """
    require("pyg", "the data source 'pyg'")
    from torch_geometric.data import InMemoryDataset

    path = processed_file(root)
    dataset = InMemoryDataset()
    try:
        dataset.load(str(path))
    except Exception as exc:
        raise ValueError(
            f"{path} is not a PyTorch Geometric InMemoryDataset file ({exc!r})"
        ) from exc
    return from_pyg_collated(dataset._data, dataset.slices)


SOURCES.register(
    "pyg",
    DataSource(load_pyg_qm9),
    description="a processed PyTorch Geometric QM9 root (data_root; the pyg extra)",
)
