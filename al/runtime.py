"""CPU threads for a shared machine: how many, and how they wait.

PyTorch's OpenMP threads spin while they wait for each other. On cores that another process
also uses, a thread that is not scheduled keeps its peers spinning, and a fit can run
several times slower (``benchmarks/shared_cpu.py`` measures it). Two defaults help:

* threads = the cores this process may use (``os.sched_getaffinity``, which respects
  ``taskset`` and container CPU sets, unlike ``os.cpu_count``), divided among the
  processes that share them;
* ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of spinning. OpenMP reads it
  when it starts, so :func:`prepare` runs when the ``al`` package is imported, before
  PyTorch; a value the user set wins, and ``AL_THREAD_POLICY=off`` leaves OpenMP alone.
"""

from __future__ import annotations

import contextlib
import os

#: ``off`` leaves OpenMP's settings and torch's thread count as they are.
POLICY_ENV = "AL_THREAD_POLICY"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # platforms without affinity
        return max(1, os.cpu_count() or 1)


def threads_per_process(processes: int = 1) -> int:
    """An equal share of :func:`available_cores` for each of ``processes``, at least 1."""
    return max(1, available_cores() // max(1, processes))


def prepare() -> None:
    """Set OpenMP's wait policy before PyTorch loads it (no-op if the user chose one)."""
    if os.environ.get(POLICY_ENV, "").lower() != "off":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_threads(requested: int = 0, processes: int = 1) -> int:
    """Set torch's intra-op threads (``requested``, else an equal share of the cores this
    process may use) and one inter-op thread; returns the intra-op count."""
    import torch

    n = requested or threads_per_process(processes)
    if os.environ.get(POLICY_ENV, "").lower() == "off":
        return torch.get_num_threads()
    torch.set_num_threads(n)
    # already set, or parallel work has started: keep what is there
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return n
