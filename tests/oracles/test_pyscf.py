"""The ``pyscf`` oracle, with real PySCF single points at small bases (a few seconds each,
mostly each process's start and PySCF's import)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from al.data.molecules import MolecularData
from al.oracles import (
    LabelResult,
    OracleError,
    PySCFOracle,
    build_oracle,
    oracle_choices,
    oracle_spec_problem,
)
from al.oracles.pyscf import DEFAULT_LEVEL, EnergyCache, Level, run_job, system_key

pytest.importorskip("pyscf")

SMALL_LEVEL = "b3lyp/sto-3g"
#: Methane, water, ammonia (near their equilibrium geometries, Angstrom) and hydrogen
#: sulfide (S: not an element the oracle labels), as QM9 indices 1, 3, 2 and 4.
MOLECULES = {
    1: ([6, 1, 1, 1, 1], [[0.0, 0.0, 0.0], [0.629, 0.629, 0.629], [-0.629, -0.629, 0.629],
                          [-0.629, 0.629, -0.629], [0.629, -0.629, -0.629]]),
    3: ([8, 1, 1], [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]),
    2: ([7, 1, 1, 1], [[0.0, 0.0, 0.1163], [0.0, 0.9399, -0.2714], [0.8139, -0.4699, -0.2714],
                       [-0.8139, -0.4699, -0.2714]]),
    4: ([16, 1, 1], [[0.0, 0.0, 0.1030], [0.0, 0.9616, -0.8239], [0.0, -0.9616, -0.8239]]),
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> MolecularData:
    """The :data:`MOLECULES`, built by hand."""
    zs = [z for z, _ in MOLECULES.values()]
    return MolecularData(
        z=torch.tensor([a for z in zs for a in z]),
        pos=torch.tensor([p for _, pos in MOLECULES.values() for p in pos], dtype=torch.float32),
        ptr=torch.tensor(np.cumsum([0] + [len(z) for z in zs])),
        y=torch.full((len(zs),), math.nan, dtype=torch.float64),
        qm9_index=torch.tensor(list(MOLECULES)),
        smiles=[""] * len(zs),
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pyscf") / "energies.jsonl"


@pytest.fixture(scope="module")
def labelled(tiny: MolecularData, cache: Path) -> tuple[PySCFOracle, LabelResult]:
    """Methane, water and ammonia labelled at B3LYP/STO-3G: three molecules and four atoms
    computed, each in its own process."""
    oracle = PySCFOracle(tiny, SMALL_LEVEL, cache=cache)
    return oracle, oracle.label([1, 3, 2])


def test_atomization_energies_have_the_projects_sign_and_size(labelled) -> None:
    oracle, result = labelled
    assert list(result.status) == ["ok"] * 3
    methane, water, ammonia = result.value
    # E(molecule) - sum E(atoms): negative, as the QM9 target (methane's H298 one: -17.4 eV)
    assert -26.0 < methane < -15.0
    assert -14.0 < water < -6.0 and -18.0 < ammonia < -9.0
    assert methane < ammonia < water  # four, three, two X-H bonds
    assert oracle.computations == 3 + 4  # the molecules and the free H, C, N, O
    assert oracle.cost_measured and oracle.name == f"pyscf:{SMALL_LEVEL}"
    # CPU-hours of each molecule's process: at least its start, at most a minute here
    assert ((result.cost > 0) & (result.cost < 1 / 60)).all()


def test_the_cache_answers_the_second_time_at_the_recorded_cost(
    tiny: MolecularData, cache: Path, labelled
) -> None:
    _, first = labelled
    again = PySCFOracle(tiny, SMALL_LEVEL, cache=cache)
    result = again.label([2, 1, 3, 1])
    assert again.computations == 0 and again.cache_hits == 4 + 4
    np.testing.assert_array_equal(result.value, first.value[[2, 0, 1, 0]])
    np.testing.assert_array_equal(result.cost, first.cost[[2, 0, 1, 0]])  # paid once, charged
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sorted(r["formula"] for r in lines) == ["C", "CH4", "H", "H2O", "H3N", "N", "O"]
    assert {r["kind"] for r in lines} == {"molecule", "atom"}
    # other settings are other keys, and so is a geometry moved by more than 1e-6 Angstrom
    z, pos = again.molecule(0)
    key = system_key(again.level_key, z, pos)
    assert key == system_key(again.level_key, z, pos + 4e-7)
    assert key != system_key(again.level_key, z, pos + 2e-6)
    other = PySCFOracle(tiny, SMALL_LEVEL, cache=cache, grids_level=2)
    assert system_key(other.level_key, z, pos) != key and other.cache.get(key) is not None


def test_a_fixed_cost_unknown_and_unsupported_molecules(tiny: MolecularData, cache: Path) -> None:
    oracle = PySCFOracle(tiny, SMALL_LEVEL, cost=2.0, cache=cache)
    result = oracle.label([1, 4, 99])
    assert list(result.status) == ["ok", "unsupported_element", "unknown_molecule"]
    assert list(result.cost) == [2.0, 2.0, 0.0] and oracle.computations == 0
    assert not oracle.cost_measured and oracle.describe()["cost_unit"] == "fixed"


def test_a_timeout_kills_the_process_and_charges_its_time(
    tiny: MolecularData, tmp_path: Path
) -> None:
    oracle = PySCFOracle(tiny, "b3lyp/6-31g**", cache=tmp_path / "c.jsonl", timeout_s=0.5)
    result = oracle.label([1])
    assert list(result.status) == ["timeout"] and math.isnan(result.value[0])
    assert 0 < result.cost[0] < 5 / 3600  # CPU it used before the kill, in CPU-hours
    assert oracle.computations == 1 and not (tmp_path / "c.jsonl").exists()


def test_an_scf_that_does_not_converge(tiny: MolecularData, tmp_path: Path) -> None:
    oracle = PySCFOracle(tiny, SMALL_LEVEL, cache=tmp_path / "c.jsonl", max_cycle=1)
    result = oracle.label([3])
    assert list(result.status) == ["scf_not_converged"] and result.cost[0] > 0
    assert oracle.computations == 1  # the atoms are not computed for a failed molecule
    assert not (tmp_path / "c.jsonl").exists()  # failures are not cached


def test_an_error_in_the_process_is_its_status() -> None:
    job = {"atoms": [["H", [0.0, 0.0, 0.0]]], "spin": 0, "xc": "b3lyp", "basis": "sto-3g"}
    out = run_job(job, timeout_s=60)  # one electron cannot be a singlet
    assert out.status == "error:RuntimeError" and "spin" in out.message.lower()
    assert math.isnan(out.energy_ha) and out.cpu_s > 0


def test_the_level_of_a_spec(tiny: MolecularData) -> None:
    assert "pyscf" in oracle_choices() and "pyscf:<functional>/<basis>" in oracle_choices()
    assert oracle_spec_problem("pyscf") is None
    assert oracle_spec_problem("PySCF: B3LYP/STO-3G") is None
    oracle = build_oracle("pyscf: B3LYP/STO-3G", data=tiny)
    assert oracle.level == Level("b3lyp", "sto-3g") and oracle.name == "pyscf:b3lyp/sto-3g"
    problems = {
        "pyscf:b3lyp": "is not <functional>/<basis>",
        "pyscf:/sto-3g": "is not <functional>/<basis>",
        "pyscf:b3lpy/sto-3g": "does not know the functional 'b3lpy'",
        "pyscf:b3lyp/sto-4g": "has no basis 'sto-4g'",
        "pyscf:b3lyp/6-31g(d,p)": "holds a comma",
        "pyscf:b3lyp//etc/basis": "not a path",
        "pyscf:": "needs an argument",
    }
    for spec, expected in problems.items():
        problem = oracle_spec_problem(spec)
        assert problem is not None and expected in problem and "\n" not in problem, spec
        assert problem.startswith("oracle 'pyscf'")
    with pytest.raises(ValueError, match="does not know the functional"):
        build_oracle("pyscf:b3lpy/sto-3g", data=None)  # refused before anything is built


def test_the_default_level(tiny: MolecularData, tmp_path: Path) -> None:
    oracle = build_oracle("pyscf", data=tiny)
    assert isinstance(oracle, PySCFOracle)
    assert oracle.level == DEFAULT_LEVEL == Level("b3lyp", "6-31g(2df,p)")
    assert oracle.name == "pyscf" and oracle.journal_chunk == 1
    assert oracle.supported_elements == {1, 6, 7, 8, 9}
    assert oracle.timeout_s == PySCFOracle.default_timeout_s == 3600.0
    info = oracle.describe()
    assert info["level"] == "b3lyp/6-31g(2df,p)" and "no ZPE" in info["target"]
    assert info["cost_unit"] == "CPU-hours, measured per molecule"


def test_energy_cache_skips_a_line_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"key": "a", "energy_ha": -1.0, "cpu_s": 2.0}\n{"key": "b", "ener')
    cache = EnergyCache(path)
    assert cache.get("a")["energy_ha"] == -1.0 and cache.get("b") is None
    cache.put({"key": "c", "energy_ha": -3.0, "cpu_s": 1.0})
    again = EnergyCache(path)
    assert len(again) == 2 and again.get("c")["energy_ha"] == -3.0


def test_without_pyscf_the_reason_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tiny: MolecularData
) -> None:
    for name in [m for m in sys.modules if m == "pyscf" or m.startswith("pyscf.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyscf", None)
    reason = "the pyscf oracle needs PySCF, which is not installed: pip install al[dft]"
    assert PySCFOracle.unavailable_reason() == reason
    with pytest.raises(OracleError, match=r"^the pyscf oracle needs PySCF.*al\[dft\]$"):
        build_oracle("pyscf", data=tiny)


@pytest.mark.slow
def test_a_live_pyscf_campaign_on_a_pool_of_small_molecules(
    qm9, tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: a pool of QM9's 20 smallest-numbered molecules (1 to 5 heavy atoms),
    labelled live by B3LYP/STO-3G, one round of acquisition, against a real server."""
    from ase import Atoms
    from ase.io import write
    from mlflow.tracking import MlflowClient

    from al.data.pools import create_pool
    from al.entrypoints.al_loop import run_campaign
    from al.loop.config import CampaignConfig
    from al.tracking import CampaignRun

    monkeypatch.setenv("AL_POOL_DIR", str(tmp_path / "pools"))
    monkeypatch.setenv("AL_JOURNAL_DIR", str(tmp_path / "journal"))
    monkeypatch.setenv("AL_CACHE_DIR", str(tmp_path / "cache"))
    frames = []
    for row in range(20):
        a, b = int(qm9.ptr[row]), int(qm9.ptr[row + 1])
        frames.append(Atoms(numbers=qm9.z[a:b].numpy(), positions=qm9.pos[a:b].numpy()))
    write(tmp_path / "small.xyz", frames, format="extxyz")
    create_pool("small", tmp_path / "small.xyz", workers=1, show_progress=False)
    config = CampaignConfig(
        pool="small", oracle="pyscf:b3lyp/sto-3g", heldout_size=2, val_size=2, initial_size=4,
        batch_size=2, rounds=1, hidden=8, n_interactions=1, filter_groups=4, epochs=1,
        min_steps=0, val_min=0, ensemble_size=2, pool_subsample=100, progress=False,
        train_batch_size=8, threads=1, experiment_name="pyscf-pool",
    )  # fmt: skip
    run_id = run_campaign(config)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    tracker = CampaignRun(run_id)
    q = [tracker.read_queried(r) for r in tracker.queried_rounds()]
    assert [len(t) for t in q] == [8, 2]
    table = q[0]
    assert (table["oracle"] == "pyscf:b3lyp/sto-3g").all() and (table["status"] == "ok").all()
    assert (table["label"] < 0).all()  # atomization energies: below the free atoms
    assert (table["cost"] > 0).all()  # each charged the CPU-hours its process used
    # its labels are not QM9's H298: the run says what they are
    assert run.data.tags["al.target"].startswith("electronic atomization energy")
    assert run.data.metrics["n_heldout"] == 2 and math.isfinite(run.data.metrics["test_mae"])


