"""A campaign's tracking, as a collaborator of :class:`al.loop.campaign.Campaign`.

:class:`CampaignTracker` is what the loop asks of it: a context per fit (the round's child
run, with an epoch logger), the round's artifacts and metrics, the queried tables, the
completed-round mark, and the reads that resume needs. Two implementations:

:class:`MlflowTracker`
    The campaign's MLflow run (:class:`al.tracking.CampaignRun`): metrics at
    ``step = n_labelled``, ``rounds/round_NNN/queried.csv``, nested round runs with the
    epoch curves, plots, checkpoint and pyfunc model; resume reads all of it back.
:class:`MemoryTracker`
    Everything in memory and checkpoints in a temporary folder: no MLflow, no server
    (benchmarks, tests, notebooks).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from requests.exceptions import RequestException

from al import plots
from al.loop.converged import REPORT_METRICS
from al.loop.journal import journal_path
from al.loop.ledger import Labelled
from al.models.checkpoint import save_checkpoint
from al.tracking import (
    CAMPAIGN_PLOTS,
    CONTEXT_EVALUATION,
    CONTEXT_POOL,
    CONTEXT_TRAINING,
    EVALUATED_ON_TEST,
    FINAL_MODEL_METRICS,
    KIND_ROUND,
    QUERIED_COLUMNS,
    ROUND_CHECKPOINT,
    TAG_DATA_VERSION,
    TAG_JOURNAL,
    TAG_KIND,
    TAG_MODEL_URI,
    TAG_ROUND,
    VALIDATION_TABLE,
    Artifacts,
    CampaignRun,
    EpochLogger,
    dataset_name,
    log_figure,
    log_metrics,
    queried_layout,
)
from al.tracking.datasets import DatasetUse, MoleculeSet, linked_metric, log_datasets, molecule_set
from al.tracking.names import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.tracking.pyfunc import log_pyfunc_model
from al.tracking.registry import register_model
from al.tracking.runs import forget_active_run
from al.training.fit import EpochStats
from al.training.metrics import calibration_curve, regression_report

log = logging.getLogger(__name__)

#: Receives the statistics of every training epoch.
EpochCallback = Callable[[EpochStats], None]


@dataclass
class ModelArtifacts:
    """A trained surrogate and how it does on the test set: what a round (or the campaign's
    end) records.

    Attributes:
        members: the surrogate's models (one, or the ensemble's K), on the CPU.
        meta: checkpoint metadata (surrogate settings, round, data version, ...).
        round: the round the model belongs to.
        curve: ``(n_labelled, test MAE)`` per round so far, this model's included.
        test_mean, test_std: prediction on the test set, ``[n_test]`` each (``test_std``
            None without uncertainty).
        test_target: reference energies of the test set, ``[n_test]``.
        history: the fit's epoch statistics (empty for a model that was not just fitted).
    """

    members: list[torch.nn.Module]
    meta: dict[str, Any]
    round: int
    curve: list[tuple[int, float]]
    test_mean: np.ndarray
    test_std: np.ndarray | None
    test_target: np.ndarray
    history: list[EpochStats] = field(default_factory=list)
    #: the test prediction as a table (:data:`~al.tracking.names.PREDICTION_COLUMNS`)
    predictions: pd.DataFrame | None = None
    #: what the test figures are measured on (a pool campaign's held-out set), and the
    #: labels' unit and name as the figures' axes say them
    evaluated_on: str = EVALUATED_ON_TEST
    unit: str = "eV"
    quantity: str = "H_atomization"

    def test_metrics(self) -> dict[str, float]:
        """The test-set metrics of the model (``test_mae``, ``test_rmse``, ...)."""
        std = None if self.test_std is None else torch.as_tensor(self.test_std)
        report = regression_report(
            torch.as_tensor(self.test_mean), torch.as_tensor(self.test_target), std
        )
        return {REPORT_METRICS[k]: v for k, v in report.items() if k in REPORT_METRICS}

    def figures(self) -> list[tuple[str, Any]]:
        """``(artifact path, figure)``: learning curve, parity, std vs error, calibration
        (observed against expected coverage, |err| against std) and the training curves
        when there is a history."""
        coverage = None
        if self.test_std is not None:
            expected, observed = calibration_curve(
                *(torch.as_tensor(a) for a in (self.test_mean, self.test_std, self.test_target))
            )
            coverage = (expected.numpy(), observed.numpy())
        figs = plots.campaign_figures(
            self.curve,
            self.test_mean,
            self.test_std,
            self.test_target,
            self.round,
            coverage,
            self.evaluated_on,
            self.unit,
            self.quantity,
        )
        out = list(zip(CAMPAIGN_PLOTS, figs, strict=True))
        if self.history:
            out.insert(0, (Artifacts.CURVES, plots.training_curves(self.history)))
        return out


class CampaignTracker(Protocol):
    """What a campaign records, and what it reads back to resume.

    ``journal_path`` is where the campaign's label journal lives (:mod:`al.loop.journal`).
    """

    run_id: str
    journal_path: Path

    def fit_run(self, round_: int, labelled: Labelled) -> AbstractContextManager[EpochCallback]:
        """Context of one fit (a round's child run) on ``labelled``; gives the epoch logger."""
        ...

    def log_round_artifacts(self, artifacts: ModelArtifacts) -> None:
        """Curves, plots, checkpoint and model of the fit; called inside :meth:`fit_run`."""
        ...

    def log_round_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Campaign metrics at ``step = n_labelled`` (non-finite values are skipped)."""
        ...

    def log_queried(self, round_: int, frame: pd.DataFrame) -> None:
        """The round's requests, in the ``QUERIED_COLUMNS`` layout."""
        ...

    def log_validation(self, frame: pd.DataFrame) -> None:
        """The validation set's rows of the queried tables (``validation.csv``)."""
        ...

    def check_owner(self) -> None:
        """Raise :class:`~al.tracking.lease.LeaseLostError` when another process owns the
        campaign now; called before every oracle call and every round's record."""
        ...

    def log_predictions(self, path: str, frame: pd.DataFrame) -> None:
        """A table of test predictions at ``path`` on the campaign run."""
        ...

    def complete_round(self, round_: int) -> None:
        """Mark ``round_`` as fitted, evaluated and logged."""
        ...

    # --- what resume reads back --------------------------------------------------------
    def queried_rounds(self) -> list[int]: ...

    def read_queried(self, round_: int) -> pd.DataFrame: ...

    def completed_round(self) -> int:
        """The last completed round, -1 when none."""
        ...

    def metric_by_step(self, key: str) -> dict[int, float]:
        """``step -> value`` of ``key``, the latest value of a step logged twice."""
        ...

    def metric_history(self, key: str) -> list[float]:
        """Values of ``key`` in step order, one per step."""
        ...

    def download_checkpoint(self, round_: int, dst: Path) -> Path:
        """The checkpoint of the last fit up to ``round_``, copied below ``dst``."""
        ...

    def close_stale_children(self) -> None:
        """Close fits left open by a process that died."""
        ...


class MlflowTracker(CampaignRun):
    """The campaign's MLflow run (start it with :meth:`CampaignRun.start`)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self._epochs: EpochLogger | None = None
        self._journal: Path | None = None
        #: the pool and the test set (:meth:`log_campaign_datasets`), inputs of every fit
        self.datasets: list[DatasetUse] = []
        self.test_set: MoleculeSet | None = None
        self._data: tuple[str, str, str] = ("", "", "")  # data digest, source, corpus

    @property
    def journal_path(self) -> Path:
        """The campaign's label journal: ``$AL_JOURNAL_DIR/<run id>.jsonl`` (see
        :func:`al.loop.journal.journal_path`), or, when that file does not exist and the
        run's ``al.journal`` tag names one that does, that one (a campaign resumed from a
        shell without its journal setting finds its own journal). Read once."""
        if self._journal is None:
            here = journal_path(self.run_id)
            tagged = self.client.get_run(self.run_id).data.tags.get(TAG_JOURNAL)
            found = not here.exists() and tagged and Path(tagged).exists()
            self._journal = Path(tagged) if found else here
        return self._journal

    def log_campaign_datasets(
        self, data_digest: str, split_digest: str, source: str, pool: np.ndarray,
        test: np.ndarray, test_target: np.ndarray | None, corpus: str = "qm9",
    ) -> None:  # fmt: skip
        """The pool (QM9 indices ``[n_pool]``) and the test set (``[n_test]``, with its
        reference energies; None: a pool's held-out set, not labelled yet) as inputs of the
        campaign run, then of every round run. ``corpus``: ``qm9``, or ``pool.<name>``."""
        self._data = (data_digest, source, corpus)
        role = "test" if test_target is not None else "heldout"
        self.test_set = molecule_set(
            dataset_name(data_digest, role, split_digest, corpus), source, test, test_target
        )
        pool_set = molecule_set(
            dataset_name(data_digest, "pool", split_digest, corpus), source, pool
        )
        self.datasets = [
            DatasetUse(pool_set, CONTEXT_POOL), DatasetUse(self.test_set, CONTEXT_EVALUATION)
        ]  # fmt: skip
        log_datasets(self.datasets)

    def labelled_set(self, round_: int, labelled: Labelled) -> MoleculeSet | None:
        """The training labels of ``labelled`` after ``round_`` as a dataset whose digest is
        the labelled set's data version; None before :meth:`log_campaign_datasets`."""
        if not self._data[0]:
            return None
        ok = labelled.ok
        return molecule_set(
            dataset_name(self._data[0], "labelled", f"round_{round_:03d}", self._data[2]),
            self._data[1],
            ok["qm9_index"].to_numpy(np.int64), ok["label"].to_numpy(float),
            digest=labelled.digest(),
        )  # fmt: skip

    @contextmanager
    def fit_run(self, round_: int, labelled: Labelled) -> Iterator[EpochCallback]:
        """A nested run ``round_NNN`` tagged with its round and data version, its datasets
        (the labelled set, the pool and the test set) as inputs; the labelled set is an
        input of the campaign run too. Epoch metrics go out in batches. An exception marks
        it FAILED."""
        version = labelled.digest()
        trained = self.labelled_set(round_, labelled)
        uses = [DatasetUse(trained, CONTEXT_TRAINING)] if trained is not None else []
        log_datasets(uses)  # on the campaign run, still the active one
        child = mlflow.start_run(run_name=f"round_{round_:03d}", nested=True)
        try:
            mlflow.set_tags({TAG_KIND: KIND_ROUND, TAG_ROUND: round_, TAG_DATA_VERSION: version})
            log_datasets([*uses, *self.datasets])
            self._epochs = logger = EpochLogger(child.info.run_id)
            yield logger
            logger.flush()
        except (MlflowException, RequestException):  # the server failed: no call more
            forget_active_run(child.info.run_id)
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        else:
            mlflow.end_run("FINISHED")
        finally:
            self._epochs = None

    def log_round_artifacts(self, artifacts: ModelArtifacts) -> None:
        """Into the active child run: curves, plots, ``checkpoint/model.pt``, pyfunc model,
        and the model's test metrics (at ``step = n_labelled``) linked to it and the test
        set."""
        if self._epochs is not None:
            self._epochs.flush()
        _log_figures(artifacts)
        if artifacts.predictions is not None:
            mlflow.log_text(artifacts.predictions.to_csv(index=False), Artifacts.PREDICTIONS)
        with tempfile.TemporaryDirectory(prefix="al-") as tmp:
            ckpt = _save(artifacts, Path(tmp))
            mlflow.log_artifact(str(ckpt), Path(ROUND_CHECKPOINT).parent.as_posix())
            info = log_pyfunc_model(ckpt, Artifacts.MODEL_NAME)
        step = int(artifacts.meta.get("n_labelled", 0))
        ts = int(time.time() * 1000)
        metrics = [
            linked_metric(Metric(k, float(v), ts, step), info.model_id, self.test_set)
            for k, v in artifacts.test_metrics().items()
            if math.isfinite(float(v))
        ]
        active = mlflow.active_run()
        if metrics and active is not None:
            self.client.log_batch(active.info.run_id, metrics=metrics, synchronous=True)

    def log_round_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        log_metrics(metrics, step=step, run_id=self.run_id)

    def log_validation(self, frame: pd.DataFrame) -> None:
        self.client.log_text(
            self.run_id, frame[queried_layout(frame.columns)].to_csv(index=False),
            VALIDATION_TABLE,
        )  # fmt: skip

    def log_predictions(self, path: str, frame: pd.DataFrame) -> None:
        self.client.log_text(self.run_id, frame.to_csv(index=False), path)

    def log_final_model(
        self, artifacts: ModelArtifacts, labelled: pd.DataFrame, register_as: str = ""
    ) -> str:
        """The final surrogate as the campaign's MLflow model (its URI in the tag
        ``al.model_uri``) with the campaign's final test metrics linked to it
        (:meth:`link_final_metrics`), final plots and ``labelled.csv``; registered as
        ``register_as`` (``name`` or ``name@alias``) when given. Returns the model URI."""
        with tempfile.TemporaryDirectory(prefix="al-") as tmp:
            info = log_pyfunc_model(_save(artifacts, Path(tmp)), Artifacts.MODEL_NAME)
            mlflow.set_tag(TAG_MODEL_URI, info.model_uri)
            self.link_final_metrics(info.model_id)
            _log_figures(artifacts)
            labelled.to_csv(Path(tmp) / "labelled.csv", index=False)
            mlflow.log_artifact(str(Path(tmp) / "labelled.csv"))
        if register_as:
            try:
                register_model(info.model_uri, register_as, self.run_id)
            except Exception as err:  # the campaign is recorded; only the registry entry lacks
                log.warning(
                    "event=registration_failed run_id=%s register_as=%s error=%r",
                    self.run_id, register_as, err,
                )  # fmt: skip
        return str(info.model_uri)

    def link_final_metrics(self, model_id: str) -> None:
        """Link the campaign run's final test metrics (:data:`FINAL_MODEL_METRICS` at the
        last step; the ``final_refit.*`` ones when a final refit made the model) to the
        LoggedModel ``model_id`` and the test set, so that the models view ranks models by
        them. The rows are sent again unchanged (key, value, step, timestamp): the run
        keeps one copy, the model gains the link."""
        have = self.client.get_run(self.run_id).data.metrics
        refit = CM.final_refit(CM.TEST_MAE) in have
        keys = [CM.final_refit(k) if refit else k for k in FINAL_MODEL_METRICS]
        rows = []
        for key in (k for k in keys if k in have):
            history = self.client.get_metric_history(self.run_id, key)
            rows.append(max(history, key=lambda m: (m.step, m.timestamp)))
        metrics = [linked_metric(m, model_id, self.test_set) for m in rows]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)


