"""Converged checkpoints: a campaign's labelled set refitted from scratch to convergence,
beside the campaign's own (warm-started) fit, and test-set predictions as tables.

A campaign's warm chain is what it saw; a comparison of arms is made on converged fits of
their labelled sets (``checkpoints``, ``converged_steps``): every step of the schedule run,
the weights best on the campaign's validation set kept.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import Tensor

from al.data.molecules import MolecularData
from al.loop.config import LoopSettings
from al.tracking.names import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.training.fit import FitResult
from al.training.metrics import regression_report
from al.uncertainty import Prediction, Surrogate

#: report key -> campaign metric of the test-set evaluation (resume reads them back)
REPORT_METRICS = {
    "mae": CM.TEST_MAE, "rmse": CM.TEST_RMSE, "max_ae": CM.TEST_MAX_AE, "nll": CM.TEST_NLL,
    "p95_ae": CM.TEST_P95_AE, "p99_ae": CM.TEST_P99_AE,
    "spearman_std_err": CM.TEST_SPEARMAN, "miscalibration_area": CM.TEST_MISCALIBRATION,
    "mean_std": CM.TEST_MEAN_STD, "nll_raw": CM.TEST_NLL_RAW,
    "miscalibration_area_raw": CM.TEST_MISCALIBRATION_RAW,
}  # fmt: skip


def validation_mae(result: FitResult) -> float:
    """The validation MAE (eV) of the weights a fit kept (its best evaluation); NaN when the
    fit had no validation set."""
    if 0 <= result.best_epoch < len(result.history):
        return float(result.history[result.best_epoch].val_mae)
    return float("nan")


def prediction_table(data: MolecularData, rows: Tensor, pred: Prediction) -> pd.DataFrame:
    """The prediction ``pred`` of the data rows ``rows`` (``[n]``) as a table of
    :data:`~al.tracking.names.PREDICTION_COLUMNS`; the target is ``data.y`` (its last
    column for ``[n_mol, D]`` targets)."""
    target = data.y[rows] if data.y.dim() == 1 else data.y[rows, -1]
    nan = np.full(rows.numel(), np.nan)
    return pd.DataFrame({
        "qm9_index": data.qm9_index[rows].numpy(),
        "target": target.double().numpy(),
        "mean": pred.mean.double().numpy(),
        "std": pred.std.double().numpy() if pred.std is not None else nan,
        "std_raw": pred.std_raw.double().numpy() if pred.std_raw is not None else nan,
    })  # fmt: skip


@dataclass
class ConvergedFit:
    """One converged refit: ``converged.*`` metrics, test and validation predictions."""

    metrics: dict[str, float]
    test: pd.DataFrame
    validation: pd.DataFrame


def converged_fit(
    surrogate: Surrogate,
    data: MolecularData,
    train_data: MolecularData,
    train_rows: Tensor,
    val_rows: Tensor,
    test_rows: Tensor,
    steps: int,
) -> ConvergedFit:
    """Refit ``surrogate`` from scratch on ``train_rows`` for ``steps`` optimizer steps (all
    run, the best weights on ``val_rows`` kept), evaluate it on ``test_rows`` of ``data``,
    then put the surrogate's own weights back, so that its owner goes on as if nothing had
    happened. ``train_data`` carries the training labels (``y``)."""
    members = [copy.deepcopy(m) for m in surrogate.members()]
    meta = surrogate.checkpoint_meta()
    t0 = time.perf_counter()
    result = surrogate.fit(train_data, train_rows, val_rows, steps=steps)
    pred = surrogate.predict(data, test_rows)
    seconds = time.perf_counter() - t0
    val_pred = surrogate.predict(train_data, val_rows)
    surrogate.load_members(members, meta)
    report = regression_report(pred.mean, data.y[test_rows], pred.std, pred.std_raw)
    metrics = {CM.converged(metric): report.get(key, float("nan"))
               for key, metric in REPORT_METRICS.items()}  # fmt: skip
    metrics.update({
        CM.converged(CM.VAL_MAE): validation_mae(result),
        CM.converged(CM.STD_SCALE): result.std_scale,
        CM.converged(CM.FIT_STEPS): result.steps,
        CM.converged("best_step"): result.best_step,
        CM.converged(CM.TIME_FIT): seconds,
    })  # fmt: skip
    return ConvergedFit(
        metrics, prediction_table(data, test_rows, pred),
        prediction_table(train_data, val_rows, val_pred),
    )  # fmt: skip


def due_round(
    settings: LoopSettings, steps: Mapping[int, int], done: Collection[int], round_: int,
    n_labelled: int,
) -> int | None:  # fmt: skip
    """The round whose labelled set is due a converged refit after ``round_``, or None.

    ``steps`` maps each round to its training-label count (its metric step), ``done`` holds
    the steps that have a converged refit, ``n_labelled`` counts the training labels so
    far. With ``checkpoints=all`` that is ``round_`` unless its step is done; else the
    first round that reached the last checkpoint passed (a count at most ``n_labelled``),
    unless a refit at or beyond that count is done: a kill may have put that round behind.
    """
    if settings.checkpoint_every_round:
        return None if steps.get(round_, -1) in done else round_
    due = [c for c in settings.checkpoint_counts() if c <= n_labelled]
    if not due or any(step >= due[-1] for step in done):
        return None
    return min(r for r, n in steps.items() if n >= due[-1])
