"""The active-learning loop: fit, evaluate, score, select, label, record, stop.

:class:`Campaign` is the algorithm; what varies is passed in, chosen once:

- ``scheme`` (:mod:`al.loop.schemes`): which pool molecules a round offers, when to retrain;
- ``selection`` (:mod:`al.loop.selection`): single- or multi-fidelity requests (with its
  acquisition function) and training targets;
- ``tracker`` (:mod:`al.loop.tracker`): where rounds are recorded and resume reads them
  back (MLflow, or memory);
- ``surrogate``, ``oracles`` and the stopping ``rules``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch
from torch import Tensor

from al import progress
from al.baselines import baseline_of
from al.config import ConfigError
from al.data.molecules import MolecularData
from al.data.splits import Splits
from al.loop.config import CampaignConfig
from al.loop.converged import REPORT_METRICS, converged_fit, prediction_table, validation_mae
from al.loop.journal import LabelJournal, LabelsNotRecordedError, journal_path, pay
from al.loop.ledger import Labelled
from al.loop.schemes import DataScheme
from al.loop.seeds import round_generator
from al.loop.selection import Selection
from al.loop.stopping import (
    Allowance,
    CampaignProgress,
    StoppingRule,
    first_reason,
    remaining,
)
from al.loop.tracker import CampaignTracker, ModelArtifacts
from al.models.checkpoint import load_checkpoint
from al.oracles import Oracle
from al.tracking.names import QUERIED_COLUMNS, ROLE_VALIDATION, converged_predictions_path
from al.tracking.names import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.training.fit import EpochStats
from al.training.metrics import regression_report
from al.uncertainty import Prediction, Surrogate

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Campaign", "Labelled", "round0_requests", "round_generator"]


def round0_requests(
    config: CampaignConfig, selection: Selection, left: Allowance, validation_rows: Tensor,
    initial_rows: Tensor,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Round 0's requests: the validation set (``validation_rows``, ``[v]``) and as many of
    ``initial_rows`` (``[n]``) as the budgets ``left`` pay for beyond it. One error line
    (:class:`ConfigError`) when they pay for the validation set and not one initial
    label: checked before a campaign's run exists, and again when it starts."""
    validation = selection.validation_request(validation_rows)
    n, cost = len(validation), float(selection.costs[-1]) + selection.baseline_each
    if n and left.count(cost) < n:
        raise ConfigError(
            f"budget_labels={config.budget_labels} and budget_cost={config.budget_cost:g} do "
            f"not pay for the validation set (val_size={config.val_size}: {n} labels at "
            f"{cost:g}); expected budgets above it, or a smaller val_size"
        )
    if n:
        left = Allowance(left.labels - n, left.cost - n * cost)
    request = selection.initial_request(initial_rows, left)
    if request.empty:
        raise ConfigError(
            f"budget_labels={config.budget_labels} and budget_cost={config.budget_cost:g} pay "
            f"for no initial molecule; expected at least {selection.n_fidelities} label(s) and "
            f"a cost of {float(selection.costs.sum()):g} beyond the validation set's {n} "
            "label(s)"
        )
    return validation, request


