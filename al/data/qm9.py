"""QM9 as flat tensors: atomic numbers, positions, per-molecule offsets and the target.

The default source is the CSV export shipped by the ``qm9pack`` package (130,831 molecules,
DFT geometries). It is parsed once, vectorised, and cached on disk as a ``.pt`` file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

HARTREE_TO_EV = 27.211386
#: Atomic reference enthalpies at 298.15 K in Hartree (B3LYP/6-31G(2df,p), QM9 paper).
ATOM_REF_H298_HA: dict[int, float] = {
    1: -0.497912,
    6: -37.844411,
    7: -54.581501,
    8: -75.062219,
    9: -99.716370,
}
ELEMENTS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
SYMBOLS: dict[int, str] = {v: k for k, v in ELEMENTS.items()}
MAX_QM9_INDEX = 133885
N_MOLECULES = 130831
SOURCES = ("qm9pack", "pyg")
#: Bump when the cached layout or the target definition changes.
CACHE_FORMAT = 1
CACHE_ENV = "AL_CACHE_DIR"
PROPERTY = "H_atomization_298K_eV"


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
    """

    z: Tensor
    pos: Tensor
    ptr: Tensor
    y: Tensor
    qm9_index: Tensor
    smiles: list[str]
    source: str = "qm9pack"

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
        )

    def composition(self, rows: Tensor | None = None) -> Tensor:
        """Element counts per molecule, ``[n_mol, 5]`` for H, C, N, O, F (float64)."""
        rows = torch.arange(len(self), device=self.ptr.device) if rows is None else rows
        z, _, batch, _ = self.batch(rows)
        col = torch.as_tensor([0, 0, 0, 0, 0, 0, 1, 2, 3, 4], device=z.device)[z]
        out = torch.zeros(rows.numel(), 5, dtype=torch.float64, device=z.device)
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

    def digest(self) -> str:
        """A short content hash of indices, atoms and target (dataset lineage)."""
        h = hashlib.sha256()
        for t in (self.qm9_index, self.ptr, self.z, self.pos, self.y):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def atomization_enthalpy_ev(h298_ha: np.ndarray, z: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """H_298(molecule) minus the atomic reference enthalpies, in eV.

    Args:
        h298_ha: molecular enthalpy at 298.15 K in Hartree, ``[n_mol]``.
        z: atomic numbers, ``[n_atoms]``; ptr: offsets, ``[n_mol + 1]``.
    """
    ref = np.zeros(10)
    for el, value in ATOM_REF_H298_HA.items():
        ref[el] = value
    per_atom = ref[z]
    sums = np.add.reduceat(per_atom, ptr[:-1]) if len(per_atom) else np.zeros(0)
    return (h298_ha - sums) * HARTREE_TO_EV


def qm9pack_data_dir() -> Path:
    """The CSV folder of the installed ``qm9pack``, found without importing it.

    ``qm9pack/__init__.py`` imports ``pkg_resources``, which current setuptools no longer has.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the package 'qm9pack' is not installed; install it with `pip install qm9pack` "
            "(it carries the QM9 CSV files)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def parse_qm9pack(data_dir: Path | None = None) -> MolecularData:
    """Parse qm9pack's three CSV parts into :class:`MolecularData` (vectorised, ~3 s)."""
    import pandas as pd

    data_dir = Path(data_dir) if data_dir is not None else qm9pack_data_dir()
    cols = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", "Enthalphy_298K_au"]
    parts = sorted(data_dir.glob("qm9_part*.csv"))
    if not parts:
        raise FileNotFoundError(f"no qm9_part*.csv in {data_dir}")
    df = pd.concat(
        [pd.read_csv(p, usecols=cols, engine="pyarrow") for p in parts], ignore_index=True
    )
    df = df.sort_values("Index", kind="stable").reset_index(drop=True)
    n_atoms = df["N_atoms"].to_numpy(np.int64)
    total = int(n_atoms.sum())

    # Coordinates: one long string, brackets dropped, parsed by numpy's C parser. This also
    # accepts the truncated ("0.") and E-notation numbers found in a few rows.
    coords = ",".join(df["XYZ_Ang"].tolist()).translate(str.maketrans("", "", "[] "))
    pos = np.fromstring(coords, sep=",")
    if pos.size != 3 * total:
        raise ValueError(f"parsed {pos.size} coordinates, expected 3 x {total} atoms")
    # Elements are one letter each: "C,H,H" -> every other byte.
    symbols = ",".join(df["Elements"].tolist()).translate(str.maketrans("", "", "[]' "))
    letters = np.frombuffer(symbols.encode("ascii")[::2], dtype=np.uint8)
    table = np.zeros(256, dtype=np.int64)
    for sym, num in ELEMENTS.items():
        table[ord(sym)] = num
    z = table[letters]
    if z.size != total or (z == 0).any():
        raise ValueError("could not parse the element lists of qm9pack's CSV")

    ptr = np.zeros(len(df) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(n_atoms)
    y = atomization_enthalpy_ev(df["Enthalphy_298K_au"].to_numpy(np.float64), z, ptr)
    return MolecularData(
        z=torch.from_numpy(z),
        pos=torch.from_numpy(pos.reshape(-1, 3).astype(np.float32)),
        ptr=torch.from_numpy(ptr),
        y=torch.from_numpy(y),
        qm9_index=torch.from_numpy(df["Index"].to_numpy(np.int64).copy()),
        smiles=df["SMILES"].astype(str).tolist(),
        source="qm9pack",
    )


def cache_dir() -> Path:
    """``$AL_CACHE_DIR``, else ``$XDG_CACHE_HOME/al``, else ``~/.cache/al``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "al"


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
    )


def load_qm9(
    source: str = "qm9pack", root: str | Path | None = None, cache: Path | None = None
) -> MolecularData:
    """Load QM9 from ``source``, through the on-disk cache.

    Args:
        source: ``"qm9pack"`` (offline default) or ``"pyg"`` (a PyTorch Geometric ``QM9``
            root given as ``root``).
        root: folder of the source (qm9pack: its CSV folder; pyg: the dataset root).
        cache: cache folder; default :func:`cache_dir`.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; expected one of {', '.join(SOURCES)}")
    if source == "pyg" and root is None:
        raise ValueError("source 'pyg' needs the root folder of a PyTorch Geometric QM9 dataset")
    # Keyed by the source files themselves (path, size, mtime), so a changed source or
    # another root gets its own cache entry.
    folder = Path(root).resolve() if root is not None else qm9pack_data_dir()
    # (a missing folder finds no cache entry; its source loader then says what is wrong)
    stats = sorted(
        f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in (folder.rglob("*") if folder.exists() else [])
        if p.is_file() and p.suffix in (".csv", ".pt")
    )
    key = "|".join([source, str(folder), *stats])
    tag = hashlib.sha256(key.encode()).hexdigest()[:8]
    path = (Path(cache) if cache else cache_dir()) / f"qm9-{source}-{tag}-v{CACHE_FORMAT}.pt"
    if path.exists():
        t0 = time.perf_counter()
        data = _from_record(torch.load(path, weights_only=True))
        log.debug("event=cache_hit path=%s seconds=%.3f", path, time.perf_counter() - t0)
        return data
    t0 = time.perf_counter()
    if source == "qm9pack":
        data = parse_qm9pack(Path(root) if root else None)
    else:
        from al.data.pyg_source import load_pyg_qm9

        data = load_pyg_qm9(root)
    log.info(
        "event=parsed source=%s molecules=%d seconds=%.1f",
        source,
        len(data),
        time.perf_counter() - t0,
    )
    _save_atomic(_to_record(data), path)
    return data
