"""Runs: the experiment to log to, a campaign's run and what resume reads back, HPO trials."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from al.runtime import environment
from al.tracking.lease import CampaignLease, catch_sigterm, restore_sigterm
from al.tracking.names import (
    KIND_CAMPAIGN,
    KIND_TRIAL,
    QUERIED_COLUMNS,
    ROLE_TRAIN,
    ROUND_CHECKPOINT,
    TAG_COMPLETED_ROUND,
    TAG_KIND,
    TAG_MODEL_URI,
    TAG_PARENT,
    TAG_RESUMED_INTO,
    TAG_ROUND,
    TAG_STOP_REASON,
    TAG_TRIAL_STATE,
    TRIAL_FAILED,
    Artifacts,
    queried_layout,
    queried_path,
)

log = logging.getLogger(__name__)


def set_experiment(name: str) -> None:
    """Use experiment ``name`` unless ``mlflow run`` (or the environment) chose one."""
    if not os.environ.get("MLFLOW_RUN_ID") and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or name)


class CampaignRun:
    """A campaign's MLflow run: queried tables, round child runs, and what resume reads back.

    Everything resume needs is read from the tracking server: the queried tables of all
    rounds (``rounds/round_NNN/queried.csv``), the last completed round (a tag), the
    test-MAE history, and the last completed round's checkpoint (in its child run).
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = MlflowClient()

    #: this process's lease on the run (set by :meth:`start`)
    lease: CampaignLease | None = None
    #: when :meth:`start` ran (Unix ms) and the SIGTERM handler it replaced
    started_ms: int = 0
    previous_sigterm: Any = None

    @classmethod
    def start(cls, experiment_name: str, resume: str = "", run_name: str = "") -> CampaignRun:
        """Start (or re-open, with ``resume``) the campaign run, make it active and take its
        lease (:mod:`al.tracking.lease`).

        A new run is called ``run_name``; a run made before this process (``resume``, a
        grid's cell or ``mlflow run``'s run, ``MLFLOW_RUN_ID``) keeps its name.

        A resumed run is leased before anything on it changes: a run that another live
        process owns raises :class:`~al.tracking.lease.LeaseHeldError` and is left as it is.
        Until :meth:`end`, SIGTERM raises :class:`~al.tracking.lease.Terminated`.
        """
        started_ms = int(time.time() * 1000)
        previous = catch_sigterm()
        try:
            out = cls._start(experiment_name, resume, run_name)
        except BaseException:
            restore_sigterm(previous)
            raise
        out.started_ms, out.previous_sigterm = started_ms, previous
        return out

    @classmethod
    def _start(cls, experiment_name: str, resume: str, run_name: str = "") -> CampaignRun:
        wrapper = os.environ.get("MLFLOW_RUN_ID")
        if resume:
            try:
                exp_id = MlflowClient().get_run(resume).info.experiment_id
            except mlflow.exceptions.MlflowException as err:
                raise ValueError(f"cannot resume run {resume!r}: {err.message}") from None
            lease = CampaignLease(resume).acquire()
            try:
                if wrapper and wrapper != resume:
                    # `mlflow run -P resume=ID` made a fresh run for this process: point it at
                    # the campaign it continues and close it.
                    MlflowClient().set_tag(wrapper, TAG_RESUMED_INTO, resume)
                    MlflowClient().set_terminated(wrapper, "FINISHED")
                    os.environ.pop("MLFLOW_RUN_ID")
                # nested round runs go to the current experiment: make it the campaign's
                mlflow.set_experiment(experiment_id=exp_id)
                run = mlflow.start_run(run_id=resume)
            except mlflow.exceptions.MlflowException as err:
                lease.release()
                raise ValueError(f"cannot resume run {resume!r}: {err.message}") from None
            except BaseException:
                lease.release()
                raise
        else:
            if not wrapper and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
                mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment_name)
            run = mlflow.start_run(run_name=None if wrapper else run_name or None)
            try:
                # first of all, so that even a campaign killed at once is known for one
                MlflowClient().set_tag(run.info.run_id, TAG_KIND, KIND_CAMPAIGN)
                lease = CampaignLease(run.info.run_id).acquire()
            except BaseException as err:
                mlflow.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
                raise
        out = cls(run.info.run_id)
        out.lease = lease
        return out

    def end(self, status: str, outage: bool = False) -> None:
        """End the campaign run with ``status`` (FINISHED, FAILED or KILLED), its child runs
        still open too, and release the lease.

        Child runs opened by this process that an interrupt closed as FAILED are marked
        ``status`` as well (an interrupted fit is KILLED, not failed), and the SIGTERM
        handler from before :meth:`start` is restored. Never raises for the tracking server:
        the run is ending. A process whose lease was lost writes nothing: the run is the
        new owner's. After a tracking ``outage`` the server gets one more call, without
        retries (:data:`LAST_CALL_BOUNDS`): the run's status, and only if that is answered
        the lease; open child runs are left to the resume, which closes them.
        """
        if self.lease is not None and self.lease.lost:
            self.lease.release()  # stops the heartbeat; the tag is not ours to delete
            restore_sigterm(self.previous_sigterm)
            _forget_active_runs()
            log.info("event=campaign_left run_id=%s reason=lease_lost", self.run_id)
            return
        if outage:
            self._end_after_outage(status)
            return
        try:
            while (active := mlflow.active_run()) is not None and active.info.run_id != self.run_id:
                mlflow.end_run(status)  # a nested round run the exception left open
            exp = self.client.get_run(self.run_id).info.experiment_id
            flt = f"tags.`{TAG_PARENT}` = '{self.run_id}'"
            for child in self.client.search_runs([exp], filter_string=flt, max_results=10_000):
                ours = child.info.start_time >= self.started_ms and child.info.status == "FAILED"
                if child.info.status == "RUNNING" or (ours and status == "KILLED"):
                    self.client.set_terminated(child.info.run_id, status)
        except Exception as err:  # the campaign's own status comes next
            log.warning("event=close_children_failed run_id=%s error=%r", self.run_id, err)
        try:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:
                mlflow.end_run(status)
            else:
                self.client.set_terminated(self.run_id, status)
        except Exception as err:  # the server is gone: the error that got here matters more
            log.warning("event=end_run_failed run_id=%s error=%r", self.run_id, err)
        finally:
            if self.lease is not None:
                self.lease.release()
            restore_sigterm(self.previous_sigterm)
        log.info("event=campaign_ended run_id=%s status=%s", self.run_id, status)

    def _end_after_outage(self, status: str) -> None:
        """:meth:`end` once the server failed: one bounded call, then nothing more."""
        _forget_active_runs()
        answered = False
        with environment(LAST_CALL_BOUNDS):
            try:
                self.client.set_terminated(self.run_id, status)
                answered = True
            except Exception as err:  # still down: the resume closes the run
                log.warning("event=end_run_failed run_id=%s error=%r", self.run_id, err)
            if self.lease is not None:
                self.lease.release(delete=answered)  # else it expires after its TTL
        restore_sigterm(self.previous_sigterm)
        log.info("event=campaign_ended run_id=%s status=%s outage=1", self.run_id, status)

    def check_owner(self) -> None:
        """Raise :class:`~al.tracking.lease.LeaseLostError` unless this process still owns
        the run (the lease's fence); nothing to check without a lease."""
        if self.lease is not None:
            self.lease.check()

    # --- reading back -------------------------------------------------------------------
    def queried_rounds(self) -> list[int]:
        try:
            items = self.client.list_artifacts(self.run_id, "rounds")
        except mlflow.exceptions.MlflowException:
            return []
        rounds = []
        for item in items:
            name = item.path.rsplit("/", 1)[-1]
            if item.is_dir and name.startswith("round_"):
                files = {f.path for f in self.client.list_artifacts(self.run_id, item.path)}
                if f"{item.path}/queried.csv" in files:
                    rounds.append(int(name.split("_")[1]))
        return sorted(rounds)

    def read_queried(self, round_: int) -> pd.DataFrame:
        import mlflow.artifacts

        path = mlflow.artifacts.download_artifacts(
            run_id=self.run_id, artifact_path=queried_path(round_)
        )
        frame = pd.read_csv(path)
        if "role" not in frame.columns:  # a table written before roles: training labels
            frame["role"] = ROLE_TRAIN
        if "label_std" not in frame.columns:  # written before the oracle's std was kept
            frame["label_std"] = float("nan")
        return frame

    def completed_round(self) -> int:
        tag = self.client.get_run(self.run_id).data.tags.get(TAG_COMPLETED_ROUND)
        return int(tag) if tag is not None else -1

    def metric_by_step(self, key: str) -> dict[int, float]:
        """``step -> value`` of ``key``; a step logged twice (a round redone after a kill)
        keeps its latest value (by timestamp, then by the server's order)."""
        hist = self.client.get_metric_history(self.run_id, key)
        latest = sorted(enumerate(hist), key=lambda im: (im[1].timestamp, im[0]))
        return dict(sorted({int(m.step): float(m.value) for _, m in latest}.items()))

    def metric_history(self, key: str) -> list[float]:
        """Values of ``key`` in step order, one per step (see :meth:`metric_by_step`)."""
        return list(self.metric_by_step(key).values())

    def round_child(self, round_: int, finished_only: bool = True) -> list[Any]:
        """The round's child runs, newest first (a round fitted twice after a kill has
        several: the newest finished one is the round's model)."""
        exp = self.client.get_run(self.run_id).info.experiment_id
        flt = f"tags.`{TAG_PARENT}` = '{self.run_id}' and tags.`{TAG_ROUND}` = '{round_}'"
        runs = self.client.search_runs([exp], filter_string=flt)
        runs = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id), reverse=True)
        return [r for r in runs if r.info.status == "FINISHED" or not finished_only]

    def download_checkpoint(self, round_: int, dst: Path) -> Path:
        import mlflow.artifacts

        # the model of round r is the last one trained up to r (the stream scheme skips fits)
        children = []
        for r in range(round_, -1, -1):
            children = self.round_child(r)
            if children:
                break
        if not children:
            raise RuntimeError(f"run {self.run_id}: no finished child run up to round {round_}")
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=children[0].info.run_id, artifact_path=ROUND_CHECKPOINT, dst_path=str(dst)
            )
        )

    def close_stale_children(self) -> None:
        """Mark round child runs left RUNNING by a killed process as KILLED, and the logged
        models they, or the campaign run's final upload, left PENDING (cut short) as FAILED;
        called on resume, before this process logs any model."""
        exp = self.client.get_run(self.run_id).info.experiment_id
        flt = f"tags.`{TAG_PARENT}` = '{self.run_id}'"
        unfinished = {self.run_id}
        for r in self.client.search_runs([exp], filter_string=flt):
            if r.info.status == "RUNNING":
                self.client.set_terminated(r.info.run_id, "KILLED")
            if r.info.status != "FINISHED":
                unfinished.add(r.info.run_id)
        for model in self.client.search_logged_models([exp], max_results=10_000):
            if model.source_run_id in unfinished and model.status == LoggedModelStatus.PENDING:
                self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)

    # --- writing -------------------------------------------------------------------------
    def log_queried(self, round_: int, frame: pd.DataFrame) -> None:
        missing = [c for c in QUERIED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"queried table lacks columns {missing}")
        self.client.log_text(
            self.run_id, frame[queried_layout(frame.columns)].to_csv(index=False),
            queried_path(round_),
        )  # fmt: skip

    def complete_round(self, round_: int) -> None:
        self.client.set_tag(self.run_id, TAG_COMPLETED_ROUND, str(round_))


