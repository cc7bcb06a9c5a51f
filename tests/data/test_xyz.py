"""Tests for al.xyz: reading, writing and error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from al.data.xyz import SUPPORTED, Molecule, XYZError, read_xyz, write_xyz

WATER = """3
water molecule
O 0.0 0.0 0.1173
H 0.0 0.7572 -0.4692
H 0.0 -0.7572 -0.4692
"""

# Methane as in QM9's original dsgdb9nsd_000001.xyz (tabs, partial charges in a fifth column,
# three lines after the atoms), with two values rewritten in Mathematica's ``*^`` notation.
QM9_METHANE = (
    "5\n"
    "gdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t0.5048\t35.3641\t"
    "0.044749\t-40.47893\t-40.476062\t-40.475117\t-40.498597\t6.469\t\n"
    "C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689\n"
    "H\t 0.002150416\t-0.0060313176\t 1.9761204*^-3\t 0.133921\n"
    "H\t 1.0117308433\t 1.4637511618\t 2.765748*^-4\t 0.133922\n"
    "H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 1.33923*^-1\n"
    "H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923\n"
    "1341.307\t1341.3284\t1341.365\t1562.6731\t1562.7453\t3038.3205\t3151.6034\t3151.6788\t"
    "3151.7078\n"
    "C\tC\t\n"
    "InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4\n"
)


def _write(tmp_path: Path, text: str, name: str = "mol.xyz") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def _raises(path: Path, line: int, *fragments: str, qm9: bool = False) -> str:
    """Read ``path`` expecting an XYZError at ``line`` whose message has ``fragments``."""
    with pytest.raises(XYZError) as info:
        read_xyz(path, qm9=qm9)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: "), message
    assert path.name in message
    assert info.value.line == line
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- reading ---------------------------------------------------------------------------------


def test_read_single_frame(tmp_path: Path) -> None:
    (mol,) = read_xyz(_write(tmp_path, WATER))
    assert mol.name == "mol"
    assert mol.comment == "water molecule"
    assert mol.z.dtype == np.int64 and mol.z.tolist() == [8, 1, 1]
    assert mol.pos.dtype == np.float64 and mol.pos.shape == (3, 3)
    np.testing.assert_array_equal(mol.pos[1], [0.0, 0.7572, -0.4692])
    assert mol.n_atoms == 3
    assert mol.symbols == ["O", "H", "H"]


def test_read_multi_frame_names(tmp_path: Path) -> None:
    text = WATER + "1\nsecond\nH 0 0 0\n" + "2\n\nC 0 0 0\nO 0 0 1.2\n"
    mols = read_xyz(_write(tmp_path, text, "traj.xyz"))
    assert [m.name for m in mols] == ["traj", "traj#1", "traj#2"]
    assert [m.n_atoms for m in mols] == [3, 1, 2]
    assert mols[1].comment == "second"
    assert mols[2].comment == ""
    assert mols[2].z.tolist() == [6, 8]


def test_symbols_any_case_atomic_numbers_and_extra_columns(tmp_path: Path) -> None:
    text = "5\n\nc 0 0 0 extra 1 2\nh 1 0 0\nN 0 1 0 -0.3\no 0 0 1\n9 1 1 1\n"
    (mol,) = read_xyz(_write(tmp_path, text))
    assert mol.z.tolist() == [6, 1, 7, 8, 9]
    text = "2\n\n6 0 0 0\n1 0 0 1.1\n"
    (mol,) = read_xyz(_write(tmp_path, text))
    assert mol.z.tolist() == [6, 1]


def test_mathematica_exponents(tmp_path: Path) -> None:
    (mol,) = read_xyz(_write(tmp_path, "1\n\nH 1.5*^-6 -2*^3 3.0e-2\n"))
    np.testing.assert_array_equal(mol.pos, [[1.5e-6, -2e3, 3.0e-2]])


def test_blank_trailing_lines_and_crlf(tmp_path: Path) -> None:
    (mol,) = read_xyz(_write(tmp_path, WATER.replace("\n", "\r\n") + "\r\n\r\n  \n"))
    assert mol.n_atoms == 3
    assert mol.comment == "water molecule"


def test_no_final_newline(tmp_path: Path) -> None:
    (mol,) = read_xyz(_write(tmp_path, WATER.rstrip("\n")))
    assert mol.n_atoms == 3


def test_comment_kept_verbatim(tmp_path: Path) -> None:
    (mol,) = read_xyz(_write(tmp_path, "1\n  E = -1.5\tHa  \nH 0 0 0\n"))
    assert mol.comment == "  E = -1.5\tHa  "


# --- QM9 -------------------------------------------------------------------------------------


def test_qm9_file(tmp_path: Path) -> None:
    path = _write(tmp_path, QM9_METHANE, "dsgdb9nsd_000001.xyz")
    (mol,) = read_xyz(path, qm9=True)
    assert mol.name == "dsgdb9nsd_000001"
    assert mol.z.tolist() == [6, 1, 1, 1, 1]
    assert mol.comment.startswith("gdb 1\t157.7118")
    np.testing.assert_allclose(mol.pos[0], [-0.0126981359, 1.0858041578, 0.0080009958])
    np.testing.assert_allclose(mol.pos[1, 2], 1.9761204e-3)
    np.testing.assert_allclose(mol.pos[2, 2], 2.765748e-4)


def test_qm9_multi_frame(tmp_path: Path) -> None:
    path = _write(tmp_path, QM9_METHANE + QM9_METHANE + "\n", "two.xyz")
    mols = read_xyz(path, qm9=True)
    assert [m.name for m in mols] == ["two", "two#1"]
    np.testing.assert_array_equal(mols[0].pos, mols[1].pos)


def test_qm9_file_without_flag_points_to_it(tmp_path: Path) -> None:
    path = _write(tmp_path, QM9_METHANE)
    _raises(path, 8, "expected the atom count of a new frame", "'1341.307", "qm9=True")


def test_qm9_flag_on_plain_file(tmp_path: Path) -> None:
    path = _write(tmp_path, WATER)
    _raises(path, 6, "harmonic frequencies", "end of the file", qm9=True)


def test_qm9_missing_inchi(tmp_path: Path) -> None:
    lines = QM9_METHANE.splitlines(keepends=True)
    lines[9] = "\n"  # InChI line present but empty
    _raises(_write(tmp_path, "".join(lines)), 10, "InChI", "'InChI='", qm9=True)
    truncated = "".join(QM9_METHANE.splitlines(keepends=True)[:9])
    _raises(_write(tmp_path, truncated), 10, "InChI", "end of the file", qm9=True)


def test_qm9_bad_frequencies(tmp_path: Path) -> None:
    lines = QM9_METHANE.splitlines(keepends=True)
    lines[7] = "C C\n"
    _raises(_write(tmp_path, "".join(lines)), 8, "harmonic frequencies", "'C C'", qm9=True)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "  \n\n\t\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    _raises(_write(tmp_path, text), 1, "empty file")


@pytest.mark.parametrize("count", ["abc", "3.0", "3 atoms", "C 0 0 0"])
def test_count_not_integer(tmp_path: Path, count: str) -> None:
    _raises(_write(tmp_path, f"{count}\n\nH 0 0 0\n"), 1, "atom count", repr(count))


@pytest.mark.parametrize("count", ["0", "-2"])
def test_count_not_positive(tmp_path: Path, count: str) -> None:
    _raises(_write(tmp_path, f"{count}\n\nH 0 0 0\n"), 1, "positive atom count", repr(count))


def test_missing_comment(tmp_path: Path) -> None:
    _raises(_write(tmp_path, "1\n"), 2, "comment line")


def test_fewer_atom_lines_than_count(tmp_path: Path) -> None:
    text = "4\ncomment\nC 0 0 0\nO 0 0 1.2\n\n"
    _raises(_write(tmp_path, text), 5, "expected 4 atom lines", "line 1", "after 2")


def test_fewer_atom_lines_in_later_frame(tmp_path: Path) -> None:
    text = WATER + "2\nsecond\nH 0 0 0\n"
    _raises(_write(tmp_path, text), 9, "expected 2 atom lines", "line 6", "after 1")


def test_count_too_large_runs_into_next_frame(tmp_path: Path) -> None:
    text = "2\nfirst\nH 0 0 0\n1\nsecond\nH 0 0 0\n"
    _raises(_write(tmp_path, text), 4, "'SYMBOL X Y Z'", "atom 2 of 2", "got '1'")


def test_unparsable_coordinate(tmp_path: Path) -> None:
    message = _raises(_write(tmp_path, "2\n\nH 0 0 0\nC 0.0 abc 1.0\n"), 4)
    assert message == f"{tmp_path / 'mol.xyz'}:4: expected 'SYMBOL X Y Z', got 'C 0.0 abc 1.0'"


@pytest.mark.parametrize("line", ["C 0.0 1.0", "C", "0.0 1.0 2.0"])
def test_too_few_columns(tmp_path: Path, line: str) -> None:
    _raises(_write(tmp_path, f"2\n\nH 0 0 0\n{line}\n"), 4, "'SYMBOL X Y Z'", repr(line))


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e999"])
def test_non_finite_coordinate(tmp_path: Path, value: str) -> None:
    text = f"2\n\nH 0 0 0\nC 0 {value} 0\n"
    _raises(_write(tmp_path, text), 4, "non-finite", "finite numbers")


@pytest.mark.parametrize(
    ("token", "named"), [("Cl", "'Cl'"), ("S", "'S'"), ("CL", "'Cl'"), ("17", "17 (Cl)")]
)
def test_unsupported_element(tmp_path: Path, token: str, named: str) -> None:
    text = f"2\n\nC 0 0 0\n{token} 0 0 1.7\n"
    message = _raises(_write(tmp_path, text), 4, "unsupported element", named)
    assert "H, C, N, O, F" in message


@pytest.mark.parametrize("token", ["Xx", "C1", "0", "200"])
def test_unknown_element(tmp_path: Path, token: str) -> None:
    message = _raises(_write(tmp_path, f"1\n\n{token} 0 0 0\n"), 3, "unknown", repr(token))
    assert "H, C, N, O, F" in message


def test_trailing_garbage(tmp_path: Path) -> None:
    text = WATER + "\nthe end\n"
    _raises(_write(tmp_path, text), 7, "new frame or the end of the file", "'the end'")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "mol.xyz"
    path.write_bytes(b"1\ncomment\nH 0 0 0 \xff\n")
    _raises(path, 3, "UTF-8")


def test_error_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mol\.xyz:1: "):
        read_xyz(_write(tmp_path, "x\n"))


# --- writing ---------------------------------------------------------------------------------


def test_round_trip_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mols = [
        Molecule("a", np.array([6, 1, 1, 1, 1]), rng.normal(size=(5, 3)) * 3, "first"),
        Molecule("b", np.array([8, 7, 9]), rng.normal(size=(3, 3)) * 1e-7, "E = -1.5\tHa"),
        Molecule("c", np.array([1]), np.array([[-0.0, 1e300, 5e-324]]), ""),
    ]
    path = tmp_path / "frames.xyz"
    write_xyz(path, mols)
    back = read_xyz(path)
    assert [m.name for m in back] == ["frames", "frames#1", "frames#2"]
    for a, b in zip(mols, back, strict=True):
        np.testing.assert_array_equal(a.z, b.z)
        np.testing.assert_array_equal(a.pos, b.pos)
        assert a.comment == b.comment
    assert np.signbit(back[2].pos[0, 0])


def test_write_single_molecule(tmp_path: Path) -> None:
    (mol,) = read_xyz(_write(tmp_path, WATER))
    out = tmp_path / "out.xyz"
    write_xyz(out, mol)
    lines = out.read_text().splitlines()
    assert lines[0] == "3" and lines[1] == "water molecule"
    assert lines[2].split() == ["O", "0.0", "0.0", "0.1173"]
    (again,) = read_xyz(out)
    np.testing.assert_array_equal(again.pos, mol.pos)


@pytest.mark.parametrize(
    ("mol", "fragment"),
    [
        (Molecule("m", np.array([17]), np.zeros((1, 3))), "unsupported"),
        (Molecule("m", np.array([1]), np.zeros((1, 3)), "two\nlines"), "single line"),
        (Molecule("m", np.array([1]), np.full((1, 3), np.nan)), "non-finite"),
        (Molecule("m", np.zeros(0, dtype=np.int64), np.zeros((0, 3))), "no atoms"),
    ],
)
def test_write_rejects(tmp_path: Path, mol: Molecule, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        write_xyz(tmp_path / "bad.xyz", [mol])


def test_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no molecules"):
        write_xyz(tmp_path / "bad.xyz", [])


def test_molecule_validates_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        Molecule("m", np.array([1, 1]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="integer"):
        Molecule("m", np.array([1.0]), np.zeros((1, 3)))
    mol = Molecule("m", [6, 1], [[0, 0, 0], [0, 0, 1]])
    assert mol.z.dtype == np.int64 and mol.pos.dtype == np.float64


def test_supported_elements() -> None:
    assert SUPPORTED == {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
