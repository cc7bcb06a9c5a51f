"""The ``pyscf`` oracle: DFT single points computed live with PySCF.

Level: B3LYP/6-31G(2df,p) by default (QM9's; PySCF's ``b3lyp`` is Gaussian's, with VWN-RPA),
or any ``<functional>/<basis>`` of PySCF's library, written in the spec
(``pyscf:b3lyp/sto-3g``), at the geometry the pool holds (no optimisation).

Target: the **electronic atomization energy** in eV, with the sign of the project's target::

    label = HARTREE_TO_EV * (E(molecule) - sum over atoms E(free atom))

negative for a bound molecule (methane at B3LYP/6-31G(2df,p): about -18.4 eV). The molecule
is restricted Kohn-Sham (RKS), each free atom unrestricted (UKS) in its ground-state
multiplicity (H, F doublet; C, O triplet; N quartet), at the same level. It is **not** QM9's
H298 atomization enthalpy (the ``dft`` oracle's target): no zero-point energy and no thermal
terms, which make H298 about 1 eV less negative for methane and more for larger molecules.
A campaign that mixes it with the QM9 target compares two different quantities.

Each single point runs in a process of its own (:mod:`al.oracles.pyscf_job`, on one thread)
under a wall-clock limit (``timeout_s``, default one hour): a process over it is killed and
its row gets ``"timeout"``. An SCF that does not converge gives ``"scf_not_converged"``, any
other failure ``"error:<ExceptionType>"``; a free atom that fails gives its molecule
``"atom_<status>"``. Nothing raises for one molecule.

Cost: by default each row is charged the CPU time its molecule's process used (interpreter
start, PySCF's import and the SCF), in CPU-hours, as measured by the operating system (also
for a process killed at its time limit). The free atoms are a one-off per level and are
charged to no row. ``cost_per_label`` (:attr:`PySCFOracle.default_cost`) is then only the
estimate that plans a campaign's spending; given a ``cost``, every row costs that instead.

Cache: every converged energy (molecule or atom) is appended to a JSON-lines file (default
``<cache dir>/pyscf_energies.jsonl``, see :func:`al.data.cache.cache_dir`) as soon as it is
computed, flushed and fsynced, so that a killed campaign loses at most the molecule in
flight. The key is the level (functional, basis, grid level, SCF tolerance, PySCF's minor
version), charge, spin, and the elements and coordinates rounded to 1e-6 Angstrom. A molecule
found there is not computed again, but is charged the cost recorded when it was computed:
the label was paid for once, and a campaign that reuses it is charged what it cost, so that
campaigns compare at equal cost whatever the cache held. Failures are not cached.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from al import progress
from al.data.cache import append_durably
from al.data.elements import HARTREE_TO_EV, SYMBOLS
from al.data.molecules import MolecularData
from al.extras import MissingExtraError, require
from al.oracles import pyscf_job
from al.oracles.base import (
    STATUS_OK,
    STATUS_TIMEOUT,
    STATUS_UNSUPPORTED_ELEMENT,
    Oracle,
    OracleError,
    RowLabels,
    register_oracle,
)

log = logging.getLogger(__name__)

DEFAULT_XC = "b3lyp"
DEFAULT_BASIS = "6-31g(2df,p)"
#: Unpaired electrons (2S) of each free atom's ground state: H, F doublet; C, O triplet;
#: N quartet.
ATOM_SPIN: dict[int, int] = {1: 1, 6: 2, 7: 3, 8: 2, 9: 1}
#: What the label is, for describe() and the docs.
TARGET = "electronic atomization energy E(mol) - sum E(atoms), eV (no ZPE or thermal terms)"
CACHE_FILE = "pyscf_energies.jsonl"
SECONDS_PER_HOUR = 3600.0
#: The script each single point runs (as a file: running ``-m`` would import ``al``).
JOB_SCRIPT = Path(pyscf_job.__file__)


@dataclass(frozen=True)
class Level:
    """A level of theory: a functional and a basis set, both as PySCF names (lower case)."""

    xc: str = DEFAULT_XC
    basis: str = DEFAULT_BASIS

    def __str__(self) -> str:
        return f"{self.xc}/{self.basis}"


DEFAULT_LEVEL = Level()


def parse_level(text: str) -> Level:
    """``"<functional>/<basis>"`` (e.g. ``"b3lyp/sto-3g"``) as a :class:`Level`; ValueError
    (one line) for a malformed level or one PySCF does not know."""
    problem = level_problem(text)
    if problem:
        raise ValueError(problem)
    xc, _, basis = text.strip().lower().partition("/")
    return Level(xc.strip(), basis.strip())


@functools.lru_cache(maxsize=64)
def level_problem(text: str) -> str | None:
    """What is wrong with a level ``"<functional>/<basis>"`` (one line), or None.

    Its form always; the functional and the basis (for H, C, N, O and F) too when PySCF is
    installed (a level's check imports it, a second or two). A comma cannot be written, as
    a spec is one item of a comma-separated list of oracles.
    """
    xc, sep, basis = text.strip().lower().partition("/")
    xc, basis = xc.strip(), basis.strip()
    if not (sep and xc and basis):
        return f"level {text!r} is not <functional>/<basis>, e.g. b3lyp/sto-3g"
    if "," in text:
        return (
            f"level {text!r} holds a comma, which separates oracles in a list: the default "
            f"level {DEFAULT_LEVEL} is plain 'pyscf'; write 6-31G(d,p) as 6-31G**"
        )
    if "/" in basis or "\\" in basis:
        return f"level {text!r}: the basis must be a name of PySCF's library, not a path"
    try:
        require("dft", "the pyscf oracle")
    except MissingExtraError:
        return None  # building the oracle says what to install
    from pyscf import gto
    from pyscf.dft import libxc

    try:
        libxc.parse_xc(xc)
    except Exception as exc:  # KeyError, NotImplementedError, ...: PySCF's own words
        first = (str(exc).strip().strip("'\"").splitlines() or [type(exc).__name__])[0]
        return f"level {text!r}: PySCF does not know the functional {xc!r} ({first})"
    for z in ATOM_SPIN:
        try:
            with warnings.catch_warnings():  # its hint to install basis-set-exchange
                warnings.simplefilter("ignore")
                gto.basis.load(basis, SYMBOLS[z])
        except Exception:
            return f"level {text!r}: PySCF's library has no basis {basis!r} for {SYMBOLS[z]}"
    return None


def pyscf_version() -> str:
    """The installed PySCF's version, read from its metadata (no import)."""
    return metadata.version("pyscf")


def system_key(
    level_key: str, z: np.ndarray, pos: np.ndarray, charge: int = 0, spin: int = 0
) -> str:
    """The cache key (sha256 hex) of one system: ``level_key``, charge, spin, and atomic
    numbers ``z`` (``[n]``) with positions ``pos`` (``[n, 3]``, Angstrom) rounded to 1e-6."""
    rounded = np.round(np.asarray(pos, dtype=np.float64), 6) + 0.0  # -0.0 -> 0.0
    atoms = ";".join(
        f"{int(a)}:{x:.6f},{y:.6f},{w:.6f}" for a, (x, y, w) in zip(z, rounded, strict=True)
    )
    return hashlib.sha256(f"{level_key}|{charge}|{spin}|{atoms}".encode()).hexdigest()


class EnergyCache:
    """Converged energies, one JSON object a line, appended as each single point ends.

    Each line holds ``key`` (:func:`system_key`), ``energy_ha``, ``cpu_s`` (CPU seconds of
    its process, what it was charged), ``wall_s`` and context (``kind``, ``formula``,
    ``level``, ``pyscf``, ``written``). A line cut short by a kill is skipped when read; a
    write is one ``write`` call on a file opened for appending, then flushed and fsynced.

    Args:
        path: the JSON-lines file (created with its folder on the first write).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._records: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._records is None:
            self._records = {}
            if self.path.is_file():
                for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines()):
                    try:
                        rec = json.loads(line)
                        self._records[str(rec["key"])] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        log.warning("event=cache_line_skipped path=%s line=%d", self.path, n + 1)
        return self._records

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of ``key``, or None."""
        return self._load().get(key)

    def put(self, record: dict[str, Any]) -> None:
        """Append ``record`` (it holds its ``key``) and make it durable."""
        self._load()[str(record["key"])] = record
        append_durably(self.path, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))

    def __len__(self) -> int:
        return len(self._load())


