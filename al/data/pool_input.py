"""Reading a pool's source file into one entry per molecule, and screening the entries.

SMILES files and CSV columns go through :func:`al.data.conformers.io.read_smiles_rows`, SDF
through RDKit's ``SDMolSupplier`` and XYZ / extended XYZ through ASE's reader (bonds and the
SMILES from the coordinates by ``rdkit.Chem.rdDetermineBonds``). A molecule that cannot be
read is an entry with a status, not an error of the file; a file that cannot be read at all
is a :class:`PoolError` whose message is one line. :mod:`al.data.pools` is the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from al.data.conformers.io import SmilesInputError, read_smiles_rows
from al.data.conformers.pipeline import (
    STATUS_BONDS_CHANGED,
    STATUS_EMBEDDING_FAILED,
    STATUS_NOT_CONVERGED,
    STATUS_OK,
    STATUS_SCF,
    STATUS_UNPARSABLE,
    STATUS_UNSUPPORTED_ELEMENT,
    STATUSES,
    SUPPORTED_Z,
    smiles_graph,
)

#: File suffixes by the kind of file they name.
SUFFIXES: dict[str, str] = {
    ".smi": "smiles", ".smiles": "smiles", ".txt": "smiles", ".csv": "csv",
    ".sdf": "sdf", ".sd": "sdf", ".xyz": "xyz", ".extxyz": "xyz",
}  # fmt: skip

STATUS_DUPLICATE = "duplicate"
STATUS_DUPLICATE_ID = "duplicate_id"
STATUS_UNPARSABLE_RECORD = "unparsable_record"
STATUS_NO_BONDS = "bonds_undetermined"
STATUS_MISSING_H = "missing_hydrogens"
#: The statuses a pool adds to the pipeline's (:data:`al.data.conformers.STATUSES`).
POOL_STATUSES = (
    STATUS_UNPARSABLE_RECORD, STATUS_NO_BONDS, STATUS_MISSING_H, STATUS_DUPLICATE,
    STATUS_DUPLICATE_ID,
)  # fmt: skip
#: Why a molecule with this status is left out, for the summary lines.
REASONS: dict[str, str] = {
    STATUS_UNPARSABLE: "RDKit cannot parse the SMILES",
    STATUS_UNPARSABLE_RECORD: "RDKit cannot read the record",
    STATUS_UNSUPPORTED_ELEMENT: "elements outside H, C, N, O, F",
    STATUS_NO_BONDS: "no bonds fit the coordinates (rdDetermineBonds)",
    STATUS_MISSING_H: "coordinates without the hydrogens; add them or use --reoptimise",
    STATUS_DUPLICATE: "same InChIKey as an earlier molecule",
    STATUS_DUPLICATE_ID: "same id as an earlier molecule",
    STATUS_EMBEDDING_FAILED: "ETKDG found no conformer",
    STATUS_SCF: "the xTB calculation failed",
    STATUS_NOT_CONVERGED: "the xTB optimisation did not reach fmax",
    STATUS_BONDS_CHANGED: "bonds changed during the xTB optimisation",
}


class PoolError(ValueError):
    """A pool that cannot be made or read: the message is one line for the user."""


@dataclass
class Entry:
    """One molecule of the input file on its way into the pool."""

    row: int
    given_id: str = ""
    smiles: str = ""
    inchikey: str = ""
    status: str = ""
    message: str = ""
    z: np.ndarray | None = None
    pos: np.ndarray | None = None  # None: a geometry is to come from the SMILES
    charge: int = 0
    multiplicity: int = 1
    bonds: set[tuple[int, int]] = field(default_factory=set)
    id: str = ""


def file_kind(path: str | Path) -> str:
    """``smiles``, ``csv``, ``sdf`` or ``xyz`` by the suffix; :class:`PoolError` for a
    missing, unreadable or empty file or an unknown suffix."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise PoolError(
            f"{path}: unknown kind of file {path.suffix or '(no suffix)'!r}; expected one of "
            f"{', '.join(SUFFIXES)} (SMILES, CSV, SDF, XYZ / extended XYZ)"
        )
    if not path.exists():
        raise PoolError(f"{path}: no such file")
    if not path.is_file():
        raise PoolError(f"{path}: not a file; expected a {kind} file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError as err:
        raise PoolError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not head.strip():
        raise PoolError(f"{path}: the file is empty; expected molecules ({kind})")
    return kind


def read_entries(
    path: str | Path, smiles_column: str | None = None, id_column: str | None = None
) -> tuple[str, list[Entry]]:
    """The kind of the file and one :class:`Entry` per molecule in it, in file order.

    Args:
        smiles_column: a CSV's SMILES column (default ``smiles``).
        id_column: a CSV's column, an SDF property or an extended XYZ key holding the ids.
    """
    path = Path(path)
    kind = file_kind(path)
    if smiles_column and kind != "csv":
        raise PoolError(f"{path}: --smiles-column applies to CSV files only")
    if id_column and kind == "smiles":
        raise PoolError(
            f"{path}: --id-column applies to CSV, SDF and XYZ files; in a SMILES file the "
            "id is the word after the SMILES"
        )
    if kind in ("smiles", "csv"):
        try:
            rows = read_smiles_rows(path, smiles_column or "smiles", id_column, "--smiles-column")
        except SmilesInputError as err:
            raise PoolError(str(err)) from None
        entries = [_from_smiles(row, name, smi) for row, name, smi in rows]
    elif kind == "sdf":
        entries = _read_sdf(path, id_column)
    else:
        entries = _read_xyz(path, id_column)
    if not entries:
        raise PoolError(f"{path}: no molecules in the file")
    return kind, entries


def _from_smiles(row: int, name: str, smiles: str) -> Entry:
    mol, canonical = smiles_graph(smiles)
    if mol is None:
        return Entry(row, name, smiles.strip(), status=STATUS_UNPARSABLE,
                     message="RDKit cannot parse the SMILES")  # fmt: skip
    entry = Entry(row, name, canonical)
    _describe(entry, mol)
    return entry


def _describe(entry: Entry, mol: Any) -> None:
    """InChIKey, elements, charge and spin of ``mol`` (hydrogens explicit) into ``entry``."""
    from rdkit import Chem

    entry.inchikey = Chem.MolToInchiKey(mol) or ""
    entry.z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    entry.charge = int(Chem.GetFormalCharge(mol))
    entry.multiplicity = 1 + sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    pairs = ((b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds())
    entry.bonds = {(min(a, b), max(a, b)) for a, b in pairs}


def _canonical(mol: Any) -> str:
    from rdkit import Chem

    try:
        return Chem.MolToSmiles(Chem.RemoveHs(mol))
    except Exception:  # RDKit refusing to remove an odd hydrogen: keep them
        return Chem.MolToSmiles(mol)


def _read_sdf(path: Path, id_column: str | None) -> list[Entry]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        supplier = Chem.SDMolSupplier(str(path), removeHs=False)
    except OSError as err:
        raise PoolError(f"{path}: cannot be read as SDF ({err})") from None
    entries = []
    for i in range(len(supplier)):
        mol = supplier[i]
        if mol is None:
            text = supplier.GetItemText(i)
            title = text.splitlines()[0].strip() if text.strip() else ""
            entries.append(Entry(i + 1, title, status=STATUS_UNPARSABLE_RECORD,
                                 message="RDKit cannot read the record"))  # fmt: skip
            continue
        key = id_column or "_Name"
        given = mol.GetProp(key).strip() if mol.HasProp(key) else ""
        entry = Entry(i + 1, given, _canonical(mol))
        conf = mol.GetConformer() if mol.GetNumConformers() else None
        if conf is None or not conf.Is3D():  # a 2D drawing: a geometry from the SMILES
            _describe(entry, Chem.AddHs(mol))
        else:
            full = Chem.AddHs(mol, addCoords=True)
            _describe(entry, full)
            entry.pos = full.GetConformer().GetPositions()
            if full.GetNumAtoms() > mol.GetNumAtoms():
                n = full.GetNumAtoms() - mol.GetNumAtoms()
                entry.status = STATUS_MISSING_H
                entry.message = f"{n} hydrogen(s) implicit in the record"
        entries.append(entry)
    return entries


def _read_xyz(path: Path, id_column: str | None) -> list[Entry]:
    from ase.io import read
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    try:
        frames = read(str(path), index=":", format="extxyz")
    except Exception as err:  # ASE's readers raise many kinds; any is a bad file
        text = " ".join(str(err).split()) or type(err).__name__
        raise PoolError(
            f"{path}: cannot be read as (extended) XYZ ({text}); expected frames of "
            "'<atom count>', a comment line and one 'symbol x y z' line per atom"
        ) from None
    entries = []
    for i, atoms in enumerate(frames):
        info = atoms.info
        keys = [id_column] if id_column else ["id", "name"]
        given = next((str(info[k]).strip() for k in keys if k in info), "")
        entry = Entry(i + 1, given)
        z = atoms.get_atomic_numbers().astype(np.int64)
        entry.z, entry.pos = z, atoms.get_positions()
        entry.charge = int(info.get("charge", 0))
        block = f"{len(atoms)}\n\n" + "".join(
            f"{s} {x:.8f} {y:.8f} {w:.8f}\n"
            for s, (x, y, w) in zip(atoms.get_chemical_symbols(), entry.pos, strict=True)
        )
        mol = Chem.MolFromXYZBlock(block)
        try:
            rdDetermineBonds.DetermineBonds(mol, charge=entry.charge)
            Chem.SanitizeMol(mol)
        except Exception as err:  # no bond orders fit: a status, not an error of the file
            entry.status, entry.message = STATUS_NO_BONDS, " ".join(str(err).split())[:300]
            entries.append(entry)
            continue
        entry.smiles = _canonical(mol)
        _describe(entry, mol)
        entries.append(entry)
    return entries


def screen(entries: list[Entry]) -> None:
    """Mark unsupported elements, then duplicates (InChIKey, then id) among the molecules
    still in; give every molecule its id (given, else InChIKey, else ``row<N>``)."""
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    seen_key: dict[str, Entry] = {}
    seen_id: dict[str, Entry] = {}
    for e in entries:
        e.id = e.given_id or e.inchikey or f"row{e.row}"
        if e.status:
            continue
        other = sorted({table.GetElementSymbol(int(a)) for a in e.z if a not in SUPPORTED_Z})
        if other:
            e.status = STATUS_UNSUPPORTED_ELEMENT
            e.message = f"elements outside H, C, N, O, F: {', '.join(other)}"
        elif e.inchikey and e.inchikey in seen_key:
            first = seen_key[e.inchikey]
            e.status, e.message = STATUS_DUPLICATE, f"same InChIKey as {first.id} (row {first.row})"
        elif e.id in seen_id:
            first = seen_id[e.id]
            e.status, e.message = STATUS_DUPLICATE_ID, f"same id as row {first.row}"
        else:
            seen_key.setdefault(e.inchikey, e)
            seen_id[e.id] = e


def status_order(statuses: Iterable[str]) -> list[str]:
    """``ok``, the pipeline's statuses, the pool's, then any other, each once."""
    known = [STATUS_OK, *STATUSES, *POOL_STATUSES]
    present = set(statuses)
    return [s for s in dict.fromkeys(known) if s in present] + sorted(present - set(known))


def summary_lines(entries: list[Entry], shown: int = 5) -> list[str]:
    """One line per status that leaves molecules out: how many, why, and their ids."""
    by_status: dict[str, list[Entry]] = {}
    for e in entries:
        by_status.setdefault(e.status, []).append(e)
    lines = []
    for status in status_order(by_status):
        if status == STATUS_OK:
            continue
        group = by_status[status]
        reason = REASONS.get(status) or group[0].message or "see the molecule table"
        ids = ", ".join(e.id for e in group[:shown])
        more = f" (and {len(group) - shown} more)" if len(group) > shown else ""
        lines.append(f"{status}: {len(group)} molecule(s) left out ({reason}): {ids}{more}")
    return lines
