"""CPU seconds of a training step, eager or under ``torch.compile``, on the same batches.

The mission's model (``schnet``, width 128, 3 interactions) trains on batches of QM9 as a fit
forms them; the first ``--warmup`` steps (compilation included) are timed apart from the
next ``--steps``. CPU time of this process, not wall time, so that a shared machine's load
moves the figure less (say the load average with it). Run each mode in its own process::

    python benchmarks/compile_cpu.py --mode eager
    python benchmarks/compile_cpu.py --mode default      # torch.compile(dynamic=True)
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from profile_step import train_step_of  # the benchmarks beside this one
from throughput import batch_rows

from al.data.load import load_qm9
from al.models import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["eager", "default", "reduce-overhead", "max-autotune"],
                   default="eager", help="eager, or a torch.compile mode")  # fmt: skip
    p.add_argument("--steps", type=int, default=60, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_qm9()
    rows, _ = batch_rows(args.warmup + args.steps, args.batch_size, args.seed, data.n_atoms, "fit")
    batches = [data.batch(r) for r in rows]
    torch.manual_seed(args.seed)
    model = build_model("schnet", hidden=128, n_interactions=3)
    forward = model if args.mode == "eager" else torch.compile(model, dynamic=True, mode=args.mode)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    B = args.batch_size
    step = train_step_of(model, opt, B, forward)

    t0 = time.process_time()
    for b in batches[: args.warmup]:
        step(b)
    warm = time.process_time() - t0
    t0 = time.process_time()
    for b in batches[args.warmup :]:
        step(b)
    per_step = (time.process_time() - t0) / args.steps
    print(f"{args.mode}: {1000 * per_step:.1f} CPU-ms a step ({args.steps} steps, batch {B}, "
          f"{args.threads} thread(s)); warm-up {warm:.1f} CPU-s; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