class Campaign:
    """One campaign; its collaborators are built by the caller and passed in.

    Args:
        config: the campaign settings (sizes, seed, validation share, ...).
        data: all molecules (``y [n_mol]`` is the ground truth, used only on the test set).
        splits: the fixed test/oracle/pool split.
        surrogate: the uncertainty-aware model, refitted from scratch by each fit.
        oracles: the labellers, cheapest first (one, unless multi-fidelity).
        rules: stopping rules, checked after every round.
        scheme: which pool molecules a round offers, and when to retrain.
        selection: what a round asks the oracles for (it holds the acquisition function),
            and the training targets.
        tracker: where the rounds go, and where resume reads them back.
        prior_labels, prior_cost: the DFT labels that trained an oracle or a baseline model
            (their lineage) and what they cost: logged beside ``cost_spent`` (which does
            not include them) and in ``cost_total`` (which does).
    """

    def __init__(
        self,
        config: CampaignConfig,
        data: MolecularData,
        splits: Splits,
        surrogate: Surrogate,
        oracles: Sequence[Oracle],
        rules: Sequence[StoppingRule],
        scheme: DataScheme,
        selection: Selection,
        tracker: CampaignTracker,
        prior_labels: float = 0.0,
        prior_cost: float = 0.0,
    ) -> None:
        self.config, self.data, self.splits = config, data, splits
        #: DFT labels (and their cost) that built an oracle or baseline model before the
        #: campaign; NaN when its lineage cannot be read
        self.prior_labels, self.prior_cost = prior_labels, prior_cost
        self.surrogate, self.oracles = surrogate, list(oracles)
        self.rules, self.scheme, self.selection = list(rules), scheme, selection
        self.tracker = tracker
        self.pool = data.rows_of(splits.pool)  # [n_pool] rows
        self.test = data.rows_of(splits.test)  # [n_test] rows
        self.labelled = Labelled.empty()
        self.mae_history: list[float] = []
        #: the validation MAE of each round's fit (what the stopping rules read)
        self.val_mae_history: list[float] = []
        self.timings: dict[str, float] = {}
        self.trained_on = 0  # labelled-set size of the current model
        self.last_report: dict[str, float] = {}
        self.fit_info: dict[str, float] = {}  # the last fit's std scale and steps
        #: the current model's test-set prediction (None until one is made this process)
        self.test_pred: Prediction | None = None
        self.bar = progress.bar(total=0, enabled=False)  # replaced by execute

    # --- the algorithm ---------------------------------------------------------------------
    def execute(self) -> str:
        """Run (or continue) the campaign until a stopping rule fires; returns the reason.

        On a terminal a bar shows the rounds (with an ETA when ``rounds`` is set), the phase
        under way, the labels and the last test MAE; ``progress=false`` hides it.
        """
        rounds = self.config.rounds + 1 if self.config.rounds else None
        self.bar = progress.bar(
            total=rounds, desc="campaign", unit="round", enabled=self.config.progress
        )
        with self.bar:
            return self._execute()

    def _execute(self) -> str:
        round_, fitted = self.restore()
        if fitted:  # a checkpoint's converged fit that a kill cut short
            self.converge(round_)
        self.bar.update(len(self.mae_history))
        if round_ < 0:
            round_ = 0
            validation, request = round0_requests(
                self.config, self.selection, remaining(self.rules, self.progress(0)),
                self.validation_rows(), self.initial_rows(),
            )  # fmt: skip
            self.label(0, pd.concat([request, validation], ignore_index=True))
        while True:
            if not fitted:
                self.fit_and_evaluate(round_)
            fitted = False
            done = self.progress(round_)
            left = remaining(self.rules, done)
            reason = first_reason(self.rules, done) or self.selection.nothing_fits(left)
            if reason:
                self.refit_final(round_)
                return reason
            round_ += 1
            candidates = self.scheme.candidates(
                round_, self.pool, self.data.qm9_index, self.closed()
            )
            if candidates.numel() == 0:
                return "no candidates left"
            pred = None  # an acquisition that needs no prediction (random) scores nothing
            self.timings["pool_scored"], self.timings["score"] = 0, 0.0
            if self.selection.scores_pool:
                candidates = self.selection.within_budget(round_, candidates, left)
                if candidates.numel() == 0:
                    self.refit_final(round_ - 1)
                    return f"round {round_}: the cost budget leaves no room to score the pool"
                self.timings["pool_scored"] = candidates.numel()
                log.info("event=phase phase=score round=%d n=%d", round_, candidates.numel())
                pred = self.timed("score", self.surrogate.predict, self.data, candidates)
                left = remaining(self.rules, self.progress(round_))  # the scoring was paid
            chosen = self.timed(
                "select", self.selection.choose, round_, candidates, pred, self.labelled, left
            )
            if chosen.empty:
                self.refit_final(round_ - 1)
                return f"round {round_}: nothing to ask for within the budgets"
            self.label(round_, chosen)

    def fit_and_evaluate(self, round_: int) -> None:
        """Refit on the labelled set when the scheme asks for it, evaluate on the test set,
        record the round. Without a refit the round repeats the last evaluation."""
        n_labelled = len(self.labelled.ok)
        if not self.scheme.needs_refit(n_labelled, self.trained_on):
            self.timings["fit"] = 0.0
            self.mae_history.append(self.last_report["mae"])
            self.val_mae_history.append(
                self.val_mae_history[-1] if self.val_mae_history else float("nan")
            )
            self.bar.update(1)
            self.record_round(round_, self.last_report, 0, retrained=False)
            log.info("event=round_done round=%d retrained=0", round_)
            self.converge(round_)
            return
        train_data, train_rows, val_rows = self.training_set(round_)
        self.tracker.check_owner()
        with self.tracker.fit_run(round_, self.labelled) as on_epoch:
            log.info("event=phase phase=fit round=%d n_train=%d", round_, train_rows.numel())
            fit, warm = self.surrogate.fit, self.warm_share()
            result = self.timed(
                "fit", fit, train_data, train_rows, val_rows, on_epoch=on_epoch, warm=warm
            )
            pred = self.timed("evaluate", self.surrogate.predict, self.data, self.test)
            self.test_pred = pred
            report = regression_report(pred.mean, self.data.y[self.test], pred.std, pred.std_raw)
            t0 = time.perf_counter()
            meta = {"round": round_, "data_version": self.labelled.digest(),
                    "n_labelled": n_labelled}  # fmt: skip
            curve = self.learning_curve(self.test_mae(pred))
            self.tracker.log_round_artifacts(
                self.model_artifacts(round_, pred, curve, meta, result.history)
            )
        self.mae_history.append(report["mae"])
        self.val_mae_history.append(validation_mae(result))
        self.trained_on, self.last_report = n_labelled, report
        self.fit_info = {CM.STD_SCALE: result.std_scale, CM.FIT_STEPS: result.steps,
                         CM.WARM_START: int(result.warm)}  # fmt: skip
        self.bar.update(1)
        self.bar.set_postfix(labels=n_labelled, test_mae=f"{report['mae']:.4f}")
        self.record_round(round_, report, len(result.history))
        # this round's own recording time (artifacts, model, metrics), sent on its own
        self.tracker.log_round_metrics(n_labelled, {CM.TIME_LOG: time.perf_counter() - t0})
        log.info(
            "event=round_done round=%d n_labelled=%d test_mae=%.4f fit_s=%.1f",
            round_, n_labelled, report["mae"], self.timings["fit"],
        )  # fmt: skip
        self.converge(round_)

    def warm_share(self) -> float:
        """The share of a full schedule a round's fit gets when it continues from the last
        round's weights (``warm_fraction``), or 0: from scratch."""
        return self.config.warm_fraction if self.config.warm_start else 0.0

    def refit_final(self, round_: int) -> None:
        """After warm starts, refit the last round from scratch (``final_refit``), so the
        final model is not handicapped by them; both evaluations are kept: the round's
        metrics are the warm fit's, ``final_refit_*`` the cold fit's, at the same step."""
        if not (self.config.final_refit and self.fit_info.get(CM.WARM_START)):
            return
        train_data, train_rows, val_rows = self.training_set(round_)
        log.info("event=phase phase=final_refit round=%d n_train=%d", round_, train_rows.numel())
        result = self.timed(
            "final_refit", self.surrogate.fit, train_data, train_rows, val_rows,
            steps=self.config.final_refit_steps,
        )  # fmt: skip
        pred = self.test_pred = self.surrogate.predict(self.data, self.test)
        report = regression_report(pred.mean, self.data.y[self.test], pred.std, pred.std_raw)
        metrics = {CM.final_refit(metric): report.get(key, float("nan"))
                   for key, metric in REPORT_METRICS.items()}  # fmt: skip
        metrics.update({CM.final_refit(CM.STD_SCALE): result.std_scale,
                        CM.final_refit(CM.FIT_STEPS): result.steps,
                        CM.final_refit(CM.TIME_FIT): self.timings["final_refit"]})  # fmt: skip
        self.tracker.log_round_metrics(len(self.labelled.ok), metrics)
        log.info(
            "event=final_refit test_mae=%.4f warm_test_mae=%.4f fit_s=%.1f",
            report["mae"], self.mae_history[-1], self.timings["final_refit"],
        )  # fmt: skip

    def converge(self, round_: int) -> None:
        """At a converged checkpoint (``checkpoints``; ``all``: every round), the labelled set
        of the first round that reached it is refitted from scratch (``converged_steps``,
        :func:`~al.loop.converged.converged_fit`), even when a kill put that round behind;
        logged as ``converged.*`` at that round's step. The campaign's model is kept."""
        steps = self.labelled.steps_per_round()
        done = self.tracker.metric_by_step(CM.converged(CM.TEST_MAE))
        if self.config.checkpoint_every_round:
            if steps.get(round_, -1) in done:
                return
            target = round_
        else:
            due = [c for c in self.config.checkpoint_counts() if c <= len(self.labelled.ok)]
            if not due or any(step >= due[-1] for step in done):
                return
            target = min(r for r, n in steps.items() if n >= due[-1])
        n_labelled = steps[target]
        train_data, train_rows, val_rows = self.training_set(target, self.labelled.up_to(target))
        log.info("event=phase phase=converge round=%d n_train=%d", target, train_rows.numel())
        self.bar.set_description("campaign: converge")
        out = converged_fit(
            self.surrogate, self.data, train_data, train_rows, val_rows, self.test,
            self.config.converged_steps,
        )  # fmt: skip
        self.tracker.log_predictions(converged_predictions_path(n_labelled), out.test)
        self.tracker.log_predictions(
            converged_predictions_path(n_labelled, "validation"), out.validation
        )
        self.tracker.log_round_metrics(n_labelled, out.metrics)
        log.info(
            "event=converged n_labelled=%d test_mae=%.4f val_mae=%.4f warm_test_mae=%.4f "
            "fit_s=%.1f", n_labelled, out.metrics[CM.converged(CM.TEST_MAE)],
            out.metrics[CM.converged(CM.VAL_MAE)], self.mae_history[target],
            out.metrics[CM.converged(CM.TIME_FIT)],
        )  # fmt: skip

    # --- steps -------------------------------------------------------------------------------
    def validation_rows(self) -> Tensor:
        """Round 0: the validation set, ``min(val_size, n_pool - 1)`` random pool rows
        (``[v]``; none when ``val_size`` is 0), drawn once per campaign from its own seeded
        stream, so every arm of a seed validates on the same molecules."""
        if self.config.val_size <= 0:
            return self.pool[:0]
        gen = round_generator(self.config.seed, 0, "validation set")
        k = min(self.config.val_size, self.pool.numel() - 1)
        return self.pool[torch.randperm(self.pool.numel(), generator=gen)[:k]]

    def initial_rows(self) -> Tensor:
        """Round 0: ``min(initial_size, n_pool - n_validation)`` random pool rows outside
        the validation set, ``[n]``."""
        pool = self.pool[~torch.isin(self.pool, self.validation_rows())]
        gen = round_generator(self.config.seed, 0, "initial")
        k = min(self.config.initial_size, pool.numel())
        return pool[torch.randperm(pool.numel(), generator=gen)[:k]]

    def closed(self) -> Tensor:
        """``[c]`` QM9 indices never offered again (see :meth:`Selection.closed`)."""
        return torch.as_tensor(self.selection.closed(self.labelled))

    def journal(self) -> LabelJournal:
        """The campaign's label journal (its location is the tracker's ``journal_path``)."""
        path = getattr(self.tracker, "journal_path", None)
        return LabelJournal(path if path is not None else journal_path(self.tracker.run_id))

    def label(self, round_: int, request: pd.DataFrame) -> None:
        """Ask the oracles for ``request`` and record every row (failures too).

        Nothing paid is lost: every answer is journalled as it comes
        (:func:`~al.loop.journal.pay`), and what a kill made the campaign pay twice is in
        ``cost_spent``. Then the round's table goes to the tracker; if that fails,
        :class:`LabelsNotRecordedError` says where the paid labels are and how to resume.
        """
        t0 = time.perf_counter()
        request = request.reset_index(drop=True)
        journal = self.journal()
        frame, reused = pay(journal, round_, request, self.oracles, self.tracker.check_owner)
        self.timings["label"] = time.perf_counter() - t0
        self.labelled.cost_lost = journal.lost_cost()
        frame["round"] = round_
        for col in ("score", "pred_mean", "pred_std", "role"):
            frame[col] = request[col].to_numpy()
        if reused:
            log.info("event=labels_reused round=%d n=%d journal=%s", round_, reused, journal.path)
        try:
            self.tracker.log_queried(round_, frame)
        except Exception as err:  # any failure to record: say where the labels are
            raise LabelsNotRecordedError(self.tracker.run_id, journal.path, err, round_) from None
        log.info("event=labels_paid round=%d n=%d cost=%g", round_, len(frame), frame["cost"].sum())
        self.labelled.add(frame[list(QUERIED_COLUMNS)])
        if (frame["role"] == ROLE_VALIDATION).any():  # anyone can check it was never trained on
            self.tracker.log_validation(self.labelled.validation)
        n_failed = int((frame["status"] != "ok").sum())
        if n_failed:
            log.warning("event=labels_failed round=%d n_failed=%d", round_, n_failed)

    def training_set(
        self, round_: int, labelled: Labelled | None = None
    ) -> tuple[MolecularData, Tensor, Tensor]:
        """The data with oracle labels in ``y`` (layout from the selection: ``[n_mol]``, or
        ``[n_mol, D]`` with NaN), the training rows ``[m]`` and the validation rows ``[v]``,
        of ``labelled`` (default: every label so far).

        With a validation set (``val_size``) these are every training label and the
        validation set, the same every round; without one (``val_size=0``), a seeded
        split of the labelled rows redrawn each round (``val_fraction`` of them).
        """
        labelled = self.labelled if labelled is None else labelled
        y, rows = self.selection.training_targets(labelled)
        if self.config.val_size > 0:
            y = y.clone()
            val_rows = self.selection.validation_targets(labelled, y)
            return replace(self.data, y=y), rows, val_rows
        gen = round_generator(self.config.seed, round_, "validation")
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        n_val = round(self.config.val_fraction * rows.numel())
        if self.config.val_fraction > 0:
            n_val = max(1, n_val)
        return replace(self.data, y=y), rows[n_val:], rows[:n_val]

    def progress(self, round_: int) -> CampaignProgress:
        """Where the campaign stands after ``round_``: what the stopping rules read."""
        left = int((~torch.isin(self.data.qm9_index[self.pool], self.closed())).sum())
        return CampaignProgress(
            round=round_,
            n_labelled=len(self.labelled.ok),
            n_requested=len(self.labelled.table),
            cost_spent=self.labelled.cost_spent + self.baseline_cost(),
            val_mae_history=list(self.val_mae_history),
            pool_left=left,
        )

    def baseline_cost(self) -> float:
        """What a Δ-learning surrogate's baseline cost so far (``al.baselines``; 0 without)."""
        baseline = baseline_of(self.surrogate)
        return baseline.cost_spent if baseline is not None else 0.0

    def timed(self, phase: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, its wall time kept in ``timings[phase]``."""
        self.bar.set_description(f"campaign: {phase}")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[phase] = time.perf_counter() - t0
        return out

    # --- records -----------------------------------------------------------------------------
    def record_round(
        self, round_: int, report: dict[str, float], epochs: int, retrained: bool = True
    ) -> None:
        """The round's metrics at ``step = n_labelled``, then mark the round completed."""
        self.tracker.check_owner()
        table = self.labelled.table
        this_round = table[table["round"] == round_]
        metrics = {
            CM.N_LABELLED: len(self.labelled.ok),
            CM.ROUND: round_,
            CM.COST_SPENT: self.labelled.cost_spent + self.baseline_cost(),
            CM.N_REQUESTED: len(table),
            CM.N_FAILED: int((table["status"] != "ok").sum()),
            CM.POOL_SCORED: self.timings.get("pool_scored", 0),
            **{metric: report.get(key, float("nan")) for key, metric in REPORT_METRICS.items()},
            CM.VAL_MAE: self.val_mae_history[-1] if self.val_mae_history else float("nan"),
            CM.FIT_EPOCHS: epochs,
            CM.RETRAINED: int(retrained),
            CM.TRAINED_ON: self.trained_on,
            CM.TIME_FIT: self.timings.get("fit", 0.0),
            **(self.fit_info if retrained else {}),
        }
        if round_ > 0:
            metrics.update(
                {CM.TIME_SCORE: self.timings.get("score", 0.0),
                 CM.TIME_SELECT: self.timings.get("select", 0.0)}
            )  # fmt: skip
        metrics[CM.TIME_LABEL] = self.timings.get("label", 0.0)
        for oracle, n in table.loc[table["status"] == "ok", "oracle"].value_counts().items():
            metrics[CM.labels_from(str(oracle))] = int(n)
        metrics["round_cost"] = float(this_round["cost"].sum())
        if self.prior_labels != 0:  # NaN (lineage unknown) is logged as missing
            metrics[CM.N_PRIOR_LABELS] = self.prior_labels
            metrics[CM.COST_PRIOR] = self.prior_cost
            metrics[CM.COST_TOTAL] = metrics[CM.COST_SPENT] + self.prior_cost
        if self.labelled.cost_lost:
            metrics[CM.COST_LOST] = self.labelled.cost_lost
        validation = self.labelled.validation
        if len(validation):
            metrics[CM.N_VALIDATION] = int((validation["status"] == "ok").sum())
            metrics[CM.COST_VALIDATION] = float(validation["cost"].sum())
        if baseline_of(self.surrogate) is not None:  # the cheap labels of a Δ-learning baseline
            metrics[CM.COST_BASELINE] = self.baseline_cost()
        self.tracker.log_round_metrics(len(self.labelled.ok), metrics)
        self.tracker.complete_round(round_)

    def test_mae(self, pred: Prediction) -> float:
        return float((pred.mean - self.data.y[self.test]).abs().mean())

    def learning_curve(self, *latest: float) -> list[tuple[int, float]]:
        """``(n_labelled, test MAE)`` per round so far, ``latest`` appended to the MAEs."""
        counts = self.labelled.counts_per_round()
        return list(zip(counts, [*self.mae_history, *latest], strict=False))

    def model_artifacts(
        self,
        round_: int,
        pred: Prediction,
        curve: list[tuple[int, float]],
        meta: dict[str, Any],
        history: Sequence[EpochStats] = (),
    ) -> ModelArtifacts:
        """The current surrogate, its test prediction ``pred`` (``[n_test]``) and ``meta``
        (added to the surrogate's checkpoint metadata)."""
        return ModelArtifacts(
            members=list(self.surrogate.members()),
            meta={**self.surrogate.checkpoint_meta(), **meta},
            round=round_,
            curve=curve,
            test_mean=pred.mean.numpy(),
            test_std=None if pred.std is None else pred.std.numpy(),
            test_target=self.data.y[self.test].numpy(),
            history=list(history),
            predictions=prediction_table(self.data, self.test, pred),
        )

    def final_artifacts(self) -> ModelArtifacts:
        """The final surrogate with its test prediction (the last evaluation's, not made
        again) and the whole learning curve."""
        pred = self.test_pred
        if pred is None:  # resumed after the last evaluation: none made in this process
            pred = self.surrogate.predict(self.data, self.test)
        meta = {"data_version": self.labelled.digest()}
        return self.model_artifacts(len(self.mae_history) - 1, pred, self.learning_curve(), meta)

    # --- resume --------------------------------------------------------------------------------
    def restore(self) -> tuple[int, bool]:
        """Read back what the tracker holds, and what the label journal holds beyond it.

        Labels the journal has but the tracker lacks (the process was killed, or the server
        was down, after the oracle answered and before the round's table was recorded) are
        recorded now, and only the rest of that round's journalled request is bought.
        Metrics are read by step (``n_labelled``, the latest value of a step wins) at each
        round's label count, so a round logged twice does not shift the history.

        Returns ``(round, fitted)``: the last round whose labels are in (-1: nothing yet)
        and whether that round's fit and evaluation were completed.
        """
        rounds = self.tracker.queried_rounds()
        for r in rounds:
            self.labelled.add(self.tracker.read_queried(r))
        journal = self.journal()
        self.labelled.cost_lost = journal.lost_cost()
        for r in journal.requested_rounds():
            if r > (rounds[-1] if rounds else -1):
                request = journal.request(r)
                assert request is not None
                log.info(
                    "event=journal_resume round=%d requested=%d paid=%d journal=%s",
                    r, len(request), len(journal.paid(r)), journal.path,
                )  # fmt: skip
                self.label(r, request.reset_index(drop=True))
                rounds.append(r)
        if not rounds:
            return -1, False
        self.tracker.close_stale_children()
        last, completed = rounds[-1], self.tracker.completed_round()
        steps = self.labelled.steps_per_round()
        done = [steps.get(r, -1) for r in range(completed + 1)]  # each round's step
        mae = self.tracker.metric_by_step(CM.TEST_MAE)
        self.mae_history = [mae.get(step, float("nan")) for step in done]
        val = self.tracker.metric_by_step(CM.VAL_MAE)  # what the stopping rules read
        self.val_mae_history = [val.get(step, float("nan")) for step in done]
        log.info(
            "event=resume run_id=%s queried_rounds=%d completed_round=%d labels=%d",
            self.tracker.run_id, len(rounds), completed, len(self.labelled.table),
        )  # fmt: skip
        if completed < last:
            if completed >= 0 and self.config.warm_start:  # the warm fit continues from here
                self.load_checkpoint(completed)
            return last, False
        meta = self.load_checkpoint(last)
        self.trained_on = int(meta.get("n_labelled", len(self.labelled.ok)))
        step = steps.get(completed, -1)
        self.last_report = {
            key: self.tracker.metric_by_step(metric).get(step, float("nan"))
            for key, metric in REPORT_METRICS.items()
        }
        return last, True

    def load_checkpoint(self, round_: int) -> dict[str, Any]:
        """Load the surrogate trained up to ``round_`` from the tracker; its metadata."""
        with tempfile.TemporaryDirectory(prefix="al-") as tmp:
            members, meta = load_checkpoint(self.tracker.download_checkpoint(round_, Path(tmp)))
        self.surrogate.load_members(members, meta)
        return meta
