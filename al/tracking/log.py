"""Logging through the public MLflow API; metrics go in batches because each call over HTTP
costs tens of milliseconds."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from al.config import mask_secrets, mask_values
from al.tracking.datasets import DatasetUse, log_datasets, molecule_set
from al.tracking.names import Metrics

log = logging.getLogger(__name__)


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log params in batches, skipping keys the run already has (``mlflow run`` logs the
    ``-P`` values itself, and MLflow refuses to change a param). Passwords in values are
    masked (:func:`al.config.mask_secrets`)."""
    client = MlflowClient()
    run_id = run_id or _active_run_id()
    existing = client.get_run(run_id).data.params
    items = [Param(k, _param_str(v)) for k, v in params.items() if k not in existing]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100], synchronous=True)


def _param_str(v: Any) -> str:
    s = mask_secrets(str(v))
    return s if len(s) <= 6000 else s[:5997] + "..."


def log_metrics(
    metrics: Mapping[str, float], step: int, run_id: str | None = None, timestamp: int | None = None
) -> None:
    """Log finite metrics at ``step`` in one batch (non-finite values are skipped)."""
    ts = timestamp or int(time.time() * 1000)
    items = [
        Metric(k, float(v), ts, int(step))
        for k, v in metrics.items()
        if v is not None and math.isfinite(float(v))
    ]
    client = MlflowClient()
    run_id = run_id or _active_run_id()
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i : i + 500], synchronous=True)


def epoch_metrics(stats: Any) -> dict[str, float]:
    """Flatten :class:`al.train.EpochStats` into metric keys."""
    out = {
        Metrics.TRAIN_LOSS: stats.train_loss,
        Metrics.VAL_MAE: stats.val_mae,
        Metrics.LR: stats.lr,
        Metrics.THROUGHPUT: stats.mol_per_s,
        Metrics.DATA_TIME: stats.data_s,
        Metrics.COMPUTE_TIME: stats.compute_s,
    }
    out.update({Metrics.weight_norm(k): v for k, v in stats.weight_norm.items()})
    out.update({Metrics.grad_norm(k): v for k, v in stats.grad_norm.items()})
    out.update({Metrics.act_norm(k): v for k, v in stats.act_norm.items()})
    return out


class EpochLogger:
    """Collects epoch metrics and sends them in few HTTP calls (every ``every`` epochs)."""

    def __init__(self, run_id: str, every: int = 10) -> None:
        self.run_id, self.every = run_id, every
        self.pending: list[Metric] = []
        self.count = 0

    def __call__(self, stats: Any) -> None:
        ts = int(time.time() * 1000)
        self.pending += [
            Metric(k, float(v), ts, stats.epoch)
            for k, v in epoch_metrics(stats).items()
            if math.isfinite(float(v))
        ]
        self.count += 1
        if self.count % self.every == 0:
            self.flush()

    def flush(self) -> None:
        client = MlflowClient()
        for i in range(0, len(self.pending), 1000):
            client.log_batch(self.run_id, metrics=self.pending[i : i + 1000], synchronous=True)
        self.pending = []


def log_dict_artifact(obj: Mapping[str, Any], artifact_file: str) -> None:
    """``obj`` as a JSON/YAML artifact, passwords in its strings masked."""
    mlflow.log_dict(mask_values(dict(obj)), artifact_file)


def log_text_artifact(text: str, artifact_file: str) -> None:
    """``text`` as an artifact, passwords in it masked."""
    mlflow.log_text(mask_secrets(text), artifact_file)


def log_dataset(
    qm9_index: np.ndarray, target: np.ndarray, name: str, source: str, context: str
) -> None:
    """Record dataset lineage with ``mlflow.log_input``: the molecules ``qm9_index`` and
    their targets (``[n]`` each) as a :class:`~al.tracking.datasets.MoleculeSet` (digest,
    schema and row count; the data stays at ``source``)."""
    log_datasets([DatasetUse(molecule_set(name, source, qm9_index, target), context)])


def log_figure(fig: Any, artifact_file: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def log_dir(local_dir: Path, artifact_path: str) -> None:
    mlflow.log_artifacts(str(local_dir), artifact_path)


def tmpdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="al-")


def _active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run")
    return run.info.run_id
