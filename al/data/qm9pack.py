"""The offline source: the QM9 authors' CSV export shipped by the ``qm9pack`` package.

130,831 molecules with DFT geometries, parsed vectorised (~3 s), then cached by
:func:`al.data.load.load_qm9`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from al.data.elements import ELEMENTS, atomization_enthalpy_ev
from al.data.molecules import MolecularData
from al.data.sources import SOURCES, DataSource

N_MOLECULES = 130831


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


SOURCES.register(
    "qm9pack",
    DataSource(parse_qm9pack, default_root=qm9pack_data_dir),
    description="the CSV files of the qm9pack package (offline; the default)",
)
