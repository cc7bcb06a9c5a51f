"""Where a grid's campaigns run: processes on this machine, or tasks of a dask cluster.

A backend runs one function (:func:`al.entrypoints.experiment.run_cell`) on each of a list
of jobs and yields ``(job, result)`` as they end; what a campaign runs is the same on every
backend. Two are registered in :data:`BACKENDS`:

* ``local``: a thread per running campaign, each waiting on its ``al-loop`` subprocess,
  ``workers`` at a time.
* ``dask``: each campaign is a task of a ``dask.distributed`` cluster, and the task starts
  the same subprocess on its worker. Without a scheduler address a ``LocalCluster`` of
  ``workers`` processes with one thread each runs here; with one (``tcp://host:8786``) an
  existing cluster runs them: ``dask-jobqueue`` (SLURM, PBS, ...) and ``dask-kubernetes``
  start such clusters. A task runs on a worker thread: give workers one thread each, so
  that one worker runs one campaign at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Protocol, TypeVar

from al.extras import MissingExtraError, require
from al.registry import Registry, UnknownNameError
from al.runtime import threads_per_process

J = TypeVar("J")
R = TypeVar("R")

#: seconds to wait for an existing scheduler to answer
CONNECT_TIMEOUT = 30.0


class BackendError(ValueError):
    """A backend that cannot start (an unknown name, an unreachable scheduler); one line."""


class Backend(Protocol):
    """Runs ``fn`` on every job; yields ``(job, fn(job))`` in the order they end."""

    name: str

    def default_threads(self) -> int:
        """Torch threads per campaign when none were asked for; 0: each campaign takes the
        cores of the machine it runs on (decided there)."""
        ...

    def describe(self) -> str:
        """Where the campaigns run, for the user (one short phrase)."""
        ...

    def start(self) -> None:
        """Start or connect to the engine; :class:`BackendError` when it cannot."""
        ...

    def run(self, fn: Callable[[J], R], jobs: list[J]) -> Iterator[tuple[J, R]]:
        """Run ``fn`` on every job, yield each job and its result as it ends."""
        ...

    def close(self) -> None:
        """Release what :meth:`start` took (threads, a local cluster, a connection)."""
        ...


#: name -> backend class (each registers itself below); the factory reads it.
BACKENDS: Registry[type[LocalBackend] | type[DaskBackend]] = Registry("backend")


@BACKENDS.register("local")
class LocalBackend:
    """``workers`` campaigns at a time, each a subprocess of this process."""

    name = "local"

    def __init__(self, workers: int = 1, scheduler: str = "") -> None:
        if scheduler:
            raise BackendError("--scheduler needs --backend dask")
        self.workers = workers

    def default_threads(self) -> int:
        return threads_per_process(self.workers)

    def describe(self) -> str:
        return f"{self.workers} worker(s)"

    def start(self) -> None:
        """Nothing to start: the threads are made by :meth:`run`."""

    def run(self, fn: Callable[[J], R], jobs: list[J]) -> Iterator[tuple[J, R]]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = {pool.submit(fn, job): job for job in jobs}
            for future in as_completed(futures):
                yield futures[future], future.result()

    def close(self) -> None:
        """Nothing to close."""


@BACKENDS.register("dask")
class DaskBackend:
    """Each campaign a task of a ``dask.distributed`` cluster: the one at ``scheduler``,
    else a ``LocalCluster`` of ``workers`` processes with one thread each."""

    name = "dask"

    def __init__(
        self, workers: int = 1, scheduler: str = "", connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        try:  # checked at once: `--dry-run` with a backend that cannot run is refused too
            self.distributed = require("cluster", "the dask backend")
        except MissingExtraError as err:
            raise BackendError(str(err)) from None
        self.workers, self.scheduler, self.connect_timeout = workers, scheduler, connect_timeout
        self.client: Any = None
        self.cluster: Any = None

    def default_threads(self) -> int:
        # an existing cluster's machines are not this one: each campaign decides there
        return 0 if self.scheduler else threads_per_process(self.workers)

    def describe(self) -> str:
        if self.scheduler:
            return f"the dask cluster at {self.scheduler}"
        return f"a local dask cluster of {self.workers} worker(s)"

    def start(self) -> None:
        distributed = self.distributed
        if self.scheduler:
            try:
                self.client = distributed.Client(
                    self.scheduler, timeout=self.connect_timeout, set_as_default=False
                )
            except (OSError, TimeoutError, ValueError) as err:
                reason = " ".join(str(err).split()) or type(err).__name__
                raise BackendError(
                    f"cannot reach the dask scheduler at {self.scheduler!r}: {reason}"
                ) from None
            return
        # the work is in each task's subprocess: no memory limit, no dashboard port to take
        self.cluster = distributed.LocalCluster(
            n_workers=self.workers, threads_per_worker=1, processes=True, memory_limit=0,
            dashboard_address=None,
        )  # fmt: skip
        self.client = distributed.Client(self.cluster, set_as_default=False)

    def run(self, fn: Callable[[J], R], jobs: list[J]) -> Iterator[tuple[J, R]]:
        if not jobs:  # nothing to run: the cluster was not started
            return
        by_key: dict[str, J] = {}
        futures = []
        for job in jobs:
            # pure=False with a unique key: a job is never merged with an equal one
            future = self.client.submit(fn, job, pure=False, key=f"al-cell-{uuid.uuid4().hex}")
            by_key[future.key] = job
            futures.append(future)
        try:
            for future, result in self.distributed.as_completed(
                futures, loop=self.client.loop, with_results=True
            ):
                yield by_key[future.key], result
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None


def make_backend(name: str, workers: int = 1, scheduler: str = "") -> Backend:
    """The backend called ``name``; :class:`BackendError` (one line, the valid names) for
    an unknown one."""
    try:
        cls = BACKENDS.get(name)
    except UnknownNameError as err:
        raise BackendError(str(err)) from None
    if workers < 1:
        raise BackendError(f"workers must be >= 1, got {workers}")
    return cls(workers, scheduler)
