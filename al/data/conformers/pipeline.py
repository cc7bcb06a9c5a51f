"""One molecule from SMILES to a GFN2-xTB-optimised geometry, with its outcome.

RDKit parses the SMILES and adds hydrogens, embeds one conformer with seeded ETKDGv3
(random starting coordinates as a second try), pre-optimises it with MMFF94 (UFF where MMFF
lacks parameters, none where UFF does too) and tblite's GFN2-xTB, through ASE's LBFGS,
optimises it to ``fmax``. The GFN2 total energy at the final geometry comes from that run.

Every molecule ends with one status (:data:`STATUSES`, or ``error:<exception>`` for a failure
nobody foresaw): a molecule is never dropped. ``not_converged`` and ``bonds_changed`` keep
their geometry and energy, but are not ``ok``.

RDKit, ASE and tblite are imported inside the functions: a worker process sets its thread
count before tblite's OpenMP runtime loads.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from al.data.elements import ELEMENTS

STATUS_OK = "ok"
STATUS_UNPARSABLE = "unparsable_smiles"
STATUS_UNSUPPORTED_ELEMENT = "unsupported_element"
STATUS_EMBEDDING_FAILED = "embedding_failed"
STATUS_SCF = "scf_not_converged"
STATUS_NOT_CONVERGED = "not_converged"
STATUS_BONDS_CHANGED = "bonds_changed"
#: The foreseen outcomes, in pipeline order; anything else is ``error:<exception type>``.
STATUSES = (
    STATUS_OK, STATUS_UNPARSABLE, STATUS_UNSUPPORTED_ELEMENT, STATUS_EMBEDDING_FAILED,
    STATUS_SCF, STATUS_NOT_CONVERGED, STATUS_BONDS_CHANGED,
)  # fmt: skip
#: Atomic numbers the pipeline accepts: QM9's elements.
SUPPORTED_Z = frozenset(ELEMENTS.values())
OPTIMIZER = "LBFGS"
#: Bump when a change to the pipeline changes its geometries (a new cache file then).
PIPELINE_VERSION = 1

#: Single-bond covalent radii in Angstrom (Cordero et al., Dalton Trans. 2008; C sp3).
COVALENT_RADII: dict[int, float] = {1: 0.31, 6: 0.76, 7: 0.71, 8: 0.66, 9: 0.57}
#: A SMILES bond longer than this times the sum of the two radii is broken. Over 1,100 QM9
#: molecules optimised ``ok`` the longest bond was 1.10 times the sum (strained cages,
#: zwitterions) and the closest non-bonded pair 1.17 times (the bridgeheads of an
#: oxabicyclo[1.1.1]pentane): two thresholds, one either side, keep both unflagged.
BROKEN_FACTOR = 1.3
#: A pair that the SMILES does not bond, closer than this times the sum, is a new bond.
FORMED_FACTOR = 1.1


@dataclass(frozen=True)
class GeometrySettings:
    """What decides a geometry: the cache keeps one file per :meth:`digest` of these.

    Attributes:
        method: tblite method.
        accuracy: tblite accuracy (smaller is tighter).
        fmax: force threshold of the optimisation, eV/Angstrom.
        max_steps: optimiser steps before a molecule is ``not_converged``.
        seed: ETKDG's ``randomSeed``.
    """

    method: str = "GFN2-xTB"
    accuracy: float = 1.0
    fmax: float = 0.05
    max_steps: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fmax) and self.fmax > 0):
            raise ValueError(f"fmax must be a finite number > 0 eV/Angstrom, got {self.fmax}")
        if not (math.isfinite(self.accuracy) and self.accuracy > 0):
            raise ValueError(f"accuracy must be a finite number > 0, got {self.accuracy}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def record(self) -> dict[str, Any]:
        """The settings, the optimiser and the pipeline's version, as JSON-ready values."""
        return {**asdict(self), "optimizer": OPTIMIZER, "pipeline": PIPELINE_VERSION}

    def digest(self) -> str:
        """A short hash of :meth:`record` (12 hex digits)."""
        text = json.dumps(self.record(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class GeometryRecord:
    """One molecule's outcome.

    Attributes:
        smiles: canonical SMILES (the input, stripped, where RDKit cannot parse it).
        status: one of :data:`STATUSES`, or ``error:<exception type>``.
        z: atomic numbers, ``[n_atoms]`` int8 (empty before a molecule has atoms).
        pos: positions in Angstrom, ``[n_atoms, 3]`` float32 (``[0, 3]`` without a geometry).
        energy_ha: GFN2-xTB total energy in Hartree at ``pos`` (NaN without one).
        n_steps: optimiser steps taken.
        seconds: wall time of the whole pipeline for this molecule.
        charge: total charge (from the formal charges).
        multiplicity: spin multiplicity (radical electrons + 1).
        forcefield: pre-optimisation used: ``mmff94``, ``uff`` or ``none``.
        embedding: ``etkdg`` or ``etkdg_random_coords`` (the second try).
        message: what went wrong, for a failed molecule.
    """

    smiles: str
    status: str
    z: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    pos: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.float32))
    energy_ha: float = math.nan
    n_steps: int = 0
    seconds: float = 0.0
    charge: int = 0
    multiplicity: int = 1
    forcefield: str = ""
    embedding: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        """Converged, bonds as in the SMILES."""
        return self.status == STATUS_OK

    @property
    def has_geometry(self) -> bool:
        """Whether an xTB geometry and energy were kept (``ok``, ``not_converged``,
        ``bonds_changed``)."""
        return self.z.size > 0 and math.isfinite(self.energy_ha)


