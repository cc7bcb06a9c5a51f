"""Time split of active-learning rounds: fit, evaluate, score, select, label, log.

Drives the real loop (:class:`al.loop.campaign.Campaign`) and prints each round's phase
times. By default the rounds are recorded by :class:`al.loop.tracker.MemoryTracker`, so the
script needs no MLflow server (e.g. on a GPU machine without one); ``--tracking`` records
them with :class:`al.loop.tracker.MlflowTracker` in a local SQLite MLflow store (queried
tables, metrics, round child runs with plots, checkpoint and model) so that the log phase is
measured as a campaign pays it.

A row is one round: ``fit``/``evaluate`` train and test its model; ``score``/``select``/
``label`` are the acquisition that brought its labels (round 0: ``label`` is the initial set).

Examples:
    python benchmarks/campaign.py                                   # one CPU round, default sizes
    python benchmarks/campaign.py --preset mission --uncertainty shallow   # 1k -> 5k, whole pool
    python benchmarks/campaign.py --preset mission-warm-final --uncertainty shallow
    python benchmarks/campaign.py --device cuda --initial 1000 --batch 900 --rounds 10 \\
        --pool-subsample 0                                          # 1k -> 10k, whole pool
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from al.config import subset
from al.data.load import load_qm9
from al.data.molecules import MolecularData
from al.data.splits import SplitConfig, make_splits
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig
from al.loop.schemes import PoolScheme
from al.loop.selection import SingleFidelity
from al.loop.stopping import MaxRounds, PoolExhausted
from al.loop.tracker import CampaignTracker, EpochCallback, MemoryTracker
from al.models.config import ModelConfig
from al.oracles import build_oracle
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.training.fit import resolve_device, seed_everything
from al.uncertainty import build_surrogate

#: a row's columns, in print order (round 0 has no pool_scored, score_s, select_s)
COLUMNS = (
    "round", "n_labelled", "epochs", "steps", "warm", "test_mae", "test_nll", "test_nll_raw",
    "spearman", "miscal", "std_scale", "fit_mol_per_s", "pool_scored",
    "fit_s", "evaluate_s", "score_s", "select_s", "label_s", "log_s",
)  # fmt: skip

#: The mission's scale: 1,000 random labels -> 5,000 in rounds of 500, width 128, K = 5, the
#: whole pool scored every round, the 10,000 test molecules; fits sized in steps (a floor,
#: a cap, early stopping on a validation set of at least 500), warm starts, and a final
#: refit from scratch of 10,000 steps run to the end of its schedule: the warm chain's model
#: is short of a converged fit (0.064 against 0.060 eV at 5,000 random labels, one seed).
PRESETS: dict[str, dict[str, Any]] = {
    "mission": {
        "initial": 1000,
        "batch": 500,
        "rounds": 8,
        "pool_subsample": 0,
        "hidden": 128,
        "ensemble_size": 5,
        "n_test": 10_000,
        "epochs": 300,
        "max_steps": 4000,
        "min_steps": 1500,
        "eval_every": 100,
        "patience": 8,
        "val_min": 500,
        "eval_batch_size": 0,
        "final_refit": True,
        "final_refit_steps": 10_000,
    },
}
#: The mission preset with its final refit a warm re-anneal of 4,000 steps (the warm chain's
#: weights, a fresh schedule; ``final_refit_warm``) instead of 10,000 steps from scratch: on
#: validation, as good as the converged cold fit (``benchmarks/warm_anneal.py``).
PRESETS["mission-warm-final"] = {
    **PRESETS["mission"],
    "final_refit_warm": True,
    "final_refit_steps": 4000,
}


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows).reindex(columns=[c for c in COLUMNS if any(c in r for r in rows)])


def _table(rows: list[dict[str, Any]]) -> str:
    return _frame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}")


class RoundPrinter:
    """Wraps the campaign's tracker: collects each round's metrics and prints the round's
    row once the campaign has recorded it (its log time is the last metric of a fit)."""

    def __init__(self, inner: CampaignTracker) -> None:
        self.inner = inner
        self.campaign: Campaign | None = None
        self.rows: list[dict[str, Any]] = []
        self._metrics: dict[str, float] = {}
        self._mol_per_s = math.nan

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @contextmanager
    def fit_run(self, round_: int, labelled: Any) -> Iterator[EpochCallback]:
        with self.inner.fit_run(round_, labelled) as on_epoch:

            def record(stats: Any) -> None:
                self._mol_per_s = stats.mol_per_s
                on_epoch(stats)

            yield record

    def log_round_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.log_round_metrics(step, metrics)
        self._metrics.update(metrics)
        if CM.TIME_LOG in metrics or metrics.get(CM.RETRAINED) == 0:
            self._print_row()

    def _print_row(self) -> None:
        m, timings = self._metrics, self.campaign.timings if self.campaign else {}
        fitted = bool(m[CM.RETRAINED])
        row: dict[str, Any] = {
            "round": int(m[CM.ROUND]), "n_labelled": int(m[CM.N_LABELLED]),
            "epochs": int(m[CM.FIT_EPOCHS]), "steps": m.get(CM.FIT_STEPS, math.nan),
            "warm": m.get(CM.WARM_START, math.nan), "test_mae": m[CM.TEST_MAE],
            "test_nll": m.get(CM.TEST_NLL, math.nan),
            "test_nll_raw": m.get(CM.TEST_NLL_RAW, math.nan),
            "spearman": m.get(CM.TEST_SPEARMAN, math.nan),
            "miscal": m.get(CM.TEST_MISCALIBRATION, math.nan),
            "std_scale": m.get(CM.STD_SCALE, math.nan),
            "fit_mol_per_s": self._mol_per_s if fitted else math.nan,
        }  # fmt: skip
        if row["round"] > 0:
            row["pool_scored"] = int(m[CM.POOL_SCORED])
        row["fit_s"] = m[CM.TIME_FIT]
        row["evaluate_s"] = timings.get("evaluate", 0.0) if fitted else 0.0
        if row["round"] > 0:
            row["score_s"], row["select_s"] = m[CM.TIME_SCORE], m[CM.TIME_SELECT]
        row["label_s"] = m[CM.TIME_LABEL]
        row["log_s"] = m.get(CM.TIME_LOG, 0.0) if fitted else 0.0
        self.rows.append(row)
        self._metrics = {}
        print(_table([row]), flush=True)


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
    p.add_argument("--n-interactions", type=int, default=ModelConfig.n_interactions)
    p.add_argument("--lr", type=float, default=CampaignConfig.lr)
    p.add_argument("--pool-subsample", type=int, default=5000, help="0 = whole pool")
    p.add_argument("--n-test", type=int, default=SplitConfig.n_test, help="test-set size")
    p.add_argument(
        "--eval-batch-size", type=int, default=0, help="0 = the surrogate's default for the device"
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tracking", action="store_true", help="log rounds to a local MLflow store")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rounds as JSON here")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="settings of a named scale (options given explicitly override them)",
    )
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--min-steps", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--val-min", type=int, default=0)
    p.add_argument("--cold", action="store_true", help="every fit from scratch (no warm start)")
    p.add_argument("--warm-fraction", type=float, default=CampaignConfig.warm_fraction)
    p.add_argument(
        "--final-refit", action=argparse.BooleanOptionalAction, default=False,
        help="refit the last round from scratch (the mission preset does, for 10,000 steps)",
    )  # fmt: skip
    p.add_argument(
        "--final-refit-steps", type=int, default=CampaignConfig.final_refit_steps,
        help="steps of the final refit, all run (0 = a cold fit's budget, early stopping)",
    )  # fmt: skip
    p.add_argument(
        "--final-refit-warm", action=argparse.BooleanOptionalAction, default=False,
        help="the final refit re-anneals the warm chain's weights instead of starting afresh",
    )  # fmt: skip
    p.add_argument("--nll-warmup", type=float, default=CampaignConfig.nll_warmup)
    preset = p.parse_known_args()[0].preset
    p.set_defaults(**PRESETS.get(preset or "", {}))  # the preset's values, unless given
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    data = MolecularData.load(args.data) if args.data else load_qm9()
    splits = make_splits(data.qm9_index.numpy(), SplitConfig(n_test=args.n_test))
    cfg = CampaignConfig(
        hidden=args.hidden, n_interactions=args.n_interactions, epochs=args.epochs,
        patience=args.patience, lr=args.lr, train_batch_size=args.train_batch_size,
        device=args.device, progress=False, seed=args.seed,
        dropout=0.1 if args.uncertainty == "mc_dropout" else 0.0,
        initial_size=args.initial, batch_size=args.batch, rounds=args.rounds,
        pool_subsample=args.pool_subsample, n_test=args.n_test, max_steps=args.max_steps,
        min_steps=args.min_steps, eval_every=args.eval_every, val_min=args.val_min,
        warm_start=not args.cold, warm_fraction=args.warm_fraction,
        final_refit=args.final_refit, final_refit_steps=args.final_refit_steps,
        final_refit_warm=args.final_refit_warm, nll_warmup=args.nll_warmup,
    )  # fmt: skip
    surrogate = build_surrogate(
        args.uncertainty, subset(ModelConfig, cfg), cfg.fit_config(), device,
        ensemble_size=args.ensemble_size, mc_samples=args.mc_samples,
    )  # fmt: skip
    # every prediction of the loop (pool, test set, labelled embeddings) in these batches
    surrogate.predict = functools.partial(surrogate.predict, batch_size=args.eval_batch_size)
    oracles = [build_oracle("dft", data=data)]
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}),"
        f" torch {torch.__version__}, threads {torch.get_num_threads()}; {args.uncertainty} "
        f"K={args.ensemble_size} + {args.acquisition}; pool {splits.pool.size}, "
        f"test {splits.test.size}"
    )

    tmp = tempfile.TemporaryDirectory(prefix="al-bench-")
    if args.tracking:
        import mlflow

        from al.loop.tracker import MlflowTracker

        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp.name) / 'mlflow.db'}")
        inner: CampaignTracker = MlflowTracker.start("benchmark")
    else:
        inner = MemoryTracker(Path(tmp.name))
    tracker = RoundPrinter(inner)
    campaign = Campaign(
        cfg, data, splits, surrogate, oracles, [MaxRounds(args.rounds), PoolExhausted()],
        scheme=PoolScheme(cfg.seed, cfg.pool_subsample),
        selection=SingleFidelity(data, oracles, cfg, args.acquisition, surrogate),
        tracker=tracker,
    )  # fmt: skip
    tracker.campaign = campaign
    t_total = time.perf_counter()
    reason = campaign.execute()
    total = time.perf_counter() - t_total
    m = tracker._metrics
    if CM.final_refit(CM.TEST_MAE) in m:
        how = "a warm re-anneal" if args.final_refit_warm else "from scratch"
        print(
            f"final refit ({how}) at {len(campaign.labelled.ok)} labels: test MAE "
            f"{m[CM.final_refit(CM.TEST_MAE)]:.4f} eV (warm: {campaign.mae_history[-1]:.4f}), "
            f"NLL {m[CM.final_refit(CM.TEST_NLL)]:.3f}, Spearman "
            f"{m[CM.final_refit(CM.TEST_SPEARMAN)]:.3f}, miscalibration "
            f"{m[CM.final_refit(CM.TEST_MISCALIBRATION)]:.3f}, fit "
            f"{m[CM.final_refit(CM.TIME_FIT)]:.1f} s"
        )
    table = _frame(tracker.rows)
    print(f"\nall rounds ({reason}):")
    print(_table(tracker.rows))
    phase_cols = [c for c in table.columns if c.endswith("_s") and not c.endswith("per_s")]
    phases = table[phase_cols].sum()
    if CM.final_refit(CM.TIME_FIT) in m:
        phases["final_refit_s"] = m[CM.final_refit(CM.TIME_FIT)]
    share = phases / phases.sum()
    print("\nshare of time per phase: " + ", ".join(f"{k[:-2]} {v:.1%}" for k, v in share.items()))
    print(f"total campaign time: {total:.1f} s ({total / 60:.2f} min)")
    if args.json:
        final = {k: v for k, v in m.items() if k.startswith(CM.final_refit(""))}
        Path(args.json).write_text(json.dumps({"rounds": tracker.rows, "final_refit": final,
                                               "total_s": total, "device": str(device)},
                                              default=float))  # fmt: skip
    if args.tracking:
        import mlflow

        mlflow.end_run()
    tmp.cleanup()


if __name__ == "__main__":
    main()