#: Bounds on the tracking client's HTTP retries in a campaign process: an outage is reported
#: within about two minutes (refused connections: ~15 s per call), not after MLflow's
#: default of several. Values already set in the environment win.
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


#: The bounds of the one call a campaign makes after the tracking server failed (ending
#: its run): no retry, 10 s. With :data:`HTTP_BOUNDS` for the call that failed, an outage
#: ends a campaign within ~20 s of a refused connection and ~2.5 min of a hanging server.
LAST_CALL_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def bound_http_retries() -> None:
    """Set :data:`HTTP_BOUNDS` in this process's environment, unless already set."""
    for key, value in HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)


@dataclass
class StoredCampaign:
    """What an existing run holds that resume checks before it continues.

    Attributes:
        run_id: the run.
        tags: its tags.
        config: its resolved config (``config.yaml``), None when it was never written.
        splits_json: its split (``splits/splits.json``), None when it was never written.
    """

    run_id: str
    tags: dict[str, str]
    config: dict[str, Any] | None
    splits_json: str | None

    @property
    def kind(self) -> str | None:
        """The ``al.kind`` tag; None on a run killed before its tags were written."""
        return self.tags.get(TAG_KIND)

    @property
    def finished(self) -> bool:
        """Stopped by its rules and its final model logged."""
        return TAG_STOP_REASON in self.tags and TAG_MODEL_URI in self.tags


