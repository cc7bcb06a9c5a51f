"""The resumable store of geometries: one JSON-lines file per settings digest.

``<folder>/<digest>.jsonl`` holds one molecule per line, keyed by canonical SMILES, for
the settings whose :meth:`~al.data.conformers.pipeline.GeometrySettings.digest` names it
(``<digest>.settings.json`` beside it says which). Why JSON lines, appended and fsynced
one molecule at a time, rather than an npz rewritten every N molecules like the xTB
baseline's store:

* a kill loses at most the molecule being computed: each finished one is on disk before
  the next starts, and appending costs the same at the 10th molecule as at the 100,000th
  (rewriting a whole npz does not);
* a partial last line (killed during a write) is skipped on reading and closed off by the
  next append, so the file stays readable whatever happened;
* processes that share a folder append under a lock file (``flock``), so none loses
  another's molecules, which a read-merge-replace of one npz by two processes at once can;
* a molecule's variable-length arrays, strings and NaN fit a line without object arrays.

:meth:`GeometryStore.compact` rewrites the file without skipped lines or duplicates
atomically (temporary file, ``os.replace``) under the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from al.data.cache import append_durably, cache_dir
from al.data.conformers.pipeline import GeometryRecord, GeometrySettings

log = logging.getLogger(__name__)

#: Bump when a line's layout changes.
STORE_FORMAT = 1


def default_folder() -> Path:
    """``al.data.cache.cache_dir() / "geometries"``."""
    return cache_dir() / "geometries"


def record_to_json(record: GeometryRecord) -> dict[str, Any]:
    """A record as JSON-ready values: positions as a flat list of the shortest decimals that
    give back the same float32, the energy as None where it is NaN."""
    pos = np.asarray(record.pos, dtype=np.float32).reshape(-1)
    return {
        "smiles": record.smiles,
        "status": record.status,
        "z": [int(a) for a in record.z],
        "pos": [float(str(v)) for v in pos],
        "energy_ha": record.energy_ha if math.isfinite(record.energy_ha) else None,
        "n_steps": int(record.n_steps),
        "seconds": round(float(record.seconds), 4),
        "charge": int(record.charge),
        "multiplicity": int(record.multiplicity),
        "forcefield": record.forcefield,
        "embedding": record.embedding,
        "message": record.message,
    }


def record_from_json(rec: dict[str, Any]) -> GeometryRecord:
    """The inverse of :func:`record_to_json`; ``ValueError`` for a malformed record."""
    if not isinstance(rec, dict) or not isinstance(rec.get("smiles"), str):
        raise ValueError("not a geometry record")
    if not isinstance(rec.get("status"), str) or not rec["status"]:
        raise ValueError("no status")
    z = np.asarray(rec.get("z", []), dtype=np.int8).reshape(-1)
    pos = np.asarray(rec.get("pos", []), dtype=np.float32)
    if pos.size not in (0, 3 * z.size):
        raise ValueError(f"{pos.size} coordinates for {z.size} atoms")
    energy = rec.get("energy_ha")
    return GeometryRecord(
        smiles=rec["smiles"],
        status=rec["status"],
        z=z,
        pos=pos.reshape(-1, 3),
        energy_ha=math.nan if energy is None else float(energy),
        n_steps=int(rec.get("n_steps", 0)),
        seconds=float(rec.get("seconds", 0.0)),
        charge=int(rec.get("charge", 0)),
        multiplicity=int(rec.get("multiplicity", 1)),
        forcefield=str(rec.get("forcefield", "")),
        embedding=str(rec.get("embedding", "")),
        message=str(rec.get("message", "")),
    )


def _line(record: GeometryRecord) -> bytes:
    return (json.dumps(record_to_json(record), separators=(",", ":")) + "\n").encode()


class GeometryStore:
    """The geometries computed with one set of settings, on disk.

    Args:
        settings: the pipeline's settings (their digest names the file).
        folder: where the files go (default :func:`default_folder`).

    Attributes:
        skipped: unreadable lines met by the last :meth:`read` (a partial write).
        duplicates: lines of the last :meth:`read` whose molecule came again later.
    """

    def __init__(self, settings: GeometrySettings, folder: str | Path | None = None) -> None:
        self.settings = settings
        self.folder = Path(folder) if folder is not None else default_folder()
        digest = settings.digest()
        self.path = self.folder / f"{digest}.jsonl"
        self.settings_path = self.folder / f"{digest}.settings.json"
        self._lock_path = self.folder / f"{digest}.lock"
        self.skipped = 0
        self.duplicates = 0

    def read(self) -> dict[str, GeometryRecord]:
        """Every molecule on disk, by canonical SMILES (a later line wins)."""
        self.skipped = self.duplicates = 0
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        out: dict[str, GeometryRecord] = {}
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = record_from_json(json.loads(raw))
            except (ValueError, TypeError, UnicodeDecodeError):  # a partial write
                self.skipped += 1
                continue
            self.duplicates += rec.smiles in out
            out[rec.smiles] = rec
        if self.skipped:
            log.warning(
                "event=geometry_store_lines_skipped path=%s lines=%d", self.path, self.skipped
            )
        return out

    def append(self, records: Iterable[GeometryRecord]) -> None:
        """Add ``records`` at the end of the file, on disk (fsync) when this returns."""
        payload = b"".join(_line(r) for r in records)
        if not payload:
            return
        with self._locked():
            self._write_settings()
            append_durably(self.path, payload)

    def compact(self) -> int:
        """Rewrite the file with one line per molecule, atomically; returns the lines
        dropped (unreadable or superseded)."""
        with self._locked():
            records = self.read()
            dropped = self.skipped + self.duplicates
            if dropped:
                _write_atomic(self.path, b"".join(_line(r) for r in records.values()))
                log.info("event=geometry_store_compacted path=%s dropped=%d", self.path, dropped)
        return dropped

    def _write_settings(self) -> None:
        if not self.settings_path.exists():
            text = json.dumps({**self.settings.record(), "store_format": STORE_FORMAT}, indent=1)
            _write_atomic(self.settings_path, text.encode() + b"\n")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive ``flock`` on the lock file (never replaced, unlike the data)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, payload: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
