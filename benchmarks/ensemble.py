"""Cost of a K-member ensemble against K separate models (training and inference).

Prints molecules/s of one model, of K separate models run one after the other, and of
``EnsembleModel`` with a member loop and with ``torch.func.vmap``; the ratio is the
ensemble's time over K separate models' time (target: <= 0.5).

    python benchmarks/ensemble.py --k 5 [--device cuda] [--data qm9.pt]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable

import torch

from al.data.load import load_qm9
from al.data.molecules import MolecularData
from al.models import build_model
from al.models.ensemble import EnsembleModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(step: Callable[[tuple], None], batches: list[tuple], warmup: int, device) -> float:
    """Molecules per second of ``step`` over ``batches`` (after ``warmup`` batches)."""
    for b in batches[:warmup]:
        step(b)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for b in batches[warmup:]:
        step(b)
        n += b[4]
    _sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--model", default="schnet")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=None, help="MolecularData .pt file (default: load_qm9)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = (MolecularData.load(args.data) if args.data else load_qm9()).to(device)
    rows = torch.randperm(len(data))[: args.batch_size * args.batches].to(device)
    batches = []
    for r in rows.view(args.batches, args.batch_size):
        z, pos, batch, y = data.batch(r)
        batches.append((z, pos, batch, y.float(), args.batch_size))

    members = [build_model(args.model).to(device) for _ in range(args.k)]

    def train_step(models: list, opts: list) -> Callable[[tuple], None]:
        def step(b: tuple) -> None:
            z, pos, batch, y, n = b
            for m, opt in zip(models, opts, strict=True):
                loss = (m(z, pos, batch, n) - y).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

        return step

    def infer_step(models: list) -> Callable[[tuple], None]:
        def step(b: tuple) -> None:
            with torch.inference_mode():
                for m in models:
                    m(b[0], b[1], b[2], b[4])

        return step

    single = [copy.deepcopy(members[0])]
    separate = [copy.deepcopy(m) for m in members]
    results = {}
    for name, models in (("1 model", single), (f"{args.k} separate models", separate)):
        opts = [torch.optim.AdamW(m.parameters(), 1e-4) for m in models]
        results[name] = (
            rate(train_step(models, opts), batches, args.warmup, device),
            rate(infer_step(models), batches, args.warmup, device),
        )
    for vectorize in (False, True):
        ens = EnsembleModel(copy.deepcopy(members)).to(device)
        ens.vectorize = vectorize
        opt = torch.optim.AdamW(ens.parameters(), 1e-4)
        name = f"EnsembleModel K={args.k} ({'vmap' if vectorize else 'member loop'})"
        results[name] = (
            rate(train_step([ens], [opt]), batches, args.warmup, device),
            rate(infer_step([ens]), batches, args.warmup, device),
        )
    dev = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.2f}, model {args.model}, batch {args.batch_size}"
    )
    sep_train, sep_infer = results[f"{args.k} separate models"]
    print(f"{'':44s} {'train mol/s':>12s} {'infer mol/s':>12s} {'cost/K sep.':>12s}")
    for name, (tr, inf) in results.items():
        ratio = f"{sep_train / tr:.2f} / {sep_infer / inf:.2f}" if "Ensemble" in name else ""
        print(f"{name:44s} {tr:12.0f} {inf:12.0f} {ratio:>12s}")
    print("cost/K sep. = ensemble time / time of K separate models (train / inference)")


if __name__ == "__main__":
    main()
