"""Runs: the experiment to log to, a campaign's run and what resume reads back, HPO trials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from al.tracking.names import (
    KIND_TRIAL,
    QUERIED_COLUMNS,
    ROUND_CHECKPOINT,
    TAG_COMPLETED_ROUND,
    TAG_KIND,
    TAG_PARENT,
    TAG_RESUMED_INTO,
    TAG_ROUND,
    TAG_TRIAL_STATE,
    TRIAL_FAILED,
    queried_path,
)


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

    @classmethod
    def start(cls, experiment_name: str, resume: str = "") -> CampaignRun:
        """Start (or re-open, with ``resume``) the campaign run and make it active."""
        wrapper = os.environ.get("MLFLOW_RUN_ID")
        if resume:
            if wrapper and wrapper != resume:
                # `mlflow run -P resume=ID` made a fresh run for this process: point it at
                # the campaign it continues and close it.
                MlflowClient().set_tag(wrapper, TAG_RESUMED_INTO, resume)
                MlflowClient().set_terminated(wrapper, "FINISHED")
                os.environ.pop("MLFLOW_RUN_ID")
            try:
                # nested round runs go to the current experiment: make it the campaign's
                exp_id = MlflowClient().get_run(resume).info.experiment_id
                mlflow.set_experiment(experiment_id=exp_id)
                run = mlflow.start_run(run_id=resume)
            except mlflow.exceptions.MlflowException as err:
                raise ValueError(f"cannot resume run {resume!r}: {err.message}") from None
        else:
            if not wrapper and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
                mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment_name)
            run = mlflow.start_run()
        return cls(run.info.run_id)

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
        return pd.read_csv(path)

    def completed_round(self) -> int:
        tag = self.client.get_run(self.run_id).data.tags.get(TAG_COMPLETED_ROUND)
        return int(tag) if tag is not None else -1

    def metric_history(self, key: str) -> list[float]:
        hist = self.client.get_metric_history(self.run_id, key)
        return [m.value for m in sorted(hist, key=lambda m: m.step)]

    def round_child(self, round_: int, finished_only: bool = True) -> list[Any]:
        exp = self.client.get_run(self.run_id).info.experiment_id
        flt = f"tags.`{TAG_PARENT}` = '{self.run_id}' and tags.`{TAG_ROUND}` = '{round_}'"
        runs = self.client.search_runs([exp], filter_string=flt)
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
        """Mark round child runs left RUNNING by a killed process as KILLED."""
        exp = self.client.get_run(self.run_id).info.experiment_id
        flt = f"tags.`{TAG_PARENT}` = '{self.run_id}'"
        for r in self.client.search_runs([exp], filter_string=flt):
            if r.info.status == "RUNNING":
                self.client.set_terminated(r.info.run_id, "KILLED")

    # --- writing -------------------------------------------------------------------------
    def log_queried(self, round_: int, frame: pd.DataFrame) -> None:
        missing = [c for c in QUERIED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"queried table lacks columns {missing}")
        self.client.log_text(
            self.run_id, frame[list(QUERIED_COLUMNS)].to_csv(index=False), queried_path(round_)
        )

    def complete_round(self, round_: int) -> None:
        self.client.set_tag(self.run_id, TAG_COMPLETED_ROUND, str(round_))


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
