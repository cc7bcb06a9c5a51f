"""The ``train`` entry point: data, split, fit, evaluate, and log everything to MLflow."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import torch

from al import plots, tracking
from al.config import option, subset, to_dict
from al.data.config import DataConfig
from al.data.load import load_data
from al.data.molecules import MolecularData
from al.data.qm9pack import qm9pack_data_dir
from al.data.splits import Splits
from al.models import ModelConfig, build_model, count_parameters
from al.models.checkpoint import save_checkpoint
from al.runtime import configure_threads
from al.tracking import Artifacts, Metrics
from al.tracking.pyfunc import log_pyfunc_model
from al.training.config import FitConfig
from al.training.fit import FitResult, fit, predict, resolve_device, seed_everything
from al.training.metrics import baseline_mae, regression_report
from al.training.split import split_validation

log = logging.getLogger(__name__)


@dataclass
class TrainRunConfig(ModelConfig, FitConfig, DataConfig):
    """The ``train`` entry point: fit one model on random pool molecules."""

    train_size: int = option(1000, "labelled pool molecules (train + validation)", min=2)
    profile: bool = option(False, "write a torch.profiler trace of a few steps")
    experiment_name: str = option("al", "MLflow experiment (when not set by mlflow run)")
    surrogate_config: str = option(
        "", "YAML of model and fit settings (e.g. runs:/<id>/best_params.yaml), below config"
    )


def run_train(config: TrainRunConfig, echo: Callable[[str], None] | None = None) -> str:
    """Fit one model on ``train_size`` random pool molecules; returns the MLflow run id.

    ``echo`` receives the one-line summary for the user (the command line passes
    ``click.echo``).
    """
    configure_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    data, splits = load_data(subset(DataConfig, config))
    train_rows, val_rows = draw_training_rows(data, splits, config)
    test = data.rows_of(splits.test)

    tracking.set_experiment(config.experiment_name)
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        resolved = log_train_inputs(config, data, splits, train_rows, test, device)
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
        with tracking.tmpdir() as tmp:
            result = fit_logged(model, data, train_rows, val_rows, config, run_id, Path(tmp))
            pred, _ = predict(model, data, test, amp=config.amp)
            test_metrics, base = log_test_evaluation(
                pred, data, train_rows, test, result, config.train_size, f"{config.model}, test"
            )
            log_predictions(data, test, pred)
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
        if echo is not None:
            echo(
                f"test MAE {test_metrics['mae']:.4f} eV (per-element linear baseline "
                f"{base:.4f} eV) after {len(result.history)} epochs; run {run_id}; "
                f"model {info.model_uri}"
            )
    return run_id


def draw_training_rows(
    data: MolecularData, splits: Splits, config: TrainRunConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``train_size`` random pool rows (seeded with ``config.seed``), split into training
    and validation rows by :func:`~al.training.split.split_validation`, ``([n_train],
    [n_val])``.

    Raises:
        ValueError: ``train_size`` exceeds the pool.
    """
    pool = data.rows_of(splits.pool)
    if config.train_size > pool.numel():
        raise ValueError(f"train_size={config.train_size} exceeds the pool ({pool.numel()})")
    gen = torch.Generator().manual_seed(config.seed)
    chosen = pool[torch.randperm(pool.numel(), generator=gen)[: config.train_size]]
    return split_validation(chosen, config)


def log_train_inputs(
    config: TrainRunConfig,
    data: MolecularData,
    splits: Splits,
    train_rows: torch.Tensor,
    test: torch.Tensor,
    device: torch.device,
) -> dict:
    """Tags, parameters, resolved config, split and data sets (training ``[n_train]`` and
    test ``[n_test]`` rows) of the active run; returns the resolved config."""
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
    for rows, part, context in ((train_rows, "train", "training"), (test, "test", "evaluation")):
        tracking.log_dataset(
            data.qm9_index[rows].numpy(),
            data.y[rows].numpy(),
            f"qm9-{data.digest()}-{part}-{splits.digest()}",
            source,
            context,
        )
    return resolved


def fit_logged(
    model: torch.nn.Module,
    data: MolecularData,
    train_rows: torch.Tensor,
    val_rows: torch.Tensor,
    config: TrainRunConfig,
    run_id: str,
    tmp: Path,
) -> FitResult:
    """:func:`~al.training.fit.fit` with every evaluation logged to run ``run_id`` and, with
    ``profile``, the profiler trace (written under ``tmp``) logged as an artifact."""
    logger = tracking.EpochLogger(run_id)
    profile_dir = tmp / "profile" if config.profile else None
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
    return result


def log_predictions(data: MolecularData, test: torch.Tensor, pred: torch.Tensor) -> None:
    """The test predictions ``[n_test]`` beside their targets, as the predictions artifact."""
    frame = pd.DataFrame(
        {
            "qm9_index": data.qm9_index[test].numpy(),
            "target_ev": data.y[test].numpy(),
            "pred_ev": pred.numpy(),
        }
    )
    tracking.log_text_artifact(frame.to_csv(index=False), Artifacts.PREDICTIONS)


def log_test_evaluation(
    pred: torch.Tensor,
    data: MolecularData,
    train_rows: torch.Tensor,
    test: torch.Tensor,
    result: FitResult,
    step: int,
    title: str,
) -> tuple[dict[str, float], float]:
    """Log a fitted model's test metrics, the composition baseline, parity and training
    curves into the active run.

    Args:
        pred: the model's energies for the test rows, ``[n_test]``.
        train_rows, test: row indices ``[n_train]``, ``[n_test]`` (the baseline is fitted on
            the first and scored on the second).
        result: the fit (best epoch, best validation MAE, time, history).
        step: the metrics' step (the training-set size).

    Returns:
        ``(metrics, baseline MAE)``: :func:`~al.training.metrics.regression_report` of
        ``pred`` and the per-element linear model's test MAE, in eV.
    """
    target = data.y[test]
    test_metrics = regression_report(pred, target)
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
        step=step,
    )
    tracking.log_figure(plots.parity(pred.numpy(), target.numpy(), title), Artifacts.PARITY)
    tracking.log_figure(plots.training_curves(result.history), Artifacts.CURVES)
    return test_metrics, base
