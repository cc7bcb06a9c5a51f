"""The ``train`` entry point: data, split, fit, evaluate, and log everything to MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pandas as pd
import torch

from al import plots, tracking
from al.config import DataConfig, FitConfig, ModelConfig, TrainRunConfig, subset, to_dict
from al.data.qm9 import MolecularData, load_qm9, qm9pack_data_dir
from al.data.splits import SplitConfig, Splits, make_splits
from al.models import build_model, count_parameters
from al.models.checkpoint import save_checkpoint
from al.pyfunc import log_pyfunc_model
from al.tracking import Artifacts, Metrics
from al.train import fit, predict, regression_metrics, resolve_device, seed_everything

log = logging.getLogger(__name__)


def load_data(config: DataConfig) -> tuple[MolecularData, Splits]:
    """The molecules and the fixed split named by ``config``."""
    data = load_qm9(config.source, config.data_root or None)
    splits = make_splits(
        data.qm9_index.numpy(), SplitConfig(config.split_seed, config.n_test, config.n_oracle)
    )
    return data, splits


def baseline_mae(data: MolecularData, train_rows: torch.Tensor, test_rows: torch.Tensor) -> float:
    """Test MAE of the per-element linear model fitted on ``train_rows`` (composition only)."""
    A, y = data.composition(train_rows), data.y[train_rows]
    coef = torch.linalg.lstsq(A, y[:, None]).solution[:, 0]
    return float((data.composition(test_rows) @ coef - data.y[test_rows]).abs().mean())


def _set_experiment(name: str) -> None:
    import os

    if not os.environ.get("MLFLOW_RUN_ID") and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or name)


def run_train(config: TrainRunConfig) -> str:
    """Fit one model on ``train_size`` random pool molecules; returns the MLflow run id."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    data, splits = load_data(subset(DataConfig, config))
    pool = data.rows_of(splits.pool)
    test = data.rows_of(splits.test)
    if config.train_size > pool.numel():
        raise ValueError(f"train_size={config.train_size} exceeds the pool ({pool.numel()})")
    gen = torch.Generator().manual_seed(config.seed)
    chosen = pool[torch.randperm(pool.numel(), generator=gen)[: config.train_size]]
    n_val = round(config.val_fraction * config.train_size)
    if config.val_fraction > 0:
        n_val = max(1, n_val)
    val_rows, train_rows = chosen[:n_val], chosen[n_val:]

    _set_experiment(config.experiment_name)
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        mlflow.set_tags(
            {
                tracking.TAG_KIND: tracking.KIND_TRAIN,
                tracking.TAG_MODEL: config.model,
                tracking.TAG_SEED: str(config.seed),
                tracking.TAG_SPLIT_DIGEST: splits.digest(),
            }
        )
        resolved = to_dict(config)
        tracking.log_params(
            {**resolved, "split_digest": splits.digest(), "device_resolved": str(device)}
        )
        tracking.log_dict_artifact(resolved, Artifacts.CONFIG)
        tracking.log_text_artifact(splits.to_json(), Artifacts.SPLITS)
        source = str(config.data_root or qm9pack_data_dir())
        tracking.log_dataset(
            data.qm9_index[train_rows].numpy(),
            data.y[train_rows].numpy(),
            f"qm9-{data.digest()}-train-{splits.digest()}",
            source,
            "training",
        )
        tracking.log_dataset(
            data.qm9_index[test].numpy(),
            data.y[test].numpy(),
            f"qm9-{data.digest()}-test-{splits.digest()}",
            source,
            "evaluation",
        )

        model = build_model(config.model, **subset(ModelConfig, config).model_kwargs()).to(device)
        tracking.log_metrics({Metrics.N_PARAMETERS: count_parameters(model)}, step=0)
        log.info(
            "event=fit_start model=%s params=%d train=%d val=%d device=%s",
            config.model,
            count_parameters(model),
            train_rows.numel(),
            val_rows.numel(),
            device,
        )
        logger = tracking.EpochLogger(run_id)
        with tracking.tmpdir() as tmp:
            profile_dir = Path(tmp) / "profile" if config.profile else None
            result = fit(
                model,
                data,
                train_rows,
                val_rows,
                subset(FitConfig, config),
                on_epoch=logger,
                profile_dir=profile_dir,
            )
            logger.flush()
            if profile_dir is not None and profile_dir.exists():
                tracking.log_dir(profile_dir, Artifacts.PROFILE_DIR)

            pred, _ = predict(model, data, test, amp=config.amp)
            target = data.y[test]
            test_metrics = regression_metrics(pred, target)
            base = baseline_mae(data, train_rows, test)
            tracking.log_metrics(
                {
                    Metrics.TEST_MAE: test_metrics["mae"],
                    Metrics.TEST_RMSE: test_metrics["rmse"],
                    Metrics.TEST_MAX_AE: test_metrics["max_ae"],
                    Metrics.BASELINE_TEST_MAE: base,
                    Metrics.BEST_EPOCH: result.best_epoch,
                    Metrics.BEST_VAL_MAE: result.best_val_mae,
                    Metrics.FIT_SECONDS: result.seconds,
                },
                step=config.train_size,
            )
            tracking.log_figure(
                plots.parity(pred.numpy(), target.numpy(), f"{config.model}, test"),
                Artifacts.PARITY,
            )
            tracking.log_figure(plots.training_curves(result.history), Artifacts.CURVES)
            frame = pd.DataFrame(
                {
                    "qm9_index": data.qm9_index[test].numpy(),
                    "target_ev": target.numpy(),
                    "pred_ev": pred.numpy(),
                }
            )
            tracking.log_text_artifact(frame.to_csv(index=False), Artifacts.PREDICTIONS)
            ckpt = save_checkpoint(
                [model.cpu()],
                Path(tmp) / "model.pt",
                meta={
                    "split_digest": splits.digest(),
                    "test_mae": test_metrics["mae"],
                    "train_size": config.train_size,
                    "config": resolved,
                },
            )
            info = log_pyfunc_model(ckpt, Artifacts.MODEL_NAME)
            mlflow.set_tag(tracking.TAG_MODEL_URI, info.model_uri)
        log.info(
            "event=train_done run_id=%s test_mae=%.4f baseline_mae=%.4f epochs=%d seconds=%.1f",
            run_id,
            test_metrics["mae"],
            base,
            len(result.history),
            result.seconds,
        )
        print(
            f"test MAE {test_metrics['mae']:.4f} eV (per-element linear baseline {base:.4f} eV) "
            f"after {len(result.history)} epochs; run {run_id}; model {info.model_uri}"
        )
    return run_id


