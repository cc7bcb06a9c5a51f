"""Cold fits of the mission's surrogate under a training schedule: validation and test MAE.

One call runs one arm (a schedule: batch size, peak learning rate, steps, early stopping)
for the given seeds and label counts. A fit trains a shallow ensemble
(SchNet width 128, 3 interactions, K heads) on ``n - n_val`` random pool molecules and
validates on ``n_val`` others, drawn as a campaign draws them (``val_min`` 500, at most a
quarter of the labels); the weights of the best validation MAE are kept. Schedules are
chosen on that validation MAE only; the test MAE (the fixed 10,000-molecule test split) is
recorded for the report and never read to choose.

Results are appended to a JSON-lines store, one line per fit (the arm, the validation curve,
times, threads and load average); a fit already in the store is skipped, so an interrupted
grid resumes where it stopped. Keep the store outside the checkout.

Example (today's schedule against a shorter one, 3 seeds, two processes of one thread)::

    python benchmarks/schedule.py --store /data/al/schedule.jsonl --name bs64-lr1e-3-10k \\
        --batch-size 64 --lr 1e-3 --steps 10000 --seeds 0 1 2 --threads 1 &
    python benchmarks/schedule.py --store /data/al/schedule.jsonl --name bs64-lr3e-3-4k \\
        --batch-size 64 --lr 3e-3 --steps 4000 --seeds 0 1 2 --threads 1
    python benchmarks/schedule.py --store /data/al/schedule.jsonl --summary
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from al.data.load import load_qm9
from al.data.splits import SplitConfig, make_splits
from al.models.shallow import ShallowEnsembleModel
from al.training.config import FitConfig
from al.training.fit import fit, predict, seed_everything
from al.training.split import validation_size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, required=True, help="JSON-lines file of results")
    p.add_argument("--summary", action="store_true", help="print the store's table and exit")
    p.add_argument("--name", default="", help="the arm's name in the store")
    p.add_argument("--labels", type=int, nargs="+", default=[5000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=4000, help="step budget of the schedule")
    p.add_argument("--patience", type=int, default=0, help="early stopping (0 = run all)")
    p.add_argument(
        "--min-steps", type=int, default=0, help="early stopping waits for these (0 = --steps)"
    )
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--nll-warmup", type=float, default=FitConfig.nll_warmup)
    p.add_argument("--weight-decay", type=float, default=FitConfig.weight_decay)
    p.add_argument("--heads", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def done_keys(store: Path) -> set[tuple[str, int, int]]:
    if not store.exists():
        return set()
    rows = [json.loads(line) for line in store.read_text().splitlines() if line.strip()]
    return {(r["name"], r["labels"], r["seed"]) for r in rows}


def summary(store: Path) -> pd.DataFrame:
    """Per arm and label count: seeds, mean and per-seed validation and test MAE (eV), mean
    fit seconds."""
    rows = [json.loads(line) for line in store.read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows)
    out = df.groupby(["name", "labels"]).agg(
        seeds=("seed", "count"),
        steps=("steps", "first"),
        val_mae=("val_mae", "mean"),
        val_per_seed=("val_mae", lambda v: " ".join(f"{x:.4f}" for x in v)),
        test_mae=("test_mae", "mean"),
        test_per_seed=("test_mae", lambda v: " ".join(f"{x:.4f}" for x in v)),
        fit_s=("fit_s", "mean"),
    )
    return out.reset_index()


def run_fit(args: argparse.Namespace, data, splits, n_labels: int, seed: int) -> dict:
    seed_everything(seed)
    order = np.random.default_rng(seed).permutation(splits.pool)[:n_labels]
    rows = data.rows_of(order)
    config = FitConfig(
        epochs=10**6, max_steps=args.steps, min_steps=args.min_steps or args.steps,
        patience=args.patience or 10**6, eval_every=args.eval_every,
        batch_size=args.batch_size, lr=args.lr, nll_warmup=args.nll_warmup, seed=seed,
        weight_decay=args.weight_decay,
        device="cpu", progress=False, threads=args.threads,
    )  # fmt: skip
    probe = FitConfig(val_min=500)
    n_val = validation_size(probe, n_labels)
    train_rows, val_rows = rows[: n_labels - n_val], rows[n_labels - n_val :]
    model = ShallowEnsembleModel.build("schnet", heads=args.heads, hidden=128, n_interactions=3)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = fit(model, data, train_rows, val_rows, config)
    fit_s = time.perf_counter() - t0
    test_rows = data.rows_of(splits.test)
    pred, _ = predict(model, data, test_rows, amp=False)
    test_mae = float((pred.mean(0) - data.y[test_rows].double()).abs().mean())
    return {
        "name": args.name, "labels": n_labels, "seed": seed, "n_train": int(train_rows.numel()),
        "n_val": n_val, "batch_size": args.batch_size, "lr": args.lr, "steps": result.steps,
        "budget": args.steps, "min_steps": args.min_steps or args.steps,
        "patience": args.patience,
        "nll_warmup": args.nll_warmup,
        "weight_decay": args.weight_decay, "heads": args.heads, "best_step": result.best_step,
        "val_mae": result.best_val_mae, "test_mae": test_mae, "fit_s": fit_s,
        "threads": torch.get_num_threads(), "load_before": load,
        "load_after": os.getloadavg()[0],
        "curve": [[h.step, h.val_mae] for h in result.history],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.summary:
        with pd.option_context("display.width", 200, "display.max_colwidth", 60):
            print(summary(args.store).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return
    if not args.name:
        raise SystemExit("--name: every arm needs a name in the store")
    torch.set_num_threads(args.threads)
    data = load_qm9()
    splits = make_splits(data.qm9_index.numpy(), SplitConfig(n_test=10_000))
    args.store.parent.mkdir(parents=True, exist_ok=True)
    for n_labels in args.labels:
        for seed in args.seeds:
            if (args.name, n_labels, seed) in done_keys(args.store):
                print(f"{args.name} labels={n_labels} seed={seed}: in the store, skipped")
                continue
            row = run_fit(args, data, splits, n_labels, seed)
            with args.store.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{args.name} labels={n_labels} seed={seed}: val {row['val_mae']:.4f} "
                f"test {row['test_mae']:.4f} eV, best step {row['best_step']}/{row['steps']}, "
                f"{row['fit_s']:.0f} s (load {row['load_before']:.2f}-{row['load_after']:.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
