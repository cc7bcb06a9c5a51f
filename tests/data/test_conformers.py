"""Geometries from SMILES: real RDKit, ASE and tblite on a handful of small molecules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import one_line_error

import al.data.conformers.run as run_module
from al.cli import main
from al.data.conformers import (
    STATUS_BONDS_CHANGED,
    STATUS_NOT_CONVERGED,
    STATUS_OK,
    STATUS_UNPARSABLE,
    STATUS_UNSUPPORTED_ELEMENT,
    GeometryRecord,
    GeometrySettings,
    GeometryStore,
    SmilesInputError,
    bonds_changed,
    canonical_smiles,
    changed_bonds,
    compute_geometries,
    graph_bonds,
    optimise_smiles,
    qm9_smiles,
    read_smiles,
)
from al.data.conformers.pipeline import smiles_graph
from al.data.conformers.store import record_from_json, record_to_json
from al.oracles import xtb_energy_hartree

SETTINGS = GeometrySettings()


def _bond_lengths(rec: GeometryRecord) -> dict[tuple[int, int], list[float]]:
    """Lengths (Angstrom) of the SMILES graph's bonds, by pair of atomic numbers."""
    out: dict[tuple[int, int], list[float]] = {}
    for i, j in graph_bonds(smiles_graph(rec.smiles)[0]):
        pair = (min(int(rec.z[i]), int(rec.z[j])), max(int(rec.z[i]), int(rec.z[j])))
        out.setdefault(pair, []).append(float(np.linalg.norm(rec.pos[i] - rec.pos[j])))
    return out


@pytest.mark.parametrize("smiles", ["C", "CCO", "CC(N)=O"])
def test_small_molecules_converge_ok_with_sensible_bonds_and_energy(smiles: str) -> None:
    rec = optimise_smiles(smiles, SETTINGS)
    assert rec.status == STATUS_OK and rec.ok and rec.has_geometry, rec.message
    assert rec.z.dtype == np.int8 and rec.pos.dtype == np.float32
    assert rec.pos.shape == (rec.z.size, 3) and rec.forcefield == "mmff94"
    assert 0 < rec.n_steps <= SETTINGS.max_steps and rec.seconds > 0
    lengths = _bond_lengths(rec)
    assert all(abs(d - 1.09) < 0.025 for d in lengths[(1, 6)]), lengths[(1, 6)]
    assert all(abs(d - 1.53) < 0.04 for d in lengths.get((6, 6), [])), lengths
    assert all(0.95 < d < 1.05 for pair in ((1, 7), (1, 8)) for d in lengths.get(pair, []))
    single_point = xtb_energy_hartree(rec.z.astype(np.int64), rec.pos.astype(np.float64))
    assert abs(rec.energy_ha - single_point) < 1e-6
    assert not any(bonds_changed(smiles_graph(rec.smiles)[0], rec.pos))


def test_a_bad_smiles_and_a_foreign_element_get_their_status() -> None:
    for smiles in ("C1CC", "not a molecule", "", "   "):
        rec = optimise_smiles(smiles, SETTINGS)
        assert rec.status == STATUS_UNPARSABLE and not rec.has_geometry, smiles
    for smiles, symbol in (("CCl", "Cl"), ("C[SiH3]", "Si")):
        rec = optimise_smiles(smiles, SETTINGS)
        assert rec.status == STATUS_UNSUPPORTED_ELEMENT and symbol in rec.message
        assert not rec.ok and rec.z.size > 0 and rec.pos.shape == (0, 3)


def test_the_embedding_is_seeded() -> None:
    """The same geometry twice; the SCF energy to 1e-9 Ha (its last bits follow the order of
    tblite's threaded sums, which need not repeat)."""
    a, b = optimise_smiles("OCC(N)C", SETTINGS), optimise_smiles("OCC(N)C", SETTINGS)
    assert np.array_equal(a.pos, b.pos)
    assert a.energy_ha == pytest.approx(b.energy_ha, abs=1e-9)


def test_max_steps_hit_is_not_converged_but_keeps_geometry_and_energy() -> None:
    rec = optimise_smiles("CCO", GeometrySettings(max_steps=1))
    assert rec.status == STATUS_NOT_CONVERGED and not rec.ok and rec.has_geometry
    assert rec.n_steps == 1 and math.isfinite(rec.energy_ha)


def test_changed_bonds_compares_two_graphs() -> None:
    expected = {(0, 1), (1, 2), (1, 3)}
    same = changed_bonds(expected, loose=expected | {(0, 2)}, tight=expected)
    assert same == (set(), set())  # a close pair between the thresholds is no change
    broken, formed = changed_bonds(expected, loose={(0, 1), (1, 3)}, tight={(0, 1), (2, 3)})
    assert broken == {(1, 2)} and formed == {(2, 3)}


