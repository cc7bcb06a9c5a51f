"""Pools: a chemist's own molecules, read from a file, given geometries and kept as data.

:func:`create_pool` reads SMILES (``.smi``/``.smiles``/``.txt``, or a column of a ``.csv``),
SDF (``.sdf``/``.sd``, RDKit's reader) or XYZ / extended XYZ (``.xyz``/``.extxyz``, ASE's
reader). Molecules without 3D coordinates (SMILES, 2D SDF records) get their geometry from
the SMILES -> GFN2-xTB pipeline of :mod:`al.data.conformers` (its cache makes a molecule
computed once free the next time, so an interrupted creation resumes); 3D coordinates from
the file are kept as they are, or re-optimised with GFN2-xTB (``reoptimise=True``).

Every molecule of the file gets a row in the pool's molecule table, with:

* ``id``: the one the file gives (a ``.smi`` line's word after the SMILES, a CSV's id column,
  an SDF record's title or property, an extended XYZ frame's ``id``/``name`` key), else its
  InChIKey, else ``row<N>`` (a molecule RDKit cannot read);
* ``smiles``: RDKit's canonical SMILES (from the file's bonds, or from the coordinates with
  ``rdkit.Chem.rdDetermineBonds`` for XYZ), ``inchikey``, ``n_atoms``, ``source`` and ``row``
  (the line of a SMILES or CSV file, the 1-based record of an SDF or XYZ file);
* ``status``: ``ok``, or why the molecule is left out of the pool: a status of the geometry
  pipeline (``unparsable_smiles``, ``unsupported_element``, ``embedding_failed``, ...) or one
  of :data:`POOL_STATUSES` (``duplicate``: the InChIKey of an earlier molecule). No molecule
  is dropped silently: each left out is in the table and counted in a summary line;
* ``number``: the molecule's number in the pool, 1..n over the usable (``ok``) molecules.

A pool lives in ``pool_dir() / NAME`` (``$AL_POOL_DIR``, else ``<al cache>/pools``, i.e.
``~/.cache/al/pools``): ``molecules.csv`` (the table), ``geometries.pt`` (the usable
molecules as :class:`~al.data.molecules.MolecularData`) and ``pool.json`` (name, digest,
source file and its sha256, settings, counts by status, creation time).

In a pool's :class:`~al.data.molecules.MolecularData`, ``qm9_index`` holds the pool's
molecule ``number`` (1..n), not a QM9 index; ``y`` is NaN (no labels yet) and ``source`` is
``pool:<name>``. The digest (:func:`pool_digest`) hashes the ids, elements and coordinates
(rounded to 1e-5 Angstrom) of the usable molecules: the same molecules give the same digest.

Re-optimised geometries are cached too, in a store beside the pipeline's
(``<geometry cache>/given``) whose key (the records' ``smiles`` field) is the hash of the
starting atoms and coordinates rather than a SMILES. Reading the file is
:mod:`al.data.pool_input`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from al.data.cache import cache_dir
from al.data.conformers.pipeline import (
    STATUS_OK,
    STATUS_SCF,
    GeometryRecord,
    GeometrySettings,
    settle,
    xtb_optimise,
)
from al.data.conformers.store import GeometryStore, default_folder
from al.data.molecules import MolecularData
from al.data.pool_input import (
    POOL_STATUSES,
    REASONS,
    STATUS_DUPLICATE,
    STATUS_DUPLICATE_ID,
    STATUS_MISSING_H,
    STATUS_NO_BONDS,
    STATUS_UNPARSABLE_RECORD,
    SUFFIXES,
    Entry,
    PoolError,
    read_entries,
    screen,
    status_order,
    summary_lines,
)

__all__ = [
    "POOL_ENV",
    "POOL_STATUSES",
    "REASONS",
    "STATUS_DUPLICATE",
    "STATUS_DUPLICATE_ID",
    "STATUS_MISSING_H",
    "STATUS_NO_BONDS",
    "STATUS_UNPARSABLE_RECORD",
    "SUFFIXES",
    "TABLE_COLUMNS",
    "Pool",
    "PoolError",
    "check_name",
    "create_pool",
    "info_lines",
    "list_line",
    "list_pools",
    "load_pool",
    "numbers_by_id",
    "pool_digest",
    "pool_dir",
    "reoptimise_geometry",
]

log = logging.getLogger(__name__)

POOL_ENV = "AL_POOL_DIR"
#: Bump when the layout of a pool's folder changes.
POOL_FORMAT = 1
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
TABLE_COLUMNS = (
    "number", "id", "smiles", "inchikey", "status", "n_atoms", "source", "row", "message",
)  # fmt: skip


def numbers_by_id(data: MolecularData) -> dict[str, int]:
    """A pool's molecule ids -> their numbers (``qm9_index`` of the pool's data, 1..n)."""
    return dict(zip(data.ids, data.qm9_index.tolist(), strict=True))


def pool_dir() -> Path:
    """``$AL_POOL_DIR``, else ``al.data.cache.cache_dir() / "pools"``."""
    return Path(os.environ[POOL_ENV]) if os.environ.get(POOL_ENV) else cache_dir() / "pools"


def check_name(name: str) -> str:
    """``name`` if it can name a pool (letters, digits, ``_``, ``.``, ``-``); else
    :class:`PoolError`."""
    if not NAME_RE.fullmatch(name) or set(name) == {"."}:
        raise PoolError(
            f"pool name {name!r} has characters outside A-Z a-z 0-9 _ . - (or is only dots); "
            "expected e.g. my_pool-1"
        )
    return name


def reoptimise_geometry(
    z: np.ndarray,
    pos: np.ndarray,
    charge: int,
    multiplicity: int,
    bonds: set[tuple[int, int]],
    settings: GeometrySettings,
) -> GeometryRecord:
    """GFN2-xTB optimisation of given coordinates (``z [n]``, ``pos [n, 3]`` Angstrom), with
    the pipeline's statuses: ``ok``, ``scf_not_converged``, ``not_converged`` or
    ``bonds_changed`` (``bonds``: the molecule's bonds as atom pairs), or
    ``error:<exception type>``. Never raises."""
    from ase.calculators.calculator import CalculatorError

    t0 = time.perf_counter()
    record = GeometryRecord(smiles="", status="", z=np.asarray(z).astype(np.int8))
    record.charge, record.multiplicity = int(charge), int(multiplicity)
    try:
        new, energy, n_steps, converged = xtb_optimise(z, pos, settings, charge, multiplicity)
    except (CalculatorError, RuntimeError) as exc:  # tblite raising: SCF or setup
        record.status, record.message = STATUS_SCF, " ".join(str(exc).split())[:500]
    except Exception as exc:  # one molecule's failure must not end the pool
        record.status, record.message = f"error:{type(exc).__name__}", str(exc)[:500]
    else:
        settle(record, z, bonds, new, energy, n_steps, converged, settings)
    record.seconds = time.perf_counter() - t0
    return record


def _geometry_key(e: Entry) -> str:
    """The re-optimisation store's key: a hash of the starting atoms, coordinates and
    charge."""
    h = hashlib.sha256(f"{e.charge},{e.multiplicity};".encode())
    h.update(np.asarray(e.z, dtype=np.int64).tobytes())
    h.update(np.rint(np.asarray(e.pos, dtype=np.float64) * 1e5).astype(np.int64).tobytes())
    return "given:" + h.hexdigest()[:24]


def _reoptimise_all(
    entries: list[Entry],
    settings: GeometrySettings,
    workers: int | None,
    cache: str | Path | None,
    show_progress: bool,
    echo: Callable[[str], None],
) -> None:
    """Re-optimise ``entries``' coordinates in place, through their own cached store."""
    from concurrent.futures import ProcessPoolExecutor

    from al import progress
    from al.data.conformers.run import ONE_THREAD
    from al.runtime import available_cores, environment

    store = GeometryStore(settings, Path(cache or default_folder()) / "given")
    known = store.read()
    keys = [_geometry_key(e) for e in entries]
    todo = [(k, e) for k, e in zip(keys, entries, strict=True) if k not in known]
    workers = max(1, min(int(workers or available_cores()), len(todo)))
    args = [(e.z, e.pos, e.charge, e.multiplicity, e.bonds, settings) for _, e in todo]
    bar = progress.bar(total=len(todo), desc="re-optimising", unit="mol", enabled=show_progress)
    t0 = time.perf_counter()
    with bar, environment(ONE_THREAD), contextlib.ExitStack() as stack:
        results: Iterable[GeometryRecord] = (reoptimise_geometry(*a) for a in args)
        if workers > 1:  # spawn: each worker starts with one thread (ONE_THREAD)
            ctx = multiprocessing.get_context("spawn")
            executor = stack.enter_context(ProcessPoolExecutor(workers, mp_context=ctx))
            results = executor.map(reoptimise_geometry, *zip(*args, strict=True))
        for (key, _), record in zip(todo, results, strict=True):
            record.smiles = key
            if not record.status.startswith("error:"):  # an unforeseen failure is retried
                store.append([record])
            known[key] = record
            bar.update(1)
    for key, e in zip(keys, entries, strict=True):
        record = known[key]
        e.status, e.message = record.status, record.message
        e.pos = record.pos if record.ok else None
    counts = Counter(e.status for e in entries)
    echo(
        f"re-optimised: {len(entries)} molecule(s), {len(todo)} computed, "
        f"{len(entries) - len(todo)} from the cache {store.path}, "
        f"{time.perf_counter() - t0:.1f} s, {workers} worker(s): "
        + ", ".join(f"{k} {n}" for k, n in counts.items())
    )


def _geometries(
    entries: list[Entry],
    settings: GeometrySettings,
    reoptimise: bool,
    workers: int | None,
    cache: str | Path | None,
    show_progress: bool,
    echo: Callable[[str], None],
) -> None:
    """Give every molecule still in its geometry and final status."""
    from al.data.conformers.run import compute_geometries

    given = [e for e in entries if not e.status and e.pos is not None]
    wanted = [e for e in entries if not e.status and e.pos is None]
    if wanted:
        run = compute_geometries(
            [e.smiles for e in wanted], settings, workers=workers, cache=cache,
            show_progress=show_progress, echo=echo,
        )  # fmt: skip
        echo(run.summary())
        for e, record in zip(wanted, run.records, strict=True):
            e.status, e.message = record.status, record.message
            if record.ok:
                e.z, e.pos = record.z.astype(np.int64), record.pos
    if given and reoptimise:
        _reoptimise_all(given, settings, workers, cache, show_progress, echo)
    for e in given:
        e.status = e.status or STATUS_OK


def pool_digest(ids: list[str], z: torch.Tensor, pos: torch.Tensor, ptr: torch.Tensor) -> str:
    """sha256 over each molecule's id, elements and coordinates rounded to 1e-5 Angstrom
    (16 hex digits)."""
    h = hashlib.sha256()
    zs = z.detach().cpu().to(torch.int64).numpy()
    ps = np.rint(pos.detach().cpu().to(torch.float64).numpy() * 1e5).astype(np.int64)
    bounds = ptr.detach().cpu().tolist()
    for i, mol_id in enumerate(ids):
        a, b = bounds[i], bounds[i + 1]
        h.update(mol_id.encode() + b"\0")
        h.update(zs[a:b].tobytes())
        h.update(ps[a:b].tobytes())
    return h.hexdigest()[:16]


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass
class Pool:
    """A pool read from its folder.

    Attributes:
        name: the pool's name; path: its folder.
        meta: the contents of ``pool.json``.
        table: one row per molecule of the source file (:data:`TABLE_COLUMNS`).
        data: the usable molecules (``qm9_index`` holds the pool's numbers 1..n).
    """

    name: str
    path: Path
    meta: dict[str, Any]
    table: pd.DataFrame
    data: MolecularData

    @property
    def digest(self) -> str:
        """The content digest (:func:`pool_digest`)."""
        return str(self.meta["digest"])

    def info(self) -> list[str]:
        """``pool.json`` as readable lines (:func:`info_lines`)."""
        return info_lines(self.meta, self.path)


def _build(name: str, entries: list[Entry], source: dict, settings: dict) -> tuple:
    """The table, the data and ``pool.json``'s contents of finished entries."""
    usable = [e for e in entries if e.status == STATUS_OK]
    counts = Counter(e.status for e in entries)
    number = {id(e): i for i, e in enumerate(usable, start=1)}
    table = pd.DataFrame(
        [
            (number.get(id(e), 0), e.id, e.smiles, e.inchikey, e.status,
             0 if e.z is None else len(e.z), source["file"], e.row, e.message)
            for e in entries
        ],
        columns=list(TABLE_COLUMNS),
    )  # fmt: skip
    sizes = [len(e.z) for e in usable]
    ptr = torch.zeros(len(usable) + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.tensor(sizes, dtype=torch.long), 0)
    z = np.concatenate([e.z for e in usable]) if usable else np.zeros(0)
    pos = np.concatenate([e.pos for e in usable]) if usable else np.zeros((0, 3))
    data = MolecularData(
        z=torch.as_tensor(z, dtype=torch.long),
        pos=torch.as_tensor(np.asarray(pos, dtype=np.float32)).reshape(-1, 3),
        ptr=ptr,
        y=torch.full((len(usable),), float("nan"), dtype=torch.float64),
        qm9_index=torch.arange(1, len(usable) + 1, dtype=torch.long),
        smiles=[e.smiles for e in usable],
        source=f"pool:{name}",
        ids=[e.id for e in usable],
    )
    meta = {
        "name": name,
        "format": POOL_FORMAT,
        "digest": pool_digest([e.id for e in usable], data.z, data.pos, data.ptr),
        "molecules": {"usable": len(usable), "total": len(entries)},
        "counts": {s: counts[s] for s in status_order(counts)},
        "source": source,
        "settings": settings,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return table, data, meta


def create_pool(
    name: str,
    path: str | Path,
    *,
    smiles_column: str | None = None,
    id_column: str | None = None,
    reoptimise: bool = False,
    workers: int | None = None,
    settings: GeometrySettings | None = None,
    overwrite: bool = False,
    root: str | Path | None = None,
    cache: str | Path | None = None,
    show_progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> Pool:
    """Read ``path``, give its molecules geometries and store them as the pool ``name``.

    Args:
        smiles_column: a CSV's SMILES column (default ``smiles``).
        id_column: a CSV's column, SDF property or extended XYZ key of the ids.
        reoptimise: re-optimise coordinates given in the file with GFN2-xTB.
        workers: geometry processes (default: the cores).
        settings: the geometry pipeline's settings (default :class:`GeometrySettings`).
        overwrite: replace an existing pool of that name (else :class:`PoolError`).
        root: folder of pools (default :func:`pool_dir`).
        cache: the geometry cache's folder (default ``<al cache>/geometries``).
        echo: where the summary lines go (default: the log).

    Raises:
        PoolError: a bad name, an existing pool, a file that cannot be read.
    """
    echo = echo or log.info
    settings = settings or GeometrySettings()
    folder = Path(root or pool_dir()) / check_name(name)
    if (folder / "pool.json").exists() and not overwrite:
        raise PoolError(f"pool {name!r} exists in {folder}; choose another name or add --overwrite")
    src = Path(path)
    kind, entries = read_entries(src, smiles_column, id_column)
    echo(f"read {len(entries)} molecule(s) from {src} ({kind})")
    if reoptimise:
        for e in entries:
            if e.status == STATUS_MISSING_H:
                e.status = e.message = ""
    screen(entries)
    _geometries(entries, settings, reoptimise, workers, cache, show_progress, echo)
    source = {"file": str(src.resolve()), "sha256": _sha256(src), "kind": kind}
    chosen = {"smiles_column": smiles_column, "id_column": id_column, "reoptimise": reoptimise,
              "geometry": settings.record()}  # fmt: skip
    table, data, meta = _build(name, entries, source, chosen)
    _write(folder, table, data, meta)
    for line in summary_lines(entries):
        echo(line)
    echo(
        f"pool {name}: {meta['molecules']['usable']} of {len(entries)} molecule(s) usable, "
        f"digest {meta['digest']}, in {folder}"
    )
    return Pool(name, folder, meta, table, data)


def _write(folder: Path, table: pd.DataFrame, data: MolecularData, meta: dict) -> None:
    """Write the pool into a hidden folder beside ``folder``, then swap it in."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        table.to_csv(tmp / "molecules.csv", index=False)
        data.save(tmp / "geometries.pt")
        (tmp / "pool.json").write_text(json.dumps(meta, indent=1) + "\n")
        old = None
        if folder.exists():
            old = folder.parent / f"{tmp.name}.old"
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "pool.json").read_text())
    except (OSError, ValueError) as err:
        raise PoolError(f"{folder / 'pool.json'}: cannot be read ({err})") from None
    if not isinstance(meta, dict) or "digest" not in meta:
        raise PoolError(f"{folder / 'pool.json'}: not a pool description")
    return meta


def load_pool(name: str, root: str | Path | None = None) -> Pool:
    """The pool ``name`` from its folder; :class:`PoolError` when there is none, or its
    geometries no longer match its digest."""
    base = Path(root or pool_dir())
    folder = base / check_name(name)
    if not (folder / "pool.json").is_file():
        names = ", ".join(m["name"] for m in list_pools(base)) or "none"
        raise PoolError(
            f"no pool {name!r} in {base} (pools: {names}); create one with al pool create"
        )
    meta = _read_meta(folder)
    table = pd.read_csv(folder / "molecules.csv", dtype={"id": str, "smiles": str, "inchikey": str,
                        "status": str, "source": str, "message": str},
                        keep_default_na=False)  # fmt: skip
    data = MolecularData.load(folder / "geometries.pt")
    ids = table.loc[table["number"] > 0].sort_values("number")["id"].tolist()
    if pool_digest(ids, data.z, data.pos, data.ptr) != meta["digest"]:
        raise PoolError(f"pool {name!r} in {folder} changed since it was made (digest mismatch)")
    data.ids = ids  # a pool made before the ids were stored with its geometries
    return Pool(name, folder, meta, table, data)


def list_pools(root: str | Path | None = None) -> list[dict[str, Any]]:
    """``pool.json`` of every pool in ``root`` (default :func:`pool_dir`), by name."""
    base = Path(root or pool_dir())
    if not base.is_dir():
        return []
    out = []
    for folder in sorted(base.iterdir()):
        if folder.name.startswith(".") or not (folder / "pool.json").is_file():
            continue
        try:
            out.append(_read_meta(folder))
        except PoolError as err:
            log.warning("event=pool_unreadable %s", err)
    return out


def list_line(meta: dict[str, Any]) -> str:
    """One line of ``al pool list``: name, usable/total molecules, digest, creation time."""
    mols = meta.get("molecules", {})
    return (
        f"{meta.get('name', '?')}  {mols.get('usable', '?')}/{mols.get('total', '?')} "
        f"molecules  {meta.get('digest', '?')}  {meta.get('created', '?')}"
    )


def info_lines(meta: dict[str, Any], folder: Path | None = None) -> list[str]:
    """``pool.json`` as readable lines, the counts by status last."""
    mols, source = meta.get("molecules", {}), meta.get("source", {})
    settings = dict(meta.get("settings", {}))
    geometry = settings.pop("geometry", {})
    lines = [
        f"name: {meta.get('name')}",
        f"digest: {meta.get('digest')}",
        f"molecules: {mols.get('usable')} usable of {mols.get('total')}",
        f"source: {source.get('file')} ({source.get('kind')})",
        f"source sha256: {source.get('sha256')}",
        "settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()),
        "geometry: " + ", ".join(f"{k} {v}" for k, v in geometry.items()),
        f"created: {meta.get('created')}",
    ]
    if folder is not None:
        lines.append(f"folder: {folder}")
    lines += [f"status {s}: {n}" for s, n in meta.get("counts", {}).items()]
    return lines
