"""Threads on a shared CPU and progress bars: the runtime helpers."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from al import progress, runtime


def test_cores_come_from_the_affinity(tmp_path) -> None:
    assert runtime.available_cores(tmp_path) == len(os.sched_getaffinity(0))  # no quota
    assert runtime.available_cores() <= len(os.sched_getaffinity(0))
    cores = runtime.available_cores()
    assert runtime.threads_per_process(1) == cores
    assert runtime.threads_per_process(cores * 4) == 1


@pytest.mark.parametrize(
    "files, limit",
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2: 2 CPUs
        ({"cpu.max": "max 100000\n"}, None),  # v2 without a quota
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3.0),  # v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "5e4", "cpu,cpuacct/cpu.cfs_period_us": "1e5"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_a_cgroup_quota_caps_the_cores(tmp_path, files: dict[str, str], limit) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert runtime.cgroup_cpu_limit(tmp_path) == limit
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if limit is None else max(1, min(affinity, -(-limit // 1)))
    assert runtime.available_cores(tmp_path) == expected


def test_an_explicit_cpu_count_caps_the_cores(tmp_path, monkeypatch) -> None:
    """AL_CPUS (a pod's CPU limit, from the Downward API) caps the count; nonsense is
    ignored."""
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setenv(runtime.CPUS_ENV, "1")
    assert runtime.available_cores(tmp_path) == 1
    monkeypatch.setenv(runtime.CPUS_ENV, str(affinity + 8))
    assert runtime.available_cores(tmp_path) == affinity  # never above the affinity
    for junk in ("", "0", "-2", "two"):
        monkeypatch.setenv(runtime.CPUS_ENV, junk)
        assert runtime.available_cores(tmp_path) == affinity


def _child(code: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "AL_THREAD_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**full, **env}, capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.mark.slow
def test_importing_al_sets_a_passive_wait_policy_before_torch() -> None:
    code = "import os, al, torch; print(os.environ.get('OMP_WAIT_POLICY', '-'))"
    assert _child(code) == "PASSIVE"
    assert _child(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # the user's choice wins
    assert _child(code, AL_THREAD_POLICY="off") == "-"


@pytest.mark.slow
def test_configure_threads_sets_torch() -> None:
    code = (
        "from al import runtime; import torch; n = runtime.configure_threads(1); "
        "print(n, torch.get_num_threads(), torch.get_num_interop_threads())"
    )
    assert _child(code) == "1 1 1"
    code = "from al import runtime; print(runtime.configure_threads())"
    assert int(_child(code)) == runtime.available_cores()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal_and_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.shown()
    lines: list[str] = []
    with progress.bar(total=2, desc="cells") as b:
        b.update(1)
        progress.note(b, "[1/2] done", lines.append)
    assert lines == ["[1/2] done"] and sys.stderr.getvalue() == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress.shown() and not progress.shown(False)
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.shown()
    monkeypatch.delenv(progress.ENV)
    with progress.bar(total=2, desc="cells", unit="campaign") as b:
        b.update(1)
        progress.note(b, "[1/2] done", lines.append)
    drawn = terminal.getvalue()
    assert "cells" in drawn and "1/2" in drawn and "<" in drawn  # elapsed<remaining: an ETA
    assert "[1/2] done" in drawn and lines == ["[1/2] done"]
