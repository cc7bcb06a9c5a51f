"""A campaign's round records: what it knows of its rounds' fits (:class:`RoundHistory`)
and what it sends the tracker of them (:class:`RoundRecords`): each round's metrics at
``step = n_labelled``, the final refit's, and the model artifacts of a fit."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from al.baselines import baseline_of
from al.data.molecules import MolecularData
from al.loop.converged import REPORT_METRICS, ConvergedFit, prediction_table, validation_mae
from al.loop.ledger import Labelled
from al.loop.tracker import CampaignTracker, ModelArtifacts
from al.tracking.names import (
    EVALUATED_ON_HELDOUT,
    EVALUATED_ON_TEST,
    converged_predictions_path,
)
from al.tracking.names import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.training.fit import EpochStats, FitResult
from al.training.metrics import regression_report
from al.uncertainty import Prediction, Surrogate

log = logging.getLogger(__name__)

__all__ = ["RoundHistory", "RoundRecords", "baseline_cost", "learning_curve"]


@dataclass
class RoundHistory:
    """What a campaign knows of its rounds' fits; resume reads it back from the tracker.

    Attributes:
        mae: the test MAE of each round (a round without a refit repeats the last one).
        val_mae: the validation MAE of each round's fit (what the stopping rules read).
        trained_on: labelled-set size of the current model.
        last_report: the current model's test metrics (:func:`regression_report` keys).
        fit_info: the last fit's std scale, steps and warm start (metric keys).
        test_pred: the current model's test prediction (None until one is made this process).
    """

    mae: list[float] = field(default_factory=list)
    val_mae: list[float] = field(default_factory=list)
    trained_on: int = 0
    last_report: dict[str, float] = field(default_factory=dict)
    fit_info: dict[str, float] = field(default_factory=dict)
    test_pred: Prediction | None = None

    def add_fit(
        self, n_labelled: int, pred: Prediction, report: dict[str, float], result: FitResult
    ) -> None:
        """A round's fit on ``n_labelled`` labels: its test prediction ``pred`` and metrics
        ``report``, its ``result``."""
        self.test_pred = pred
        self.mae.append(report["mae"])
        self.val_mae.append(validation_mae(result))
        self.trained_on, self.last_report = n_labelled, report
        self.fit_info = {CM.STD_SCALE: result.std_scale, CM.FIT_STEPS: result.steps,
                         CM.WARM_START: int(result.warm)}  # fmt: skip

    def repeat(self) -> None:
        """A round without a fit: the last round's MAEs again (NaN before any)."""
        self.mae.append(self.last_report["mae"])
        self.val_mae.append(self.val_mae[-1] if self.val_mae else float("nan"))


def baseline_cost(surrogate: Surrogate) -> float | None:
    """What a Δ-learning surrogate's baseline cost so far (``al.baselines``); None without
    a baseline."""
    baseline = baseline_of(surrogate)
    return None if baseline is None else float(baseline.cost_spent)


def learning_curve(labelled: Labelled, maes: Sequence[float]) -> list[tuple[int, float]]:
    """``(n_labelled, test MAE)`` per round of ``labelled``, the MAEs in round order."""
    return list(zip(labelled.counts_per_round(), maes, strict=False))


def _report_metrics(report: Mapping[str, float]) -> dict[str, float]:
    return {metric: report.get(key, float("nan")) for key, metric in REPORT_METRICS.items()}


