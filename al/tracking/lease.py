"""Who owns a campaign run, and how the owning process ends it.

**The lease.** One process at a time runs a campaign: the owner writes the tag
``al.lease`` on the campaign run (JSON: ``owner`` = ``host:pid:uuid``, ``since`` and
``heartbeat`` as Unix times) and a daemon thread refreshes ``heartbeat`` every third of the
time-to-live (``AL_LEASE_TTL`` seconds, default 90). Another process that finds a live lease
(heartbeat younger than the TTL, owner not itself) is refused with one line; a stale lease
(no heartbeat for a TTL, or its owner a dead process on this host) is taken over, and the
takeover is logged. The owner deletes the tag when it ends, in any way it can.

MLflow tags have no compare-and-swap, so this is a best-effort lease: after writing its
lease a process waits a short settle time (``min(2 s, TTL / 4)``), reads the tag back and
backs off if another owner's write landed last. Two processes can both proceed only if one
of them takes longer than the settle time between reading the tag and writing its own,
which closes the race to within that window.

**Interruption.** :func:`catch_sigterm` turns SIGTERM (what a scheduler sends) into
:class:`Terminated`, a :class:`KeyboardInterrupt` like Ctrl-C's, while a campaign owns its
run (:func:`restore_sigterm` puts the old handler back), so both unwind through the same
``finally`` blocks and end the run KILLED (:class:`CampaignInterrupted`); :func:`interrupt_signal`
names the signal behind an interrupt, and :func:`exit_code` gives the conventional exit
status (128 + signal number).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from al.tracking.names import TAG_LEASE

log = logging.getLogger(__name__)

#: environment variable: the lease's time-to-live in seconds
LEASE_TTL_ENV = "AL_LEASE_TTL"
DEFAULT_TTL = 90.0


class LeaseHeldError(RuntimeError):
    """Another live process owns the run; the message is the one line for the user."""


class LeaseLostError(RuntimeError):
    """Another process took the run over (this one was paused past the lease's TTL): this
    process stops at once and writes nothing more to the run; the message is one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM received while a campaign runs (see :func:`terminate_as_interrupt`)."""


def lease_ttl() -> float:
    """The lease's time-to-live in seconds (``AL_LEASE_TTL``, default 90)."""
    raw = os.environ.get(LEASE_TTL_ENV, "")
    try:
        ttl = float(raw) if raw else DEFAULT_TTL
    except ValueError:
        raise ValueError(
            f"{LEASE_TTL_ENV}={raw!r} is not a number; expected seconds, e.g. 90"
        ) from None
    if ttl <= 0:
        raise ValueError(f"{LEASE_TTL_ENV}={raw!r} must be a positive number of seconds")
    return ttl


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class LeaseRecord:
    """The content of the ``al.lease`` tag."""

    owner: str
    since: float
    heartbeat: float

    def to_tag(self) -> str:
        return json.dumps({"owner": self.owner, "since": self.since, "heartbeat": self.heartbeat})

    @staticmethod
    def parse(text: str | None) -> LeaseRecord | None:
        """The record in ``text``; None for no tag or one that cannot be read (stale)."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            return LeaseRecord(str(raw["owner"]), float(raw["since"]), float(raw["heartbeat"]))
        except (ValueError, KeyError, TypeError):
            return None

    def owner_dead(self) -> bool:
        """True when the owner is a process of this host that no longer exists."""
        host, _, rest = self.owner.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, owned by someone else
            return False
        return False

    def live(self, ttl: float, now: float) -> bool:
        return now - self.heartbeat < ttl and not self.owner_dead()


class CampaignLease:
    """The lease of one campaign run held by this process (see the module docstring).

    Args:
        run_id: the campaign run.
        ttl: seconds without heartbeat after which the lease may be taken over (default:
            :func:`lease_ttl`).
        client: the MLflow client to use.
    """

    def __init__(
        self, run_id: str, ttl: float | None = None, client: MlflowClient | None = None
    ) -> None:
        self.run_id = run_id
        self.ttl = ttl if ttl is not None else lease_ttl()
        self.client = client or MlflowClient()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.since = 0.0
        self.lost = False
        #: who took the run over, once :attr:`lost` (as the tag said then)
        self.new_owner = ""
        #: when the tag last said this process owns the run (wall clock, which, unlike a
        #: monotonic one, also runs while the machine is suspended)
        self.confirmed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def settle(self) -> float:
        """Seconds between writing the lease and reading it back."""
        return min(2.0, self.ttl / 4)

    def read(self) -> LeaseRecord | None:
        """The lease tag as it is on the server now."""
        return LeaseRecord.parse(self.client.get_run(self.run_id).data.tags.get(TAG_LEASE))

    def refusal(self, other: LeaseRecord) -> str:
        return (
            f"run {self.run_id} is being run by {other.owner} since {_stamp(other.since)}; "
            f"wait, or take it over after {self.ttl:g} s without heartbeat"
        )

    def acquire(self) -> CampaignLease:
        """Take the lease (or take over a stale one) and start the heartbeat; raises
        :class:`LeaseHeldError` when another live process owns the run."""
        current = self.read()
        now = time.time()
        if current is not None and current.owner != self.owner:
            if current.live(self.ttl, now):
                raise LeaseHeldError(self.refusal(current))
            log.warning(
                "event=lease_takeover run_id=%s stale_owner=%s last_heartbeat=%s",
                self.run_id, current.owner, _stamp(current.heartbeat),
            )  # fmt: skip
        self.since = now
        try:
            self._write(now)
        except MlflowException as err:
            if not _insert_race(err):
                raise
            # Another process set the tag of a run that had none at the same moment: the
            # store inserted theirs and refused ours (its UNIQUE constraint on run and key).
            # Who won is read back below, as after any concurrent write.
            log.info("event=lease_write_raced run_id=%s owner=%s", self.run_id, self.owner)
        try:
            time.sleep(self.settle)  # no compare-and-swap: let a concurrent write land, re-read
            winner = self.read()
        except BaseException:  # interrupted while settling: leave no lease behind
            self.release()
            raise
        if winner is None or winner.owner != self.owner:
            if winner is None:
                raise LeaseHeldError(
                    f"run {self.run_id}: another process touched its lease at the same time; "
                    "try again"
                )
            raise LeaseHeldError(self.refusal(winner))
        self.confirmed = time.time()
        log.info(
            "event=lease_acquired run_id=%s owner=%s ttl=%g", self.run_id, self.owner, self.ttl
        )
        self._thread = threading.Thread(
            target=self._beat, name=f"al-lease-{self.run_id[:8]}", daemon=True
        )
        self._thread.start()
        return self

    def _write(self, now: float) -> None:
        self.client.set_tag(
            self.run_id, TAG_LEASE, LeaseRecord(self.owner, self.since, now).to_tag()
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                current = self.read()
                if current is not None and current.owner != self.owner:
                    self._lose(current)
                    return
                self._write(time.time())
                self.confirmed = time.time()
            except Exception as err:  # the next beat tries again; the TTL is the margin
                log.warning("event=lease_heartbeat_failed run_id=%s error=%r", self.run_id, err)

    def _lose(self, current: LeaseRecord | None) -> None:
        self.lost = True
        self.new_owner = current.owner if current else "another process"
        log.error(
            "event=lease_lost run_id=%s new_owner=%s; this process no longer owns the run",
            self.run_id, current.owner if current else "none",
        )  # fmt: skip

    #: seconds a confirmation of ownership is trusted before :meth:`check` reads the tag;
    #: None: half the TTL (no other process may take the run over before a whole TTL has
    #: passed without heartbeat, so a confirmation younger than that still holds)
    RECHECK_S: float | None = None

    def check(self) -> None:
        """The fence: raises :class:`LeaseLostError` unless this process still owns the run,
        by the heartbeat's view and, when its last confirmation is older than half the TTL
        (:attr:`RECHECK_S`), by the tag read now: a process that was paused or suspended
        past the TTL finds out here, before it pays a label or writes anything. A server
        that cannot be read then raises its own error (an outage)."""
        recheck = self.ttl / 2 if self.RECHECK_S is None else self.RECHECK_S
        if not self.lost and time.time() - self.confirmed > recheck:
            current = self.read()
            if current is None or current.owner != self.owner:
                self._lose(current)
            else:
                self.confirmed = time.time()
        if self.lost:
            raise LeaseLostError(
                f"run {self.run_id} was taken over by {self.new_owner} while this process was "
                "not heartbeating (paused past the lease's TTL); this process stops here and "
                "pays no more labels: the other one goes on"
            )

    def release(self, delete: bool = True) -> None:
        """Stop the heartbeat and (``delete``) delete the tag if this process still owns it
        (never raises: it runs while a campaign is ending). Without ``delete`` (the server
        failed) the heartbeat thread, a daemon, is not waited for."""
        self._stop.set()
        if not delete:
            return
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            current = self.read()
            if current is not None and current.owner == self.owner:
                self.client.delete_tag(self.run_id, TAG_LEASE)
                log.info("event=lease_released run_id=%s", self.run_id)
        except Exception as err:  # the lease then expires after its TTL
            log.warning("event=lease_release_failed run_id=%s error=%r", self.run_id, err)


# --- interruption -------------------------------------------------------------------------
def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


def catch_sigterm() -> Any:
    """Make SIGTERM raise :class:`Terminated`; returns the previous handler for
    :func:`restore_sigterm` (None off the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def restore_sigterm(previous: Any) -> None:
    """Put back the SIGTERM handler that :func:`catch_sigterm` replaced."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


class CampaignInterrupted(KeyboardInterrupt):
    """A campaign run ended as KILLED by a signal: which run, and which signal."""

    def __init__(self, run_id: str, sig: signal.Signals) -> None:
        super().__init__(f"campaign {run_id} interrupted by {sig.name}")
        self.run_id, self.signal = run_id, sig


def interrupt_signal(err: BaseException) -> signal.Signals:
    """The signal behind an interrupt: SIGTERM for :class:`Terminated`, else SIGINT."""
    if isinstance(err, CampaignInterrupted):
        return err.signal
    return signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT


def exit_code(sig: signal.Signals) -> int:
    """The conventional exit status of a process ended by ``sig`` (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(sig)


def _insert_race(err: MlflowException) -> bool:
    """Whether ``err`` is the store refusing a second insert of the same run tag (SQLite:
    "UNIQUE constraint failed", PostgreSQL: "duplicate key value violates unique
    constraint"; both sent back by the server as an ``IntegrityError``)."""
    text = str(err)
    return "IntegrityError" in text or "UNIQUE constraint" in text or "unique constraint" in text