def _save(artifacts: ModelArtifacts, folder: Path) -> Path:
    return save_checkpoint(artifacts.members, folder / "model.pt", meta=artifacts.meta)


def _log_figures(artifacts: ModelArtifacts) -> None:
    for path, fig in artifacts.figures():
        log_figure(fig, path)


@dataclass
class FitRecord:
    """One fit recorded by :class:`MemoryTracker` (what a round child run holds)."""

    round: int
    data_version: str
    status: str = "RUNNING"
    epochs: list[EpochStats] = field(default_factory=list)
    checkpoint: Path | None = None


class MemoryTracker:
    """A campaign's records in memory, checkpoints (and optionally plots) in a folder.

    Needs no MLflow and no server. A new :class:`~al.loop.campaign.Campaign` given the same
    tracker resumes where the previous one stopped, as with :class:`MlflowTracker`.

    Args:
        root: folder for checkpoints and plots (default: a temporary folder, removed with
            the tracker).
        figures: also write the plots (PNG) of every fit below ``root``.
    """

    def __init__(self, root: str | Path | None = None, figures: bool = False) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="al-memory-") if root is None else None
        self.root = Path(root if root is not None else self._tmp.name)  # type: ignore[union-attr]
        self.run_id = f"memory:{self.root}"
        self.journal_path = self.root / "journal.jsonl"
        self.figures = figures
        #: round -> queried table (``QUERIED_COLUMNS``)
        self.queried: dict[int, pd.DataFrame] = {}
        #: metric key -> ``(step, value)`` in logging order
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.fits: list[FitRecord] = []
        self.completed = -1
        #: the validation set's queried rows, and logged tables by artifact path
        self.validation: pd.DataFrame | None = None
        self.tables: dict[str, pd.DataFrame] = {}

    @contextmanager
    def fit_run(self, round_: int, labelled: Labelled) -> Iterator[EpochCallback]:
        record = FitRecord(round_, labelled.digest())
        self.fits.append(record)
        try:
            yield record.epochs.append
        except BaseException:
            record.status = "FAILED"
            raise
        record.status = "FINISHED"

    def log_round_artifacts(self, artifacts: ModelArtifacts) -> None:
        record = self.fits[-1]
        folder = self.root / f"fit_{len(self.fits) - 1:03d}_round_{artifacts.round:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        record.checkpoint = _save(artifacts, folder)
        if self.figures:
            import matplotlib.pyplot as plt

            for path, fig in artifacts.figures():
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(folder / path)
                plt.close(fig)

    def log_round_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            if value is not None and math.isfinite(float(value)):
                self.metrics.setdefault(key, []).append((int(step), float(value)))

    def log_queried(self, round_: int, frame: pd.DataFrame) -> None:
        missing = [c for c in QUERIED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"queried table lacks columns {missing}")
        self.queried[round_] = frame[queried_layout(frame.columns)].reset_index(drop=True).copy()

    def complete_round(self, round_: int) -> None:
        self.completed = round_

    def log_validation(self, frame: pd.DataFrame) -> None:
        self.validation = frame[queried_layout(frame.columns)].reset_index(drop=True).copy()

    def check_owner(self) -> None:
        """Nothing to check: one process holds a memory tracker."""

    def log_predictions(self, path: str, frame: pd.DataFrame) -> None:
        self.tables[path] = frame.copy()

    # --- reading back -------------------------------------------------------------------
    def queried_rounds(self) -> list[int]:
        return sorted(self.queried)

    def read_queried(self, round_: int) -> pd.DataFrame:
        return self.queried[round_].copy()

    def completed_round(self) -> int:
        return self.completed

    def metric_by_step(self, key: str) -> dict[int, float]:
        return dict(sorted(dict(self.metrics.get(key, [])).items()))  # the latest value wins

    def metric_history(self, key: str) -> list[float]:
        return list(self.metric_by_step(key).values())

    def metrics_frame(self) -> pd.DataFrame:
        """Every metric by step: one row per ``n_labelled``, one column per key."""
        rows: dict[int, dict[str, float]] = {}
        for key, values in self.metrics.items():
            for step, value in values:
                rows.setdefault(step, {})[key] = value
        return pd.DataFrame.from_dict(rows, orient="index").sort_index()

    def download_checkpoint(self, round_: int, dst: Path) -> Path:
        # the model of round r is the last one trained up to r (the stream scheme skips fits)
        done = [f for f in self.fits if f.status == "FINISHED" and f.checkpoint is not None]
        done = [f for f in done if f.round <= round_]
        if not done:
            raise RuntimeError(f"{self.run_id}: no finished fit up to round {round_}")
        last = max(reversed(done), key=lambda f: f.round)  # the newest fit of that round
        out = Path(dst) / ROUND_CHECKPOINT
        out.parent.mkdir(parents=True, exist_ok=True)
        assert last.checkpoint is not None
        return Path(shutil.copy(last.checkpoint, out))

    def close_stale_children(self) -> None:
        for record in self.fits:
            if record.status == "RUNNING":
                record.status = "KILLED"
