"""Training speed on a shared CPU: idle cores against one competing busy process.

PyTorch's OpenMP threads spin while they wait for each other; when another process holds
one of the cores, a thread that is not scheduled keeps the others spinning and a fit can
slow down several times. This measures training molecules per second of the default
surrogate (SchNet, width 128, 3 interactions, batch 64) in a fresh process per setting:

* ``before``: what the package did without a thread policy (torch's default threads,
  OpenMP's default wait policy);
* ``after``: :func:`al.runtime.configure_threads` (threads from the cores this process may
  use, ``OMP_WAIT_POLICY=PASSIVE``, one inter-op thread), as every entry point now does;
* ``1 thread``: for reference.

each on idle cores and next to one busy process (a Python loop pinned to nothing), and
prints the slowdown. The figures depend on the machine and on what else runs: say the load
average with them.

Usage::

    python benchmarks/shared_cpu.py                 # ~2 minutes on two cores
    python benchmarks/shared_cpu.py --steps 60 --json shared_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS: dict[str, dict[str, str]] = {
    "before": {"AL_THREAD_POLICY": "off"},
    "after, spinning": {"OMP_WAIT_POLICY": "ACTIVE"},
    "after": {},
    "1 thread": {"AL_THREADS": "1"},
}


def child(steps: int, batch: int) -> None:
    """One measurement in this process: training molecules per second after a warm-up."""
    from al import runtime

    if os.environ.get("AL_THREAD_POLICY") != "off":
        runtime.configure_threads(int(os.environ.get("AL_THREADS", "0")))
    import torch

    from al.data.load import load_qm9
    from al.models import build_model

    data = load_qm9()
    torch.manual_seed(0)
    model = build_model("schnet", hidden=128, n_interactions=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = torch.randperm(len(data))[: steps * batch + 10 * batch].view(-1, batch)
    y_scale = float(data.y.std())

    def step(r: torch.Tensor) -> None:
        z, pos, b, _ = data.batch(r)
        loss = ((model(z, pos, b, r.numel()) - data.y[r].float()) / y_scale).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for r in rows[:10]:  # warm-up
        step(r)
    t0 = time.perf_counter()
    for r in rows[10:]:
        step(r)
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {"mol_per_s": steps * batch / seconds, "threads": torch.get_num_threads(),
             "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
        )
    )  # fmt: skip


def measure(name: str, busy: bool, steps: int, batch: int) -> dict:
    env = {**os.environ, **SETTINGS[name]}
    hog = None
    if busy:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--steps", str(steps), "--batch", str(batch)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.batch)
        return
    load = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    print(f"cores this process may use: {cores}; load average before: {load[0]:.2f}")
    rows = []
    for name in SETTINGS:
        idle = measure(name, False, args.steps, args.batch)
        shared = measure(name, True, args.steps, args.batch)
        slowdown = idle["mol_per_s"] / shared["mol_per_s"]
        rows.append({"setting": name, "idle": idle, "busy": shared, "slowdown": slowdown})
        print(
            f"{name:>15}: {idle['threads']} thread(s) {idle['mol_per_s']:7.1f} mol/s idle, "
            f"{shared['threads']} thread(s) {shared['mol_per_s']:7.1f} mol/s next to a busy "
            f"process: slowdown x{slowdown:.2f}",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"cores": cores, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
