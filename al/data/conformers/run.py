"""Many SMILES through the pipeline: cached, resumable, one process per core.

:func:`compute_geometries` looks every molecule up in the :class:`GeometryStore` first and
computes only the missing ones, each stored as soon as it is done, so a run that was killed
continues where it stopped when started again and never computes a finished molecule twice.
A molecule is computed from its canonical SMILES (the store's key), so its geometry does not
depend on how the input spelled it; atoms come in that SMILES's order, hydrogens last.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from al import progress
from al.data.conformers.pipeline import (
    STATUSES,
    GeometryRecord,
    GeometrySettings,
    canonical_smiles,
    optimise_smiles,
)
from al.data.conformers.store import GeometryStore
from al.runtime import available_cores, environment

log = logging.getLogger(__name__)

#: One thread per worker: the workers already fill the cores.
ONE_THREAD = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
}  # fmt: skip


@dataclass
class GeometryRun:
    """What :func:`compute_geometries` did.

    Attributes:
        records: one per input SMILES, in input order (molecules met twice share one).
        computed: molecules computed by this run.
        cached: distinct molecules taken from the store.
        seconds: wall time of the computing part.
        workers: processes used.
        path: the store's file.
    """

    records: list[GeometryRecord]
    computed: int
    cached: int
    seconds: float
    workers: int
    path: Path

    def counts(self) -> dict[str, int]:
        """Molecules per status (foreseen statuses in pipeline order, then the others)."""
        c = Counter(r.status for r in self.records)
        order = [s for s in STATUSES if s in c] + sorted(set(c) - set(STATUSES))
        return {s: c[s] for s in order}

    @property
    def rate(self) -> float:
        """Molecules computed per second (NaN when none was)."""
        return self.computed / self.seconds if self.computed and self.seconds > 0 else math.nan

    def summary(self) -> str:
        """One line: molecules, where they came from, speed and the count of each status."""
        counts = ", ".join(f"{s} {n}" for s, n in self.counts().items()) or "nothing"
        speed = (
            f"{self.rate:.2f} mol/s ({self.rate / self.workers:.2f} per worker, "
            f"{self.workers} worker(s))"
            if self.computed
            else "nothing to compute"
        )
        return (
            f"geometries: {len(self.records)} molecule(s), {self.computed} computed, "
            f"{self.cached} from the cache, {self.seconds:.1f} s, {speed}: {counts}"
        )


def compute_geometries(
    smiles: Sequence[str],
    settings: GeometrySettings | None = None,
    *,
    workers: int | None = None,
    cache: str | Path | None = None,
    show_progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> GeometryRun:
    """Geometries of ``smiles``, from the store where it has them, computed otherwise.

    Args:
        smiles: input SMILES, ``[m]`` (duplicates and unparsable ones allowed).
        settings: pipeline settings (default :class:`GeometrySettings`).
        workers: processes, one thread each (default: the cores this process may use);
            1 computes in this process.
        cache: the store's folder (default ``al.data.cache.cache_dir() / "geometries"``).
        show_progress: draw a progress bar (on a terminal).
        echo: where the line about the work ahead goes (default: the log).
    """
    settings = settings or GeometrySettings()
    workers = int(workers or available_cores())
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    store = GeometryStore(settings, cache)
    keys = [canonical_smiles(s) for s in smiles]
    known = store.read()
    todo = [k for k in dict.fromkeys(keys) if k not in known]
    workers = max(1, min(workers, len(todo)))
    bar = progress.bar(total=len(todo), desc="geometries", unit="mol", enabled=show_progress)
    cached = len(set(keys)) - len(todo)
    progress.note(
        bar, f"geometries: {len(todo)} to compute, {cached} in the cache {store.path}, "
        f"{workers} worker(s)", echo=echo or log.info,
    )  # fmt: skip
    done: dict[str, GeometryRecord] = {}
    t0 = time.perf_counter()
    with bar:
        for key, record in _results(todo, settings, workers):
            if not record.status.startswith("error:"):  # an unforeseen failure is retried
                store.append([record])
            else:
                log.warning(
                    "event=geometry_failed smiles=%s status=%s message=%r",
                    key, record.status, record.message,
                )  # fmt: skip
            done[key] = record
            bar.update(1)
            bar.set_postfix(ok=sum(r.ok for r in done.values()), refresh=False)
    seconds = time.perf_counter() - t0
    if store.skipped or store.duplicates:
        store.compact()
    run = GeometryRun(
        records=[done[k] if k in done else known[k] for k in keys],
        computed=len(done),
        cached=cached,
        seconds=seconds,
        workers=workers,
        path=store.path,
    )
    log.info(
        "event=geometries_done molecules=%d computed=%d cached=%d seconds=%.1f workers=%d "
        "counts=%s path=%s", len(keys), run.computed, cached, seconds, workers,
        json.dumps(run.counts(), separators=(",", ":")), store.path,
    )  # fmt: skip
    return run


def _results(
    todo: list[str], settings: GeometrySettings, workers: int
) -> Iterator[tuple[str, GeometryRecord]]:
    """``(smiles, record)`` of each of ``todo`` as it finishes."""
    if not todo:
        return
    if workers == 1:
        if "tblite" not in sys.modules:  # OpenMP reads it when tblite loads; the user's wins
            for k, v in ONE_THREAD.items():
                os.environ.setdefault(k, v)
        for key in todo:
            yield key, optimise_smiles(key, settings)
        return
    # spawn, not fork: a forked child inherits the parent's OpenMP and RDKit state; the
    # workers start with one thread each from the environment they are given
    ctx = multiprocessing.get_context("spawn")
    with (
        environment(ONE_THREAD),
        ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool,
    ):
        pending = {pool.submit(optimise_smiles, key, settings): key for key in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield pending.pop(future), future.result()
        except BrokenProcessPool:
            raise RuntimeError(
                f"a geometry worker process died with {len(pending)} molecule(s) left; "
                "run again to continue (finished molecules are cached)"
            ) from None
        finally:
            for future in pending:
                future.cancel()


def _init_worker() -> None:
    """A worker: one thread for anything loaded later, no RDKit messages."""
    os.environ.update(ONE_THREAD)
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
