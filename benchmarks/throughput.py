"""Training and inference throughput (molecules/s) of our models against PyG's SchNet.

Every model sees the same QM9 molecules in the same batches, in the same process, at the
same width and depth. PyG's SchNet gets its radius graph precomputed outside the timed
region (with :func:`al.data.radius_graph`, cutoff 5 Angstrom), whereas our models build
their own pair geometry inside it: that is part of their cost. A training step is forward,
MSE loss against the target, backward and an AdamW step; inference runs under
``torch.inference_mode()``.

Batches are formed as the product forms them (``--batching fit``, the default): training
batches of random molecules put in order of size, as :func:`al.training.fit.fit` hands
them to the model (which then cuts them into dense blocks of similar size), inference
batches of molecules in order of size, as :func:`al.training.fit.predict` scores a pool.
``--batching random`` leaves both in random order, as before (one dense block each). PyG's
SchNet works on edge lists and pays no padding, so the order does not change its cost.

Beside molecules/s, the table gives the floating-point operations of a molecule
(``torch.utils.flop_counter``: matrix products and convolutions, counted on the timed
batches) and the rate they were done at (GFLOP/s), so that a change can be read as fewer
operations or faster ones.

Usage::

    python benchmarks/throughput.py                     # CPU or CUDA, whichever is there
    python benchmarks/throughput.py --device cpu --threads 2 --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from al.data.graph import radius_graph
from al.data.load import load_qm9
from al.data.molecules import MolecularData
from al.extras import MissingExtraError, require
from al.models import MODELS, build_model, count_parameters

CUTOFF = 5.0
PYG_NAME = "pyg-schnet"


@dataclass
class Batch:
    """One fixed batch: model inputs, target and PyG's precomputed graph."""

    z: Tensor
    pos: Tensor
    batch: Tensor
    y: Tensor
    num_graphs: int
    edge_index: Tensor
    edge_weight: Tensor


@dataclass
class Row:
    model: str
    device: str
    precision: str
    params: int
    train_mol_s: float | None
    infer_mol_s: float | None
    train_vs_pyg: float | None = None
    infer_vs_pyg: float | None = None
    train_mflop_mol: float | None = None
    infer_mflop_mol: float | None = None
    train_gflop_s: float | None = None
    infer_gflop_s: float | None = None
    error: str | None = None


