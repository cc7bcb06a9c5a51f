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

    def counts_per_round(self) -> list[int]:
        """Successful labels up to each round that has any (cumulative), in round order."""
        t = self.table
        ok = t[t["status"] == "ok"].groupby("round").size().sort_index().cumsum()
        return [int(v) for v in ok.to_numpy()]

    def digest(self) -> str:
        """Data version of the labelled set (which molecules, which labels)."""
        ok = self.ok.sort_values("qm9_index")
        payload = ok[["qm9_index", "label"]].to_csv(index=False).encode()
        return hashlib.sha256(payload).hexdigest()[:16]
