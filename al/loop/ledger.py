"""The labelled-set ledger: every label asked for, failures included, in the queried-table
layout of :data:`al.tracking.names.QUERIED_COLUMNS`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from al.tracking.names import QUERIED_COLUMNS, ROLE_HELDOUT, ROLE_TRAIN, ROLE_VALIDATION


@dataclass
class Labelled:
    """Every label asked for so far: one row per request, failures included.

    A row's ``role`` says what the label is for: training (``train``; also a table written
    before roles existed), the campaign's validation set (``validation``), or a pool
    campaign's held-out set (``heldout``, its test set); no fit ever trains on the last two.
    :attr:`ok` and the per-round steps count training labels only; the cost and the
    requests count every row.
    """

    table: pd.DataFrame
    #: paid for answers a kill lost, asked again since (the label journal's ``lost_cost``)
    cost_lost: float = 0.0

    @classmethod
    def empty(cls) -> Labelled:
        return cls(pd.DataFrame(columns=list(QUERIED_COLUMNS)))

    def add(self, frame: pd.DataFrame) -> None:
        frame = frame.copy()
        if "role" not in frame.columns:
            frame["role"] = ROLE_TRAIN
        if "label_std" not in frame.columns:  # a table written before the oracle's std
            frame["label_std"] = float("nan")
        frame["role"] = frame["role"].fillna(ROLE_TRAIN)
        frames = [f for f in (self.table, frame) if len(f)]
        self.table = pd.concat(frames, ignore_index=True) if frames else frame

    def _validation_mask(self) -> pd.Series:
        return self.table["role"] == ROLE_VALIDATION

    def _train_ok(self) -> pd.Series:
        t = self.table
        return (t["status"] == "ok") & ~t["role"].isin((ROLE_VALIDATION, ROLE_HELDOUT))

    @property
    def ok(self) -> pd.DataFrame:
        """Successful training labels."""
        return self.table[self._train_ok()]

    @property
    def heldout(self) -> pd.DataFrame:
        """Every request of a pool campaign's held-out set, failures included."""
        return self.table[self.table["role"] == ROLE_HELDOUT]

    @property
    def heldout_ok(self) -> pd.DataFrame:
        """Successful held-out labels."""
        return self.table[(self.table["status"] == "ok") & (self.table["role"] == ROLE_HELDOUT)]

    @property
    def validation(self) -> pd.DataFrame:
        """Every request of the validation set, failures included."""
        return self.table[self._validation_mask()]

    @property
    def validation_ok(self) -> pd.DataFrame:
        """Successful validation labels."""
        return self.table[(self.table["status"] == "ok") & self._validation_mask()]

    @property
    def cost_spent(self) -> float:
        """Every label paid: the table's costs and what was paid for answers a kill lost."""
        return (float(self.table["cost"].sum()) if len(self.table) else 0.0) + self.cost_lost

    def up_to(self, round_: int) -> Labelled:
        """The ledger as it stood after ``round_``: the rows of that round and the earlier."""
        return Labelled(self.table[self.table["round"].astype(int) <= round_])

    def steps_per_round(self) -> dict[int, int]:
        """Round -> successful training labels up to and including it (the round's metric step,
        ``n_labelled``), for every round in the table, a round of failures included."""
        t = self.table
        if not len(t):
            return {}
        ok = self._train_ok().groupby(t["round"].astype(int)).sum().sort_index().cumsum()
        return {int(r): int(n) for r, n in ok.items()}

    def counts_per_round(self) -> list[int]:
        """Successful labels up to each round (cumulative), in round order: one entry per
        round in the table, so that entry ``i`` is round ``i``'s step."""
        return list(self.steps_per_round().values())

    def digest(self) -> str:
        """Data version of the labelled set (which molecules, which labels; the validation
        set's after the training labels, when there is one)."""
        ok = self.ok.sort_values("qm9_index")
        payload = ok[["qm9_index", "label"]].to_csv(index=False).encode()
        val = self.validation_ok.sort_values("qm9_index")
        if len(val):
            payload += b"validation\n" + val[["qm9_index", "label"]].to_csv(index=False).encode()
        return hashlib.sha256(payload).hexdigest()[:16]
