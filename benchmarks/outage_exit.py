"""How long a campaign takes to stop after its tracking server goes away.

Starts a real ``mlflow server`` (the tests' own), runs a tiny campaign against it with the
campaign's own HTTP bounds (``al.tracking.runs.HTTP_BOUNDS``), and once round 0's fit has
begun takes the server away in one of two ways:

- ``refused``: the server is killed, so every connection is refused;
- ``hung``: the server is stopped (SIGSTOP), so connections are accepted and never answered.

It prints, per mode, the seconds from the outage to the campaign's exit, its exit code and
its last line (the one-line error naming the label journal), with the load average::

    python benchmarks/outage_exit.py --mode refused --mode hung
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

# the tests' server: SQLite backend, served artifacts, MLflow's job runner off
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import start_mlflow_server, stop_mlflow_server

TINY = [
    "--initial-size", "20", "--batch-size", "8", "--rounds", "3", "--hidden", "16",
    "--n-interactions", "1", "--epochs", "400", "--val-size", "10", "--n-test", "50",
    "--pool-subsample", "100", "--threads", "1", "--progress", "false",
]  # fmt: skip


def fit_started(client: MlflowClient, experiment: str) -> bool:
    """Whether the campaign of ``experiment`` has a round run (its first fit began)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    return bool(client.search_runs([exp.experiment_id], "tags.`al.kind` = 'round'"))


def measure(mode: str, root: Path) -> tuple[float, int, str]:
    """(seconds from the outage to the exit, exit code, last line) for one ``mode``."""
    server, uri = start_mlflow_server(root)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "AL_JOURNAL_DIR": str(root / "journal")}
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(key, None)  # the campaign's own bounds
    experiment = f"outage-{mode}"
    cmd = [sys.executable, "-m", "al.cli", "al-loop", *TINY, "--experiment-name", experiment]
    proc = subprocess.Popen(
        cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )  # the code on PYTHONPATH (or installed), not the current folder's
    client = MlflowClient(uri)
    try:
        deadline = time.time() + 300
        while not fit_started(client, experiment):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                tail = proc.communicate()[0].decode(errors="replace")[-1500:]
                raise RuntimeError(f"no fit began ({mode}); the campaign said:\n{tail}")
            time.sleep(0.5)
        t0 = time.perf_counter()
        if mode == "refused":
            stop_mlflow_server(server, signal.SIGKILL)
        else:
            os.killpg(server.pid, signal.SIGSTOP)
        out, _ = proc.communicate(timeout=1800)
        seconds = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        if mode == "hung":
            os.killpg(server.pid, signal.SIGCONT)
        stop_mlflow_server(server, signal.SIGKILL)
    lines = [x for x in out.decode(errors="replace").splitlines() if x.strip()]
    return seconds, proc.returncode, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", action="append", choices=("refused", "hung"))
    args = parser.parse_args()
    for mode in args.mode or ["refused", "hung"]:
        with tempfile.TemporaryDirectory(prefix="al-outage-") as tmp:
            seconds, code, last = measure(mode, Path(tmp))
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{mode}: exit {code} after {seconds:.1f} s (load average {load})")
        print(f"  last line: {last[:300]}")


if __name__ == "__main__":
    main()