class RoundRecords:
    """Builds a campaign's records and sends them to its tracker.

    Args:
        tracker: where the records go.
        data, test: all molecules and the test rows (``[n_test]``).
        prior_labels, prior_cost: the DFT labels that built an oracle or a baseline (NaN
            when their lineage is unknown) and their cost, logged beside ``cost_spent``.

    What ``test`` is (QM9's test set, or a pool's held-out set) and the labels' unit and
    name, as the figures say them, are set by :meth:`describe`.
    """

    def __init__(
        self,
        tracker: CampaignTracker,
        data: MolecularData,
        test: Tensor,
        prior_labels: float = 0.0,
        prior_cost: float = 0.0,
    ) -> None:
        self.tracker, self.data, self.test = tracker, data, test
        self.prior_labels, self.prior_cost = prior_labels, prior_cost
        self.evaluated_on, self.unit, self.quantity = EVALUATED_ON_TEST, "eV", "H_atomization"

    def describe(self, pool: str, unit: str, target: str) -> None:
        """A ``pool`` campaign's figures are measured on its held-out set, in its labels'
        ``unit`` and ``target`` name; a QM9 campaign's (``pool=''``) as they are."""
        if pool:
            self.evaluated_on, self.unit, self.quantity = EVALUATED_ON_HELDOUT, unit, target

    def round_metrics(
        self, round_: int, labelled: Labelled, history: RoundHistory, report: Mapping[str, float],
        epochs: int, retrained: bool, timings: Mapping[str, float], baseline: float | None,
    ) -> dict[str, float]:  # fmt: skip
        """The metrics of ``round_``: labels and costs of ``labelled``, the test ``report``,
        the fit (``epochs``; ``retrained``: fitted this round, else the last fit's report),
        the phases' ``timings`` and the baseline's cost (None: no baseline)."""
        table = labelled.table
        cost_spent = labelled.cost_spent + (baseline or 0.0)
        metrics = {
            CM.N_LABELLED: len(labelled.ok), CM.ROUND: round_, CM.COST_SPENT: cost_spent,
            CM.N_REQUESTED: len(table), CM.N_FAILED: int((table["status"] != "ok").sum()),
            CM.POOL_SCORED: timings.get("pool_scored", 0), **_report_metrics(report),
            CM.VAL_MAE: history.val_mae[-1] if history.val_mae else float("nan"),
            CM.FIT_EPOCHS: epochs, CM.RETRAINED: int(retrained),
            CM.TRAINED_ON: history.trained_on, CM.TIME_FIT: timings.get("fit", 0.0),
            **(history.fit_info if retrained else {}),
        }  # fmt: skip
        if round_ > 0:
            metrics[CM.TIME_SCORE] = timings.get("score", 0.0)
            metrics[CM.TIME_SELECT] = timings.get("select", 0.0)
        metrics[CM.TIME_LABEL] = timings.get("label", 0.0)
        for oracle, n in table.loc[table["status"] == "ok", "oracle"].value_counts().items():
            metrics[CM.labels_from(str(oracle))] = int(n)
        metrics["round_cost"] = float(table.loc[table["round"] == round_, "cost"].sum())
        if self.prior_labels != 0:  # NaN (lineage unknown) is logged as missing
            metrics[CM.N_PRIOR_LABELS] = self.prior_labels
            metrics[CM.COST_PRIOR] = self.prior_cost
            metrics[CM.COST_TOTAL] = metrics[CM.COST_SPENT] + self.prior_cost
        if labelled.cost_lost:
            metrics[CM.COST_LOST] = labelled.cost_lost
        validation, heldout = labelled.validation, labelled.heldout
        if len(validation):
            metrics[CM.N_VALIDATION] = int((validation["status"] == "ok").sum())
            metrics[CM.COST_VALIDATION] = float(validation["cost"].sum())
        if len(heldout):
            metrics[CM.N_HELDOUT] = int((heldout["status"] == "ok").sum())
            metrics[CM.COST_HELDOUT] = float(heldout["cost"].sum())
        if baseline is not None:  # the cheap labels of a Δ-learning baseline
            metrics[CM.COST_BASELINE] = baseline
        return metrics

    def record_round(
        self, round_: int, labelled: Labelled, history: RoundHistory, report: Mapping[str, float],
        epochs: int, retrained: bool, timings: Mapping[str, float], baseline: float | None,
    ) -> None:  # fmt: skip
        """The round's metrics (:meth:`round_metrics`) at ``step = n_labelled``, then mark
        the round completed."""
        self.tracker.check_owner()
        metrics = self.round_metrics(
            round_, labelled, history, report, epochs, retrained, timings, baseline
        )
        self.tracker.log_round_metrics(len(labelled.ok), metrics)
        self.tracker.complete_round(round_)

    def test_report(self, pred: Prediction) -> dict[str, float]:
        """The test metrics of ``pred`` (``[n_test]``, :func:`regression_report` keys)."""
        return regression_report(pred.mean, self.data.y[self.test], pred.std, pred.std_raw)

    def record_final_refit(
        self, labelled: Labelled, history: RoundHistory, pred: Prediction, result: FitResult,
        seconds: float,
    ) -> None:  # fmt: skip
        """The final refit (``result``, its test prediction ``pred``, its time): test
        metrics, std scale, steps and time as ``final_refit.*`` at the last step, beside the
        last round's own (the warm fit's, in ``history``)."""
        report = self.test_report(pred)
        metrics = {CM.final_refit(key): value for key, value in _report_metrics(report).items()}
        metrics.update({CM.final_refit(CM.STD_SCALE): result.std_scale,
                        CM.final_refit(CM.FIT_STEPS): result.steps,
                        CM.final_refit(CM.WARM_START): int(result.warm),
                        CM.final_refit(CM.TIME_FIT): seconds})  # fmt: skip
        self.tracker.log_round_metrics(len(labelled.ok), metrics)
        log.info(
            "event=final_refit test_mae=%.4f warm_test_mae=%.4f fit_s=%.1f",
            report["mae"], history.mae[-1], seconds,
        )  # fmt: skip

    def record_converged(self, n_labelled: int, out: ConvergedFit, warm_mae: float) -> None:
        """A converged refit of ``n_labelled`` labels: its test and validation predictions
        and its ``converged.*`` metrics at ``step = n_labelled``; ``warm_mae`` is the
        campaign's own test MAE at that step."""
        self.tracker.log_predictions(converged_predictions_path(n_labelled), out.test)
        self.tracker.log_predictions(
            converged_predictions_path(n_labelled, "validation"), out.validation
        )
        self.tracker.log_round_metrics(n_labelled, out.metrics)
        log.info(
            "event=converged n_labelled=%d test_mae=%.4f val_mae=%.4f warm_test_mae=%.4f "
            "fit_s=%.1f", n_labelled, out.metrics[CM.converged(CM.TEST_MAE)],
            out.metrics[CM.converged(CM.VAL_MAE)], warm_mae,
            out.metrics[CM.converged(CM.TIME_FIT)],
        )  # fmt: skip

    def record_fit(
        self, surrogate: Surrogate, round_: int, pred: Prediction, labelled: Labelled,
        history: RoundHistory, fit_history: Sequence[EpochStats],
    ) -> None:  # fmt: skip
        """The artifacts of ``round_``'s fit on ``labelled`` (:meth:`model_artifacts`; its
        epochs ``fit_history``), the learning curve up to its test prediction ``pred``;
        called inside the tracker's ``fit_run``, before ``history`` has the round."""
        meta = {"round": round_, "data_version": labelled.digest(), "n_labelled": len(labelled.ok)}
        test_mae = float((pred.mean - self.data.y[self.test]).abs().mean())
        curve = learning_curve(labelled, [*history.mae, test_mae])
        artifacts = self.model_artifacts(surrogate, round_, pred, curve, meta, fit_history)
        self.tracker.log_round_artifacts(artifacts)

    def final_artifacts(
        self, surrogate: Surrogate, labelled: Labelled, history: RoundHistory
    ) -> ModelArtifacts:
        """The final ``surrogate`` with its test prediction (the last evaluation's, made
        again only when none was made in this process) and the whole learning curve."""
        pred = history.test_pred
        if pred is None:  # resumed after the last evaluation: none made in this process
            pred = surrogate.predict(self.data, self.test)
        meta = {"data_version": labelled.digest()}
        curve = learning_curve(labelled, history.mae)
        return self.model_artifacts(surrogate, len(history.mae) - 1, pred, curve, meta)

    def model_artifacts(
        self,
        surrogate: Surrogate,
        round_: int,
        pred: Prediction,
        curve: list[tuple[int, float]],
        meta: Mapping[str, Any],
        history: Sequence[EpochStats] = (),
    ) -> ModelArtifacts:
        """``surrogate``, its test prediction ``pred`` (``[n_test]``) and ``meta`` (added to
        the surrogate's checkpoint metadata)."""
        return ModelArtifacts(
            members=list(surrogate.members()),
            meta={**surrogate.checkpoint_meta(), **meta},
            round=round_,
            curve=curve,
            test_mean=pred.mean.numpy(),
            test_std=None if pred.std is None else pred.std.numpy(),
            test_target=self.data.y[self.test].numpy(),
            history=list(history),
            predictions=prediction_table(self.data, self.test, pred),
            evaluated_on=self.evaluated_on,
            unit=self.unit,
            quantity=self.quantity,
        )
