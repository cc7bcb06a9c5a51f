"""Does a warm re-anneal replace the converged refit? From a finished campaign's warm chain
(the checkpoint of round ``--round``), run a fresh schedule of ``--steps`` steps on the same
labelled set and validation set, all steps run, the best validation weights kept, and set
its validation MAE beside the campaign's converged cold refit of that labelled set
(``converged_steps`` from scratch, logged as ``converged.val_mae``).

Chosen on validation only: the test MAE is recorded beside it, never used to choose.

    MLFLOW_TRACKING_URI=sqlite:///$GRIDS/protocol.db python benchmarks/warm_anneal.py \\
        --experiment-name grid-mission_protocol --cell random --round 8 \\
        --steps 2000 4000 --store reports/speed/warm_anneal.jsonl --threads 1
    python benchmarks/warm_anneal.py --store reports/speed/warm_anneal.jsonl --summary

One JSON row per (campaign, steps) in the store; rows already there are skipped, so an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import torch
import yaml

from al.config import subset
from al.data.load import load_qm9
from al.data.splits import SplitConfig, make_splits
from al.loop.config import CampaignConfig
from al.models.checkpoint import load_checkpoint
from al.models.config import ModelConfig
from al.training.config import step_budget
from al.training.fit import seed_everything
from al.uncertainty import build_surrogate

KEYS = ("run_id", "steps")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="JSON-lines file of results")
    p.add_argument("--summary", action="store_true", help="print the store's table and exit")
    p.add_argument("--experiment-name", default="grid-mission_protocol")
    p.add_argument("--cell", default="random", help="the grid cell (al.cell tag)")
    p.add_argument("--round", type=int, default=8, help="the warm chain's round to start from")
    p.add_argument("--steps", type=int, nargs="+", default=[2000, 4000])
    p.add_argument("--lr", type=float, default=0.0, help="peak learning rate (0: the run's)")
    p.add_argument("--seeds", type=int, nargs="*", default=None, help="only these seeds")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def done(store: Path) -> set[tuple]:
    if not store.is_file():
        return set()
    return {tuple(json.loads(line)[k] for k in KEYS) for line in store.read_text().splitlines()}


def summary(store: Path) -> pd.DataFrame:
    rows = pd.DataFrame([json.loads(line) for line in store.read_text().splitlines()])
    rows["val_diff"] = rows["val_mae"] - rows["converged_val_mae"]
    cols = ["cell", "seed", "n_labelled", "steps", "lr", "val_mae", "converged_val_mae",
            "val_diff", "warm_chain_val_mae", "test_mae", "converged_test_mae",
            "fit_s"]  # fmt: skip
    return rows[cols].sort_values(["cell", "steps", "seed"])


def campaign_runs(client: mlflow.MlflowClient, experiment: str, cell: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} on {mlflow.get_tracking_uri()}")
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`al.kind` = 'campaign' and tags.`al.cell` = '{cell}' "
        "and attributes.status = 'FINISHED'",
        max_results=100,
    )
    return sorted(runs, key=lambda r: int(r.data.tags.get("al.seed", 0)))


def anneal(client: mlflow.MlflowClient, run, round_: int, steps: int, lr: float, data) -> dict:
    """One warm re-anneal of ``run``'s chain from round ``round_``; the result row."""
    run_id, exp_id = run.info.run_id, run.info.experiment_id
    with tempfile.TemporaryDirectory(prefix="al-anneal-") as tmp:
        values = yaml.safe_load(
            Path(client.download_artifacts(run_id, "config.yaml", tmp)).read_text()
        )
        cfg = CampaignConfig(
            **{k: v for k, v in values.items() if k in CampaignConfig.__dataclass_fields__}
        )
        uncertainty = values.get("resolved_uncertainty") or cfg.uncertainty
        labelled = pd.read_csv(client.download_artifacts(run_id, "labelled.csv", tmp))
        validation = pd.read_csv(client.download_artifacts(run_id, "validation.csv", tmp))
        child = client.search_runs(
            [exp_id], f"tags.`mlflow.parentRunId` = '{run_id}' and "
            f"attributes.run_name = 'round_{round_:03d}'", max_results=5,
        )  # fmt: skip
        if not child:
            raise SystemExit(f"run {run_id} has no round_{round_:03d} run")
        members, meta = load_checkpoint(
            Path(client.download_artifacts(child[0].info.run_id, "checkpoint/model.pt", tmp))
        )
    train = labelled[(labelled["round"] <= round_) & (labelled["status"] == "ok")]
    train = train[train["role"] == "train"]
    train_rows = data.rows_of(train["qm9_index"].to_numpy())
    val_rows = data.rows_of(validation.loc[validation["status"] == "ok", "qm9_index"].to_numpy())
    fit_config = replace(cfg.fit_config(), patience=10**6, progress=False,
                         lr=lr or cfg.lr, threads=torch.get_num_threads())  # fmt: skip
    surrogate = build_surrogate(
        uncertainty, subset(ModelConfig, cfg), fit_config,
        torch.device("cpu"), ensemble_size=cfg.ensemble_size,
    )  # fmt: skip
    surrogate.load_members(members, meta)
    # a warm fit runs ceil(warm x cold) steps, at least ceil(warm x min_steps): with
    # min_steps = cold, every one of them runs (no early stopping)
    cold = step_budget(fit_config, train_rows.numel())
    surrogate.fit_config = replace(fit_config, min_steps=cold)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    result = surrogate.fit(data, train_rows, val_rows, warm=steps / cold)
    fit_s = time.perf_counter() - t0
    splits = make_splits(data.qm9_index.numpy(), SplitConfig(cfg.split_seed, cfg.n_test))
    test_rows = data.rows_of(splits.test)
    pred = surrogate.predict(data, test_rows)
    test_mae = float((pred.mean.double() - data.y[test_rows].double()).abs().mean())

    def at(metric: str) -> float:
        history = {int(m.step): m.value for m in client.get_metric_history(run_id, metric)}
        return history.get(int(train_rows.numel()), float("nan"))

    return {
        "run_id": run_id, "cell": run.data.tags.get("al.cell"), "seed": cfg.seed,
        "round": round_, "n_labelled": int(train_rows.numel()), "n_val": int(val_rows.numel()),
        "steps": steps, "steps_run": result.steps, "best_step": result.best_step,
        "lr": fit_config.lr, "val_mae": float(result.history[result.best_epoch].val_mae),
        "test_mae": test_mae, "fit_s": fit_s,
        "converged_val_mae": at("converged.val_mae"),
        "converged_test_mae": at("converged.test_mae"),
        "warm_chain_val_mae": at("val_mae"), "warm_chain_test_mae": at("test_mae"),
        "threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.summary:
        with pd.option_context("display.width", 200):
            print(summary(args.store).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        return
    torch.set_num_threads(args.threads)
    client = mlflow.MlflowClient()
    data = load_qm9()
    args.store.parent.mkdir(parents=True, exist_ok=True)
    for run in campaign_runs(client, args.experiment_name, args.cell):
        if args.seeds is not None and int(run.data.tags.get("al.seed", -1)) not in args.seeds:
            continue
        for steps in args.steps:
            if (run.info.run_id, steps) in done(args.store):
                continue
            row = anneal(client, run, args.round, steps, args.lr, data)
            with args.store.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"{row['cell']} seed {row['seed']} {row['n_labelled']} labels, {steps} warm "
                f"steps: val {row['val_mae']:.4f} (converged cold {row['converged_val_mae']:.4f}, "
                f"warm chain {row['warm_chain_val_mae']:.4f}) eV; test {row['test_mae']:.4f} "
                f"({row['converged_test_mae']:.4f}); {row['fit_s']:.0f} s, "
                f"load {row['load_avg']:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
