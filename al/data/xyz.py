"""Reading and writing molecules in the XYZ format, including QM9's original ``.xyz`` files.

A file holds one or more frames, each::

    <atom count>            a positive integer
    <comment>               any single line, kept as it is
    SYMBOL X Y Z [...]      one line per atom; columns after Z are ignored

Symbols are case-insensitive (``c`` reads as carbon) and atomic numbers (``6``) are accepted
in their place. Coordinates may use Mathematica's exponent notation (``1.5*^-6``), as QM9's
original files do. Only the QM9 elements H, C, N, O and F are supported.

QM9's original files add three lines after the atom block (harmonic frequencies, SMILES and
InChI); ``read_xyz(path, qm9=True)`` expects and skips them after every frame.

Every problem in a file raises :class:`XYZError`, whose one-line message names the file, the
line, what was found and what was expected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from al.data.elements import ELEMENTS, SYMBOLS

__all__ = ["SUPPORTED", "Molecule", "XYZError", "read_xyz", "write_xyz"]

#: The elements a model can take (QM9's): the element table of :mod:`al.data.elements`.
SUPPORTED: dict[str, int] = ELEMENTS
_SYMBOL_OF: dict[int, str] = SYMBOLS
_SUPPORTED_LIST = ", ".join(SUPPORTED)

# Every element symbol, index = atomic number; only used to word error messages.
_PERIODIC_TEXT = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As "
    "Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd "
    "Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am "
    "Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
)
_PERIODIC: tuple[str, ...] = tuple(_PERIODIC_TEXT.split())
_ALL_ELEMENTS: dict[str, int] = {s: i + 1 for i, s in enumerate(_PERIODIC)}

_ATOM_FORMAT = "'SYMBOL X Y Z'"
_QM9_TRAILER = ("harmonic frequencies", "SMILES", "InChI")


class XYZError(ValueError):
    """A malformed or unsupported XYZ file; the message is one line, ``file:line: problem``."""

    def __init__(self, path: str | os.PathLike[str], line: int, message: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        super().__init__(f"{self.path}:{line}: {message}")


@dataclass(eq=False)
class Molecule:
    """One molecule (one XYZ frame).

    Attributes:
        name: file stem, with ``#k`` appended for frame ``k > 0`` of a multi-frame file.
        z: atomic numbers, ``[n]`` (int64).
        pos: positions in Angstrom, ``[n, 3]`` (float64).
        comment: the frame's comment line, without its line break.
    """

    name: str
    z: np.ndarray
    pos: np.ndarray
    comment: str = ""

    def __post_init__(self) -> None:
        z = np.asarray(self.z)
        if z.ndim != 1 or not (z.size == 0 or np.issubdtype(z.dtype, np.integer)):
            raise ValueError(f"Molecule {self.name!r}: z must be a 1-D integer array [n]")
        self.z = z.astype(np.int64, copy=False)
        pos = np.asarray(self.pos, dtype=np.float64)
        if pos.shape != (len(self.z), 3):
            raise ValueError(
                f"Molecule {self.name!r}: pos must have shape [{len(self.z)}, 3], "
                f"got {list(pos.shape)}"
            )
        self.pos = pos

    @property
    def n_atoms(self) -> int:
        """Number of atoms ``n``."""
        return len(self.z)

    @property
    def symbols(self) -> list[str]:
        """Element symbols, ``[n]``; ``'?'`` for atomic numbers that are not supported."""
        return [_SYMBOL_OF.get(int(a), "?") for a in self.z]


def _show(line: str, limit: int = 80) -> str:
    """A file line quoted for an error message, shortened when long."""
    text = line.strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def _element(token: str, path: str, lineno: int) -> int:
    """Atomic number of a symbol (any case) or of an atomic number written as digits."""
    if token.isascii() and token.isdigit():
        number = int(token)
        if number in _SYMBOL_OF:
            return number
        if 1 <= number <= len(_PERIODIC):
            raise XYZError(
                path,
                lineno,
                f"unsupported element {number} ({_PERIODIC[number - 1]}); "
                f"supported: {_SUPPORTED_LIST}",
            )
        raise XYZError(
            path,
            lineno,
            f"unknown atomic number {token!r}; expected one of {_SUPPORTED_LIST} "
            f"(or their atomic numbers 1, 6, 7, 8, 9)",
        )
    symbol = token[:1].upper() + token[1:].lower()
    if symbol in SUPPORTED:
        return SUPPORTED[symbol]
    if symbol in _ALL_ELEMENTS:
        raise XYZError(
            path, lineno, f"unsupported element {symbol!r}; supported: {_SUPPORTED_LIST}"
        )
    raise XYZError(
        path,
        lineno,
        f"unknown element {token!r}; expected an element symbol or atomic number of "
        f"{_SUPPORTED_LIST}",
    )


def _number(token: str) -> float | None:
    """A float from ``token`` (``*^`` read as ``e``), or ``None`` when it is not a number."""
    if "_" in token:
        return None
    try:
        return float(token.replace("*^", "e"))
    except ValueError:
        return None


def _atom(line: str, path: str, lineno: int, where: str) -> tuple[int, tuple[float, ...]]:
    """Atomic number and ``(x, y, z)`` of one atom line."""
    tokens = line.split()
    if len(tokens) < 4:
        raise XYZError(path, lineno, f"expected {_ATOM_FORMAT} ({where}), got {_show(line)}")
    coords = tuple(_number(t) for t in tokens[1:4])
    if any(c is None for c in coords):
        raise XYZError(path, lineno, f"expected {_ATOM_FORMAT}, got {_show(line)}")
    xyz = tuple(float(c) for c in coords if c is not None)
    if not all(math.isfinite(c) for c in xyz):
        raise XYZError(
            path, lineno, f"non-finite coordinate in {_show(line)}; expected finite numbers"
        )
    return _element(tokens[0], path, lineno), xyz


def _lines(path: str | os.PathLike[str]) -> list[str]:
    """The file's lines without line breaks (``\\n``, ``\\r\\n`` or ``\\r``)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data[: e.start].count(b"\n") + 1
        raise XYZError(path, lineno, "not UTF-8 text; expected a plain-text XYZ file") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the final line break ends the last line; it starts no new one
        lines.pop()
    return lines