def test_bonds_changed_on_a_stretched_and_a_squeezed_geometry() -> None:
    rec = optimise_smiles("CCO", SETTINGS)
    mol = smiles_graph(rec.smiles)[0]
    h = int(np.flatnonzero(rec.z == 1)[0])
    heavy = next(j if i == h else i for i, j in graph_bonds(mol) if h in (i, j))
    pulled = rec.pos.copy()
    pulled[h] += 3.0 * (pulled[h] - pulled[heavy]) / np.linalg.norm(pulled[h] - pulled[heavy])
    broken, formed = bonds_changed(mol, pulled)
    assert broken == {(min(h, heavy), max(h, heavy))} and not formed
    oxygen = int(np.flatnonzero(rec.z == 8)[0])
    moved = rec.pos.copy()
    moved[h] = moved[oxygen] + [0.0, 0.0, 0.96]  # the H hops onto the oxygen
    broken, formed = bonds_changed(mol, moved)
    assert broken == {(min(h, heavy), max(h, heavy))} and formed == {
        (min(h, oxygen), max(h, oxygen))
    }


def test_a_gas_phase_zwitterion_transfers_its_proton_and_is_flagged() -> None:
    rec = optimise_smiles("[NH3+]CC([O-])=O", SETTINGS)  # glycine zwitterion
    assert rec.status == STATUS_BONDS_CHANGED and not rec.ok
    assert rec.has_geometry and "broken" in rec.message


def test_a_record_survives_its_json_line() -> None:
    rec = optimise_smiles("CC(N)=O", SETTINGS)
    back = record_from_json(json.loads(json.dumps(record_to_json(rec))))
    assert np.array_equal(back.pos, rec.pos) and np.array_equal(back.z, rec.z)
    assert back.energy_ha == rec.energy_ha and back.status == rec.status
    failed = record_from_json(record_to_json(optimise_smiles("C1CC", SETTINGS)))
    assert math.isnan(failed.energy_ha) and failed.pos.shape == (0, 3)


