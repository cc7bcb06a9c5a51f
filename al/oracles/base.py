"""Oracles: the labellers an active-learning campaign pays for.

An oracle takes QM9 indices and returns one :class:`LabelResult` row per requested index,
in request order: a value in eV (the atomization enthalpy at 298.15 K) and ``"ok"``, or NaN
and a short failure reason. Failures are recorded, never dropped, and the campaign goes on.

This module is the contract every oracle keeps (:class:`Oracle`, :class:`LabelResult`, the
statuses) and the one registry (:data:`ORACLES`); each kind lives in its own module and
registers itself there (:func:`register_oracle`), and :mod:`al.oracles.registry` imports
them all and holds the factory (:func:`~al.oracles.registry.build_oracle`):

``dft`` (:mod:`al.oracles.dft`)
    The QM9 ground truth (B3LYP/6-31G(2df,p)) read from the data set. Cost 1 per label.
``xtb`` (:mod:`al.oracles.xtb`)
    GFN2-xTB single points computed live with ``tblite``, mapped onto the DFT target by a
    per-element linear reference fitted on the oracle split (``al/data/xtb_reference.json``,
    written by ``benchmarks/xtb_reference.py``). Cost 0.01 per label.
``model:<MLflow model URI>`` (:mod:`al.oracles.model`)
    A logged pyfunc model (``al.pyfunc``), e.g. ``model:models:/m-abc`` or
    ``model:runs:/<run id>/model``, loaded on the first label call. Cost 0.001 per label.
    ``al pretrain`` trains such models on the oracle split and registers them, e.g.
    ``model:models:/qm9-oracle@lofi``.
``pretrained`` (:mod:`al.oracles.pretrained`)
    The oracle model shipped with the package (``al/data/pretrained/qm9_oracle.pt``, trained
    by ``al pretrain`` on the oracle split of the default split; provenance in the ``.json``
    beside it), run in-process: offline, no MLflow needed. Cost 0.001 per label.
``pyg_schnet`` (:mod:`al.oracles.pyg_schnet`)
    PyTorch Geometric's pretrained SchNet (schnetpack weights, downloaded once). Its training
    split overlaps our test set: see :class:`~al.oracles.pyg_schnet.PyGSchNetOracle`. Cost
    0.001 per label.
``ani1x``, ``ani1ccx`` (:mod:`al.oracles.ani`)
    The published ANI-1x and ANI-1ccx ensembles (TorchANI; weights fetched once from the
    package registry, :mod:`al.oracles.ani_weights`) with a per-element reference fitted on
    the oracle split, each label with the ensemble's std. H, C, N, O only: a molecule with F
    gets ``"unsupported_element"``. Cost 0.001 per label.
``pyscf``, ``pyscf:<functional>/<basis>`` (:mod:`al.oracles.pyscf`)
    DFT computed live with PySCF (default B3LYP/6-31G(2df,p), QM9's level) at the pool's
    geometry, one molecule per subprocess: the electronic atomization energy, not H298.
    Cost: the CPU-hours each molecule took (measured), or a fixed cost per label if given.

Cost accounting: every requested row that reaches the oracle is charged the oracle's
``cost_per_label``, whether it succeeds or fails, because the oracle spent the work either
way (a failed DFT run costs its CPU hours too). Rows whose index is not in the data set
(status ``"unknown_molecule"``) never reach the oracle and are charged 0. A duplicate index
in one request is labelled, and charged, once per occurrence.

An oracle that measures what each label took (``pyscf``: CPU time) sets ``cost_measured``
and returns each row's own cost in a :class:`RowLabels` from ``_label_rows``; its rows are
charged that instead, and ``cost_per_label`` is then the estimate that plans with costs
before the labels exist (the cost budget's clip of a round, a multi-fidelity acquisition's
cost ratio, the journal's record of a request), so that what a campaign spends may differ
from what it planned by the difference between the two.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

from al.data.molecules import MolecularData
from al.registry import Registry

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_UNKNOWN = "unknown_molecule"
STATUS_MISSING_TARGET = "missing_target"
STATUS_SCF = "scf_not_converged"
STATUS_TIMEOUT = "timeout"
STATUS_NON_FINITE = "non_finite"
STATUS_UNSUPPORTED_ELEMENT = "unsupported_element"
#: Columns of :meth:`LabelResult.to_frame`, as in the per-round ``queried.csv``.
#: ``label_std``: the labeller's own spread of a label (an ensemble's std), NaN if it has none.
FRAME_COLUMNS = ("qm9_index", "oracle", "label", "status", "cost", "label_std")
#: The oracle registry, spec name -> class: each oracle module registers its classes
#: (:func:`register_oracle`); :mod:`al.oracles.registry` imports them all.
ORACLES: Registry[type[Oracle]] = Registry("oracle")


@dataclass(frozen=True)
class PriorLabels:
    """The DFT labels that built a labeller or a baseline before any campaign used it (a
    model's training set, a reference's fitting set): a cost of their own, that a fair
    comparison counts.

    Attributes:
        n: how many (NaN when its lineage cannot be read).
        source: what they built and where the count was read, e.g. ``run <id>: train_size``.
    """

    n: float
    source: str


@dataclass(frozen=True)
class RowLabels:
    """What :meth:`Oracle._label_rows` returns when it has more than values and statuses
    (the other form is the tuple ``(value, status[, std])``).

    Attributes:
        value: labels in eV, ``[m]`` (float64).
        status: ``"ok"`` or a short failure reason, ``[m]`` (str).
        std: each label's own spread in eV, ``[m]``; None: the oracle gives none.
        cost: each row's own cost, ``[m]`` (float64, >= 0), for an oracle that measures it
            (``cost_measured``); None: every row costs ``cost_per_label``.
    """

    value: np.ndarray
    status: np.ndarray
    std: np.ndarray | None = None
    cost: np.ndarray | None = None


class OracleError(RuntimeError):
    """An oracle cannot work at all (as opposed to failing on one molecule)."""


@dataclass
class LabelResult:
    """The answer to one label request, one row per requested index, in request order.

    Attributes:
        qm9_index: requested QM9 indices, ``[n]`` (int64).
        value: labels in eV, ``[n]`` (float64); NaN where the label failed.
        status: ``"ok"`` or a short failure reason, ``[n]`` (object array of str).
        cost: cost charged per row, ``[n]`` (float64); see the module docstring.
        oracle: name of the oracle that answered.
        std: the oracle's own uncertainty of each label in eV (an ensemble's std), ``[n]``
            (float64); NaN where it gives none (None: NaN for every row).
    """

    qm9_index: np.ndarray
    value: np.ndarray
    status: np.ndarray
    cost: np.ndarray
    oracle: str
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.qm9_index)
        if self.std is None:
            self.std = np.full(n, np.nan)
        if not len(self.value) == len(self.status) == len(self.cost) == len(self.std) == n:
            raise ValueError(
                f"LabelResult columns differ in length: qm9_index {n}, value "
                f"{len(self.value)}, status {len(self.status)}, cost {len(self.cost)}, "
                f"std {len(self.std)}"
            )

    def __len__(self) -> int:
        return len(self.qm9_index)

    @classmethod
    def concat(cls, results: list[LabelResult]) -> LabelResult:
        """The answers of several calls of one oracle, in order, as one result."""
        if len(results) == 1:
            return results[0]

        def join(name: str) -> np.ndarray:
            return np.concatenate([getattr(r, name) for r in results])

        return cls(join("qm9_index"), join("value"), join("status"), join("cost"),
                   results[0].oracle, join("std"))  # fmt: skip

    @property
    def ok(self) -> np.ndarray:
        """Rows that got a label, ``[n]`` (bool)."""
        return self.status == STATUS_OK

    @property
    def total_cost(self) -> float:
        return float(self.cost.sum())

    def columns(self) -> dict[str, Any]:
        """The :data:`FRAME_COLUMNS` as arrays (``[n]`` each), one entry per request."""
        return {
            "qm9_index": self.qm9_index,
            "oracle": [self.oracle] * len(self),
            "label": self.value,
            "status": self.status.astype(str),
            "cost": self.cost,
            "label_std": self.std,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per request: ``qm9_index, oracle, label, status, cost, label_std``."""
        return pd.DataFrame(self.columns(), columns=list(FRAME_COLUMNS))