class PrecomputedGraph(nn.Module):
    """PyG's ``interaction_graph`` hook: hands back the edges of the current batch."""

    def __init__(self) -> None:
        super().__init__()
        self.edges: tuple[Tensor, Tensor] | None = None

    def forward(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        assert self.edges is not None, "set .edges before calling the model"
        return self.edges


class PyGAdapter(nn.Module):
    """PyG's SchNet behind our call signature ``(z, pos, batch, num_graphs) -> [B]``."""

    def __init__(self, hidden: int, interactions: int) -> None:
        super().__init__()
        from torch_geometric.nn.models import SchNet as PyGSchNet

        self.graph = PrecomputedGraph()
        self.net = PyGSchNet(
            hidden_channels=hidden,
            num_filters=hidden,
            num_interactions=interactions,
            num_gaussians=50,
            cutoff=CUTOFF,
            interaction_graph=self.graph,
        )

    def forward(self, b: Batch) -> Tensor:
        self.graph.edges = (b.edge_index, b.edge_weight)
        return self.net(b.z, b.pos, b.batch).view(-1)


def batch_rows(
    n: int, batch_size: int, seed: int, sizes: Tensor, batching: str
) -> tuple[list[Tensor], list[Tensor]]:
    """Rows of ``n`` training and ``n`` inference batches of ``batch_size`` molecules.

    ``batching='fit'``: training batches of random rows, each in order of size (as ``fit``
    gives them), inference batches of the same rows in order of size (as ``predict`` scores
    them), their order shuffled so that warm-up and timed batches span all sizes.
    ``'random'``: the same random batches for both.
    """
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(sizes.numel(), generator=gen)[: n * batch_size]
    batches = list(perm.view(n, batch_size))
    if batching == "random":
        return batches, batches
    train = [rows[torch.argsort(sizes[rows], stable=True)] for rows in batches]
    ordered = list(perm[torch.argsort(sizes[perm], stable=True)].view(n, batch_size))
    infer = [ordered[k] for k in torch.randperm(n, generator=gen).tolist()]
    return train, infer


def make_batches(
    n: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    data_file: Path | None = None,
    batching: str = "fit",
) -> tuple[list[Batch], list[Batch]]:
    """``n`` fixed training and ``n`` inference batches of QM9 molecules, on ``device``."""
    data = MolecularData.load(data_file) if data_file else load_qm9()
    train_rows, infer_rows = batch_rows(n, batch_size, seed, data.n_atoms, batching)
    data = data.to(device)

    def one(rows: Tensor) -> Batch:
        z, pos, batch, y = data.batch(rows.to(device))
        edge_index = radius_graph(pos, batch, CUTOFF, batch_size)
        edge_weight = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
        return Batch(z, pos, batch, y.float(), batch_size, edge_index, edge_weight)

    return [one(r) for r in train_rows], [one(r) for r in infer_rows]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def throughput(
    step: Callable[[Batch], None], warmup: list[Batch], timed: list[Batch], device
) -> float:
    """Molecules per second of ``step`` over ``timed``, after running it on ``warmup``."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for b in warmup:
        step(b)
    sync()
    t0 = time.perf_counter()
    for b in timed:
        step(b)
    sync()
    return sum(b.num_graphs for b in timed) / (time.perf_counter() - t0)


def measure(
    model: nn.Module,
    call: Callable[[nn.Module, Batch], Tensor],
    train_batches: tuple[list[Batch], list[Batch]],
    infer_batches: tuple[list[Batch], list[Batch]],
    device: torch.device,
    autocast: bool,
) -> tuple[float, float, float, float]:
    """``(train mol/s, inference mol/s, train FLOP/mol, inference FLOP/mol)`` of one model
    at one precision; each pair is ``(warm-up batches, timed batches)``."""
    amp = (
        (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        if autocast
        else nullcontext
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(b: Batch) -> None:
        opt.zero_grad(set_to_none=True)
        with amp():
            pred = call(model, b)
        loss = F.mse_loss(pred.float(), b.y)
        loss.backward()
        opt.step()

    def infer_step(b: Batch) -> None:
        with torch.inference_mode(), amp():
            call(model, b)

    model.train()
    train = throughput(train_step, *train_batches, device)
    train_flop = flops_per_molecule(train_step, train_batches[1])
    model.eval()
    infer = throughput(infer_step, *infer_batches, device)
    infer_flop = flops_per_molecule(infer_step, infer_batches[1])
    return train, infer, train_flop, infer_flop


def flops_per_molecule(step: Callable[[Batch], None], batches: list[Batch]) -> float:
    """Floating-point operations of ``step`` per molecule over ``batches`` (matrix products
    and convolutions, as ``torch.utils.flop_counter`` counts them; element-wise work and
    gathers are not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        for b in batches:
            step(b)
    return counter.get_total_flops() / sum(b.num_graphs for b in batches)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--interactions", type=int, default=3)
    p.add_argument("--batches", type=int, default=None, help="timed batches (CPU 20, CUDA 50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches (CPU 3, CUDA 10)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["schnet", "painn"])
    p.add_argument(
        "--batching", choices=["fit", "random"], default="fit",
        help="fit: batches as training and scoring form them (default); random: random batches",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=None, help="MolecularData .pt file to use")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def fmt(x: float | None, spec: str) -> str:
    width = int(re.match(r"\d*", spec).group() or 0)
    return f"{'-':>{width}}" if x is None else format(x, spec)


def print_table(rows: list[Row]) -> None:
    head = (
        f"{'model':<12} {'device':<6} {'precision':<10} {'params':>9} "
        f"{'train mol/s':>12} {'infer mol/s':>12} {'train/PyG':>10} {'infer/PyG':>10} "
        f"{'MFLOP/mol':>17} {'GFLOP/s':>13}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.error:
            print(
                f"{r.model:<12} {r.device:<6} {r.precision:<10} {r.params:>9,}  failed: {r.error}"
            )
            continue
        print(
            f"{r.model:<12} {r.device:<6} {r.precision:<10} {r.params:>9,} "
            f"{fmt(r.train_mol_s, '12.0f')} {fmt(r.infer_mol_s, '12.0f')} "
            f"{fmt(r.train_vs_pyg, '10.2f')} {fmt(r.infer_vs_pyg, '10.2f')} "
            f"{fmt(r.train_mflop_mol, '8.1f')} {fmt(r.infer_mflop_mol, '8.1f')} "
            f"{fmt(r.train_gflop_s, '6.1f')} {fmt(r.infer_gflop_s, '6.1f')}"
        )
    print("(MFLOP/mol and GFLOP/s: training, then inference)")


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    try:  # the baseline is PyG's SchNet
        require("pyg", "benchmarks/throughput.py")
    except MissingExtraError as err:
        raise SystemExit(str(err)) from None
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.batches is not None and args.batches < 1) or (args.warmup or 0) < 0:
        raise SystemExit("--batches must be at least 1 and --warmup at least 0")
    n_timed = args.batches if args.batches is not None else (50 if device.type == "cuda" else 20)
    n_warm = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 3)

    # PyG's Gaussian smearing of distances underflows to subnormal floats, which are several
    # times slower on CPU; our radial basis clamps its exponent and never makes them. Flushing
    # subnormals to zero for the whole run removes that handicap from the baseline.
    flush = torch.set_flush_denormal(True)

    print(f"torch {torch.__version__}, device {device.type}: {device_name(device)}")
    print(f"threads {torch.get_num_threads()}, flush denormals {flush}")
    print(
        f"batch size {args.batch_size}, hidden {args.hidden}, interactions {args.interactions}, "
        f"{n_timed} timed + {n_warm} warm-up batches, batching {args.batching}"
    )
    if device.type == "cpu":
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"load average (1 min) before the run {load:.2f}: other work skews CPU timings")
        print(
            "note: subnormal floats are flushed to zero for the whole benchmark "
            "(torch.set_flush_denormal(True)). PyG's Gaussian smearing produces subnormals, "
            "which slow PyG's SchNet down several-fold on CPU (mostly in training); our "
            "radial basis never produces them."
        )

    train_b, infer_b = make_batches(
        n_warm + n_timed, args.batch_size, device, args.seed, args.data, args.batching
    )
    train_batches, infer_batches = (
        (train_b[:n_warm], train_b[n_warm:]),
        (infer_b[:n_warm], infer_b[n_warm:]),
    )
    timed = train_b[n_warm:]
    atoms = sum(b.z.numel() for b in timed) / sum(b.num_graphs for b in timed)
    edges = sum(b.edge_index.shape[1] for b in timed) / sum(b.num_graphs for b in timed)
    print(f"mean atoms per molecule {atoms:.1f}, directed edges within {CUTOFF} A {edges:.0f}")
    print()

    def ours_call(m: nn.Module, b: Batch) -> Tensor:
        return m(b.z, b.pos, b.batch, b.num_graphs)

    def pyg_call(m: nn.Module, b: Batch) -> Tensor:
        return m(b)

    def build(name: str) -> nn.Module:
        torch.manual_seed(args.seed)
        if name == PYG_NAME:
            return PyGAdapter(args.hidden, args.interactions).to(device)
        return build_model(name, hidden=args.hidden, n_interactions=args.interactions).to(device)

    precisions = ["fp32"] + (["bf16-amp"] if device.type == "cuda" else [])
    rows: list[Row] = []
    for precision in precisions:
        group: list[Row] = []
        for name in [PYG_NAME, *args.models]:
            model = build(name)
            call = pyg_call if name == PYG_NAME else ours_call
            row = Row(name, device.type, precision, count_parameters(model), None, None)
            try:
                train, infer, train_flop, infer_flop = measure(
                    model, call, train_batches, infer_batches, device,
                    autocast=precision == "bf16-amp",
                )  # fmt: skip
                row.train_mol_s, row.infer_mol_s = train, infer
                row.train_mflop_mol, row.infer_mflop_mol = train_flop / 1e6, infer_flop / 1e6
                row.train_gflop_s, row.infer_gflop_s = (
                    train * train_flop / 1e9,
                    infer * infer_flop / 1e9,
                )
            except RuntimeError as err:  # e.g. an op without a bf16 kernel
                row.error = str(err).splitlines()[0][:120]
            group.append(row)
            del model
        base = group[0]
        for row in group[1:]:
            if base.train_mol_s and row.train_mol_s:
                row.train_vs_pyg = row.train_mol_s / base.train_mol_s
            if base.infer_mol_s and row.infer_mol_s:
                row.infer_vs_pyg = row.infer_mol_s / base.infer_mol_s
        rows.extend(group)

    print_table(rows)
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        print(f"\nload average (1 min) after the run {os.getloadavg()[0]:.2f}")
    if args.json is not None:
        meta = {
            "torch": torch.__version__,
            "device": device.type,
            "device_name": device_name(device),
            "threads": torch.get_num_threads(),
            "flush_denormal": flush,
            "batch_size": args.batch_size,
            "hidden": args.hidden,
            "interactions": args.interactions,
            "timed_batches": n_timed,
            "warmup_batches": n_warm,
            "seed": args.seed,
            "batching": args.batching,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2)
        )
        print(f"\nwrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