def test_each_setting_has_its_own_store(tmp_path: Path) -> None:
    paths = {
        GeometryStore(s, tmp_path).path
        for s in (
            SETTINGS, GeometrySettings(fmax=0.01), GeometrySettings(seed=1),
            GeometrySettings(max_steps=50), GeometrySettings(accuracy=0.1),
        )
    }  # fmt: skip
    assert len(paths) == 5
    with pytest.raises(ValueError, match="fmax"):
        GeometrySettings(fmax=0)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every molecule the run computes (the real pipeline still runs)."""
    calls: list[str] = []
    real = run_module.optimise_smiles

    def counted(smiles: str, settings: GeometrySettings):  # type: ignore[no-untyped-def]
        calls.append(smiles)
        return real(smiles, settings)

    monkeypatch.setattr(run_module, "optimise_smiles", counted)
    return calls


def test_the_cache_resumes_and_never_recomputes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch)
    smiles = ["C", "CCO", "OCC", "C1CC", "CCl"]  # OCC is CCO again
    first = compute_geometries(smiles, workers=1, cache=tmp_path, show_progress=False)
    assert first.computed == 4 and first.cached == 0 and len(calls) == 4
    assert [r.status for r in first.records] == ["ok", "ok", "ok", STATUS_UNPARSABLE,
                                                 STATUS_UNSUPPORTED_ELEMENT]  # fmt: skip
    assert first.records[1] is first.records[2]
    assert first.counts() == {"ok": 3, STATUS_UNPARSABLE: 1, STATUS_UNSUPPORTED_ELEMENT: 1}
    assert "ok 3" in first.summary() and "mol/s" in first.summary()
    calls.clear()
    again = compute_geometries(smiles, workers=1, cache=tmp_path, show_progress=False)
    assert calls == [] and again.computed == 0 and again.cached == 4
    for a, b in zip(first.records, again.records, strict=True):
        assert (
            a.smiles == b.smiles
            and a.status == b.status
            and a.seconds == pytest.approx(b.seconds, abs=1e-4)
        )
        assert np.array_equal(a.pos, b.pos) and (a.energy_ha == b.energy_ha or not a.ok)
    settings = json.loads((tmp_path / f"{SETTINGS.digest()}.settings.json").read_text())
    assert settings["fmax"] == 0.05 and settings["optimizer"] == "LBFGS"


def test_the_cache_survives_a_partial_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compute_geometries(["C", "CCO", "N"], workers=1, cache=tmp_path, show_progress=False)
    store = GeometryStore(SETTINGS, tmp_path)
    data = store.path.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    store.path.write_bytes(data[: cut + 40])  # killed while writing the last molecule ("N")
    assert set(store.read()) == {"C", "CCO"} and store.skipped == 1
    calls = _counting(monkeypatch)
    run = compute_geometries(["C", "CCO", "N", "O"], workers=1, cache=tmp_path,
                             show_progress=False)  # fmt: skip
    assert calls == ["N", "O"] and run.computed == 2 and run.cached == 2
    lines = store.path.read_bytes().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)  # compacted
    assert set(store.read()) == {"C", "CCO", "N", "O"} and store.skipped == 0


def test_an_append_after_a_partial_line_starts_a_new_line(tmp_path: Path) -> None:
    store = GeometryStore(SETTINGS, tmp_path)
    tmp_path.mkdir(exist_ok=True)
    store.path.write_bytes(b'{"smiles":"C","sta')
    store.append([optimise_smiles("CCl", SETTINGS)])
    assert set(store.read()) == {"CCl"} and store.skipped == 1


@pytest.mark.slow
def test_two_workers_give_what_one_gives(tmp_path: Path) -> None:
    smiles = ["CCO", "CC(N)=O", "C1CC"]
    one = compute_geometries(smiles, workers=1, cache=tmp_path / "a", show_progress=False)
    two = compute_geometries(smiles, workers=2, cache=tmp_path / "b", show_progress=False)
    assert two.workers == 2 and two.computed == 3
    for a, b in zip(one.records, two.records, strict=True):
        assert a.status == b.status and np.array_equal(a.pos, b.pos)


def test_read_smiles_files(tmp_path: Path) -> None:
    smi = tmp_path / "in.smi"
    smi.write_text("SMILES Name\nCCO ethanol\n\n# a comment\nC\n")
    assert read_smiles(smi) == [("ethanol", "CCO"), ("5", "C")]
    csv = tmp_path / "in.csv"
    csv.write_text("id,SMILES,name\n1,CCO,ethanol\n2,,blank\n")
    assert read_smiles(csv) == [("ethanol", "CCO"), ("blank", "")]
    with pytest.raises(SmilesInputError, match="no column 'smi'"):
        read_smiles(csv, column="smi")
    assert canonical_smiles("OCC") == "CCO" and canonical_smiles(" C1CC ") == "C1CC"


def test_qm9_smiles_are_the_first_molecules() -> None:
    assert qm9_smiles(3) == [("qm9_1", "C"), ("qm9_2", "N"), ("qm9_3", "O")]


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    empty, csv = tmp_path / "empty.smi", tmp_path / "in.csv"
    empty.write_text("\n# nothing\n")
    csv.write_text("id,name\n1,x\n")
    cases = {
        ("--smiles", str(tmp_path / "missing.smi")): "no such file",
        ("--smiles", str(empty)): "no SMILES in the file",
        ("--smiles", str(csv)): "no column 'smiles' (columns: id, name)",
        ("--smiles", str(csv), "--out", "x.pdb"): "cannot write this kind of file",
        (): "give one of --smiles FILE, --qm9 N or --qm9-split N",
        ("--smiles", str(csv), "--qm9", "3"): "give one of --smiles FILE, --qm9 N or --qm9-split N",
        ("--qm9", "3", "--workers", "0"): "workers",
        ("--qm9", "3", "--fmax", "-1"): "fmax",
    }
    for args, expected in cases.items():
        line = one_line_error(CliRunner().invoke(main, ["geometry", *args]))
        assert expected in line, (args, line)


def test_cli_writes_xyz_and_csv(tmp_path: Path) -> None:
    from ase.io import read

    smi = tmp_path / "in.smi"
    smi.write_text("CCO ethanol\nCCl chloromethane\n")
    cache = str(tmp_path / "cache")
    xyz, csv = tmp_path / "out.xyz", tmp_path / "out.csv"
    args = ["geometry", "--smiles", str(smi), "--workers", "1", "--cache", cache]
    result = CliRunner().invoke(main, [*args, "--out", str(xyz)])
    assert result.exit_code == 0, result.output
    assert (
        "ok 1, unsupported_element 1" in result.output and "1 without a geometry" in result.output
    )
    (frame,) = read(str(xyz), index=":")
    assert frame.info["status"] == "ok" and frame.info["name"] == "ethanol"
    assert frame.info["energy_ha"] == pytest.approx(-11.3943, abs=1e-3) and len(frame) == 9
    result = CliRunner().invoke(main, [*args, "--out", str(csv)])
    assert result.exit_code == 0 and "0 computed, 2 from the cache" in result.output
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("name,input_smiles,smiles,status,energy_ha") and len(rows) == 3
    assert rows[2].startswith("chloromethane,CCl,CCl,unsupported_element,,")
