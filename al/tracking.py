"""The one module that knows MLflow names: tags, metric keys, artifact layout.

Everything is logged through the public MLflow API; metrics go in batches because each
call over HTTP costs tens of milliseconds.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# --- tags -------------------------------------------------------------------------------
TAG_KIND = "al.kind"
KIND_TRAIN = "train"
KIND_CAMPAIGN = "campaign"
KIND_REPORT = "report"
TAG_MODEL = "al.model"
TAG_SEED = "al.seed"
TAG_SPLIT_DIGEST = "al.split_digest"
TAG_MODEL_URI = "al.model_uri"


# --- metric keys ------------------------------------------------------------------------
class Metrics:
    """Metric names, defined once."""

    TRAIN_LOSS = "train_loss"
    VAL_MAE = "val_mae"
    LR = "lr"
    THROUGHPUT = "train_mol_per_s"
    DATA_TIME = "data_time_s"
    COMPUTE_TIME = "compute_time_s"
    TEST_MAE = "test_mae"
    TEST_RMSE = "test_rmse"
    TEST_MAX_AE = "test_max_ae"
    BASELINE_TEST_MAE = "baseline_test_mae"
    BEST_EPOCH = "best_epoch"
    BEST_VAL_MAE = "best_val_mae"
    FIT_SECONDS = "fit_seconds"
    N_PARAMETERS = "n_parameters"

    @staticmethod
    def weight_norm(group: str) -> str:
        return f"weight_norm.{group}"

    @staticmethod
    def grad_norm(group: str) -> str:
        return f"grad_norm.{group}"

    @staticmethod
    def act_norm(block: str) -> str:
        return f"act_norm.{block}"


# --- artifact layout --------------------------------------------------------------------
class Artifacts:
    CONFIG = "config.yaml"
    SPLITS = "splits/splits.json"
    PARITY = "plots/parity.png"
    CURVES = "plots/training_curves.png"
    PREDICTIONS = "predictions/test.csv"
    PROFILE_DIR = "profile"
    MODEL_NAME = "model"


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log params in batches, skipping keys the run already has (``mlflow run`` logs the
    ``-P`` values itself, and MLflow refuses to change a param)."""
    client = MlflowClient()
    run_id = run_id or _active_run_id()
    existing = client.get_run(run_id).data.params
    items = [Param(k, _param_str(v)) for k, v in params.items() if k not in existing]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100], synchronous=True)