def smiles_graph(smiles: str) -> tuple[Any, str]:
    """RDKit molecule with explicit hydrogens, and its canonical SMILES; ``(None, "")``
    when RDKit cannot parse ``smiles`` (or it has no atoms)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # a failure is a status, not a line on the terminal
    mol = Chem.MolFromSmiles(smiles.strip()) if smiles.strip() else None
    if mol is None or mol.GetNumAtoms() == 0:
        return None, ""
    return Chem.AddHs(mol), Chem.MolToSmiles(mol)


def canonical_smiles(smiles: str) -> str:
    """RDKit's canonical SMILES (the stripped input where it cannot be parsed): the key of a
    molecule in the cache."""
    return smiles_graph(smiles)[1] or smiles.strip()


def covalent_bonds(z: np.ndarray, pos: np.ndarray, factor: float) -> set[tuple[int, int]]:
    """Atom pairs ``(i, j)``, ``i < j``, closer than ``factor`` times their covalent radii.

    Args:
        z: atomic numbers, ``[n]``.
        pos: positions in Angstrom, ``[n, 3]``.
    """
    radii = np.array([COVALENT_RADII.get(int(a), 0.0) for a in z], dtype=np.float64)
    if (radii == 0).any():
        from rdkit import Chem

        table = Chem.GetPeriodicTable()
        radii = np.array([r or table.GetRcovalent(int(a)) for a, r in zip(z, radii, strict=True)])
    p = np.asarray(pos, dtype=np.float64)
    dist = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
    i, j = np.nonzero(np.triu(dist < factor * (radii[:, None] + radii[None, :]), k=1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def graph_bonds(mol: Any) -> set[tuple[int, int]]:
    """The bonds of an RDKit molecule as pairs ``(i, j)``, ``i < j``."""
    pairs = ((b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds())
    return {(min(a, b), max(a, b)) for a, b in pairs}


def changed_bonds(
    expected: set[tuple[int, int]], loose: set[tuple[int, int]], tight: set[tuple[int, int]]
) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """Bonds broken and formed, comparing a molecular graph with a geometry.

    Args:
        expected: the SMILES graph's bonds.
        loose: pairs of the geometry within :data:`BROKEN_FACTOR` (a bond still there).
        tight: pairs of the geometry within :data:`FORMED_FACTOR` (surely bonded).

    Returns:
        ``(broken, formed)``: expected bonds absent from ``loose``, and ``tight`` pairs that
        are not expected. Two thresholds keep a strained bond or a close non-bonded pair of
        a cage from counting as a change.
    """
    return expected - loose, tight - expected


def bonds_changed(mol: Any, pos: np.ndarray) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """:func:`changed_bonds` of the RDKit molecule ``mol`` at positions ``pos`` (``[n, 3]``,
    Angstrom, in ``mol``'s atom order)."""
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return changed_bonds(
        graph_bonds(mol),
        covalent_bonds(z, pos, BROKEN_FACTOR),
        covalent_bonds(z, pos, FORMED_FACTOR),
    )


def embed(mol: Any, seed: int) -> tuple[np.ndarray | None, str]:
    """One conformer of ``mol`` (with hydrogens) by ETKDGv3 seeded with ``seed``; random
    starting coordinates as a second try. Returns positions ``[n, 3]`` (Angstrom) and how
    they were found, or ``(None, "")``."""
    from rdkit.Chem import AllChem

    for random_coords in (False, True):
        params = AllChem.ETKDGv3()
        params.randomSeed = int(seed)
        params.useRandomCoords = random_coords
        if AllChem.EmbedMolecule(mol, params) == 0:
            return mol.GetConformer().GetPositions(), (
                "etkdg_random_coords" if random_coords else "etkdg"
            )
    return None, ""


def preoptimise(mol: Any, max_iters: int = 2000) -> str:
    """Relax ``mol``'s conformer in place with MMFF94, else UFF; returns which
    (``mmff94``, ``uff``, or ``none`` where neither has parameters or sets up)."""
    from rdkit.Chem import AllChem

    if (
        AllChem.MMFFHasAllMoleculeParams(mol)
        and AllChem.MMFFOptimizeMolecule(mol, mmffVariant="MMFF94", maxIters=max_iters) >= 0
    ):
        return "mmff94"
    if (
        AllChem.UFFHasAllMoleculeParams(mol)
        and AllChem.UFFOptimizeMolecule(mol, maxIters=max_iters) >= 0
    ):
        return "uff"
    return "none"


def xtb_optimise(
    z: np.ndarray,
    pos: np.ndarray,
    settings: GeometrySettings,
    charge: int = 0,
    multiplicity: int = 1,
) -> tuple[np.ndarray, float, int, bool]:
    """Optimise a geometry with tblite through ASE's LBFGS.

    Args:
        z: atomic numbers, ``[n]``.
        pos: starting positions in Angstrom, ``[n, 3]``.

    Returns:
        Final positions ``[n, 3]`` (Angstrom, float64), the total energy there (Hartree),
        the steps taken and whether the forces reached ``settings.fmax``. Raises
        ``ase.calculators.calculator.CalculatorError`` when tblite fails.
    """
    from ase import Atoms
    from ase.optimize import LBFGS
    from ase.units import Hartree
    from tblite.ase import TBLite

    atoms = Atoms(numbers=np.asarray(z, dtype=np.int64), positions=np.asarray(pos, np.float64))
    atoms.calc = TBLite(
        method=settings.method, accuracy=float(settings.accuracy), verbosity=0,
        charge=int(charge), multiplicity=int(multiplicity),
    )  # fmt: skip
    opt = LBFGS(atoms, logfile=None)
    converged = bool(opt.run(fmax=settings.fmax, steps=settings.max_steps))
    energy = float(atoms.get_potential_energy()) / Hartree  # tblite's own eV per Hartree
    return atoms.get_positions(), energy, int(opt.nsteps), converged


def optimise_smiles(smiles: str, settings: GeometrySettings) -> GeometryRecord:
    """The whole pipeline for one SMILES; never raises (a failure is a status)."""
    t0 = time.perf_counter()
    record = GeometryRecord(smiles=smiles.strip(), status="")
    try:
        _run(smiles, settings, record)
    except Exception as exc:  # one molecule's failure must not end a run of thousands
        record.status, record.message = f"error:{type(exc).__name__}", str(exc)[:500]
    record.seconds = time.perf_counter() - t0
    return record


def _run(smiles: str, settings: GeometrySettings, record: GeometryRecord) -> None:
    """Fill ``record`` step by step, stopping at the first failure."""
    from ase.calculators.calculator import CalculatorError
    from rdkit import Chem

    mol, canonical = smiles_graph(smiles)
    if mol is None:
        record.status, record.message = STATUS_UNPARSABLE, "RDKit cannot parse the SMILES"
        return
    record.smiles = canonical
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
    record.z = z.astype(np.int8)
    record.charge = int(Chem.GetFormalCharge(mol))
    record.multiplicity = 1 + sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    other = sorted({a.GetSymbol() for a in mol.GetAtoms() if a.GetAtomicNum() not in SUPPORTED_Z})
    if other:
        record.status = STATUS_UNSUPPORTED_ELEMENT
        record.message = f"elements outside H, C, N, O, F: {', '.join(other)}"
        return
    start, record.embedding = embed(mol, settings.seed)
    if start is None:
        record.status, record.message = STATUS_EMBEDDING_FAILED, "ETKDG found no conformer"
        return
    record.forcefield = preoptimise(mol)
    start = mol.GetConformer().GetPositions()
    try:
        pos, energy, n_steps, converged = xtb_optimise(
            z, start, settings, record.charge, record.multiplicity
        )
    except (CalculatorError, RuntimeError) as exc:  # tblite raising: SCF or setup
        record.status, record.message = STATUS_SCF, str(exc).strip()[:500]
        return
    settle(record, z, graph_bonds(mol), pos.astype(np.float32), energy, n_steps, converged,
           settings)  # fmt: skip


def settle(
    record: GeometryRecord,
    z: np.ndarray,
    expected: set[tuple[int, int]],
    pos: np.ndarray,
    energy: float,
    n_steps: int,
    converged: bool,
    settings: GeometrySettings,
) -> None:
    """An xTB optimisation's result into ``record``: the geometry ``pos`` (``[n, 3]``,
    Angstrom, atoms ``z [n]``), its energy and steps, and the status: ``bonds_changed``
    against the ``expected`` bonds (checked at ``pos``), else ``not_converged`` or ``ok``."""
    record.pos, record.energy_ha, record.n_steps = pos.astype(np.float32), energy, n_steps
    broken, formed = changed_bonds(
        expected, covalent_bonds(z, pos, BROKEN_FACTOR), covalent_bonds(z, pos, FORMED_FACTOR)
    )
    if broken or formed:
        record.status = STATUS_BONDS_CHANGED
        record.message = f"broken {sorted(broken)}, formed {sorted(formed)} (atom indices)"
    elif not converged:
        record.status = STATUS_NOT_CONVERGED
        record.message = f"fmax {settings.fmax} not reached in {settings.max_steps} steps"
    else:
        record.status = STATUS_OK
