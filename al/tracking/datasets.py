"""Datasets as MLflow records them (``mlflow.log_input``): which molecules a run used.

A :class:`MoleculeSet` is metadata only: a name, a digest of the molecules (and labels), a
schema, a row count and a small source (where the molecules come from). The molecules
themselves stay where they are (the QM9 files, the campaign's queried tables), so that
logging a set costs one small request, whatever its size.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.types import ColSpec, DataType, Schema

#: columns of a set of QM9 molecules: the molecule, and its label in eV when it has one
INDEX_COLUMN, TARGET_COLUMN = "qm9_index", "target_ev"


class MoleculeSet(MetaDataset):
    """A set of molecules as an MLflow dataset: digest, schema and row count, not the data."""

    def __init__(self, source: Any, name: str, digest: str, schema: Schema, n_rows: int) -> None:
        self.n_rows = n_rows
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict[str, int]:
        return {"num_rows": self.n_rows}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def digest_of(qm9_index: np.ndarray, target: np.ndarray | None = None) -> str:
    """16 hex digits of SHA-256 over the sorted indices (``[n]``) and, when given, their
    labels (``[n]``, in eV): the same molecules and labels give the same digest."""
    index = np.asarray(qm9_index, dtype=np.int64).reshape(-1)
    order = np.argsort(index, kind="stable")
    h = hashlib.sha256(index[order].tobytes())
    if target is not None:
        h.update(np.asarray(target, dtype=np.float64).reshape(-1)[order].tobytes())
    return h.hexdigest()[:16]


def molecule_set(
    name: str, source: str, qm9_index: np.ndarray, target: np.ndarray | None = None,
    digest: str = "",
) -> MoleculeSet:  # fmt: skip
    """The set of molecules ``qm9_index`` (``[n]``), labelled with ``target`` (``[n]`` eV)
    when given, from ``source`` (a path or URL). ``digest`` (default: :func:`digest_of`)
    lets a caller that already versions the set (a labelled set's data version) use it."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():  # a local path matches two equal source classes
        warnings.filterwarnings("ignore", message="The specified dataset source")
        resolved = resolve_dataset_source(source)
    columns = [ColSpec(DataType.long, INDEX_COLUMN)]
    if target is not None:
        columns.append(ColSpec(DataType.double, TARGET_COLUMN))
    return MoleculeSet(
        resolved,
        name=name,
        digest=digest or digest_of(qm9_index, target),
        schema=Schema(columns),
        n_rows=int(np.size(qm9_index)),
    )


@dataclass(frozen=True)
class DatasetUse:
    """A set and the role it plays in a run (``training``, ``evaluation``, ``pool``)."""

    dataset: MoleculeSet
    context: str


#: what a SQL tracking store says when two runs create the same dataset at once (SQLite,
#: PostgreSQL, MySQL)
_DATASET_RACE = ("UNIQUE constraint failed: datasets.", "duplicate key value", "Duplicate entry")


def log_datasets(uses: Sequence[DatasetUse], attempts: int = 3) -> None:
    """Record ``uses`` as inputs of the active run, all in one request.

    MLflow's SQL store looks a dataset up, then inserts it if missing, with no lock between
    the two: two campaigns of one experiment that log the same set (a grid's shared initial
    labels or test set) at the same moment make one insert fail with a unique-constraint
    error, and its whole request is rolled back. The set then exists, so the request is sent
    again (up to ``attempts`` times) and links it."""
    if not uses:
        return
    for attempt in range(attempts):
        try:
            mlflow.log_inputs(
                datasets=[u.dataset for u in uses],
                contexts=[u.context for u in uses],
                tags_list=[None] * len(uses),
            )
            return
        except MlflowException as e:
            if attempt + 1 == attempts or not any(m in str(e) for m in _DATASET_RACE):
                raise


def linked_metric(metric: Metric, model_id: str, dataset: MoleculeSet | None = None) -> Metric:
    """``metric`` (key, value, step and timestamp unchanged) linked to the LoggedModel
    ``model_id`` and, when given, to the dataset it was computed on."""
    return Metric(
        metric.key, metric.value, metric.timestamp, metric.step, model_id=model_id,
        dataset_name=dataset.name if dataset else None,
        dataset_digest=dataset.digest if dataset else None,
    )  # fmt: skip
