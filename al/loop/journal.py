"""The label journal: a local, append-only record of every label a campaign paid for.

The tracking server is where a campaign's labels end up (``rounds/round_NNN/queried.csv``),
but a label is paid the moment the oracle answers. The journal keeps it from that moment:
each round's request, then each chunk of oracle answers, is appended to a local file and
fsynced *before* anything else happens. When the process is killed, or the tracking server
is down, the paid labels are in the journal; resume re-uses them and never buys them again.

Where it lives: ``$AL_JOURNAL_DIR/<run id>.jsonl``, by default
``~/.cache/al/journal/<run id>.jsonl`` (:func:`journal_path`), on the machine that ran the
campaign. A resume elsewhere without that file still works, from the server alone.

Format: JSON lines, one record per line:

``{"kind": "request", "round": r, "rows": [{position, qm9_index, fidelity, score,
pred_mean, pred_std, role}, ...]}``
    What round ``r`` asks for, in request order (``position`` = row of the request).
``{"kind": "asked", "round": r, "positions": [...], "cost": c}``
    A chunk about to be asked of an oracle at ``c`` a label, written before the call: a
    chunk asked and never answered here was paid for answers a kill lost (:meth:`lost_cost`).
``{"kind": "labels", "round": r, "rows": [{position, qm9_index, oracle, label, status,
cost, label_std}, ...]}``
    One call's oracle answers (an oracle's ``journal_chunk`` rows: one for an oracle that
    computes a molecule at a time, a forward pass for a network labeller) for the round's
    last request.

A line cut short by a kill is ignored when reading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from al.data.cache import append_durably
from al.oracles import FRAME_COLUMNS, LabelResult, Oracle
from al.progress import bar
from al.tracking.names import ROLE_TRAIN

log = logging.getLogger(__name__)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done: an oracle's answer in hand is
    journalled before a polite kill unwinds the campaign. A signal that arrives meanwhile
    is recorded, and raised again, to the handlers in place before, when the block ends.
    (Python runs signal handlers in the main thread whichever thread the kernel picks, so
    the handlers are swapped rather than the thread's signal mask.) Outside the main
    thread, where handlers cannot be set, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, _frame: held.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


#: Environment variable naming the journal folder.
JOURNAL_DIR_ENV = "AL_JOURNAL_DIR"
REQUEST_FIELDS = ("qm9_index", "fidelity", "score", "pred_mean", "pred_std", "role")
LABEL_FIELDS = ("qm9_index", "oracle", "label", "status", "cost", "label_std")


def journal_dir() -> Path:
    """``$AL_JOURNAL_DIR``, or ``~/.cache/al/journal``."""
    env = os.environ.get(JOURNAL_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "al" / "journal"


def check_journal_dir() -> Path:
    """The journal folder (:func:`journal_dir`), created if needed; ValueError, one line,
    when it cannot be created or written, before any campaign run exists."""
    folder = journal_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"the label journal folder {folder} cannot be written ({type(err).__name__}: "
            f"{err.strerror or err}); set {JOURNAL_DIR_ENV} to a writable folder"
        ) from None
    return folder


def journal_path(run_id: str) -> Path:
    """The journal file of campaign run ``run_id``."""
    return journal_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}.jsonl"


def _plain(value: Any) -> Any:
    """A JSON-ready scalar (numpy scalars to Python; NaN stays NaN)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


