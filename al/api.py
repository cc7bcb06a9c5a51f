"""The propose → label → ingest cycle from Python (a notebook), as on the command line.

>>> from al.api import propose, ingest
>>> batch = propose(pool="my_pool", initial_size=200, val_size=50, heldout_size=50,
...                 batch_size=50, rounds=3)          # round 0: the molecules to label
>>> batch.table.head()                                # id, smiles, role, ..., label
>>> ingest(batch.run_id, labelled_table)              # the answers of one's own DFT code
>>> batch = propose(resume=batch.run_id)              # fits, scores, the next batch

:func:`propose` runs (or resumes) a campaign whose labeller is ``external`` until it waits
for labels (:mod:`al.entrypoints.external`) or its rules stop it; :func:`ingest` records
answers (:mod:`al.entrypoints.ingest`). Tracking goes where ``MLFLOW_TRACKING_URI`` says.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["Batch", "ingest", "propose"]


@dataclass
class Batch:
    """What a campaign asks for next.

    Attributes:
        run_id: the campaign.
        round: the round waiting for labels (None: the campaign stopped, nothing to label).
        table: the batch (:data:`~al.entrypoints.external.BATCH_COLUMNS`), None if none.
        path: the batch's CSV (its geometries beside it, ``.xyz``), None if none.
    """

    run_id: str
    round: int | None
    table: pd.DataFrame | None
    path: Path | None


def propose(**settings: Any) -> Batch:
    """Run a campaign (the keys of ``al al-loop``; ``oracle`` defaults to ``external``), or
    resume one (``resume=RUN_ID``), until it waits for labels; its batch."""
    from al import tracking
    from al.config import build_config
    from al.entrypoints.al_loop import run_campaign
    from al.entrypoints.external import batch_paths
    from al.loop.config import CampaignConfig
    from al.tracking.runs import read_stored_campaign

    given = set(settings)
    if not settings.get("resume"):
        settings.setdefault("oracle", "external")
    config = build_config(CampaignConfig, settings)
    run_id = run_campaign(config, given=given)
    stored = read_stored_campaign(run_id)
    waiting = stored.tags.get(tracking.TAG_AWAITING_LABELS)
    match = re.match(r"round (\d+)", waiting or "")
    if match is None:
        return Batch(run_id, None, None, None)
    round_ = int(match.group(1))
    batch_dir = (stored.config or {}).get("batch_dir", config.batch_dir)
    path, _ = batch_paths(batch_dir, run_id, round_)
    return Batch(run_id, round_, pd.read_csv(path, dtype={"id": str}), path)


def ingest(run_id: str, labels: str | Path | pd.DataFrame) -> Any:
    """Record ``labels`` (a labels file, or a table with ``id`` and ``label`` columns) for
    the round campaign ``run_id`` waits for; returns :class:`~al.entrypoints.ingest.Ingested`
    (refused rows in its ``refused``)."""
    from al.entrypoints.ingest import ingest as record

    if isinstance(labels, pd.DataFrame):
        with tempfile.TemporaryDirectory(prefix="al-") as tmp:
            path = Path(tmp) / "labels.csv"
            labels.to_csv(path, index=False)
            return record(run_id, path)
    return record(run_id, labels)