def _blank_from(lines: list[str], start: int) -> bool:
    """Whether every line from ``lines[start]`` on is blank."""
    return all(not lines[i].strip() for i in range(start, len(lines)))


def _count(line: str) -> int | None:
    """The atom count on a count line, or ``None`` when the line is not a single integer."""
    text = line.strip()
    body = text[1:] if text[:1] in "+-" else text
    if not (body.isascii() and body.isdigit()):
        return None
    return int(text)


def _looks_like_qm9(lines: list[str], start: int) -> bool:
    """Whether ``lines[start:]`` begins with QM9's frequencies, SMILES and InChI lines."""
    return start + 2 < len(lines) and lines[start + 2].lstrip().startswith("InChI=")


def _skip_qm9_trailer(lines: list[str], start: int, path: str) -> int:
    """Check QM9's three lines after a frame's atoms at ``lines[start:]``; index after them."""
    for k, what in enumerate(_QM9_TRAILER):
        i = start + k
        if i >= len(lines):
            raise XYZError(
                path,
                i + 1,
                f"expected the QM9 {what} line after the atoms, got the end of the file "
                f"(read without qm9=True for plain XYZ files)",
            )
        line = lines[i]
        if what == "harmonic frequencies" and (
            not line.strip() or any(_number(t) is None for t in line.split())
        ):
            raise XYZError(
                path,
                i + 1,
                f"expected the QM9 harmonic frequencies line (numbers), got {_show(line)}",
            )
        if what == "SMILES" and not line.strip():
            raise XYZError(path, i + 1, "expected the QM9 SMILES line, got an empty line")
        if what == "InChI" and not line.lstrip().startswith("InChI="):
            raise XYZError(
                path,
                i + 1,
                f"expected the QM9 InChI line starting with 'InChI=', got {_show(line)}",
            )
    return start + len(_QM9_TRAILER)


#: One frame as read: its comment line, atomic numbers and ``(x, y, z)`` per atom.
_Frame = tuple[str, list[int], list[tuple[float, ...]]]


def _frame_count(lines: list[str], i: int, path: str, *, qm9: bool, first: bool) -> int:
    """The atom count on ``lines[i]``, the count line of a frame (the file's ``first``)."""
    count = _count(lines[i])
    if count is None:
        if first:
            raise XYZError(
                path, i + 1, f"expected the atom count (a positive integer), got {_show(lines[i])}"
            )
        hint = ""
        if not qm9 and _looks_like_qm9(lines, i):
            hint = "; this looks like a QM9 .xyz file, read it with qm9=True"
        raise XYZError(
            path,
            i + 1,
            f"expected the atom count of a new frame or the end of the file, "
            f"got {_show(lines[i])}{hint}",
        )
    if count <= 0:
        raise XYZError(path, i + 1, f"expected a positive atom count, got {_show(lines[i])}")
    return count