def test_al_label_sets_the_time_limit_of_a_live_label(tracking, tmp_path: Path, qm9) -> None:
    """``al label --timeout-s`` reaches the PySCF oracle: QM9's methane at a basis that
    needs more than 0.5 s is killed and recorded as ``timeout``, its CPU time charged."""
    import pandas as pd
    from click.testing import CliRunner

    from al.cli import main

    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("qm9_index\n1\n")
    args = ["label", "--oracle", "pyscf:b3lyp/6-31g**", "--input", str(src), "--output",
            str(out), "--timeout-s", "0.5", "--experiment-name", "limit"]  # fmt: skip
    result = CliRunner().invoke(main, args, env={"AL_CACHE_DIR": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert table["status"].tolist() == ["timeout"] and 0 < table["cost"][0] < 5 / 3600


def test_a_time_limit_is_checked_and_left_to_oracles_that_compute_live(tiny) -> None:
    from al.config import ConfigError, build_config
    from al.loop.config import CampaignConfig
    from al.oracles.registry import build_oracle

    assert build_oracle("xtb", data=tiny, timeout_s=1.0).name == "xtb"  # nothing to limit
    assert build_oracle("pyscf", data=tiny, timeout_s=7.0).timeout_s == 7.0
    assert CampaignConfig(label_timeout_s=-1).label_timeout() is None
    with pytest.raises(ConfigError, match=r"'label_timeout_s': 0\.0 is not a time limit; expected"):
        build_config(CampaignConfig, {"label_timeout_s": "0"})


def test_costs_in_two_currencies_are_refused(qm9, tiny, tmp_path: Path) -> None:
    """pyscf charges CPU-hours; a default cost (DFT labels) beside it is refused in one
    line before any run exists, and accepted once every cost is given."""
    from al.baselines import build_baseline
    from al.config import ConfigError
    from al.entrypoints.al_loop import run_campaign
    from al.entrypoints.pool_campaign import check_cost_units
    from al.loop.config import CampaignConfig
    from al.oracles.registry import build_oracle

    config = CampaignConfig(oracles="xtb,pyscf:b3lyp/sto-3g", experiment_name="currencies")
    with pytest.raises(
        ConfigError,
        match=r"^pyscf:b3lyp/sto-3g charges the CPU-hours each "
        r"label took, but xtb would be charged a default cost in DFT labels",
    ):
        run_campaign(config)
    xtb, live = (build_oracle(s, data=tiny) for s in ("xtb", "pyscf:b3lyp/sto-3g"))
    cheap = build_oracle("xtb", data=tiny, cost=2e-6)
    check_cost_units([cheap, live])  # every cost in CPU-hours
    fixed = build_oracle("pyscf:b3lyp/sto-3g", data=tiny, cost=1.0)
    check_cost_units([xtb, fixed])  # one currency: DFT labels
    with pytest.raises(ConfigError, match="baseline xtb would be charged"):
        check_cost_units([live], build_baseline("xtb"))
    check_cost_units([live], build_baseline("xtb", 2e-6))
