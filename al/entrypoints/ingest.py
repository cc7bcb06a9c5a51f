"""``al ingest RUN_ID labels.csv``: an external labeller's answers into a waiting campaign.

A campaign that asked the ``external`` oracle waits (:mod:`al.entrypoints.external`). Its
labels file is the batch's own CSV with the ``label`` column filled in, or any CSV with
``id`` and ``label`` columns (``status`` and ``unit`` optional). Each answer goes into the
campaign's label journal (:mod:`al.loop.journal`) for the round it waits for, fsynced,
exactly as an oracle's answer would; ``al al-loop --resume RUN_ID`` then records the round
and goes on. A partial batch is fine: the rest is asked again when the campaign resumes.

What is refused, one line each, while the rest is recorded (nothing already recorded is
lost or recorded twice): an id that is not a molecule of the campaign, one it did not ask
the external labeller for in that round, one that already has a label, an id repeated in
the file, a label that is not a finite number, a unit other than the campaign's. A row
with a ``status`` other than ``ok`` is recorded as a failed label (charged: the work was
done). A row with neither a label nor a status is left for later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from al import tracking
from al.config import ConfigError
from al.data.pools import load_pool, numbers_by_id
from al.loop.journal import LabelJournal, journal_path
from al.oracles import ORACLES
from al.tracking.runs import StoredCampaign, read_stored_campaign

log = logging.getLogger(__name__)

__all__ = ["Ingested", "ingest"]

#: A labels file needs these columns (the batch's own CSV has them).
REQUIRED = ("id", "label")


@dataclass
class Ingested:
    """What :func:`ingest` did.

    Attributes:
        run_id, round: the campaign and the round its answers went to.
        recorded: labels recorded (failed ones included); failed: of them, with a failure.
        refused: one line per refused row.
        waiting: molecules of the round still without an answer.
        journal: the label journal written.
    """

    run_id: str
    round: int
    recorded: int = 0
    failed: int = 0
    refused: list[str] = field(default_factory=list)
    waiting: int = 0
    journal: Path | None = None

    def summary(self) -> str:
        """One line for the user."""
        rest = (
            f"{self.waiting} molecule(s) of the batch still wait for a label; "
            if self.waiting else "the batch is complete; "
        )  # fmt: skip
        return (
            f"campaign {self.run_id}, round {self.round}: {self.recorded} label(s) recorded "
            f"({self.failed} failed), {len(self.refused)} row(s) refused; {rest}continue "
            f"with: al al-loop --resume {self.run_id}"
        )


def _external_fidelity(stored: StoredCampaign) -> tuple[int, str, float]:
    """The fidelity index, name and cost per label of the campaign's external labeller."""
    config = stored.config or {}
    names = str(config.get("resolved_oracles", "")).split(",")
    costs = str(config.get("resolved_costs", "")).split(",")
    for d, name in enumerate(names):
        spec = ORACLES.parse(name) if name and ORACLES.problem(name) is None else None
        if spec is not None and spec.obj.answers_later:
            return d, name, float(costs[d])
    raise ConfigError(
        f"campaign {stored.run_id} has no external labeller (oracles: {','.join(names) or '?'}); "
        "al ingest takes the labels of a campaign run with oracle=external"
    )


def _read_labels(path: Path) -> pd.DataFrame:
    """The labels file as strings; one error line when it cannot be read or lacks columns."""
    if not path.is_file():
        raise ConfigError(f"labels file {str(path)!r} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"labels file {path} is not a readable CSV ({type(err).__name__}); expected the "
            "batch's CSV with its label column filled in"
        ) from None
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ConfigError(
            f"labels file {path} lacks the column(s) {', '.join(missing)} (it has: "
            f"{', '.join(table.columns) or 'none'}); expected id and label columns, e.g. the "
            "batch's CSV with its label column filled in"
        )
    return table


def _numbers_of(stored: StoredCampaign, ids: pd.Series) -> pd.Series:
    """Each id's molecule number (``qm9_index`` of the campaign's tables), -1 if unknown."""
    pool = (stored.config or {}).get("pool") or ""
    if pool:
        known = numbers_by_id(load_pool(pool).data)
        return ids.map(lambda i: known.get(i, -1))
    numeric = pd.to_numeric(ids, errors="coerce")  # QM9: the id is the index
    return numeric.where(numeric.notna() & (numeric % 1 == 0), -1).astype(np.int64)