@dataclass(frozen=True)
class JobOutcome:
    """How one single point ended.

    Attributes:
        status: ``"ok"``, ``"scf_not_converged"``, ``"timeout"`` or ``"error:<Type>"``.
        energy_ha: total energy in Hartree (NaN unless ok).
        cpu_s: CPU seconds its process used (user + system), from the operating system.
        wall_s: wall-clock seconds from start to end (or kill).
        message: why it failed ("" when ok).
    """

    status: str
    energy_ha: float
    cpu_s: float
    wall_s: float
    message: str = ""


def run_job(job: dict[str, Any], timeout_s: float) -> JobOutcome:
    """Run one single point (``job`` as in :mod:`al.oracles.pyscf_job`) in its own process;
    kill it after ``timeout_s`` wall-clock seconds. Never raises for the job's failure."""
    with tempfile.TemporaryDirectory(prefix="al-pyscf-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        t0 = time.monotonic()
        try:
            with open(Path(tmp) / "output.txt", "wb") as output:
                proc = subprocess.Popen(
                    [sys.executable, "-P", str(JOB_SCRIPT), str(job_path), str(result_path)],
                    stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=tmp,
                    env={**os.environ, **pyscf_job.ONE_THREAD},
                )  # fmt: skip
        except OSError as exc:  # no process to run it in: this molecule's failure
            return JobOutcome(f"error:{type(exc).__name__}", math.nan, 0.0, 0.0, str(exc))
        killed, usage = _wait(proc, timeout_s)
        wall = time.monotonic() - t0
        cpu = float(usage.ru_utime + usage.ru_stime)
        if killed:
            return JobOutcome(STATUS_TIMEOUT, math.nan, cpu, wall, f"killed after {timeout_s:g} s")
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            tail = (Path(tmp) / "output.txt").read_text(errors="replace").strip().splitlines()
            message = f"exit status {proc.returncode}: {tail[-1] if tail else 'no output'}"
            return JobOutcome("error:ChildProcessError", math.nan, cpu, wall, message[:500])
    ok = result.get("status") == STATUS_OK
    energy = float(result["energy_ha"]) if ok else math.nan
    return JobOutcome(str(result.get("status")), energy, cpu, wall, str(result.get("message", "")))


def _wait(proc: subprocess.Popen, timeout_s: float) -> tuple[bool, Any]:
    """Reap ``proc`` (killing it after ``timeout_s``): whether it was killed, and its
    resource usage (``os.wait4``: CPU time of that process alone). It is killed too when
    waiting is interrupted (a signal's exception), and the exception goes on."""
    deadline, pause, killed = time.monotonic() + timeout_s, 0.002, False
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                killed = True
                break
            time.sleep(min(pause, left))
            pause = min(2 * pause, 0.1)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return killed, usage


@register_oracle("pyscf")
class PySCFOracle(Oracle):
    """DFT computed live with PySCF (default B3LYP/6-31G(2df,p)): the electronic
    atomization energy, not H298 (:attr:`target`); see :mod:`al.oracles.pyscf`.

    Args:
        data: the molecules (their geometries are used as they are).
        level: ``"<functional>/<basis>"`` or a :class:`Level`; None: B3LYP/6-31G(2df,p).
        cost: a fixed cost per label; None (default): each row is charged the CPU-hours
            its molecule took (:attr:`cost_measured`), with :attr:`default_cost` as the
            planning estimate.
        cache: the energy cache's JSON-lines file; None: ``<cache dir>/pyscf_energies.jsonl``.
        timeout_s: wall-clock limit of one single point (its process is killed after it).
        max_cycle: SCF iteration limit (PySCF's default 50).
        conv_tol: SCF energy tolerance in Hartree (PySCF's default 1e-9).
        grids_level: PySCF's DFT integration grid level (its default 3).
    """

    target = TARGET
    #: Planning estimate in CPU-hours of one QM9 molecule at the default level on one core
    #: (nine heavy atoms took about 0.1 CPU-hours; see docs/usage.md).
    default_cost = 0.1
    argument = "<functional>/<basis>"
    argument_optional = True
    journal_chunk = 1
    supported_elements = frozenset(ATOM_SPIN)
    #: A single point's wall-clock limit in seconds.
    default_timeout_s = 3600.0

    def __init__(
        self,
        data: MolecularData,
        level: str | Level | None = None,
        *,
        cost: float | None = None,
        cache: str | Path | None = None,
        timeout_s: float | None = None,
        max_cycle: int = 50,
        conv_tol: float = 1e-9,
        grids_level: int = 3,
    ) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise OracleError(reason)
        timeout_s = self.default_timeout_s if timeout_s is None else float(timeout_s)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        super().__init__(data, cost=cost)
        if level is None:
            level = DEFAULT_LEVEL
        self.level = level if isinstance(level, Level) else parse_level(level)
        if self.level != DEFAULT_LEVEL:
            self.name = f"{self.kind()}:{self.level}"
        self.cost_measured = cost is None
        self.timeout_s = timeout_s
        self.max_cycle, self.conv_tol, self.grids_level = int(max_cycle), conv_tol, grids_level
        if cache is None:
            from al.data.cache import cache_dir

            cache = cache_dir() / CACHE_FILE
        self.cache = EnergyCache(cache)
        self.version = pyscf_version()
        major_minor = ".".join(self.version.split(".")[:2])
        self.level_key = (
            f"{self.level}|grids={grids_level}|conv_tol={conv_tol:g}|pyscf={major_minor}"
        )
        #: single points started (processes), and found in the cache instead
        self.computations, self.cache_hits = 0, 0
        self._atoms: dict[int, tuple[str, float]] = {}

    @classmethod
    def argument_problem(cls, argument: str) -> str | None:
        """What is wrong with a level ``<functional>/<basis>`` (:func:`level_problem`)."""
        return level_problem(argument)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if PySCF is installed, else the one line that says how to install it."""
        try:
            require("dft", "the pyscf oracle")
        except MissingExtraError as err:
            return str(err)
        return None

    def energy(
        self, z: np.ndarray, pos: np.ndarray, *, spin: int = 0, kind: str = "molecule"
    ) -> tuple[JobOutcome, bool]:
        """The total energy of a neutral system (``z`` ``[n]``, ``pos`` ``[n, 3]`` Angstrom,
        ``spin`` unpaired electrons) at this oracle's level: from the cache, or computed in
        its own process and cached if it converged. Returns the outcome (``cpu_s``: what
        the computation cost, also when it was cached) and whether it came from the cache."""
        key = system_key(self.level_key, z, pos, 0, spin)
        rec = self.cache.get(key)
        if rec is not None:
            self.cache_hits += 1
            return JobOutcome(STATUS_OK, float(rec["energy_ha"]), float(rec["cpu_s"]),
                              float(rec.get("wall_s", 0.0))), True  # fmt: skip
        atoms = [[SYMBOLS[int(a)], [float(c) for c in p]] for a, p in zip(z, pos, strict=True)]
        job = {
            "atoms": atoms,
            "charge": 0, "spin": int(spin), "xc": self.level.xc, "basis": self.level.basis,
            "max_cycle": self.max_cycle, "conv_tol": self.conv_tol,
            "grids_level": self.grids_level,
        }  # fmt: skip
        self.computations += 1
        out = run_job(job, self.timeout_s)
        if out.status == STATUS_OK:
            self.cache.put({
                "key": key, "kind": kind, "formula": formula(z), "level": self.level_key,
                "energy_ha": out.energy_ha, "cpu_s": out.cpu_s, "wall_s": out.wall_s,
                "pyscf": self.version, "written": datetime.now(UTC).isoformat(timespec="seconds"),
            })  # fmt: skip
        return out, False

    def atom_energy(self, z: int) -> tuple[str, float]:
        """Status and energy (Hartree) of the free atom ``z`` in its ground state (UKS)."""
        if z not in self._atoms or self._atoms[z][0] != STATUS_OK:
            out, _ = self.energy(np.array([z]), np.zeros((1, 3)), spin=ATOM_SPIN[z], kind="atom")
            if out.status != STATUS_OK:
                log.warning(
                    "event=label_failed oracle=%s atom=%s status=%s message=%r",
                    self.name, SYMBOLS[z], out.status, out.message,
                )  # fmt: skip
            self._atoms[z] = (out.status, out.energy_ha)
        return self._atoms[z]

    def _label_one(self, row: int) -> tuple[float, str, float]:
        """Label, status and CPU seconds charged of one data row."""
        z, pos = self.molecule(row)
        qm9_index = int(self.data.qm9_index[row])
        if not set(z.tolist()) <= self.supported_elements:
            return math.nan, STATUS_UNSUPPORTED_ELEMENT, 0.0
        out, cached = self.energy(z, pos, spin=int(z.sum()) % 2)
        log.log(
            logging.DEBUG if cached else logging.INFO,
            "event=pyscf_single_point oracle=%s qm9_index=%d status=%s cached=%s cpu_s=%.1f "
            "wall_s=%.1f", self.name, qm9_index, out.status, cached, out.cpu_s, out.wall_s,
        )  # fmt: skip
        if out.status != STATUS_OK:
            log.warning(
                "event=label_failed oracle=%s qm9_index=%d status=%s message=%r",
                self.name, qm9_index, out.status, out.message,
            )  # fmt: skip
            return math.nan, out.status, out.cpu_s
        atoms = 0.0
        for el, count in Counter(z.tolist()).items():
            status, energy = self.atom_energy(el)
            if status != STATUS_OK:
                return math.nan, f"atom_{status}", out.cpu_s
            atoms += count * energy
        return HARTREE_TO_EV * (out.energy_ha - atoms), STATUS_OK, out.cpu_s

    def _label_rows(self, rows: np.ndarray) -> RowLabels:
        out = [
            self._label_one(int(r))
            for r in progress.bar(rows, desc="PySCF", unit="mol", leave=False)
        ]
        value = np.array([v for v, _, _ in out], dtype=np.float64)
        status = np.array([s for _, s, _ in out], dtype=object)
        cpu_hours = np.array([c for _, _, c in out], dtype=np.float64) / SECONDS_PER_HOUR
        return RowLabels(value, status, cost=cpu_hours if self.cost_measured else None)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "cost_unit": "CPU-hours, measured per molecule" if self.cost_measured else "fixed",
            "level": str(self.level),
            "target": TARGET,
            "timeout_s": self.timeout_s,
            "max_cycle": self.max_cycle,
            "conv_tol": self.conv_tol,
            "grids_level": self.grids_level,
            "pyscf_version": self.version,
            "cache": str(self.cache.path),
        }


def formula(z: np.ndarray) -> str:
    """Hill-like formula of atomic numbers ``z`` (``[n]``): ``CH4``, ``H2O``."""
    counts = Counter(int(a) for a in z)
    first = [a for a in (6, 1) if a in counts] if 6 in counts else []  # Hill: C, H, the rest
    order = first + sorted((a for a in counts if a not in first), key=SYMBOLS.__getitem__)
    return "".join(f"{SYMBOLS[a]}{counts[a] if counts[a] > 1 else ''}" for a in order)