#: Molecules a network labeller evaluates (and a campaign journals) per call.
NETWORK_CHUNK = 64


class Oracle(ABC):
    """Labels molecules of ``data`` by QM9 index.

    Subclasses set ``default_cost`` and implement :meth:`_label_rows`; index validation,
    failure bookkeeping, cost accounting and logging live here. A subclass whose spec takes
    an argument (``model:<uri>``) names it in ``argument`` and accepts it as the second
    positional parameter of its constructor; one whose argument may be left out
    (``argument_optional``) is built without it then, and may check a given one early
    (:meth:`argument_problem`).
    """

    default_cost: ClassVar[float] = 1.0
    #: Placeholder of the spec's argument (``"<MLflow model URI>"``), None if it takes none.
    argument: ClassVar[str | None] = None
    #: Whether the spec's argument may be left out (``pyscf`` and ``pyscf:<level>``).
    argument_optional: ClassVar[bool] = False
    #: Whether each row is charged what labelling it took (returned by :meth:`_label_rows`
    #: in a :class:`RowLabels`) rather than ``cost_per_label``, which is then an estimate
    #: for planning (see the module docstring).
    cost_measured: bool = False
    #: Labels a campaign asks for (and journals) per call. 1 (the default): one molecule a
    #: call, each answer journalled as it arrives, so that a kill re-buys at most the one
    #: label in flight (:mod:`al.loop.journal`). A network labeller that evaluates a batch
    #: in one pass (a fraction of a second for 64 molecules) sets its batch: a kill during
    #: that pass re-buys the batch, and the journal counts it in ``cost_lost``.
    journal_chunk: ClassVar[int] = 1
    #: The atomic numbers it can label (None: every element of the data); a campaign leaves
    #: the other molecules out of its pool.
    supported_elements: ClassVar[frozenset[int] | None] = None
    #: It reads its labels from the data set's own table (QM9's DFT values): it cannot
    #: label a pool of one's own molecules, which has none.
    reads_table: ClassVar[bool] = False
    #: What its labels are when not the data set's target (QM9's H298 atomization enthalpy);
    #: a campaign whose target labeller has one names it so wherever its labels are shown.
    target: ClassVar[str | None] = None
    #: It answers outside the process, later (``external``: one's own DFT code): a campaign
    #: writes the batch out and waits; the answers come in through ``al ingest``.
    answers_later: ClassVar[bool] = False

    def __init__(self, data: MolecularData, *, cost: float | None = None) -> None:
        #: whether the cost was given (else the oracle's default, in DFT labels)
        self.cost_given = cost is not None
        cost = self.default_cost if cost is None else float(cost)
        if not math.isfinite(cost) or cost < 0:
            raise ValueError(f"oracle cost per label must be a finite number >= 0, got {cost}")
        self.data = data
        self.cost_per_label: float = cost
        self.name: str = self.kind()
        index = data.qm9_index.detach().cpu().numpy().astype(np.int64)
        self._order = np.argsort(index, kind="stable")
        self._sorted = index[self._order]
        self._ptr = data.ptr.detach().cpu().numpy()
        self._z = data.z.detach().cpu().numpy()
        self._pos = data.pos.detach().cpu().numpy()

    @classmethod
    def argument_problem(cls, argument: str) -> str | None:
        """What is wrong with the spec's argument (one line), None when it is fine; run
        when a spec is checked, before anything is built. Nothing is checked by default."""
        return None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this oracle cannot be built here (e.g. no network for its weights), or None."""
        return None

    def prepare(self) -> None:
        """Load what labelling needs that is loaded lazily (a model), so that an oracle that
        cannot label is refused before a campaign creates its run; nothing by default."""
        return None

    @classmethod
    def kind(cls) -> str:
        """The registry name of this oracle's class (its class name if unregistered)."""
        return ORACLES.name_of(cls) or cls.__name__

    def rows_or_missing(self, qm9_index: np.ndarray) -> np.ndarray:
        """Rows of ``data`` holding ``qm9_index`` (``[n]``), -1 where not in the data."""
        if self._sorted.size == 0:
            return np.full(qm9_index.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, qm9_index), self._sorted.size - 1)
        found = self._sorted[pos] == qm9_index
        return np.where(found, self._order[pos], -1).astype(np.int64)

    def molecule(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Atomic numbers ``[n_atoms]`` and positions in Angstrom ``[n_atoms, 3]`` of a row."""
        a, b = int(self._ptr[row]), int(self._ptr[row + 1])
        return self._z[a:b].astype(np.int64), self._pos[a:b].astype(np.float64)

    def label(
        self, qm9_index: np.ndarray | list[int], *, log_level: int = logging.INFO
    ) -> LabelResult:
        """Label the molecules ``qm9_index`` (``[n]``); one result row each, in order.

        ``log_level``: of the one ``event=labelled`` line (a caller that asks one molecule
        at a time and reports the whole batch itself passes ``logging.DEBUG``)."""
        idx = _as_index_array(qm9_index)
        t0 = time.perf_counter()
        rows = self.rows_or_missing(idx)
        known = rows >= 0
        value, std = np.full(idx.size, np.nan), np.full(idx.size, np.nan)
        status = np.full(idx.size, STATUS_UNKNOWN, dtype=object)
        cost = np.zeros(idx.size)
        if known.any():
            out = self._label_rows(rows[known])
            if not isinstance(out, RowLabels):
                out = RowLabels(*out)
            ok = np.asarray(out.status) == STATUS_OK
            value[known] = np.where(ok, out.value, np.nan)
            if out.std is not None:
                std[known] = np.where(ok, out.std, np.nan)
            status[known] = out.status
            cost[known] = self.cost_per_label if out.cost is None else out.cost
        if not known.all():
            log.warning(
                "event=unknown_molecules oracle=%s count=%d first=%s",
                self.name,
                int((~known).sum()),
                idx[~known][:10].tolist(),
            )
        result = LabelResult(idx, value, status, cost, self.name, std)
        log.log(
            log_level,
            "event=labelled oracle=%s requested=%d ok=%d failed=%d cost=%.6g seconds=%.3f",
            self.name,
            idx.size,
            int(result.ok.sum()),
            int((~result.ok).sum()),
            result.total_cost,
            time.perf_counter() - t0,
        )
        return result

    @abstractmethod
    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, ...] | RowLabels:
        """Values ``[m]`` (float64, eV) and statuses ``[m]`` (str) of the data rows ``[m]``,
        optionally followed by each label's std ``[m]`` (eV) for an oracle that has one; or
        a :class:`RowLabels` (which also carries each row's cost, for ``cost_measured``).

        Must not raise for a failure of one molecule: record it as a status instead.
        """

    def _label_in_batches(
        self, rows: np.ndarray, predict: Callable[[np.ndarray], Any], batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values and statuses of ``rows`` (``[m]``) from a model, ``batch_size`` rows a call.

        ``predict(rows_of_batch)`` returns one value in eV per row (array-like ``[b]``). A call
        that raises (or returns the wrong shape) marks its rows ``"error:<ExceptionName>"`` and
        logs a warning; a non-finite value marks its row ``"non_finite"``.
        """
        value = np.full(rows.size, np.nan)
        status = np.full(rows.size, STATUS_OK, dtype=object)
        step = max(int(batch_size), 1)
        for start in range(0, rows.size, step):
            part = slice(start, start + step)
            n = rows[part].size
            try:
                mean = np.asarray(predict(rows[part]), dtype=np.float64)
                if mean.shape != (n,):
                    raise ValueError(f"model returned {mean.shape} means for {n} rows")
            except Exception as exc:  # recorded per row; the campaign decides what to do
                log.warning(
                    "event=label_failed oracle=%s rows=%d status=error:%s message=%r",
                    self.name,
                    n,
                    type(exc).__name__,
                    str(exc),
                )
                status[part] = f"error:{type(exc).__name__}"
                continue
            value[part] = mean
            status[part] = np.where(np.isfinite(mean), STATUS_OK, STATUS_NON_FINITE)
        return value, status

    def prior_labels(self) -> PriorLabels | None:
        """The DFT labels this oracle was built from (None: none, e.g. DFT itself)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Flat settings for run params and logs (the caller adds any prefix)."""
        return {"name": self.name, "kind": self.kind(), "cost_per_label": self.cost_per_label}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({inner})"


def _as_index_array(qm9_index: Any) -> np.ndarray:
    """Indices as a 1-D int64 array; non-integer values are a programming error."""
    if hasattr(qm9_index, "detach"):
        qm9_index = qm9_index.detach().cpu().numpy()
    arr = np.asarray(qm9_index)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        as_float = arr.astype(np.float64)
        if not np.all(np.isfinite(as_float) & (as_float == np.round(as_float))):
            raise TypeError(f"QM9 indices must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


OracleClass = TypeVar("OracleClass", bound=type[Oracle])


def register_oracle(name: str) -> Callable[[OracleClass], OracleClass]:
    """Class decorator: register an oracle class in :data:`ORACLES` under ``name``, with the
    placeholder of its spec's argument (its ``argument``), whether it may be left out
    (``argument_optional``) and its check (:meth:`Oracle.argument_problem`)."""

    def deco(cls: OracleClass) -> OracleClass:
        return ORACLES.register(
            name,
            cls,
            argument=cls.argument,
            optional=cls.argument_optional,
            check=cls.argument_problem,
        )

    return deco