def _atom_block(
    lines: list[str], first: int, count: int, count_no: int, path: str
) -> tuple[list[int], list[tuple[float, ...]]]:
    """Atomic numbers and positions of the ``count`` atom lines from ``lines[first]`` (the
    count was on line ``count_no``)."""
    z: list[int] = []
    pos: list[tuple[float, ...]] = []
    for k in range(count):
        j = first + k
        if j >= len(lines) or (not lines[j].strip() and _blank_from(lines, j)):
            raise XYZError(
                path,
                j + 1,
                f"expected {count} atom lines (count on line {count_no}), the file ends after {k}",
            )
        where = f"atom {k + 1} of {count} declared on line {count_no}"
        number, xyz = _atom(lines[j], path, j + 1, where)
        z.append(number)
        pos.append(xyz)
    return z, pos


def _read_frame(
    lines: list[str], i: int, path: str, *, qm9: bool, first: bool
) -> tuple[_Frame, int]:
    """The frame whose count line is ``lines[i]`` (the file's ``first``), and the index of
    the line after it (after QM9's three trailing lines with ``qm9``)."""
    count = _frame_count(lines, i, path, qm9=qm9, first=first)
    if i + 1 >= len(lines):
        raise XYZError(
            path, i + 2, "expected a comment line after the atom count, got the end of the file"
        )
    z, pos = _atom_block(lines, i + 2, count, i + 1, path)
    end = i + 2 + count
    if qm9:
        end = _skip_qm9_trailer(lines, end, path)
    return (lines[i + 1], z, pos), end


def read_xyz(path: str | os.PathLike[str], *, qm9: bool = False) -> list[Molecule]:
    """Read every frame of an XYZ file.

    Args:
        path: the file.
        qm9: the file is in QM9's original format: every frame's atom block is followed by
            exactly three lines (harmonic frequencies, SMILES, InChI), which are checked and
            skipped. Atom lines may carry extra columns (QM9's partial charges) either way.

    Returns:
        One :class:`Molecule` per frame, in file order; ``z`` is ``[n]`` int64 and ``pos`` is
        ``[n, 3]`` float64 in the file's units (Angstrom for QM9).

    Raises:
        XYZError: the file is empty, a count is not a positive integer, atom lines are missing,
            a coordinate is not a finite number, an element is not one of H, C, N, O, F, or
            lines after a frame do not start a new frame.
        OSError: the file cannot be read.
    """
    name = os.fspath(path)
    stem = Path(path).stem
    lines = _lines(path)
    raw: list[_Frame] = []
    i = 0
    while True:
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i == len(lines):
            break
        frame, i = _read_frame(lines, i, name, qm9=qm9, first=not raw)
        raw.append(frame)
    if not raw:
        raise XYZError(name, 1, "empty file; expected an atom count on line 1")
    return [
        Molecule(
            name=stem if k == 0 else f"{stem}#{k}",
            z=np.asarray(z, dtype=np.int64),
            pos=np.asarray(pos, dtype=np.float64).reshape(len(z), 3),
            comment=comment,
        )
        for k, (comment, z, pos) in enumerate(raw)
    ]


def write_xyz(path: str | os.PathLike[str], molecules: Molecule | Iterable[Molecule]) -> None:
    """Write molecules as a (multi-frame) XYZ file that :func:`read_xyz` reads back exactly.

    Coordinates are written with the shortest representation that round-trips float64.

    Args:
        path: the file, overwritten.
        molecules: one :class:`Molecule` or several, written as consecutive frames.

    Raises:
        ValueError: no molecules, a molecule without atoms, an element other than H, C, N,
            O, F, a non-finite coordinate, or a comment that is more than one line.
    """
    mols = [molecules] if isinstance(molecules, Molecule) else list(molecules)
    if not mols:
        raise ValueError("write_xyz: no molecules to write")
    out: list[str] = []
    for mol in mols:
        if mol.n_atoms == 0:
            raise ValueError(f"write_xyz: molecule {mol.name!r} has no atoms")
        if "\n" in mol.comment or "\r" in mol.comment:
            raise ValueError(f"write_xyz: comment of {mol.name!r} must be a single line")
        bad = sorted({int(a) for a in mol.z} - set(_SYMBOL_OF))
        if bad:
            raise ValueError(
                f"write_xyz: molecule {mol.name!r} has unsupported atomic numbers {bad}; "
                f"supported: {_SUPPORTED_LIST}"
            )
        if not np.isfinite(mol.pos).all():
            raise ValueError(f"write_xyz: molecule {mol.name!r} has non-finite coordinates")
        out.append(str(mol.n_atoms))
        out.append(mol.comment)
        for sym, xyz in zip(mol.symbols, mol.pos.tolist(), strict=True):
            out.append(f"{sym:<2} " + " ".join(f"{c!r:>24}" for c in xyz))
    Path(path).write_text("\n".join(out) + "\n", encoding="utf-8", newline="\n")
