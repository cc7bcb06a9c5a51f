"""Time split of active-learning rounds: fit, evaluate, score, select, label, log.

Runs a campaign with the same building blocks as ``al.loop`` (surrogate, acquisition,
oracle) and prints each round's phase times. ``--tracking`` also logs every round to a
local SQLite MLflow store (queried table, metrics, checkpoint) so that the log phase is
measured; without it the script needs no MLflow (e.g. on a GPU machine without it).

Examples:
    python benchmarks/campaign.py                                   # one CPU round, default sizes
    python benchmarks/campaign.py --device cuda --initial 1000 --batch 900 --rounds 10 \\
        --pool-subsample 0                                          # 1k -> 10k, whole pool
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from al.acquisition.functions import select
from al.config import subset
from al.data.load import load_qm9
from al.data.molecules import MolecularData
from al.data.splits import SplitConfig, make_splits
from al.loop.config import CampaignConfig
from al.models.config import ModelConfig
from al.oracles import build_oracle
from al.training.fit import resolve_device, seed_everything
from al.training.metrics import regression_report
from al.uncertainty import build_surrogate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=None, help="a MolecularData .pt file (default: load_qm9)")
    p.add_argument("--initial", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--uncertainty", default="ensemble")
    p.add_argument("--acquisition", default="max_std")
    p.add_argument("--ensemble-size", type=int, default=5)
    p.add_argument("--mc-samples", type=int, default=20)
    p.add_argument("--epochs", type=int, default=CampaignConfig.epochs)
    p.add_argument("--patience", type=int, default=CampaignConfig.patience)
    p.add_argument("--train-batch-size", type=int, default=CampaignConfig.train_batch_size)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=CampaignConfig.lr)
    p.add_argument("--pool-subsample", type=int, default=5000, help="0 = whole pool")
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tracking", action="store_true", help="log rounds to a local MLflow store")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rounds as JSON here")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    data = MolecularData.load(args.data) if args.data else load_qm9()
    splits = make_splits(data.qm9_index.numpy(), SplitConfig())
    pool, test = data.rows_of(splits.pool), data.rows_of(splits.test)
    cfg = CampaignConfig(
        hidden=args.hidden, epochs=args.epochs, patience=args.patience, lr=args.lr,
        train_batch_size=args.train_batch_size, device=args.device, progress=False,
        dropout=0.1 if args.uncertainty == "mc_dropout" else 0.0, seed=args.seed,
    )  # fmt: skip
    surrogate = build_surrogate(
        args.uncertainty, subset(ModelConfig, cfg), cfg.fit_config(), device,
        ensemble_size=args.ensemble_size, mc_samples=args.mc_samples,
    )  # fmt: skip
    oracle = build_oracle("dft", data=data)
    data_dev = data.to(device)
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}),"
        f" torch {torch.__version__}, threads {torch.get_num_threads()}; {args.uncertainty} "
        f"K={args.ensemble_size} + {args.acquisition}; pool {pool.numel()}, test {test.numel()}"
    )

    gen = torch.Generator().manual_seed(args.seed)
    labelled = pool[torch.randperm(pool.numel(), generator=gen)[: args.initial]]
    y = torch.full_like(data.y, float("nan"))
    y[labelled] = torch.as_tensor(oracle.label(data.qm9_index[labelled].numpy()).value)
    tmp = tempfile.TemporaryDirectory(prefix="al-bench-")
    run = None
    if args.tracking:
        import mlflow

        from al.tracking import CampaignRun

        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp.name) / 'mlflow.db'}")
        run = CampaignRun.start("benchmark")

    rows_out = []
    t_total = time.perf_counter()
    for r in range(args.rounds + 1):
        times: dict[str, float] = {}
        perm = labelled[torch.randperm(labelled.numel(), generator=gen)]
        n_val = max(1, round(0.1 * perm.numel()))
        train_data = MolecularData(**{**data_dev.__dict__, "y": y.to(device)})
        t0 = time.perf_counter()
        result = surrogate.fit(train_data, perm[n_val:], perm[:n_val])
        _sync(device)
        times["fit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = surrogate.predict(data_dev, test, args.eval_batch_size)
        times["evaluate"] = time.perf_counter() - t0
        report = regression_report(pred.mean, data.y[test], pred.std)
        row = {"round": r, "n_labelled": int(labelled.numel()),
               "epochs": len(result.history), "test_mae": report["mae"],
               "fit_mol_per_s": result.history[-1].mol_per_s}  # fmt: skip
        if r < args.rounds:
            free = pool[~torch.isin(pool, labelled)]
            if args.pool_subsample and free.numel() > args.pool_subsample:
                free = free[torch.randperm(free.numel(), generator=gen)[: args.pool_subsample]]
            t0 = time.perf_counter()
            cand = surrogate.predict(data_dev, free, args.eval_batch_size)
            times["score"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            sel = select(args.acquisition, cand, args.batch, generator=gen)
            times["select"] = time.perf_counter() - t0
            chosen = free[sel.index]
            t0 = time.perf_counter()
            res = oracle.label(data.qm9_index[chosen].numpy())
            times["label"] = time.perf_counter() - t0
            y[chosen] = torch.as_tensor(res.value)
            labelled = torch.cat([labelled, chosen])
            row["pool_scored"] = int(free.numel())
            if run is not None:
                from al import tracking
                from al.models.checkpoint import save_checkpoint

                t0 = time.perf_counter()
                frame = res.to_frame()
                frame["round"], frame["score"] = r + 1, sel.score.numpy()
                frame["pred_mean"] = cand.mean[sel.index].numpy()
                frame["pred_std"] = cand.std[sel.index].numpy()
                run.log_queried(r + 1, frame)
                tracking.log_metrics({k: v for k, v in row.items() if k != "round"},
                                     step=row["n_labelled"], run_id=run.run_id)  # fmt: skip
                ckpt = save_checkpoint(surrogate.members(), Path(tmp.name) / "model.pt")
                run.client.log_artifact(run.run_id, str(ckpt), "checkpoint")
                times["log"] = time.perf_counter() - t0
        row.update({f"{k}_s": v for k, v in times.items()})
        rows_out.append(row)
        print(pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    total = time.perf_counter() - t_total
    table = pd.DataFrame(rows_out)
    print("\nall rounds:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    phase_cols = [c for c in table.columns if c.endswith("_s") and not c.endswith("per_s")]
    share = table[phase_cols].sum() / table[phase_cols].sum().sum()
    print("\nshare of time per phase: " + ", ".join(f"{k[:-2]} {v:.1%}" for k, v in share.items()))
    print(f"total campaign time: {total:.1f} s ({total / 60:.2f} min)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rows_out, "total_s": total,
                                               "device": str(device)}, default=float))  # fmt: skip
    if run is not None:
        import mlflow

        mlflow.end_run()
    tmp.cleanup()


if __name__ == "__main__":
    main()
