"""SMILES in (a .smi/.txt file, a CSV column, QM9's first molecules) and geometries out
(extended XYZ, or a CSV of statuses)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from al.data.conformers.pipeline import GeometryRecord

#: Suffixes :func:`write_geometries` writes.
OUTPUT_SUFFIXES = (".xyz", ".extxyz", ".csv")


class SmilesInputError(ValueError):
    """A SMILES input that cannot be read: the message is one line for the user."""


def read_smiles(path: str | Path, column: str = "smiles") -> list[tuple[str, str]]:
    """``(name, smiles)`` of every molecule of a file, in file order.

    A ``.csv`` file takes the SMILES from ``column`` (exact name first, then ignoring case)
    and names from a ``name`` column where there is one; any other file has one SMILES per
    line, optionally followed by a name (blank lines and ``#`` lines skipped, a first line
    whose first word is ``column`` taken as a header). A molecule without a name is named
    by its line number. An empty SMILES cell is kept (it will be ``unparsable_smiles``).
    """
    path = Path(path)
    if not path.is_file():
        raise SmilesInputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SmilesInputError(f"{path}: cannot be read ({err})") from None
    rows = _csv_rows(path, text, column) if path.suffix.lower() == ".csv" else _lines(text, column)
    if not rows:
        raise SmilesInputError(f"{path}: no SMILES in the file")
    return rows


def _csv_rows(path: Path, text: str, column: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(text.splitlines())
    header = [h for h in (reader.fieldnames or []) if h is not None]
    if not header:
        raise SmilesInputError(f"{path}: no SMILES in the file")
    chosen = column if column in header else None
    chosen = chosen or next((h for h in header if h.strip().lower() == column.lower()), None)
    if chosen is None:
        raise SmilesInputError(
            f"{path}: no column {column!r} (columns: {', '.join(header)}); pick one with --column"
        )
    name_col = next((h for h in header if h.strip().lower() == "name"), None)
    out = []
    for line, row in enumerate(reader, start=2):
        name = (row.get(name_col) or "").strip() if name_col else ""
        out.append((name or str(line), (row.get(chosen) or "").strip()))
    return out


def _lines(text: str, column: str) -> list[tuple[str, str]]:
    out = []
    for line, raw in enumerate(text.splitlines(), start=1):
        words = raw.split(maxsplit=1)
        if not words or words[0].startswith("#"):
            continue
        if not out and words[0].lower() == column.lower():
            continue  # a header line
        out.append((words[1].strip() if len(words) > 1 else str(line), words[0]))
    return out


def qm9_smiles(n: int) -> list[tuple[str, str]]:
    """``(name, smiles)`` of the first ``n`` QM9 molecules by index (``qm9_<index>``), from
    :func:`al.data.load.load_qm9` (qm9pack carries each molecule's SMILES)."""
    from al.data.load import load_qm9

    data = load_qm9()
    if not data.smiles or not any(data.smiles[: max(n, 0)]):
        raise SmilesInputError("the loaded QM9 data carries no SMILES")
    index = data.qm9_index[:n].tolist()
    return [(f"qm9_{int(i)}", s) for i, s in zip(index, data.smiles[:n], strict=True)]


def check_output(path: str | Path) -> Path:
    """``path`` if :func:`write_geometries` can write its kind; else a one-line error."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise SmilesInputError(
            f"{path}: cannot write this kind of file; use one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    return path


def write_geometries(
    path: str | Path,
    names: Sequence[str],
    inputs: Sequence[str],
    records: Sequence[GeometryRecord],
) -> int:
    """Write an extended XYZ of the molecules with a geometry, or a CSV of every
    molecule's status (by ``path``'s suffix); returns the molecules written.

    Args:
        names: a name per molecule, ``[m]``; inputs: the SMILES as given, ``[m]``;
        records: the outcomes, ``[m]``.
    """
    path = check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        return _write_csv(path, names, inputs, records)
    from ase import Atoms
    from ase.io import write

    frames = []
    for name, given, rec in zip(names, inputs, records, strict=True):
        if not rec.has_geometry:
            continue
        atoms = Atoms(numbers=rec.z.astype(int), positions=rec.pos.astype(float))
        atoms.info.update(
            name=name, input_smiles=given, smiles=rec.smiles, status=rec.status,
            energy_ha=rec.energy_ha, n_steps=rec.n_steps, charge=rec.charge,
            multiplicity=rec.multiplicity,
        )  # fmt: skip
        frames.append(atoms)
    write(str(path), frames, format="extxyz")
    return len(frames)


CSV_COLUMNS = (
    "name", "input_smiles", "smiles", "status", "energy_ha", "n_atoms", "n_steps", "seconds",
    "charge", "multiplicity", "forcefield", "embedding", "message",
)  # fmt: skip


def _write_csv(
    path: Path, names: Sequence[str], inputs: Sequence[str], records: Sequence[GeometryRecord]
) -> int:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(CSV_COLUMNS)
        for name, given, r in zip(names, inputs, records, strict=True):
            energy = f"{r.energy_ha:.10f}" if math.isfinite(r.energy_ha) else ""
            out.writerow([
                name, given, r.smiles, r.status, energy, int(r.z.size), r.n_steps,
                f"{r.seconds:.3f}", r.charge, r.multiplicity, r.forcefield, r.embedding,
                r.message,
            ])  # fmt: skip
    return len(records)
