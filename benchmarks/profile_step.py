"""Where the time of a training step and of an inference pass goes, by operation.

Runs the torch profiler over training steps (forward, MSE loss, backward, AdamW step) and
inference passes of one model on QM9 batches formed as the product forms them (training:
random batches put in order of size, as ``fit`` hands them to the model; inference:
molecules in order of size, as ``predict`` scores a pool), and prints the operations by
self CPU time, then the same time in groups: matrix products, element-wise, copies and
indexing, the optimizer, the rest.

Example::

    python benchmarks/profile_step.py --threads 1 --batch-size 64
    python benchmarks/profile_step.py --model painn --batching random
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from throughput import batch_rows  # the benchmark beside this one

from al.data.load import load_qm9
from al.models import MODELS, build_model

GROUPS = {
    "matrix products": ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::linear"),
    "copies and indexing": (
        "aten::copy_",
        "aten::cat",
        "aten::index",
        "aten::index_copy",
        "aten::index_select",
        "aten::_index_put_impl_",
        "aten::index_add_",
        "aten::scatter_add_",
        "aten::gather",
        "aten::fill_",
        "aten::zero_",
        "aten::_to_copy",
        "aten::clone",
        "aten::empty",
    ),
    "optimizer": (
        "Optimizer.step",
        "Optimizer.zero_grad",
        "aten::_foreach",
        "aten::addcdiv_",
        "aten::lerp_",
        "aten::addcmul_",
    ),
    "element-wise": (
        "aten::mul",
        "aten::add",
        "aten::sub",
        "aten::div",
        "aten::exp",
        "aten::pow",
        "aten::sqrt",
        "aten::softplus",
        "aten::cos",
        "aten::clamp",
        "aten::square",
        "aten::sum",
        "aten::where",
        "aten::bitwise",
        "aten::silu",
        "aten::threshold",
        "aten::mse_loss",
        "aten::neg",
        "aten::lt",
        "aten::eq",
    ),
}


def train_step_of(
    model: torch.nn.Module, opt: torch.optim.Optimizer, batch_size: int,
    forward: Callable[..., torch.Tensor] | None = None,
) -> Callable[[tuple], None]:  # fmt: skip
    """One optimizer step on a batch ``(z, pos, batch, y)`` as ``data.batch`` gives it: the
    MSE of the energies (``[batch_size]``) that ``forward`` (default ``model``) predicts."""
    forward = forward or model

    def step(b: tuple) -> None:
        z, pos, batch, y = b
        opt.zero_grad(set_to_none=True)
        F.mse_loss(forward(z, pos, batch, batch_size), y.float()).backward()
        opt.step()

    return step


def group_of(name: str) -> str:
    for group, prefixes in GROUPS.items():
        if any(name.startswith(p) for p in prefixes):
            return group
    return "other"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="schnet")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--interactions", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=20, help="profiled batches of each kind")
    p.add_argument("--batching", choices=["fit", "random"], default="fit")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=int, default=25, help="operations listed")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_qm9()
    train_rows, infer_rows = batch_rows(
        args.batches + 3, args.batch_size, args.seed, data.n_atoms, args.batching
    )
    train = [data.batch(rows) for rows in train_rows]
    infer = [data.batch(rows) for rows in infer_rows]
    torch.manual_seed(args.seed)
    model = build_model(args.model, hidden=args.hidden, n_interactions=args.interactions)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B = args.batch_size
    train_step = train_step_of(model, opt, B)

    def infer_step(b: tuple) -> None:
        z, pos, batch, _ = b
        with torch.inference_mode():
            model(z, pos, batch, int(batch[-1]) + 1)

    print(
        f"{args.model} width {args.hidden}, {args.interactions} interactions, batch {B}, "
        f"batching {args.batching}, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    kinds = (("training step", train_step, train), ("inference", infer_step, infer))
    for label, step, batches in kinds:
        model.train(label == "training step")
        for b in batches[:3]:
            step(b)
        timed = batches[3 : 3 + args.batches]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for b in timed:
                step(b)
        events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
        total = sum(e.self_cpu_time_total for e in events)
        mols = sum(int(b[2][-1]) + 1 for b in timed)
        print(f"\n{label}: {total / 1e3:.0f} ms self CPU for {mols} molecules "
              f"({mols / (total / 1e6):.0f} molecules per CPU-second)")  # fmt: skip
        print(f"{'operation':<40} {'share':>7} {'ms':>8} {'calls':>7}")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
            print(f"{e.key[:40]:<40} {e.self_cpu_time_total / total:>7.1%} "
                  f"{e.self_cpu_time_total / 1e3:>8.1f} {e.count:>7}")  # fmt: skip
        shares: dict[str, float] = {}
        for e in events:
            shares[group_of(e.key)] = shares.get(group_of(e.key), 0.0) + e.self_cpu_time_total
        print("by group: " + ", ".join(
            f"{g} {v / total:.0%}" for g, v in sorted(shares.items(), key=lambda kv: -kv[1])
        ))  # fmt: skip


if __name__ == "__main__":
    main()
