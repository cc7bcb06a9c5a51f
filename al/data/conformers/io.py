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
    return [(name or str(line), smi) for line, name, smi in read_smiles_rows(path, column)]


def read_smiles_rows(
    path: str | Path,
    column: str = "smiles",
    name_column: str | None = None,
    option: str = "--column",
) -> list[tuple[int, str, str]]:
    """``(line, name, smiles)`` of every molecule of a file, in file order: as
    :func:`read_smiles`, with the line of the file each came from (1-based, a CSV's header
    is line 1) and an empty name where the file gives none.

    Args:
        name_column: a CSV's column of names (default: a ``name`` column where there is one);
            a missing one is an error.
        option: the command-line option that picks ``column``, for the error message.
    """
    path = Path(path)
    if not path.is_file():
        raise SmilesInputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SmilesInputError(f"{path}: cannot be read ({err})") from None
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path, text, column, name_column, option)
    else:
        rows = _lines(text, column)
    if not rows:
        raise SmilesInputError(f"{path}: no SMILES in the file")
    return rows


def _column(header: list[str], wanted: str) -> str | None:
    """``wanted`` among ``header``: the exact name first, then ignoring case."""
    if wanted in header:
        return wanted
    return next((h for h in header if h.strip().lower() == wanted.lower()), None)


def _csv_rows(
    path: Path, text: str, column: str, name_column: str | None, option: str
) -> list[tuple[int, str, str]]:
    reader = csv.DictReader(text.splitlines())
    header = [h for h in (reader.fieldnames or []) if h is not None]
    if not header:
        raise SmilesInputError(f"{path}: no SMILES in the file")
    chosen = _column(header, column)
    if chosen is None:
        raise SmilesInputError(
            f"{path}: no column {column!r} (columns: {', '.join(header)}); pick one with {option}"
        )
    name_col = _column(header, name_column or "name")
    if name_column and name_col is None:
        raise SmilesInputError(f"{path}: no column {name_column!r} (columns: {', '.join(header)})")
    out = []
    for line, row in enumerate(reader, start=2):
        name = (row.get(name_col) or "").strip() if name_col else ""
        out.append((line, name, (row.get(chosen) or "").strip()))
    return out


def _lines(text: str, column: str) -> list[tuple[int, str, str]]:
    out: list[tuple[int, str, str]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        words = raw.split(maxsplit=1)
        if not words or words[0].startswith("#"):
            continue
        if not out and words[0].lower() == column.lower():
            continue  # a header line
        out.append((line, words[1].strip() if len(words) > 1 else "", words[0]))
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


def qm9_split_smiles(n_pool: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(name, smiles)`` of the molecules a ``geometry=xtb`` benchmark needs: the test split
    of the default split (10,000) and ``n_pool`` molecules of its pool split drawn with
    ``seed``, by QM9 index."""
    import numpy as np

    from al.data.config import DataConfig
    from al.data.load import load_data

    data, splits = load_data(DataConfig())
    n = min(max(n_pool, 0), len(splits.pool))
    pool = np.random.default_rng(seed).choice(splits.pool, size=n, replace=False)
    index = np.concatenate([splits.test, np.sort(pool)])
    rows = data.rows_of(index).tolist()
    return [(f"qm9_{int(data.qm9_index[r])}", data.smiles[r]) for r in rows]


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