def split_table(splits: Splits) -> pd.DataFrame:
    """One row per molecule: ``qm9_index, split``."""
    parts = [
        pd.DataFrame({"qm9_index": getattr(splits, s), "split": s})
        for s in ("test", "oracle", "pool")
    ]
    return pd.concat(parts).sort_values("qm9_index").reset_index(drop=True)


def run_label(
    oracle_spec: str,
    input_csv: str | Path,
    output: str | Path | None = None,
    cost: float | None = None,
    experiment_name: str = "al",
) -> str:
    """Label the ``qm9_index`` column of ``input_csv`` with an oracle; log it as a run.

    Every requested molecule gets a row (failures with their status). Returns the run id.
    """
    from al.oracles import build_oracle

    path = Path(input_csv)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    table = pd.read_csv(path)
    if "qm9_index" not in table.columns:
        raise ValueError(
            f"{path}: no 'qm9_index' column; expected a CSV with a qm9_index column "
            f"(found: {', '.join(map(str, table.columns)) or 'no columns'})"
        )
    index = pd.to_numeric(table["qm9_index"], errors="coerce")
    if index.isna().any() or (index % 1 != 0).any():
        line = int(index.isna().idxmax() if index.isna().any() else (index % 1 != 0).idxmax()) + 2
        raise ValueError(f"{path}:{line}: qm9_index must be an integer")
    data = load_qm9()
    oracle = build_oracle(oracle_spec, data=data, cost=cost)
    result = oracle.label(index.to_numpy().astype("int64"))
    frame = result.to_frame()
    _set_experiment(experiment_name)
    with mlflow.start_run() as run:
        mlflow.set_tags({tracking.TAG_KIND: "label", tracking.TAG_ORACLE: oracle.name})
        described = {f"oracle.{k}": v for k, v in oracle.describe().items()}
        tracking.log_params(
            {"oracle": oracle.name, "input": str(path), "n_requested": len(frame), **described}
        )
        tracking.log_metrics(
            {"cost_spent": float(frame["cost"].sum()), "n_ok": int(result.ok.sum()),
             "n_failed": int((~result.ok).sum())}, step=0,
        )  # fmt: skip
        tracking.log_text_artifact(frame.to_csv(index=False), "labels.csv")
    if output:
        frame.to_csv(output, index=False)
    print(
        f"labelled {int(result.ok.sum())} of {len(frame)} molecules with {oracle.name} "
        f"(cost {frame['cost'].sum():g}); run {run.info.run_id}"
    )
    return run.info.run_id