def forget_active_run(run_id: str) -> None:
    """Drop the run ``run_id`` from this process's active MLflow runs without a call to the
    server (which has failed): the resume closes it."""
    from mlflow.tracking import fluent

    stack = getattr(fluent, "_active_run_stack", None)
    if stack is not None:
        stack.set([r for r in stack.get() if r.info.run_id != run_id])


def _forget_active_runs() -> None:
    """Drop this process's active MLflow runs without ending them on the server, so that
    nothing (MLflow's own exit handler included) sets the status of a run another process
    now owns. MLflow has no public call for it: its thread-local run stack is cleared."""
    from mlflow.tracking import fluent

    stack = getattr(fluent, "_active_run_stack", None)
    if stack is not None:
        stack.get().clear()


def read_stored_campaign(run_id: str) -> StoredCampaign:
    """The tags, config and split of run ``run_id``; ValueError when there is no such run."""
    import mlflow.artifacts
    import yaml

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        first = (err.message.splitlines() or ["not found"])[0]
        raise ValueError(f"cannot resume run {run_id!r}: {first}") from None
    present = {a.path for a in client.list_artifacts(run_id)}
    if "splits" in present:
        present |= {a.path for a in client.list_artifacts(run_id, "splits")}

    def text(path: str) -> str | None:
        if path not in present:
            return None
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")

    config = text(Artifacts.CONFIG)
    return StoredCampaign(
        run_id=run_id,
        tags=dict(run.data.tags),
        config=yaml.safe_load(config) if config is not None else None,
        splits_json=text(Artifacts.SPLITS),
    )


def trial_runs(parent_run_id: str) -> list[Any]:
    """The nested trial runs of a study's parent run (any status)."""
    client = MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    flt = f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_KIND}` = '{KIND_TRIAL}'"
    return client.search_runs([exp], filter_string=flt, max_results=10_000)


def mark_trial_killed(run_id: str) -> None:
    """Close the run of a trial whose worker died (its process cannot do it any more)."""
    client = MlflowClient()
    client.set_tag(run_id, TAG_TRIAL_STATE, TRIAL_FAILED)
    client.set_terminated(run_id, "KILLED")
