"""What recording one round costs: the figures and the pyfunc model a round's child run gets.

Starts a real ``mlflow server`` (the tests' own: SQLite backend, served artifacts, as a
team would run it) unless ``MLFLOW_TRACKING_URI`` names one, then times, per round,
building the figures, logging them, and logging the checkpoint and the pyfunc model (the
shipped pretrained model, ``--n-test`` test molecules in the plots). Prints the median of
``--repeat`` rounds with the load average::

    python benchmarks/round_logging.py --repeat 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import mlflow
import numpy as np
import torch

# the tests' server: SQLite backend, served artifacts, MLflow's job runner off
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import start_mlflow_server, stop_mlflow_server


def server_cpu(server: subprocess.Popen | None) -> float:
    """CPU seconds used so far by the server and its worker processes (nan without one)."""
    if server is None:
        return float("nan")
    import psutil

    procs = [psutil.Process(server.pid)]
    procs += procs[0].children(recursive=True)
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--n-test", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from al.loop.tracker import ModelArtifacts
    from al.models.checkpoint import load_checkpoint
    from al.oracles.pretrained import packaged_checkpoint
    from al.tracking.pyfunc import log_pyfunc_model
    from al.training.fit import EpochStats

    ckpt = packaged_checkpoint()
    members, meta = load_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    target = rng.normal(-70.0, 10.0, args.n_test)
    history = [EpochStats(e, 1 / (e + 1), 0.5 / (e + 1), 1e-3, 500.0, 0.1, 1.0) for e in range(30)]
    art = ModelArtifacts(
        members=members, meta=meta, round=1, curve=[(200, 0.5), (250, 0.4)],
        test_mean=target + rng.normal(0, 0.3, args.n_test),
        test_std=np.abs(rng.normal(0.3, 0.1, args.n_test)), test_target=target, history=history,
    )  # fmt: skip

    server = None
    tmp = tempfile.TemporaryDirectory(prefix="al-bench-")
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
        server, uri = start_mlflow_server(Path(tmp.name))
        mlflow.set_tracking_uri(uri)
    from al.tracking.log import log_figure

    def clock() -> tuple[float, float, float]:
        """(wall, this process's CPU, the server's CPU) in seconds."""
        return time.perf_counter(), time.process_time(), server_cpu(server)

    phases = ("figures built", "figures logged", "model logged")
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in phases}
    try:
        mlflow.set_experiment("round-logging-benchmark")
        for _ in range(args.repeat):
            with mlflow.start_run():
                c0 = clock()
                figs = art.figures()
                c1 = clock()
                for path, fig in figs:
                    log_figure(fig, path)
                c2 = clock()
                log_pyfunc_model(ckpt, "model")
                c3 = clock()
            for k, (a, b) in zip(phases, ((c0, c1), (c1, c2), (c2, c3)), strict=True):
                times[k].append(tuple(y - x for x, y in zip(a, b, strict=True)))
    finally:
        if server is not None:
            stop_mlflow_server(server)
        tmp.cleanup()
    print(
        f"per round, median of {args.repeat} rounds, {len(figs)} figures "
        f"(load average {os.getloadavg()[0]:.2f}); seconds of wall, client CPU, server CPU:"
    )
    total = [0.0, 0.0, 0.0]
    for k, v in times.items():
        med = [median(x[i] for x in v) for i in range(3)]
        total = [t + m for t, m in zip(total, med, strict=True)]
        print(f"  {k:16s} " + "  ".join(f"{m:6.2f}" for m in med))
    print(f"  {'total':16s} " + "  ".join(f"{m:6.2f}" for m in total))


if __name__ == "__main__":
    main()
