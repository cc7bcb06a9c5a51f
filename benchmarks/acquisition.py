"""Wall time of the batch acquisitions on a pool of realistic size.

Prints the seconds each acquisition takes to choose ``k`` of ``n`` candidates with ``F``
features and ``m`` labelled molecules (synthetic, anisotropic features): wall time and the
process's CPU time (close to the wall time of an idle machine with that many threads busy),
with the thread count and the load average, since on a shared machine both change the
wall figure::

    OMP_NUM_THREADS=2 python benchmarks/acquisition.py --n 70000 --f 128 --k 500 --m 5000
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from al.acquisition import ACQUISITIONS, select
from al.uncertainty import Prediction


def pool(n: int, m: int, f: int, seed: int) -> tuple[Prediction, torch.Tensor]:
    """A prediction with ``[n, f]`` float32 embeddings and ``[m, f]`` labelled ones."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(f, f, generator=g) * torch.logspace(0, -2, f)
    x = torch.randn(n + m, f, generator=g) @ mix + 0.5
    std = torch.rand(n, generator=g, dtype=torch.float64)
    return Prediction(mean=torch.zeros(n, dtype=torch.float64), std=std, embedding=x[:n]), x[n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=70000)
    parser.add_argument("--f", type=int, default=128)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--m", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--names", nargs="*", default=["lcmd", "bait"])
    args = parser.parse_args()
    pred, labelled = pool(args.n, args.m, args.f, seed=0)
    print(
        f"n={args.n} F={args.f} k={args.k} m={args.m} threads={torch.get_num_threads()} "
        f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    for name in args.names:
        if name not in ACQUISITIONS:
            raise SystemExit(f"unknown acquisition {name!r}")
        times, cpu = [], []
        for r in range(args.repeat):
            gen = torch.Generator().manual_seed(r)
            t0, c0 = time.perf_counter(), time.process_time()
            sel = select(name, pred, args.k, generator=gen, labelled_embedding=labelled)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            assert len(sel.index.unique()) == args.k
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(
            f"{name:8s} wall {min(times):7.2f} s  cpu {min(cpu):7.2f} s "
            f"(best of {args.repeat})  load average after: {load}"
        )


if __name__ == "__main__":
    main()
