"""Resume: where a campaign stands, read back from its tracker and its label journal.

A campaign started on a tracker that holds rounds continues after the last one: its labels
come back into the ledger (with what the journal paid beyond them, :class:`LabelDesk`),
its history of test and validation MAEs from the metrics, and its model from the last
checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from al.loop.converged import REPORT_METRICS
from al.loop.desk import LabelDesk
from al.loop.records import RoundHistory
from al.loop.tracker import CampaignTracker
from al.models.checkpoint import load_checkpoint
from al.tracking.names import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.uncertainty import Surrogate

log = logging.getLogger(__name__)

__all__ = ["Resumed", "load_round_model", "restore"]


@dataclass(frozen=True)
class Resumed:
    """Where a campaign stands.

    Attributes:
        round: the last round whose labels are in (-1: nothing yet).
        fitted: whether that round's fit and evaluation were completed.
        history: the rounds' MAEs (up to the last completed round) and, when ``fitted``,
            the current model's label count and test metrics.
    """

    round: int
    fitted: bool
    history: RoundHistory = field(default_factory=RoundHistory)


def restore(
    tracker: CampaignTracker, desk: LabelDesk, surrogate: Surrogate, warm_start: bool
) -> Resumed:
    """Read back what ``tracker`` holds, and what the label journal holds beyond it.

    The ledger of ``desk`` gets every label (:meth:`LabelDesk.read_back`, which buys the
    rest of a round a kill cut short). Metrics are read by step (``n_labelled``, the latest
    value of a step wins) at each round's label count, so a round logged twice does not
    shift the history. ``surrogate`` gets the model of the last completed round when that
    round is the last (``fitted``), or when the next fit continues from it (``warm_start``).
    """
    rounds = desk.read_back()
    if not rounds:
        return Resumed(-1, False)
    labelled = desk.labelled
    tracker.close_stale_children()
    last, completed = rounds[-1], tracker.completed_round()
    steps = labelled.steps_per_round()
    done = [steps.get(r, -1) for r in range(completed + 1)]  # each round's step
    mae = tracker.metric_by_step(CM.TEST_MAE)
    val = tracker.metric_by_step(CM.VAL_MAE)  # what the stopping rules read
    history = RoundHistory(
        mae=[mae.get(step, float("nan")) for step in done],
        val_mae=[val.get(step, float("nan")) for step in done],
    )
    log.info(
        "event=resume run_id=%s queried_rounds=%d completed_round=%d labels=%d",
        tracker.run_id, len(rounds), completed, len(labelled.table),
    )  # fmt: skip
    if completed < last:
        if completed >= 0 and warm_start:  # the warm fit continues from here
            load_round_model(tracker, surrogate, completed)
        return Resumed(last, False, history)
    meta = load_round_model(tracker, surrogate, last)
    history.trained_on = int(meta.get("n_labelled", len(labelled.ok)))
    step = steps.get(completed, -1)
    history.last_report = {
        key: tracker.metric_by_step(metric).get(step, float("nan"))
        for key, metric in REPORT_METRICS.items()
    }
    return Resumed(last, True, history)


def load_round_model(tracker: CampaignTracker, surrogate: Surrogate, round_: int) -> dict[str, Any]:
    """Load into ``surrogate`` the model trained up to ``round_`` from ``tracker``; its
    checkpoint metadata."""
    with tempfile.TemporaryDirectory(prefix="al-") as tmp:
        members, meta = load_checkpoint(tracker.download_checkpoint(round_, Path(tmp)))
    surrogate.load_members(members, meta)
    return meta
