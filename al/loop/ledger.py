"""The labelled-set ledger: every label asked for, failures included, in the queried-table
layout of :data:`al.tracking.names.QUERIED_COLUMNS`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from al.tracking.names import QUERIED_COLUMNS


@dataclass
class Labelled:
    """Every label asked for so far: one row per request, failures included."""

    table: pd.DataFrame

    @classmethod
    def empty(cls) -> Labelled:
        return cls(pd.DataFrame(columns=list(QUERIED_COLUMNS)))

    def add(self, frame: pd.DataFrame) -> None:
        frames = [f for f in (self.table, frame) if len(f)]
        self.table = pd.concat(frames, ignore_index=True) if frames else frame

    @property
    def ok(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "ok"]

    @property
    def cost_spent(self) -> float:
        return float(self.table["cost"].sum()) if len(self.table) else 0.0

    def steps_per_round(self) -> dict[int, int]:
        """Round -> successful labels up to and including it (the round's metric step,
        ``n_labelled``), for every round in the table, a round of failures included."""
        t = self.table
        if not len(t):
            return {}
        ok = (t["status"] == "ok").groupby(t["round"].astype(int)).sum().sort_index().cumsum()
        return {int(r): int(n) for r, n in ok.items()}

    def counts_per_round(self) -> list[int]:
        """Successful labels up to each round (cumulative), in round order: one entry per
        round in the table, so that entry ``i`` is round ``i``'s step."""
        return list(self.steps_per_round().values())

    def digest(self) -> str:
        """Data version of the labelled set (which molecules, which labels)."""
        ok = self.ok.sort_values("qm9_index")
        payload = ok[["qm9_index", "label"]].to_csv(index=False).encode()
        return hashlib.sha256(payload).hexdigest()[:16]