class LabelJournal:
    """Append-only JSON-lines journal of a campaign's requests and paid labels.

    Args:
        path: the journal file (created, with its folder, on the first write).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- writing -----------------------------------------------------------------------
    def _append(self, record: dict[str, Any]) -> None:
        append_durably(self.path, (json.dumps(record) + "\n").encode("utf-8"))

    def log_request(self, round_: int, request: pd.DataFrame) -> None:
        """Round ``round_``'s request (rows in order; columns of :data:`REQUEST_FIELDS`
        that the request has)."""
        cols = [c for c in REQUEST_FIELDS if c in request.columns]
        rows = [
            {"position": i, **{c: _plain(v) for c, v in zip(cols, values, strict=True)}}
            for i, values in enumerate(request[cols].itertuples(index=False, name=None))
        ]
        self._append({"kind": "request", "round": int(round_), "rows": rows})

    def log_labels(
        self,
        round_: int,
        positions: Iterable[int],
        answers: pd.DataFrame | Mapping[str, Sequence[Any]],
    ) -> None:
        """Oracle answers for request rows ``positions``: a table or a mapping of columns
        (:data:`LABEL_FIELDS`; ``label_std`` may be absent), e.g.
        :meth:`~al.oracles.LabelResult.columns` (no table in between: one call a label must
        be cheap)."""
        cols = [c for c in LABEL_FIELDS if c in answers]
        values = zip(*(list(answers[c]) for c in cols), strict=True)
        rows = [
            {"position": int(p), **{c: _plain(v) for c, v in zip(cols, row, strict=True)}}
            for p, row in zip(positions, values, strict=True)
        ]
        self._append({"kind": "labels", "round": int(round_), "rows": rows})

    def log_asked(self, round_: int, positions: Iterable[int], cost: float) -> None:
        """Request rows ``positions`` of round ``round_`` are about to be asked of an oracle
        at ``cost`` a label."""
        positions = [int(p) for p in positions]
        self._append({"kind": "asked", "round": int(round_), "positions": positions,
                      "cost": float(cost)})  # fmt: skip

    # --- reading -----------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Every complete record, in writing order (none when there is no file)."""
        if not self.path.is_file():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines()):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("event=journal_line_skipped path=%s line=%d", self.path, n + 1)
        return out

    def request(self, round_: int) -> pd.DataFrame | None:
        """The last request journalled for ``round_`` (``position`` as index), or None."""
        found = None
        for rec in self.records():
            if rec.get("kind") == "request" and rec.get("round") == round_:
                found = rec["rows"]
        if found is None:
            return None
        frame = pd.DataFrame(found, columns=["position", *REQUEST_FIELDS]).set_index("position")
        frame["role"] = frame["role"].fillna(ROLE_TRAIN)  # a request journalled before roles
        return frame

    def paid(self, round_: int) -> pd.DataFrame:
        """The answers paid for ``round_``'s last request (``position`` as index, the first
        answer of a position kept)."""
        rows: list[dict[str, Any]] = []
        for rec in self.records():
            if rec.get("round") != round_:
                continue
            if rec.get("kind") == "request":
                rows = []  # answers belong to the request they follow
            elif rec.get("kind") == "labels":
                rows.extend(rec["rows"])
        if not rows:
            return no_answers()
        frame = pd.DataFrame(rows, columns=["position", *LABEL_FIELDS])
        return frame.drop_duplicates("position").set_index("position")

    def lost_cost(self) -> float:
        """What was paid for answers a kill lost: every time a request row was asked again
        after an ask that was never answered (or is still unanswered), its cost. Journals
        from before ``asked`` records count 0."""
        asks: dict[tuple[int, int, int], list[float]] = {}
        answered: set[tuple[int, int, int]] = set()
        generation: dict[int, int] = {}  # a round's request journalled again: new positions
        for rec in self.records():
            r, kind = int(rec.get("round", -1)), rec.get("kind")
            if kind == "request":
                generation[r] = generation.get(r, -1) + 1
            elif kind == "asked":
                for p in rec["positions"]:
                    asks.setdefault((r, generation.get(r, 0), int(p)), []).append(rec["cost"])
            elif kind == "labels":
                answered.update((r, generation.get(r, 0), int(x["position"])) for x in rec["rows"])
        return float(sum(sum(c) - (c[-1] if key in answered else 0) for key, c in asks.items()))

    def requested_rounds(self) -> list[int]:
        """Rounds with a journalled request, sorted."""
        return sorted({int(r["round"]) for r in self.records() if r.get("kind") == "request"})


def pay(
    journal: LabelJournal,
    round_: int,
    request: pd.DataFrame,
    oracles: Sequence[Oracle],
    check_owner: Callable[[], None],
) -> tuple[pd.DataFrame, int]:
    """Ask ``oracles`` (by the request's ``fidelity``) for ``request``'s rows (index 0..n-1)
    and journal every answer as it comes: the request first, then for each call (an
    oracle's ``journal_chunk`` rows: one molecule, or a network labeller's forward pass) an
    ``asked`` record, the call, and the answers, fsynced, SIGINT and SIGTERM held until
    they are (a kill pays again at most the call in flight, and
    :meth:`LabelJournal.lost_cost` counts it). Answers journalled for this very request (a
    round resumed from the journal) are re-used, never bought again; ``check_owner`` runs
    before every call (a process that lost the run pays nothing more).

    Returns:
        the answers (:data:`~al.oracles.FRAME_COLUMNS`, indexed by request row) and how
        many of them were re-used from the journal.
    """
    stored = journal.request(round_)
    same = stored is not None and len(stored) == len(request)
    for col in ("qm9_index", "fidelity"):
        same = same and bool((stored[col].to_numpy() == request[col].to_numpy()).all())
    paid = journal.paid(round_) if same else no_answers()
    if not same:
        journal.log_request(round_, request)
    index = request["qm9_index"].to_numpy(np.int64)
    parts = [paid[list(FRAME_COLUMNS)]] if len(paid) else []
    waiting: list[int] = []
    for d, rows in request.groupby("fidelity", sort=True).groups.items():
        todo = [int(p) for p in rows if int(p) not in paid.index]
        if todo and oracles[int(d)].answers_later:
            waiting.extend(todo)  # asked outside the process: al ingest journals them
        elif todo:
            parts.append(_ask(journal, round_, todo, index, oracles[int(d)], check_owner))
    if waiting:
        raise AwaitingLabels(round_, sorted(waiting))
    return pd.concat(parts).sort_index(), len(paid)


