"""The active-learning loop: fit, evaluate, score, select, label, record, stop.

:class:`Campaign` is the algorithm; what varies is passed in, chosen once:

- ``scheme`` (:mod:`al.loop.schemes`): which pool molecules a round offers, when to retrain;
- ``selection`` (:mod:`al.loop.selection`): single- or multi-fidelity requests (with its
  acquisition function) and training targets;
- ``tracker`` (:mod:`al.loop.tracker`): where rounds are recorded and resume reads them
  back (MLflow, or memory);
- ``surrogate``, ``oracles`` and the stopping ``rules``.

Around the loop: round 0's draws (:mod:`al.loop.sets`), the label desk that buys and
records the labels (:mod:`al.loop.desk`), the round records (:mod:`al.loop.records`) and
resume (:mod:`al.loop.resume`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pandas as pd
import torch
from torch import Tensor

from al import progress
from al.data.molecules import MolecularData
from al.data.splits import Splits
from al.loop.config import CampaignConfig, LoopSettings
from al.loop.converged import converged_fit, due_round
from al.loop.desk import LabelDesk
from al.loop.ledger import Labelled
from al.loop.records import RoundHistory, RoundRecords, baseline_cost
from al.loop.resume import restore
from al.loop.schemes import DataScheme
from al.loop.seeds import round_generator
from al.loop.selection import Selection
from al.loop.sets import heldout_truth, round0_requests, training_set
from al.loop.stopping import (
    Allowance,
    CampaignProgress,
    StoppingRule,
    first_reason,
    remaining,
)
from al.loop.tracker import CampaignTracker, ModelArtifacts
from al.oracles import Oracle
from al.tracking.names import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.uncertainty import Surrogate

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["Campaign", "Labelled", "round_generator"]


class Campaign:
    """One campaign; its collaborators are built by the caller and passed in.

    Args:
        config: the campaign settings; the loop keeps only what it reads
            (:class:`~al.loop.config.LoopSettings`, from a :class:`CampaignConfig`).
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
            (NaN when unknown) and their cost (:class:`~al.loop.records.RoundRecords`).
    """

    def __init__(
        self,
        config: CampaignConfig | LoopSettings,
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
        self.settings = LoopSettings.of(config)
        self.data, self.splits = data, splits
        self.surrogate, self.oracles = surrogate, list(oracles)
        self.rules, self.scheme, self.selection = list(rules), scheme, selection
        self.tracker = tracker
        self.pool = data.rows_of(splits.pool)  # [n_pool] rows
        self.test = data.rows_of(splits.test)  # [n_test] rows
        self.labelled = Labelled.empty()
        self.timings: dict[str, float] = {}
        self.history = RoundHistory()
        self.desk = LabelDesk(self.oracles, tracker, self.labelled, self.timings, data)
        self.records = RoundRecords(tracker, data, self.test, prior_labels, prior_cost)
        self.records.describe(self.settings.pool, self.settings.unit, self.settings.target)
        self.bar = progress.bar(total=0, enabled=False)  # replaced by execute

    @property
    def mae_history(self) -> list[float]:
        """The test MAE of each round so far."""
        return self.history.mae

    # --- the algorithm ---------------------------------------------------------------------
    def execute(self) -> str:
        """Run (or continue) the campaign until a stopping rule fires; returns the reason.

        On a terminal a bar shows the rounds (with an ETA when ``rounds`` is set), the phase
        under way, the labels and the last test MAE; ``progress=false`` hides it.
        """
        rounds = self.settings.rounds + 1 if self.settings.rounds else None
        self.bar = progress.bar(
            total=rounds, desc="campaign", unit="round", enabled=self.settings.progress
        )
        with self.bar:
            return self._execute()

    def _execute(self) -> str:
        round_, fitted = self.resume()
        if round_ < 0:
            round_ = 0
            self.start()
        while True:
            if not fitted:
                self.fit_and_evaluate(round_)
            fitted = False
            done = self.progress(round_)
            left = remaining(self.rules, done)
            reason = (
                first_reason(self.rules, done)
                or self.selection.nothing_fits(left)
                or self.acquire(round_ + 1, left)
            )
            if reason:  # the one way out: the last round's model is refitted when asked
                self.refit_final(round_)
                return reason
            round_ += 1

    def resume(self) -> tuple[int, bool]:
        """Continue from what the tracker and the journal hold (:func:`~al.loop.resume.restore`):
        the last round whose labels are in (-1: none) and whether its fit was completed. A
        checkpoint's converged fit that a kill cut short is done first."""
        resumed = restore(self.tracker, self.desk, self.surrogate, self.settings.warm_start)
        if resumed.round >= 0:
            self.history = resumed.history
            self.adopt_heldout()
        if resumed.fitted:
            self.converge(resumed.round)
        self.bar.update(len(self.mae_history))
        return resumed.round, resumed.fitted

    def start(self) -> None:
        """Round 0: label the validation set (a pool's held-out set) and the initial molecules."""
        left = remaining(self.rules, self.progress(0))
        heldout = self.test if self.settings.pool else None
        validation, request = round0_requests(self.settings, self.selection, left, self.pool,
                                              heldout)  # fmt: skip
        self.desk.label(0, pd.concat([request, validation], ignore_index=True))
        self.adopt_heldout()

    def adopt_heldout(self) -> None:  # a pool campaign is measured on its held-out labels
        if self.settings.pool:
            self.test = self.records.test = heldout_truth(self.data, self.labelled)

    def acquire(self, round_: int, left: Allowance) -> str | None:
        """Acquisition round ``round_``: score the candidates the scheme offers, choose
        within what is ``left`` of the budgets, label. Returns why the campaign stops
        instead (no candidates, or nothing the budgets pay for), else None."""
        candidates = self.scheme.candidates(round_, self.pool, self.data.qm9_index, self.closed())
        if candidates.numel() == 0:
            return "no candidates left"
        pred = None  # an acquisition that needs no prediction (random) scores nothing
        self.timings["pool_scored"], self.timings["score"] = 0, 0.0
        if self.selection.scores_pool:
            candidates = self.selection.within_budget(round_, candidates, left)
            if candidates.numel() == 0:
                return f"round {round_}: the cost budget leaves no room to score the pool"
            self.timings["pool_scored"] = candidates.numel()
            log.info("event=phase phase=score round=%d n=%d", round_, candidates.numel())
            pred = self.timed("score", self.surrogate.predict, self.data, candidates)
            left = remaining(self.rules, self.progress(round_))  # the scoring was paid
        chosen = self.timed(
            "select", self.selection.choose, round_, candidates, pred, self.labelled, left
        )
        if chosen.empty:
            return f"round {round_}: nothing to ask for within the budgets"
        self.desk.label(round_, chosen)
        return None

    def fit_and_evaluate(self, round_: int) -> None:
        """Refit on the labelled set when the scheme asks for it, evaluate on the test set,
        record the round. Without a refit the round repeats the last evaluation."""
        n_labelled, history = len(self.labelled.ok), self.history
        if not self.scheme.needs_refit(n_labelled, history.trained_on):
            self.timings["fit"] = 0.0
            history.repeat()
            self.bar.update(1)
            self.record_round(round_, history.last_report, 0, retrained=False)
            log.info("event=round_done round=%d retrained=0", round_)
            self.converge(round_)
            return
        train_data, train_rows, val_rows = self.training_set(round_)
        self.tracker.check_owner()
        with self.tracker.fit_run(round_, self.labelled) as on_epoch:
            log.info("event=phase phase=fit round=%d n_train=%d", round_, train_rows.numel())
            fit, warm = self.surrogate.fit, self.settings.warm_share
            result = self.timed(
                "fit", fit, train_data, train_rows, val_rows, on_epoch=on_epoch, warm=warm
            )
            pred = self.timed("evaluate", self.surrogate.predict, self.data, self.test)
            report = self.records.test_report(pred)
            t0 = time.perf_counter()
            self.records.record_fit(
                self.surrogate, round_, pred, self.labelled, history, result.history
            )
        history.add_fit(n_labelled, pred, report, result)
        self.bar.update(1)
        measured = "heldout_mae" if self.settings.pool else "test_mae"
        self.bar.set_postfix({"labels": n_labelled, measured: f"{report['mae']:.4f}"})
        self.record_round(round_, report, len(result.history))
        # this round's own recording time (artifacts, model, metrics), sent on its own
        self.tracker.log_round_metrics(n_labelled, {CM.TIME_LOG: time.perf_counter() - t0})
        log.info(
            "event=round_done round=%d n_labelled=%d test_mae=%.4f fit_s=%.1f",
            round_, n_labelled, report["mae"], self.timings["fit"],
        )  # fmt: skip
        self.converge(round_)

    def refit_final(self, round_: int) -> None:
        """After warm starts, refit the last round (``final_refit``: from scratch, or a
        re-anneal of the warm weights), so the final model is not handicapped by them; the
        round's metrics are the warm fit's, ``final_refit_*`` the refit's, at one step."""
        if not (self.settings.final_refit and self.history.fit_info.get(CM.WARM_START)):
            return
        train_data, train_rows, val_rows = self.training_set(round_)
        log.info("event=phase phase=final_refit round=%d n_train=%d", round_, train_rows.numel())
        result = self.timed(
            "final_refit", self.surrogate.fit, train_data, train_rows, val_rows,
            steps=self.settings.final_refit_steps, warm=float(self.settings.final_refit_warm),
        )  # fmt: skip
        pred = self.history.test_pred = self.surrogate.predict(self.data, self.test)
        self.records.record_final_refit(
            self.labelled, self.history, pred, result, self.timings["final_refit"]
        )

    def converge(self, round_: int) -> None:
        """At a converged checkpoint (``checkpoints``; ``all``: every round), the labelled set
        of the first round that reached it is refitted from scratch (``converged_steps``,
        :func:`~al.loop.converged.converged_fit`), even when a kill put that round behind;
        logged as ``converged.*`` at that round's step. The campaign's model is kept."""
        steps = self.labelled.steps_per_round()
        done = self.tracker.metric_by_step(CM.converged(CM.TEST_MAE))
        target = due_round(self.settings, steps, done, round_, len(self.labelled.ok))
        if target is None:
            return
        n_labelled = steps[target]
        train_data, train_rows, val_rows = self.training_set(target, self.labelled.up_to(target))
        log.info("event=phase phase=converge round=%d n_train=%d", target, train_rows.numel())
        self.bar.set_description("campaign: converge")
        out = converged_fit(
            self.surrogate, self.data, train_data, train_rows, val_rows, self.test,
            self.settings.converged_steps,
        )  # fmt: skip
        self.records.record_converged(n_labelled, out, warm_mae=self.mae_history[target])

    def closed(self) -> Tensor:  # [c] QM9 indices never offered again (Selection.closed)
        return torch.as_tensor(self.selection.closed(self.labelled))

    def training_set(
        self, round_: int, labelled: Labelled | None = None
    ) -> tuple[MolecularData, Tensor, Tensor]:
        """The data, training rows and validation rows of a fit in ``round_`` on ``labelled``
        (default: every label so far), see :func:`~al.loop.sets.training_set`."""
        labelled = self.labelled if labelled is None else labelled
        return training_set(self.data, self.selection, labelled, self.settings, round_)

    def progress(self, round_: int) -> CampaignProgress:
        """Where the campaign stands after ``round_``: what the stopping rules read."""
        left = int((~torch.isin(self.data.qm9_index[self.pool], self.closed())).sum())
        spent = self.labelled.cost_spent + (baseline_cost(self.surrogate) or 0.0)
        return CampaignProgress(round_, len(self.labelled.ok), len(self.labelled.table), spent,
                                list(self.history.val_mae), pool_left=left)  # fmt: skip

    def timed(self, phase: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, its wall time kept in ``timings[phase]``."""
        self.bar.set_description(f"campaign: {phase}")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[phase] = time.perf_counter() - t0
        return out

    def record_round(self, round_: int, report: dict[str, float], epochs: int,
                     retrained: bool = True) -> None:  # fmt: skip
        """The round's metrics at ``step = n_labelled``, then mark the round completed."""
        self.records.record_round(round_, self.labelled, self.history, report, epochs, retrained,
                                  self.timings, baseline_cost(self.surrogate))  # fmt: skip

    def final_artifacts(self) -> ModelArtifacts:
        """The final surrogate, its test prediction and the whole learning curve."""
        return self.records.final_artifacts(self.surrogate, self.labelled, self.history)
