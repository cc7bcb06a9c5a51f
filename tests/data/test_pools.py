"""Pools of a chemist's own molecules: real RDKit, ASE and tblite on a handful of small ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write
from click.testing import CliRunner
from conftest import one_line_error
from rdkit import Chem
from rdkit.Chem import AllChem

from al.cli import main
from al.data.molecules import MolecularData
from al.data.pools import (
    STATUS_DUPLICATE,
    STATUS_MISSING_H,
    PoolError,
    create_pool,
    list_pools,
    load_pool,
    pool_dir,
)

QUIET = {"workers": 1, "show_progress": False}
#: methane, water, an unparsable SMILES, methanol, chloromethane, water spelled otherwise
TINY_SMI = "smiles id\nC methane\nO water\nC1CC broken\nOC methanol\nCCl chloro\n[H]O[H] again\n"


@pytest.fixture(autouse=True)
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pools and the geometry cache in the test's own folder."""
    monkeypatch.setenv("AL_POOL_DIR", str(tmp_path / "pools"))
    monkeypatch.setenv("AL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _sdf(path: Path, records: list[tuple[str, str, bool]], shift: float = 0.0) -> Path:
    """An SDF of ``(title, smiles, with_hydrogens)`` records with ETKDG coordinates; the
    first atom of the first record moved by ``shift`` Angstrom along x."""
    writer = Chem.SDWriter(str(path))
    for i, (title, smiles, with_h) in enumerate(records):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        assert AllChem.EmbedMolecule(mol, randomSeed=7) == 0
        if i == 0 and shift:
            conf = mol.GetConformer()
            p = conf.GetAtomPosition(0)
            conf.SetAtomPosition(0, (p.x + shift, p.y, p.z))
        if not with_h:
            mol = Chem.RemoveHs(mol)
        mol.SetProp("_Name", title)
        writer.write(mol)
    writer.close()
    return path


def test_a_smiles_file_becomes_a_pool_with_every_molecule_in_its_table(
    folders: Path,
) -> None:
    src = folders / "tiny.smi"
    src.write_text(TINY_SMI)
    lines: list[str] = []
    pool = create_pool("tiny", src, echo=lines.append, **QUIET)
    table = pool.table
    assert table["id"].tolist() == ["methane", "water", "broken", "methanol", "chloro", "again"]
    assert table["status"].tolist() == [
        "ok", "ok", "unparsable_smiles", "ok", "unsupported_element", STATUS_DUPLICATE,
    ]  # fmt: skip
    assert table["row"].tolist() == [2, 3, 4, 5, 6, 7]  # lines of the file
    assert table["number"].tolist() == [1, 2, 0, 3, 0, 0]
    assert table.loc[5, "smiles"] == "O" and "water" in table.loc[5, "message"]
    assert table.loc[0, "inchikey"] == Chem.MolToInchiKey(Chem.MolFromSmiles("C"))
    # one summary line per reason, naming the molecules left out
    for status, name in (("unparsable_smiles", "broken"), ("unsupported_element", "chloro"),
                         (STATUS_DUPLICATE, "again")):  # fmt: skip
        hits = [line for line in lines if line.startswith(f"{status}: 1 molecule(s)")]
        assert len(hits) == 1 and name in hits[0], lines
    assert pool.meta["counts"] == {"ok": 3, "unparsable_smiles": 1, "unsupported_element": 1,
                                   STATUS_DUPLICATE: 1}  # fmt: skip
    assert pool.meta["molecules"] == {"usable": 3, "total": 6}
    assert pool.path == pool_dir() / "tiny" and (pool.path / "pool.json").is_file()

    loaded = load_pool("tiny")
    data = loaded.data
    assert isinstance(data, MolecularData) and len(data) == 3
    assert data.smiles == ["C", "O", "CO"] and data.qm9_index.tolist() == [1, 2, 3]
    assert torch.isnan(data.y).all() and data.pos.dtype == torch.float32
    assert data.n_atoms.tolist() == [5, 3, 6]
    assert sorted(data.z[data.ptr[1] : data.ptr[2]].tolist()) == [1, 1, 8]
    assert data.composition().tolist()[2] == [4, 1, 0, 1, 0]  # CH3OH
    # a bond length that only a real optimisation gives: O-H of water near 0.96 A
    water = data.pos[data.ptr[1] : data.ptr[2]].double()
    o = int((data.z[data.ptr[1] : data.ptr[2]] == 8).nonzero()[0, 0])
    oh = torch.linalg.norm(water - water[o], dim=1)
    assert ((oh[oh > 0] - 0.96).abs() < 0.05).all(), oh
    assert loaded.digest == pool.digest and len(loaded.digest) == 16
    assert loaded.table["id"].tolist() == table["id"].tolist()
    assert [m["name"] for m in list_pools()] == ["tiny"]


def test_an_existing_name_is_refused_and_overwrite_replaces_it(folders: Path) -> None:
    src = folders / "two.smi"
    src.write_text("C one\nN two\n")
    first = create_pool("p", src, **QUIET)
    with pytest.raises(PoolError, match=r"exists.*--overwrite"):
        create_pool("p", src, **QUIET)
    again = create_pool("p", src, overwrite=True, **QUIET)  # from the geometry cache
    assert again.digest == first.digest
    assert not [p for p in pool_dir().iterdir() if p.name != "p"]  # no temporary left


def test_an_sdf_keeps_its_coordinates_and_its_digest_follows_them(folders: Path) -> None:
    records = [("ethanol", "CCO", True), ("formaldehyde", "C=O", True), ("acetonitrile",
               "CC#N", False)]  # fmt: skip
    src = _sdf(folders / "mols.sdf", records)
    pool = create_pool("sdf", src, **QUIET)
    assert pool.table["id"].tolist() == ["ethanol", "formaldehyde", "acetonitrile"]
    assert pool.table["status"].tolist() == ["ok", "ok", STATUS_MISSING_H]
    assert pool.table["smiles"].tolist() == ["CCO", "C=O", "CC#N"]
    assert pool.table["row"].tolist() == [1, 2, 3]
    given = Chem.SDMolSupplier(str(src), removeHs=False)[0]
    data = load_pool("sdf").data
    assert data.z[: data.ptr[1]].tolist() == [a.GetAtomicNum() for a in given.GetAtoms()]
    assert np.allclose(data.pos[: data.ptr[1]].numpy(), given.GetConformer().GetPositions(),
                       atol=1e-5)  # fmt: skip

    # the hydrogens that the record lacks are added and the whole re-optimised
    full = create_pool("sdf_opt", src, reoptimise=True, **QUIET)
    assert full.table["status"].tolist() == ["ok", "ok", "ok"]
    assert full.table["n_atoms"].tolist() == [9, 4, 6]

    same = create_pool("sdf2", _sdf(folders / "again.sdf", records), **QUIET)
    assert same.digest == pool.digest
    moved = create_pool("sdf3", _sdf(folders / "moved.sdf", records, shift=0.01), **QUIET)
    assert moved.digest != pool.digest
    assert pool.meta["source"]["sha256"] != moved.meta["source"]["sha256"]


def test_an_extended_xyz_gets_smiles_from_its_coordinates(folders: Path) -> None:
    methane = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                      [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])  # fmt: skip
    methane.info["id"] = "m1"
    water = Atoms("OH2", positions=[[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]])
    water.info["id"] = "w1"
    hcl = Atoms("HCl", positions=[[0, 0, 0], [0, 0, 1.27]])
    src = folders / "mols.extxyz"
    write(str(src), [methane, water, hcl], format="extxyz")
    pool = create_pool("xyz", src, **QUIET)
    key_hcl = Chem.MolToInchiKey(Chem.MolFromSmiles("Cl"))
    assert pool.table["id"].tolist() == ["m1", "w1", key_hcl]  # no id given: the InChIKey
    assert pool.table["smiles"].tolist() == ["C", "O", "Cl"]
    assert pool.table["status"].tolist() == ["ok", "ok", "unsupported_element"]
    data = load_pool("xyz").data
    assert data.z.tolist() == [6, 1, 1, 1, 1, 8, 1, 1]
    assert np.allclose(data.pos[5:].numpy(), water.positions, atol=1e-6)

    again = create_pool("xyz2", src, reoptimise=True, **QUIET)
    assert again.table["status"].tolist() == ["ok", "ok", "unsupported_element"]
    opt = load_pool("xyz2").data.pos[5:].double()
    assert not np.allclose(opt.numpy(), water.positions, atol=1e-3)  # moved by GFN2-xTB
    oh = torch.linalg.norm(opt[1:] - opt[0], dim=1)
    assert ((oh - 0.96).abs() < 0.05).all(), oh
    assert again.digest != pool.digest and again.meta["settings"]["reoptimise"] is True


