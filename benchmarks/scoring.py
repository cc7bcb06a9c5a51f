"""Scoring speed: molecules in random order against batches of similar size.

The models pad every molecule of a batch to the largest one (dense per-molecule blocks),
so the order molecules are batched in decides how much of the pair computation is padding.
``al.training.fit.predict`` batches in order of size; this prints molecules/s of a shallow
ensemble (width 128, K heads) scoring random pool molecules both ways, for each batch size.

    python benchmarks/scoring.py [--n 8192] [--threads 1] [--batch-sizes 128 512 1024]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from al.data.load import load_qm9
from al.data.molecules import MolecularData
from al.models import build_model
from al.models.shallow import ShallowEnsembleModel


def _rate(model: torch.nn.Module, data: MolecularData, rows: torch.Tensor, bs: int) -> float:
    """Molecules per second of scoring ``rows`` (``[n]``) in that order, ``bs`` at a time."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx in rows.split(bs):
            z, pos, batch, _ = data.batch(idx)
            model.energy_and_embedding(z, pos, batch, idx.numel())
    return rows.numel() / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="pool molecules scored")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 1024])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    data = load_qm9()
    gen = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(data.ptr) - 1, generator=gen)[: args.n]
    by_size = rows[torch.argsort(data.ptr[rows + 1] - data.ptr[rows], stable=True)]
    torch.manual_seed(0)
    trunk = build_model("schnet", hidden=128, n_outputs=args.heads)
    model = ShallowEnsembleModel(trunk, heads=args.heads).eval()
    _rate(model, data, rows[:256], 128)  # warm-up
    print(f"# {args.n} molecules, {args.threads} thread(s), load average {os.getloadavg()}")
    print("batch  random order mol/s  by size mol/s  speed-up")
    for bs in args.batch_sizes:
        a, b = _rate(model, data, rows, bs), _rate(model, data, by_size, bs)
        print(f"{bs:5d}  {a:18.0f}  {b:13.0f}  {b / a:7.2f}x")
    print(f"# load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