class AwaitingLabels(Exception):  # noqa: N818 - a state the campaign stops in, not an error
    """A round's request has rows that an external labeller answers later: the campaign
    stops and waits for them (``al ingest``), its other answers journalled.

    Attributes:
        round: the round waiting.
        positions: the request rows waiting for a label, ``[k]``.
        batch: those rows of the request (set by the label desk), with the molecules'
            ids and SMILES for a pool.
    """

    def __init__(self, round_: int, positions: list[int]) -> None:
        super().__init__(f"round {round_}: {len(positions)} label(s) to come from outside")
        self.round, self.positions = round_, positions
        self.batch: pd.DataFrame | None = None


def _ask(
    journal: LabelJournal,
    round_: int,
    todo: list[int],
    index: np.ndarray,
    oracle: Oracle,
    check_owner: Callable[[], None],
) -> pd.DataFrame:
    """Ask ``oracle`` for the request rows ``todo`` (QM9 indices ``index[todo]``), one call
    of ``journal_chunk`` rows at a time, each journalled before the next; the answers as a
    table indexed by request row. An oracle asked one molecule at a time shows a bar and
    logs one line for all of them instead of one a molecule."""
    step = max(1, int(oracle.journal_chunk))
    one_by_one = step == 1 and len(todo) > 1
    level = logging.DEBUG if one_by_one else logging.INFO
    results: list[LabelResult] = []
    t0 = time.perf_counter()
    with bar(total=len(todo), desc=f"labelling ({oracle.name})", unit="mol",
             enabled=one_by_one, leave=False) as progress:  # fmt: skip
        for i in range(0, len(todo), step):
            chunk = todo[i : i + step]
            check_owner()
            with deferred_signals():  # the answer is journalled before a kill unwinds
                journal.log_asked(round_, chunk, oracle.cost_per_label)
                result = oracle.label(index[chunk], log_level=level)
                journal.log_labels(round_, chunk, result.columns())
            results.append(result)
            progress.update(len(chunk))
    merged = LabelResult.concat(results)
    if one_by_one:
        log.info(
            "event=labelled oracle=%s requested=%d ok=%d failed=%d cost=%.6g seconds=%.3f",
            oracle.name, len(merged), int(merged.ok.sum()), int((~merged.ok).sum()),
            merged.total_cost, time.perf_counter() - t0,
        )  # fmt: skip
    return merged.to_frame().set_axis(todo)


def no_answers() -> pd.DataFrame:
    """An empty table of answers, as :meth:`LabelJournal.paid` gives them."""
    return pd.DataFrame(columns=["position", *LABEL_FIELDS]).set_index("position")


def error_summary(cause: BaseException) -> str:
    """The first line of a tracking-client error, without MLflow's long tail of the
    underlying exception (``API request to URL failed with exception ...``)."""
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return first.split(" with exception ")[0][:200]


#: MLflow error codes of a server that answered and refused what was written (a name or
#: value it does not accept), as opposed to one that could not be reached
REFUSED_CODES = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS"})


class LabelsNotRecordedError(RuntimeError):
    """The tracking server did not take what the campaign wrote (e.g. it is down for longer
    than the client's retries); the message, one line, says where the paid labels are and
    how to continue.

    Args:
        run_id: the campaign run.
        path: its label journal.
        cause: the error from the tracking client.
        round_: the round being recorded (None: not known).
    """

    def __init__(
        self, run_id: str, path: Path, cause: BaseException, round_: int | None = None
    ) -> None:
        first = error_summary(cause)
        where = f" round {round_}" if round_ is not None else ""
        if getattr(cause, "error_code", "") in REFUSED_CODES:  # reachable, but said no
            what, when = "refused a value of", "once what it refused is fixed"
        else:
            what, when = "did not record", "once the server is back"
        super().__init__(
            f"the tracking server {what} campaign {run_id}{where} ({first}); the paid "
            f"labels are kept in {path}; {when}, continue with: al al-loop --resume {run_id}"
        )
        self.run_id, self.path = run_id, path