def test_a_csv_column_and_ids_from_another_column(folders: Path) -> None:
    src = folders / "mols.csv"
    src.write_text("name,Structure,code\nx,C,a1\ny,N,b2\n")
    pool = create_pool("csv", src, smiles_column="structure", id_column="code", **QUIET)
    assert pool.table["id"].tolist() == ["a1", "b2"]
    assert pool.table["smiles"].tolist() == ["C", "N"] and pool.table["row"].tolist() == [2, 3]


def test_list_and_info_through_the_command_line(folders: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(main, ["pool", "list"])
    assert empty.exit_code == 0 and "no pools" in empty.output
    src = folders / "tiny.smi"
    src.write_text(TINY_SMI)
    made = runner.invoke(main, ["pool", "create", "tiny", str(src), "--workers", "1"])
    assert made.exit_code == 0, made.output
    assert "pool tiny: 3 of 6 molecule(s) usable" in made.output
    listed = runner.invoke(main, ["pool", "list"])
    digest = load_pool("tiny").digest
    assert listed.exit_code == 0
    assert listed.output.splitlines()[0].split()[:4] == ["tiny", "3/6", "molecules", digest]
    info = runner.invoke(main, ["pool", "info", "tiny"])
    assert info.exit_code == 0, info.output
    lines = info.output.splitlines()
    assert "name: tiny" in lines and f"digest: {digest}" in lines
    assert "molecules: 3 usable of 6" in lines and "status duplicate: 1" in lines
    meta = json.loads((pool_dir() / "tiny" / "pool.json").read_text())
    assert f"source sha256: {meta['source']['sha256']}" in lines
    refused = one_line_error(runner.invoke(main, ["pool", "create", "tiny", str(src)]))
    assert "exists" in refused and "--overwrite" in refused
    missing = one_line_error(runner.invoke(main, ["pool", "info", "nope"]))
    assert "no pool 'nope'" in missing and "tiny" in missing


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("absent.smi", None, "no such file"),
        ("mols.pdb", "ATOM\n", "unknown kind of file '.pdb'; expected one of .smi"),
        ("mols.csv", "name,formula\nx,CH4\n", "no column 'smiles' (columns: name, formula)"),
        ("ids.csv", "smiles,name\nC,x\n", "no column 'code' (columns: smiles, name)"),
        ("empty.smi", "", "the file is empty"),
        ("empty.sdf", "\n\n", "the file is empty"),
        ("bad.xyz", "3\nx\nO 0 0\n", "cannot be read as (extended) XYZ"),
        ("folder.smi", "DIR", "not a file"),
    ],
)
def test_bad_input_is_one_line(folders: Path, name: str, content: str | None,
                               expected: str) -> None:  # fmt: skip
    path = folders / name
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    extra = ["--id-column", "code"] if name == "ids.csv" else []
    line = one_line_error(CliRunner().invoke(main, ["pool", "create", "p", str(path), *extra]))
    assert expected in line, line
    assert not pool_dir().exists() or not any(pool_dir().iterdir())


@pytest.mark.parametrize("name", ["bad/name", "a b", "..", "ünï"])
def test_a_bad_pool_name_is_one_line(folders: Path, name: str) -> None:
    src = folders / "one.smi"
    src.write_text("C\n")
    line = one_line_error(CliRunner().invoke(main, ["pool", "create", name, str(src)]))
    assert "characters outside A-Z a-z 0-9 _ . -" in line
