"""A grid's progress in rounds: every campaign's completed rounds, read from the tracking
server while the campaigns run, so that the bar moves with each round and its ETA holds,
not only when a whole campaign (tens of minutes) ends."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable

from mlflow.tracking import MlflowClient
from tqdm import tqdm

from al.tracking.names import TAG_CELL, TAG_PARENT, TAG_SEED
from al.tracking.names import CampaignMetrics as CM  # noqa: N817 - used in every metric key

#: seconds between two looks at the tracking server
INTERVAL_S = 20.0


def planned_rounds(settings: dict) -> int:
    """Rounds a campaign of ``settings`` runs at most, round 0 included (1 when ``rounds``
    sets no limit: its count is known only when it ends)."""
    rounds = int(settings.get("rounds", 0) or 0)
    return rounds + 1 if rounds > 0 else 1


class RoundCounter:
    """Counts the completed rounds of a grid's campaigns into ``bar`` (its total: the
    planned rounds of the campaigns to run), looking every ``interval`` seconds in a
    background thread; a campaign that ends counts its planned rounds in full.

    Args:
        client: the grid's tracking client.
        experiment_id, parent_id: where the grid's campaign runs are.
        cells: ``(key, settings)`` of each campaign to run; the key is ``cell/seed=N``.
        bar: the grid's bar, in rounds.
        interval: seconds between two looks.
    """

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_id: str,
        cells: Iterable[tuple[str, dict]],
        bar: tqdm,
        interval: float = INTERVAL_S,
    ) -> None:
        self.client, self.experiment_id, self.parent_id = client, experiment_id, parent_id
        self.planned = {key: planned_rounds(settings) for key, settings in cells}
        self.done: dict[str, int] = dict.fromkeys(self.planned, 0)
        self.ended: set[str] = set()
        self.bar, self.interval = bar, interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="grid-rounds", daemon=True)

    @property
    def total(self) -> int:
        """Planned rounds of every campaign to run."""
        return sum(self.planned.values())

    def rounds_done(self) -> dict[str, int]:
        """Completed rounds of each campaign of the grid that has a run (the steps of its
        ``n_labelled`` metric: one per completed round), by key."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{self.parent_id}'",
            max_results=1000,
        )  # fmt: skip
        out = {}
        for run in runs:
            key = f"{run.data.tags.get(TAG_CELL)}/seed={run.data.tags.get(TAG_SEED)}"
            if key in self.planned and CM.N_LABELLED in run.data.metrics:
                steps = self.client.get_metric_history(run.info.run_id, CM.N_LABELLED)
                out[key] = len({m.step for m in steps})
        return out

    def look(self) -> None:
        """Read the rounds done now and move the bar to them."""
        found = self.rounds_done()
        with self._lock:
            for key, n in found.items():
                if key not in self.ended:
                    self.done[key] = min(n, self.planned[key])
            self._draw()

    def end(self, key: str) -> None:
        """Campaign ``key`` ended: it counts its planned rounds in full."""
        with self._lock:
            self.ended.add(key)
            self.done[key] = self.planned.get(key, 0)
            self._draw()

    def _draw(self) -> None:
        self.bar.n = sum(self.done.values())
        self.bar.refresh()

    def _watch(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a busy server: the next look counts
                self.look()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RoundCounter:
        if not self.bar.disable:  # nobody sees the bar: no looks at the server
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)