def _param_str(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def log_metrics(
    metrics: Mapping[str, float], step: int, run_id: str | None = None, timestamp: int | None = None
) -> None:
    """Log finite metrics at ``step`` in one batch (non-finite values are skipped)."""
    import time

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
        import time

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
    mlflow.log_dict(dict(obj), artifact_file)


def log_text_artifact(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_dataset(
    qm9_index: np.ndarray, target: np.ndarray, name: str, source: str, context: str
) -> None:
    """Record dataset lineage with ``mlflow.log_input`` (a table of QM9 indices and targets)."""
    df = pd.DataFrame({"qm9_index": np.asarray(qm9_index), "target_ev": np.asarray(target)})
    ds = mlflow.data.from_pandas(df, source=source, name=name, targets="target_ev")
    mlflow.log_input(ds, context=context)


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


# --- campaigns ----------------------------------------------------------------------------
TAG_STRATEGY = "al.strategy"
TAG_ORACLE = "al.oracle"
TAG_UNCERTAINTY = "al.uncertainty"
TAG_ACQUISITION = "al.acquisition"
TAG_FIDELITIES = "al.fidelities"
#: experiment grids (al.experiment) and their report (al.compare)
KIND_EXPERIMENT = "experiment"
TAG_GRID = "al.grid"
TAG_GRID_DIGEST = "al.grid_digest"
TAG_CELL = "al.cell"
TAG_REPORT_OF = "al.report_of"
TAG_PARENT = "mlflow.parentRunId"
TAG_ROUND = "al.round"
TAG_COMPLETED_ROUND = "al.completed_round"
TAG_STOP_REASON = "al.stop_reason"
TAG_DATA_VERSION = "al.data_version"
TAG_RESUMED_INTO = "al.resumed_into"
KIND_ROUND = "round"


class CampaignMetrics:
    """Per-round metric names on the campaign run (``step = n_labelled``)."""

    N_LABELLED = "n_labelled"
    ROUND = "round"
    COST_SPENT = "cost_spent"
    N_REQUESTED = "n_requested"
    N_FAILED = "n_failed"
    POOL_SCORED = "pool_scored"
    TEST_MAE = "test_mae"
    TEST_RMSE = "test_rmse"
    TEST_MAX_AE = "test_max_ae"
    TEST_NLL = "test_nll"
    TEST_SPEARMAN = "test_spearman_std_err"
    TEST_MISCALIBRATION = "test_miscalibration_area"
    TEST_MEAN_STD = "test_mean_std"
    TIME_FIT = "time_fit_s"
    TIME_SCORE = "time_score_s"
    TIME_SELECT = "time_select_s"
    TIME_LABEL = "time_label_s"
    TIME_LOG = "time_log_s"
    FIT_EPOCHS = "fit_epochs"
    RETRAINED = "retrained"
    TRAINED_ON = "trained_on_labels"

    @staticmethod
    def labels_from(oracle: str) -> str:
        return f"n_labels.{oracle.replace(':', '_').replace('/', '_')}"


QUERIED_COLUMNS = (
    "qm9_index", "round", "oracle", "label", "status", "cost", "score", "pred_mean", "pred_std",
)  # fmt: skip


def queried_path(round_: int) -> str:
    return f"rounds/round_{round_:03d}/queried.csv"


ROUND_CHECKPOINT = "checkpoint/model.pt"
CAMPAIGN_PLOTS = ("plots/learning_curve.png", "plots/parity.png", "plots/std_vs_error.png")


class CampaignRun:
    """A campaign's MLflow run: queried tables, round child runs, and what resume reads back.

    Everything resume needs is read from the tracking server: the queried tables of all
    rounds (``rounds/round_NNN/queried.csv``), the last completed round (a tag), the
    test-MAE history, and the last completed round's checkpoint (in its child run).
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = MlflowClient()

    @classmethod
    def start(cls, experiment_name: str, resume: str = "") -> CampaignRun:
        """Start (or re-open, with ``resume``) the campaign run and make it active."""
        import os

        wrapper = os.environ.get("MLFLOW_RUN_ID")
        if resume:
            if wrapper and wrapper != resume:
                # `mlflow run -P resume=ID` made a fresh run for this process: point it at
                # the campaign it continues and close it.
                MlflowClient().set_tag(wrapper, TAG_RESUMED_INTO, resume)
                MlflowClient().set_terminated(wrapper, "FINISHED")
                os.environ.pop("MLFLOW_RUN_ID")
            try:
                # nested round runs go to the current experiment: make it the campaign's
                exp_id = MlflowClient().get_run(resume).info.experiment_id
                mlflow.set_experiment(experiment_id=exp_id)
                run = mlflow.start_run(run_id=resume)
            except mlflow.exceptions.MlflowException as err:
                raise ValueError(f"cannot resume run {resume!r}: {err.message}") from None
        else:
            if not wrapper and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
                mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment_name)
            run = mlflow.start_run()
        return cls(run.info.run_id)

    # --- reading back -------------------------------------------------------------------
    def queried_rounds(self) -> list[int]:
        try:
            items = self.client.list_artifacts(self.run_id, "rounds")
        except mlflow.exceptions.MlflowException:
            return []
        rounds = []
        for item in items:
            name = item.path.rsplit("/", 1)[-1]
            if item.is_dir and name.startswith("round_"):
                files = {f.path for f in self.client.list_artifacts(self.run_id, item.path)}
                if f"{item.path}/queried.csv" in files:
                    rounds.append(int(name.split("_")[1]))
        return sorted(rounds)

    def read_queried(self, round_: int) -> pd.DataFrame:
        import mlflow.artifacts

        path = mlflow.artifacts.download_artifacts(
            run_id=self.run_id, artifact_path=queried_path(round_)
        )
        return pd.read_csv(path)

    def completed_round(self) -> int:
        tag = self.client.get_run(self.run_id).data.tags.get(TAG_COMPLETED_ROUND)
        return int(tag) if tag is not None else -1

    def metric_history(self, key: str) -> list[float]:
        hist = self.client.get_metric_history(self.run_id, key)
        return [m.value for m in sorted(hist, key=lambda m: m.step)]

    def round_child(self, round_: int, finished_only: bool = True) -> list[Any]:
        exp = self.client.get_run(self.run_id).info.experiment_id
        flt = f"tags.mlflow.parentRunId = '{self.run_id}' and tags.`{TAG_ROUND}` = '{round_}'"
        runs = self.client.search_runs([exp], filter_string=flt)
        return [r for r in runs if r.info.status == "FINISHED" or not finished_only]

    def download_checkpoint(self, round_: int, dst: Path) -> Path:
        import mlflow.artifacts

        # the model of round r is the last one trained up to r (the stream scheme skips fits)
        children = []
        for r in range(round_, -1, -1):
            children = self.round_child(r)
            if children:
                break
        if not children:
            raise RuntimeError(f"run {self.run_id}: no finished child run up to round {round_}")
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=children[0].info.run_id, artifact_path=ROUND_CHECKPOINT, dst_path=str(dst)
            )
        )

    def close_stale_children(self) -> None:
        """Mark round child runs left RUNNING by a killed process as KILLED."""
        exp = self.client.get_run(self.run_id).info.experiment_id
        flt = f"tags.mlflow.parentRunId = '{self.run_id}'"
        for r in self.client.search_runs([exp], filter_string=flt):
            if r.info.status == "RUNNING":
                self.client.set_terminated(r.info.run_id, "KILLED")

    # --- writing -------------------------------------------------------------------------
    def log_queried(self, round_: int, frame: pd.DataFrame) -> None:
        missing = [c for c in QUERIED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"queried table lacks columns {missing}")
        self.client.log_text(
            self.run_id, frame[list(QUERIED_COLUMNS)].to_csv(index=False), queried_path(round_)
        )

    def complete_round(self, round_: int) -> None:
        self.client.set_tag(self.run_id, TAG_COMPLETED_ROUND, str(round_))


# --- hyper-parameter optimisation -----------------------------------------------------------
# One parent run per Optuna study (al.kind=hpo), one nested run per trial (al.kind=trial).
KIND_HPO = "hpo"
KIND_TRIAL = "trial"
TAG_STUDY = "al.study"
TAG_TRIAL_NUMBER = "optuna.trial_number"
TAG_TRIAL_STATE = "al.trial_state"
TAG_BEST_TRIAL = "al.best_trial"
TRIAL_COMPLETE, TRIAL_PRUNED, TRIAL_FAILED = "complete", "pruned", "failed"
#: The best trial's surrogate settings, keys that ``train`` and ``al_loop`` accept.
BEST_PARAMS = "best_params.yaml"
SEARCH_SPACE = "search_space.yaml"
PLOT_OPTIMIZATION_HISTORY = "plots/optimization_history.png"
PLOT_PARAM_IMPORTANCES = "plots/param_importances.png"
NOTE_PARAM_IMPORTANCES = "plots/param_importances_skipped.txt"


class HPOMetrics:
    """Metric names of study (parent) runs; trial runs use :class:`Metrics`."""

    BEST_VALUE = "best_val_mae"
    N_COMPLETE = "n_complete"
    N_PRUNED = "n_pruned"
    N_FAILED = "n_failed"


def trial_run_name(number: int) -> str:
    return f"trial_{number:04d}"


def trial_runs(parent_run_id: str) -> list[Any]:
    """The nested trial runs of a study's parent run (any status)."""
    client = MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    flt = f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{TAG_KIND}` = '{KIND_TRIAL}'"
    return client.search_runs([exp], filter_string=flt, max_results=10_000)


def mark_trial_killed(run_id: str) -> None:
    """Close the run of a trial whose worker died (its process cannot do it any more)."""
    client = MlflowClient()
    client.set_tag(run_id, TAG_TRIAL_STATE, TRIAL_FAILED)
    client.set_terminated(run_id, "KILLED")
