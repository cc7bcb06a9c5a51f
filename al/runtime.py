"""CPU threads for a shared machine: how many, and how they wait.

PyTorch's OpenMP threads spin while they wait for each other. On cores that another process
also uses, a thread that is not scheduled keeps its peers spinning, and a fit can run
several times slower (``benchmarks/shared_cpu.py`` measures it). Two defaults help:

* threads = the cores this process may use (``os.sched_getaffinity``, which respects
  ``taskset`` and container CPU sets, unlike ``os.cpu_count``, capped by a cgroup CPU
  quota: a container or pod limited to 2 CPUs on a 64-core node gets 2, not 64, and by
  ``AL_CPUS`` where it is set: a Kubernetes pod sets it from its CPU limit), divided among
  the processes that share them;
* ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of spinning. OpenMP reads it
  when it starts, so :func:`prepare` runs when the ``al`` package is imported, before
  PyTorch; a value the user set wins, and ``AL_THREAD_POLICY=off`` leaves OpenMP alone.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

#: ``off`` leaves OpenMP's settings and torch's thread count as they are.
POLICY_ENV = "AL_THREAD_POLICY"
#: An explicit number of cores for this process (a pod's CPU limit, by the Downward API).
CPUS_ENV = "AL_CPUS"
#: Where a container sees its own cgroup (cgroup namespaces make it the root).
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def cgroup_cpu_limit(root: Path | str = CGROUP_ROOT) -> float | None:
    """The CPUs a cgroup quota allows this process (quota / period), or None without one.

    cgroup v2: ``root/cpu.max`` (``"200000 100000"``: 2 CPUs; ``"max 100000"``: none).
    cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in ``root/cpu`` (or
    ``root/cpu,cpuacct``, or ``root`` itself); a quota of -1 means none.
    """
    root = Path(root)
    quota, period = "", ""
    v2 = _read(root / "cpu.max").split()
    if len(v2) == 2:
        quota, period = v2
    else:
        for folder in (root / "cpu", root / "cpu,cpuacct", root):
            quota = _read(folder / "cpu.cfs_quota_us")
            if quota:
                period = _read(folder / "cpu.cfs_period_us")
                break
    try:
        q, p = float(quota), float(period)
    except ValueError:  # "max", a missing file: no quota
        return None
    return q / p if q > 0 and p > 0 else None


def available_cores(cgroup_root: Path | str = CGROUP_ROOT) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota
    (rounded up: 1.5 CPUs give 2 threads) and by ``$AL_CPUS`` (a count; ignored unless a
    positive number), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # platforms without affinity
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    try:
        explicit = math.ceil(float(os.environ.get(CPUS_ENV, "")))
    except ValueError:  # unset or not a number
        explicit = 0
    if explicit > 0:
        cores = min(cores, explicit)
    return max(1, cores)


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


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set to ``values`` inside the block (processes started there
    inherit them; MLflow reads its HTTP settings at every request), as they were after it."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
