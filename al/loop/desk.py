"""The label desk: where a campaign buys its labels, and what it reads back of them.

:class:`LabelDesk` asks the oracles, journals every answer as it comes (the label journal,
:mod:`al.loop.journal`), hands the round's table to the tracker and adds it to the ledger
(:class:`~al.loop.ledger.Labelled`). On resume it reconciles the two records: the
tracker's queried tables, then what the journal holds beyond them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from al.data.molecules import MolecularData
from al.loop.journal import (
    AwaitingLabels,
    LabelJournal,
    LabelsNotRecordedError,
    journal_path,
    pay,
)
from al.loop.ledger import Labelled
from al.loop.tracker import CampaignTracker
from al.oracles import Oracle
from al.tracking.names import ROLE_VALIDATION, queried_layout

log = logging.getLogger(__name__)

__all__ = ["LabelDesk"]


class LabelDesk:
    """Buys a campaign's labels and records them, nothing paid lost.

    Args:
        oracles: the labellers, cheapest first (a request's ``fidelity`` picks one).
        tracker: where the rounds' tables go; its ``journal_path`` is the journal's place.
        labelled: the ledger every recorded label is added to.
        timings: where the last labelling's wall time goes (``timings["label"]``).
        molecules: the campaign's molecules; a pool's (with ids) gives every recorded row
            its molecule's ``id`` and ``smiles``.
    """

    def __init__(
        self,
        oracles: Sequence[Oracle],
        tracker: CampaignTracker,
        labelled: Labelled,
        timings: dict[str, float] | None = None,
        molecules: MolecularData | None = None,
    ) -> None:
        self.oracles, self.tracker, self.labelled = oracles, tracker, labelled
        self.timings = {} if timings is None else timings
        self.molecules = molecules

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
        try:
            frame, reused = pay(journal, round_, request, self.oracles, self.tracker.check_owner)
        except AwaitingLabels as wait:  # an external labeller: the batch goes out, we stop
            wait.batch = request.loc[wait.positions].copy()
            self.name_molecules(wait.batch)
            raise
        self.timings["label"] = time.perf_counter() - t0
        self.labelled.cost_lost = journal.lost_cost()
        frame["round"] = round_
        for col in ("score", "pred_mean", "pred_std", "role"):
            frame[col] = request[col].to_numpy()
        self.name_molecules(frame)
        if reused:
            log.info("event=labels_reused round=%d n=%d journal=%s", round_, reused, journal.path)
        try:
            self.tracker.log_queried(round_, frame)
        except Exception as err:  # any failure to record: say where the labels are
            raise LabelsNotRecordedError(self.tracker.run_id, journal.path, err, round_) from None
        log.info("event=labels_paid round=%d n=%d cost=%g", round_, len(frame), frame["cost"].sum())
        self.labelled.add(frame[queried_layout(frame.columns)])
        if (frame["role"] == ROLE_VALIDATION).any():  # anyone can check it was never trained on
            self.tracker.log_validation(self.labelled.validation)
        n_failed = int((frame["status"] != "ok").sum())
        if n_failed:
            log.warning("event=labels_failed round=%d n_failed=%d", round_, n_failed)

    def name_molecules(self, frame: pd.DataFrame) -> None:
        """Give the rows of ``frame`` their molecule's ``id`` and ``smiles`` (a pool's
        campaign; nothing for QM9's, whose molecules are named by their index)."""
        data = self.molecules
        if data is None or not data.ids:
            return
        rows = data.rows_of(frame["qm9_index"].to_numpy(np.int64)).tolist()
        frame["id"] = [data.ids[r] for r in rows]
        frame["smiles"] = [data.smiles[r] if data.smiles else "" for r in rows]

    def read_back(self) -> list[int]:
        """Fill the ledger with what the tracker holds, then with what the journal holds
        beyond it; returns the rounds whose labels are in, in order.

        Labels the journal has but the tracker lacks (the process was killed, or the server
        was down, after the oracle answered and before the round's table was recorded) are
        recorded now, and only the rest of that round's journalled request is bought.
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
        return rounds