def _campaign(run_id: str) -> tuple[StoredCampaign, LabelJournal]:
    """The waiting campaign and its journal; one error line otherwise."""
    stored = read_stored_campaign(run_id)
    if stored.kind != tracking.KIND_CAMPAIGN:
        raise ConfigError(f"run {run_id} is not a campaign; al ingest takes a campaign's run id")
    status = MlflowClient().get_run(run_id).info.status
    if tracking.TAG_AWAITING_LABELS not in stored.tags or status != "SCHEDULED":
        hint = (
            "; if its process was killed, resume it first (al al-loop --resume "
            f"{run_id}): it writes its batch again and waits"
            if status == "RUNNING" else ""
        )  # fmt: skip
        raise ConfigError(
            f"campaign {run_id} is not waiting for labels (status {status}); al ingest "
            f"takes the labels of a campaign that stopped for its external labeller{hint}"
        )
    tagged = stored.tags.get(tracking.TAG_JOURNAL)
    path = Path(tagged) if tagged and Path(tagged).exists() else journal_path(run_id)
    if not path.exists():
        raise ConfigError(
            f"the label journal of campaign {run_id} is not on this machine ({tagged}); run "
            "al ingest where the campaign ran, or set AL_JOURNAL_DIR to the folder that holds it"
        )
    return stored, LabelJournal(path)


def ingest(run_id: str, labels: str | Path, echo: Callable[[str], None] | None = None) -> Ingested:
    """Record the answers in ``labels`` (a CSV path) for the round campaign ``run_id`` waits
    for; refused rows are said one line each (``echo``) and in :attr:`Ingested.refused`."""
    stored, journal = _campaign(run_id)
    fidelity, oracle, cost = _external_fidelity(stored)
    round_ = journal.requested_rounds()[-1]
    request = journal.request(round_)
    assert request is not None
    paid = journal.paid(round_)
    asked = request.index[request["fidelity"].to_numpy() == fidelity]
    position_of = {int(request.at[p, "qm9_index"]): int(p) for p in asked}
    table = _read_labels(Path(labels))
    unit = str((stored.config or {}).get("unit", "eV"))
    out = Ingested(run_id, round_, journal=journal.path)
    numbers = _numbers_of(stored, table["id"])
    repeated = table["id"].duplicated(keep=False)
    rows: list[tuple[int, int, float, str]] = []
    for i, (ident, number) in enumerate(zip(table["id"], numbers, strict=True)):
        line, label = i + 2, table.at[i, "label"].strip()
        status = table.at[i, "status"].strip() if "status" in table else ""
        problem = _problem(ident, int(number), position_of, paid.index, repeated[i], stored)
        if problem is None and "unit" in table and table.at[i, "unit"].strip() not in ("", unit):
            problem = f"unit {table.at[i, 'unit']!r}, the campaign's labels are in {unit!r}"
        if problem is None and not label and status in ("", "ok"):
            continue  # not labelled yet: asked again when the campaign resumes
        value = np.nan
        if problem is None and status in ("", "ok"):
            value = pd.to_numeric(label, errors="coerce")
            if not np.isfinite(value):
                problem = f"label {label!r} is not a finite number in {unit}"
        if problem is not None:
            out.refused.append(f"{labels}:{line}: id {ident!r} refused: {problem}")
            continue
        rows.append((position_of[int(number)], int(number), float(value), status or "ok"))
    if rows:
        positions, number_col, value_col, status_col = (list(c) for c in zip(*rows, strict=True))
        journal.log_labels(round_, positions, {
            "qm9_index": number_col, "oracle": [oracle] * len(rows), "label": value_col,
            "status": status_col, "cost": [cost] * len(rows),
        })  # fmt: skip
    out.recorded = len(rows)
    out.failed = sum(s != "ok" for *_, s in rows)
    out.waiting = len(asked) - len(paid.index.intersection(asked)) - len(rows)
    waiting = f"round {round_}: {out.waiting} molecules" if out.waiting else f"round {round_}: 0"
    MlflowClient().set_tag(run_id, tracking.TAG_AWAITING_LABELS, waiting)
    log.info(
        "event=ingested run_id=%s round=%d recorded=%d failed=%d refused=%d waiting=%d",
        run_id, round_, out.recorded, out.failed, len(out.refused), out.waiting,
    )  # fmt: skip
    if echo is not None:
        for line in out.refused:
            echo(line)
        echo(out.summary())
    return out


def _problem(
    ident: str, number: int, position_of: dict[int, int], paid: pd.Index, repeated: bool,
    stored: StoredCampaign,
) -> str | None:  # fmt: skip
    """Why the row of ``ident`` cannot be recorded, or None."""
    pool = (stored.config or {}).get("pool") or "QM9"
    if repeated:
        return "it appears more than once in the file; expected one answer per molecule"
    if number < 0:
        return f"not a molecule of {pool}"
    if number not in position_of:
        return "the campaign did not ask for it in the round it waits for"
    if position_of[number] in paid:
        return "it already has a label recorded; nothing changed"
    return None
