"""Oracles: the labellers an active-learning campaign pays for.

An oracle takes QM9 indices and returns one :class:`LabelResult` row per requested index,
in request order: a value in eV (the atomization enthalpy at 298.15 K) and ``"ok"``, or NaN
and a short failure reason. Failures are recorded, never dropped, and the campaign goes on.

Several kinds, one registry (:data:`ORACLES`), one factory (:func:`build_oracle`):

``dft``
    The QM9 ground truth (B3LYP/6-31G(2df,p)) read from the data set. Cost 1 per label.
``xtb``
    GFN2-xTB single points computed live with ``tblite``, mapped onto the DFT target by a
    per-element linear reference fitted on the oracle split (``al/data/xtb_reference.json``,
    written by ``benchmarks/xtb_reference.py``). Cost 0.01 per label.
``model:<MLflow model URI>``
    A logged pyfunc model (``al.pyfunc``), e.g. ``model:models:/m-abc`` or
    ``model:runs:/<run id>/model``, loaded on the first label call. Cost 0.001 per label.
    ``al pretrain`` trains such models on the oracle split and registers them, e.g.
    ``model:models:/qm9-oracle@lofi``.
``pretrained``
    The oracle model shipped with the package (``al/data/pretrained/qm9_oracle.pt``, trained
    by ``al pretrain`` on the oracle split of the default split; provenance in the ``.json``
    beside it), run in-process: offline, no MLflow needed. Cost 0.001 per label.
``pyg_schnet``
    PyTorch Geometric's pretrained SchNet (schnetpack weights, downloaded once). Its training
    split overlaps our test set: see :class:`PyGSchNetOracle`. Cost 0.001 per label.

Cost accounting: every requested row that reaches the oracle is charged the oracle's
``cost_per_label``, whether it succeeds or fails, because the oracle spent the work either
way (a failed DFT run costs its CPU hours too). Rows whose index is not in the data set
(status ``"unknown_molecule"``) never reach the oracle and are charged 0. A duplicate index
in one request is labelled, and charged, once per occurrence.
"""

from __future__ import annotations

import json
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from al.data.elements import ELEMENTS, HARTREE_TO_EV, SYMBOLS
from al.data.molecules import MolecularData

log = logging.getLogger(__name__)

BOHR_PER_ANGSTROM = 1.8897261246
STATUS_OK = "ok"
STATUS_UNKNOWN = "unknown_molecule"
STATUS_MISSING_TARGET = "missing_target"
STATUS_SCF = "scf_not_converged"
STATUS_TIMEOUT = "timeout"
STATUS_NON_FINITE = "non_finite"
STATUS_UNSUPPORTED_ELEMENT = "unsupported_element"
#: Columns of :meth:`LabelResult.to_frame`, as in the per-round ``queried.csv``.
FRAME_COLUMNS = ("qm9_index", "oracle", "label", "status", "cost")
XTB_REFERENCE_FILE = "xtb_reference.json"
XTB_METHOD = "GFN2-xTB"


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
    """

    qm9_index: np.ndarray
    value: np.ndarray
    status: np.ndarray
    cost: np.ndarray
    oracle: str

    def __post_init__(self) -> None:
        n = len(self.qm9_index)
        if not len(self.value) == len(self.status) == len(self.cost) == n:
            raise ValueError(
                f"LabelResult columns differ in length: qm9_index {n}, value "
                f"{len(self.value)}, status {len(self.status)}, cost {len(self.cost)}"
            )

    def __len__(self) -> int:
        return len(self.qm9_index)

    @property
    def ok(self) -> np.ndarray:
        """Rows that got a label, ``[n]`` (bool)."""
        return self.status == STATUS_OK

    @property
    def total_cost(self) -> float:
        return float(self.cost.sum())

    def to_frame(self) -> pd.DataFrame:
        """One row per request: ``qm9_index, oracle, label, status, cost``."""
        return pd.DataFrame(
            {
                "qm9_index": self.qm9_index,
                "oracle": [self.oracle] * len(self),
                "label": self.value,
                "status": self.status.astype(str),
                "cost": self.cost,
            },
            columns=list(FRAME_COLUMNS),
        )


class Oracle(ABC):
    """Labels molecules of ``data`` by QM9 index.

    Subclasses set ``default_cost`` and implement :meth:`_label_rows`; index validation,
    failure bookkeeping, cost accounting and logging live here. A subclass whose spec takes
    an argument (``model:<uri>``) names it in ``argument`` and accepts it as the second
    positional parameter of its constructor.
    """

    default_cost: ClassVar[float] = 1.0
    #: Placeholder of the spec's argument (``"<MLflow model URI>"``), None if it takes none.
    argument: ClassVar[str | None] = None

    def __init__(self, data: MolecularData, *, cost: float | None = None) -> None:
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
    def unavailable_reason(cls) -> str | None:
        """Why this oracle cannot be built here (e.g. no network for its weights), or None."""
        return None

    @classmethod
    def kind(cls) -> str:
        """The registry name of this oracle's class (its class name if unregistered)."""
        return next((k for k, c in ORACLES.items() if c is cls), cls.__name__)

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

    def label(self, qm9_index: np.ndarray | list[int]) -> LabelResult:
        """Label the molecules ``qm9_index`` (``[n]``); one result row each, in order."""
        idx = _as_index_array(qm9_index)
        t0 = time.perf_counter()
        rows = self.rows_or_missing(idx)
        known = rows >= 0
        value = np.full(idx.size, np.nan)
        status = np.full(idx.size, STATUS_UNKNOWN, dtype=object)
        cost = np.zeros(idx.size)
        if known.any():
            v, s = self._label_rows(rows[known])
            value[known] = np.where(np.asarray(s) == STATUS_OK, v, np.nan)
            status[known] = s
            cost[known] = self.cost_per_label
        if not known.all():
            log.warning(
                "event=unknown_molecules oracle=%s count=%d first=%s",
                self.name,
                int((~known).sum()),
                idx[~known][:10].tolist(),
            )
        result = LabelResult(idx, value, status, cost, self.name)
        log.info(
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
    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values ``[m]`` (float64, eV) and statuses ``[m]`` (str) of the data rows ``[m]``.

        Must not raise for a failure of one molecule: record it as a status instead.
        """

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


class DFTOracle(Oracle):
    """The QM9 ground truth (``data.y``, eV). NaN targets give ``"missing_target"``."""

    default_cost = 1.0

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = self.data.y.detach().cpu().numpy().astype(np.float64)[rows]
        status = np.where(np.isfinite(y), STATUS_OK, STATUS_MISSING_TARGET).astype(object)
        return y, status


@dataclass(frozen=True)
class XTBReference:
    """Per-element linear map from a GFN2-xTB total energy to the DFT target.

    ``label_ev = HARTREE_TO_EV * E_xtb + sum_atoms coefficients_ev[z]``.

    Attributes:
        coefficients_ev: eV per atom of each atomic number.
        meta: the rest of the reference file (fit statistics, split digest, command).
    """

    coefficients_ev: dict[int, float]
    method: str = XTB_METHOD
    accuracy: float = 1.0
    meta: dict[str, Any] | None = None

    def offset_ev(self, z: np.ndarray) -> float:
        """``sum_atoms coefficients_ev[z]`` of one molecule; ``KeyError`` for an unfitted z."""
        return float(sum(self.coefficients_ev[int(a)] for a in z))


def load_xtb_reference(path: str | Path | None = None) -> XTBReference:
    """Read the reference written by ``benchmarks/xtb_reference.py`` (default: packaged)."""
    if path is None:
        text = resources.files("al.data").joinpath(XTB_REFERENCE_FILE).read_text()
        where = f"al/data/{XTB_REFERENCE_FILE}"
    else:
        text, where = Path(path).read_text(), str(path)
    rec = json.loads(text)
    try:
        coeffs = {ELEMENTS[sym]: float(v) for sym, v in rec["coefficients_ev"].items()}
    except KeyError as exc:
        raise ValueError(f"{where}: bad xTB reference file, missing or unknown {exc}") from None
    if rec.get("energy_scale_ev_per_hartree", HARTREE_TO_EV) != HARTREE_TO_EV:
        raise ValueError(f"{where}: fitted with another Hartree-to-eV factor than {HARTREE_TO_EV}")
    meta = {k: v for k, v in rec.items() if k != "coefficients_ev"}
    return XTBReference(
        coefficients_ev=coeffs,
        method=rec.get("method", XTB_METHOD),
        accuracy=float(rec.get("accuracy", 1.0)),
        meta=meta,
    )


def xtb_energy_hartree(
    z: np.ndarray,
    pos_angstrom: np.ndarray,
    *,
    method: str = XTB_METHOD,
    accuracy: float = 1.0,
    max_iter: int | None = None,
) -> float:
    """Total energy (Hartree) of one neutral closed-shell molecule from a tblite single point.

    Args:
        z: atomic numbers, ``[n_atoms]``.
        pos_angstrom: positions in Angstrom, ``[n_atoms, 3]`` (tblite wants Bohr).

    Raises whatever tblite raises (``TBLiteRuntimeError`` for an unconverged SCF or atoms
    too close together).
    """
    from tblite.interface import Calculator

    pos_bohr = np.ascontiguousarray(pos_angstrom, dtype=np.float64) * BOHR_PER_ANGSTROM
    calc = Calculator(method, np.ascontiguousarray(z, dtype=np.int32), pos_bohr)
    calc.set("verbosity", 0)
    calc.set("accuracy", float(accuracy))
    if max_iter is not None:
        calc.set("max-iter", int(max_iter))
    return float(calc.singlepoint().get("energy"))


def failure_status(exc: BaseException) -> str:
    """A short status for an exception raised while labelling one molecule."""
    if "scf not converged" in str(exc).lower():
        return STATUS_SCF
    return f"error:{type(exc).__name__}"


class XTBOracle(Oracle):
    """GFN2-xTB computed live with tblite, on the DFT target's scale (see :class:`XTBReference`).

    Args:
        data: the molecules (their DFT geometries are used as they are, no optimisation).
        cost: cost per label (default 0.01).
        reference: an :class:`XTBReference`, a path to its JSON, or None for the packaged one.
        timeout_s: wall-clock limit per molecule. Checked after the call returns (a running
            tblite call cannot be interrupted; its SCF is bounded by ``max_iter``, tblite's
            default being 250 cycles): a result that took longer is discarded as
            ``"timeout"``, as a batch system would have killed that job.
        max_iter: SCF iteration limit; None keeps tblite's default.
    """

    default_cost = 0.01

    def __init__(
        self,
        data: MolecularData,
        *,
        cost: float | None = None,
        reference: XTBReference | str | Path | None = None,
        timeout_s: float = 60.0,
        max_iter: int | None = None,
    ) -> None:
        import importlib.util

        if importlib.util.find_spec("tblite") is None:
            raise OracleError("the xtb oracle needs tblite: pip install tblite")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        super().__init__(data, cost=cost)
        self.reference = (
            reference if isinstance(reference, XTBReference) else load_xtb_reference(reference)
        )
        self.timeout_s = float(timeout_s)
        self.max_iter = max_iter

    def _label_one(self, row: int) -> tuple[float, str]:
        z, pos = self.molecule(row)
        if not set(z.tolist()) <= self.reference.coefficients_ev.keys():
            return math.nan, STATUS_UNSUPPORTED_ELEMENT
        t0 = time.perf_counter()
        try:
            energy = xtb_energy_hartree(
                z,
                pos,
                method=self.reference.method,
                accuracy=self.reference.accuracy,
                max_iter=self.max_iter,
            )
        except Exception as exc:  # one molecule's failure must not end the campaign
            status = failure_status(exc)
            log.warning(
                "event=label_failed oracle=%s qm9_index=%d status=%s message=%r",
                self.name,
                int(self.data.qm9_index[row]),
                status,
                str(exc),
            )
            return math.nan, status
        seconds = time.perf_counter() - t0
        if seconds > self.timeout_s:
            log.warning(
                "event=label_failed oracle=%s qm9_index=%d status=%s seconds=%.1f limit=%.1f",
                self.name,
                int(self.data.qm9_index[row]),
                STATUS_TIMEOUT,
                seconds,
                self.timeout_s,
            )
            return math.nan, STATUS_TIMEOUT
        if not math.isfinite(energy):
            return math.nan, STATUS_NON_FINITE
        return HARTREE_TO_EV * energy + self.reference.offset_ev(z), STATUS_OK

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = [self._label_one(int(r)) for r in rows]
        value = np.array([v for v, _ in out], dtype=np.float64)
        status = np.array([s for _, s in out], dtype=object)
        return value, status

    def describe(self) -> dict[str, Any]:
        meta = self.reference.meta or {}
        return {
            **super().describe(),
            "method": self.reference.method,
            "accuracy": self.reference.accuracy,
            "timeout_s": self.timeout_s,
            "max_iter": self.max_iter,
            "reference_split_digest": meta.get("split_digest"),
            "reference_fit_mae_ev": meta.get("fit_mae_ev"),
            **{
                f"reference_c_{SYMBOLS[z]}_ev": c
                for z, c in sorted(self.reference.coefficients_ev.items())
            },
        }


class ModelOracle(Oracle):
    """A logged pyfunc model (``al.pyfunc``) as the labeller: its ``mean_ev`` is the label.

    The model is loaded by :func:`mlflow.pyfunc.load_model` on the first :meth:`label` call
    (or an explicit :meth:`load`), so building the oracle needs no tracking server. A URI
    that cannot be loaded raises :class:`OracleError` then, naming the URI: that is a broken
    setting, not a failure of one molecule. A prediction call that raises marks every row
    of that request ``"error:<ExceptionName>"``; a non-finite mean marks its row
    ``"non_finite"``.

    Args:
        data: the molecules whose ``z`` and ``pos`` are sent to the model.
        uri: an MLflow model URI (``models:/m-<id>``, ``runs:/<run id>/model``, a path).
        cost: cost per label (default 0.001).
        batch_size: molecules per ``predict`` call.
    """

    default_cost = 0.001
    argument = "<MLflow model URI>"

    def __init__(
        self, data: MolecularData, uri: str, *, cost: float | None = None, batch_size: int = 4096
    ) -> None:
        uri = (uri or "").strip()
        if not uri:
            raise ValueError("the model oracle needs a URI: model:<MLflow model URI>")
        super().__init__(data, cost=cost)
        self.uri = uri
        self.name = f"{self.kind()}:{uri}"
        self.batch_size = int(batch_size)
        self._model: Any = None

    def load(self) -> Any:
        """The pyfunc model, loaded once; :class:`OracleError` if the URI cannot be loaded."""
        if self._model is None:
            import mlflow

            t0 = time.perf_counter()
            try:
                self._model = mlflow.pyfunc.load_model(self.uri)
            except Exception as exc:
                raise OracleError(
                    f"cannot load the oracle model {self.uri!r} (tracking URI "
                    f"{mlflow.get_tracking_uri()}): {type(exc).__name__}: {exc}"
                ) from exc
            log.info(
                "event=oracle_model_loaded uri=%s seconds=%.2f", self.uri, time.perf_counter() - t0
            )
        return self._model

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from al.data.molecules import molecules_frame

        model = self.load()
        value = np.full(rows.size, np.nan)
        status = np.full(rows.size, STATUS_OK, dtype=object)
        for start in range(0, rows.size, self.batch_size):
            part = slice(start, start + self.batch_size)
            frame = molecules_frame([self.molecule(int(r)) for r in rows[part]])
            try:
                mean = np.asarray(model.predict(frame)["mean_ev"], dtype=np.float64)
                if mean.shape != (len(frame),):
                    raise ValueError(f"model returned {mean.shape} means for {len(frame)} rows")
            except Exception as exc:  # recorded per row; the campaign decides what to do
                log.warning(
                    "event=label_failed oracle=%s rows=%d status=error:%s message=%r",
                    self.name,
                    len(frame),
                    type(exc).__name__,
                    str(exc),
                )
                status[part] = f"error:{type(exc).__name__}"
                continue
            value[part] = mean
            status[part] = np.where(np.isfinite(mean), STATUS_OK, STATUS_NON_FINITE)
        return value, status

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "uri": self.uri}


# --- the oracle model shipped with the package ---------------------------------------------
PRETRAINED_DIR = "pretrained"
PRETRAINED_CHECKPOINT = "qm9_oracle.pt"
#: Registered model the shipped oracle registers itself as, and the alias it sets.
PRETRAINED_REGISTERED_NAME = "qm9-oracle-pretrained"
PRETRAINED_ALIAS = "shipped"
#: MLflow experiment of oracle runs (``al pretrain`` and the shipped oracle's registration).
ORACLE_EXPERIMENT = "al-oracles"


def packaged_checkpoint() -> Path:
    """Path of the shipped oracle checkpoint, ``al/data/pretrained/qm9_oracle.pt``."""
    return Path(str(resources.files("al.data").joinpath(PRETRAINED_DIR, PRETRAINED_CHECKPOINT)))


def _tracking_configured() -> bool:
    """True when a tracking URI was set (env or ``mlflow.set_tracking_uri``) or a run is
    active; imports nothing when MLflow was never imported and no URI is in the env."""
    import os
    import sys

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return True
    if "mlflow" not in sys.modules:
        return False
    import mlflow

    return mlflow.tracking.is_tracking_uri_set() or mlflow.active_run() is not None


class PretrainedOracle(Oracle):
    """The oracle model shipped with the package, predicting in-process.

    The checkpoint (``al/data/pretrained/qm9_oracle.pt``) was written by ``al pretrain
    --export`` on the oracle split of the default split (split seed 0, 10,000 test, 50,000
    oracle molecules), so it never saw a test or pool molecule. Its provenance (command,
    split digest, training size, test MAE, hyper-parameters, sha256) is the ``.json`` beside
    it. The file's sha256 is checked when the oracle is built; labels come from
    :func:`al.models.checkpoint.load_checkpoint` + :func:`al.train.predict`, without MLflow.

    On first use (the first :meth:`label` call with work to do, or :meth:`register`) the
    oracle registers itself in the current tracking server as ``qm9-oracle-pretrained`` with
    the alias ``shipped``, unless a version with the same ``sha256`` tag is already there.
    This happens in a short run of experiment ``al-oracles`` created with the MLflow client,
    so the caller's active run and experiment (a campaign's) are untouched. With
    ``register="auto"`` it is only attempted when a tracking URI is set or a run is active;
    a failure is a logged warning, never a failed label.

    Args:
        data: the molecules to label.
        cost: cost per label (default 0.001).
        path: a checkpoint with its ``.json`` provenance beside it (default: the shipped one).
        split_digest: the campaign's split digest; a warning is logged if it differs from
            the one the checkpoint was trained with (see :meth:`check_split`).
        register: ``"auto"``, ``"always"`` or ``"never"`` (register on first use or not).
        batch_size: molecules per forward pass.

    Raises:
        OracleError: the checkpoint or its provenance is missing, unreadable or corrupt.
    """

    default_cost = 0.001
    REGISTER_MODES = ("auto", "always", "never")

    def __init__(
        self,
        data: MolecularData,
        *,
        cost: float | None = None,
        path: str | Path | None = None,
        split_digest: str | None = None,
        register: str = "auto",
        batch_size: int = 1024,
    ) -> None:
        from al.models.checkpoint import load_checkpoint
        from al.tracking.registry import file_sha256

        if register not in self.REGISTER_MODES:
            raise ValueError(f"register must be one of {self.REGISTER_MODES}, got {register!r}")
        super().__init__(data, cost=cost)
        self.path = Path(path) if path is not None else packaged_checkpoint()
        self.provenance = _read_provenance(self.path)
        if not self.path.is_file():
            raise OracleError(f"the pretrained oracle's checkpoint {self.path} does not exist")
        expected = str(self.provenance.get("sha256", ""))
        actual = file_sha256(self.path)
        if actual != expected:
            raise OracleError(
                f"the pretrained oracle's checkpoint {self.path} is corrupt: its sha256 "
                f"{actual[:16]}... differs from {expected[:16]}... recorded in "
                f"{self.path.with_suffix('.json').name}; reinstall the package or rebuild it "
                f"with `{self.provenance.get('command', 'al pretrain --export DIR')}`"
            )
        self.sha256 = actual
        try:
            models, self.meta = load_checkpoint(self.path)
        except Exception as exc:
            raise OracleError(
                f"cannot load the pretrained oracle's checkpoint {self.path}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if len(models) != 1:
            raise OracleError(f"{self.path}: expected one model, found {len(models)}")
        self.model = models[0].eval()
        self.batch_size = int(batch_size)
        self.register_mode = register
        self.registered_uri: str | None = None
        self._registration_tried = False
        if split_digest is not None:
            self.check_split(split_digest)

    @property
    def split_digest(self) -> str:
        """Digest of the split the checkpoint was trained on."""
        return str(self.provenance.get("split_digest", ""))

    def check_split(self, split_digest: str) -> bool:
        """False (and a logged warning) if ``split_digest`` is not the checkpoint's split:
        then its training molecules may be test or pool molecules of that campaign."""
        if split_digest == self.split_digest:
            return True
        log.warning(
            "event=oracle_split_mismatch oracle=%s campaign_split=%s oracle_split=%s "
            "message='the pretrained oracle was trained on the oracle split of another split: "
            "its training molecules may be in this campaign's test set or pool'",
            self.name,
            split_digest,
            self.split_digest,
        )
        return False

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from al.training.fit import predict

        self._register_on_first_use()
        value = np.full(rows.size, np.nan)
        status = np.full(rows.size, STATUS_OK, dtype=object)
        try:
            mean, _ = predict(
                self.model,
                self.data,
                torch.as_tensor(rows, dtype=torch.long),
                batch_size=self.batch_size,
                amp=False,
            )
            if mean.dim() > 1:  # a multi-output model: its last (highest) fidelity
                mean = mean[..., -1]
            value = mean.numpy().astype(np.float64)
        except Exception as exc:  # recorded per row; the campaign decides what to do
            log.warning(
                "event=label_failed oracle=%s rows=%d status=error:%s message=%r",
                self.name,
                rows.size,
                type(exc).__name__,
                str(exc),
            )
            status[:] = f"error:{type(exc).__name__}"
            return value, status
        status[:] = np.where(np.isfinite(value), STATUS_OK, STATUS_NON_FINITE)
        return value, status

    def _register_on_first_use(self) -> None:
        if self._registration_tried or self.register_mode == "never":
            return
        if self.register_mode == "auto" and not _tracking_configured():
            return
        self._registration_tried = True
        try:
            self.register()
        except Exception as exc:  # labelling must not depend on the tracking server
            log.warning(
                "event=oracle_registration_failed oracle=%s name=%s message=%r",
                self.name,
                PRETRAINED_REGISTERED_NAME,
                f"{type(exc).__name__}: {exc}",
            )

    def register(self) -> str:
        """Register the shipped model in the current tracking server, once per checkpoint.

        Returns ``models:/qm9-oracle-pretrained/<version>``: the version whose ``sha256`` tag
        equals this checkpoint's, created (and given the alias ``shipped``) if there is none.
        Everything goes through :class:`mlflow.MlflowClient` with explicit ids, so the
        caller's active run and experiment (a campaign's) are neither used nor changed.
        Raises whatever MLflow raises (no server, no permission).
        """
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        for mv in client.search_model_versions(f"name='{PRETRAINED_REGISTERED_NAME}'"):
            if mv.tags.get("sha256") == self.sha256:
                self.registered_uri = f"models:/{PRETRAINED_REGISTERED_NAME}/{mv.version}"
                log.info("event=oracle_already_registered uri=%s", self.registered_uri)
                return self.registered_uri
        self.registered_uri = self._log_and_register(client)
        return self.registered_uri

    def _log_and_register(self, client: Any) -> str:
        """A short run in ``al-oracles`` holding the pyfunc model; a new registered version."""
        import tempfile

        import mlflow
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.exceptions import MlflowException

        from al import tracking
        from al.tracking.names import KIND_PRETRAIN, TAG_FIDELITY

        exp = client.get_experiment_by_name(ORACLE_EXPERIMENT)
        if exp is None:
            try:
                exp_id = client.create_experiment(ORACLE_EXPERIMENT)
            except MlflowException:  # created meanwhile by another process
                exp_id = client.get_experiment_by_name(ORACLE_EXPERIMENT).experiment_id
        else:
            exp_id = exp.experiment_id
        prov = self.provenance
        run_id = client.create_run(
            exp_id,
            run_name="shipped-pretrained-oracle",
            tags={
                tracking.TAG_KIND: KIND_PRETRAIN,
                TAG_FIDELITY: PRETRAINED_ALIAS,
                tracking.TAG_SPLIT_DIGEST: self.split_digest,
                "al.sha256": self.sha256,
            },
        ).info.run_id
        status = "FAILED"
        try:
            tracking.log_params(
                {
                    "command": prov.get("command", ""),
                    "split_digest": self.split_digest,
                    "n_train": prov.get("n_train", ""),
                    "train_size": prov.get("train_size", ""),
                    "test_mae_ev": prov.get("test_mae_ev", ""),
                    "sha256": self.sha256,
                    **{f"model.{k}": v for k, v in prov.get("model", {}).items()},
                },
                run_id=run_id,
            )
            client.log_dict(run_id, prov, "provenance.json")
            with tempfile.TemporaryDirectory(prefix="al-") as tmp:
                local = Path(tmp) / "model"
                _save_pyfunc_model(self.path, local)
                logged = client.create_logged_model(
                    exp_id, name="model", source_run_id=run_id, tags={"sha256": self.sha256}
                )
                client.log_model_artifacts(logged.model_id, str(local))
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
            client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
            mv = mlflow.register_model(
                f"models:/{logged.model_id}",
                PRETRAINED_REGISTERED_NAME,
                tags={
                    "sha256": self.sha256,
                    "fidelity": PRETRAINED_ALIAS,
                    "test_mae": str(prov.get("test_mae_ev", "")),
                    "split_digest": self.split_digest,
                    "train_size": str(prov.get("train_size", "")),
                    "run_id": run_id,
                },
            )
            client.set_registered_model_alias(
                PRETRAINED_REGISTERED_NAME, PRETRAINED_ALIAS, mv.version
            )
            uri = f"models:/{PRETRAINED_REGISTERED_NAME}/{mv.version}"
            client.set_tag(run_id, "al.registered_model", uri)
            status = "FINISHED"
        finally:
            client.set_terminated(run_id, status)
        log.info("event=oracle_registered uri=%s alias=%s", uri, PRETRAINED_ALIAS)
        return uri

    def describe(self) -> dict[str, Any]:
        prov = self.provenance
        return {
            **super().describe(),
            "path": str(self.path),
            "sha256": self.sha256,
            "split_digest": self.split_digest,
            "test_mae_ev": prov.get("test_mae_ev"),
            "n_train": prov.get("n_train"),
            "model": prov.get("model", {}).get("name"),
            "hidden": prov.get("model", {}).get("hidden"),
            "n_interactions": prov.get("model", {}).get("n_interactions"),
            "command": prov.get("command"),
            "registered_uri": self.registered_uri or "",
        }


def _save_pyfunc_model(checkpoint: Path, dst: Path) -> None:
    """Save ``checkpoint`` as the pyfunc model of :func:`al.pyfunc.log_pyfunc_model` (same
    code, artifacts, requirements and input example) to a local folder, without a run."""
    import mlflow

    import al
    from al.data.molecules import molecules_frame
    from al.tracking.pyfunc import pip_requirements

    methane = (
        [6, 1, 1, 1, 1],
        [[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
         [0.63, -0.63, -0.63]],
    )  # fmt: skip
    package = Path(al.__file__).parent
    mlflow.pyfunc.save_model(
        path=str(dst),
        python_model=str(package / "mlflow_model.py"),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(package)],
        pip_requirements=pip_requirements(),
        input_example=molecules_frame([methane]),
    )


def _read_provenance(checkpoint: Path) -> dict[str, Any]:
    """The ``.json`` provenance beside ``checkpoint``; :class:`OracleError` if unreadable."""
    path = checkpoint.with_suffix(".json")
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise OracleError(
            f"the pretrained oracle's provenance {path} does not exist (it is written beside "
            "the checkpoint by `al pretrain --export DIR`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise OracleError(f"cannot read the pretrained oracle's provenance {path}: {exc}") from None
    if not isinstance(rec, dict) or "sha256" not in rec:
        raise OracleError(f"{path}: not an oracle provenance record (no 'sha256' key)")
    return rec


# --- PyTorch Geometric's pretrained SchNet ---------------------------------------------------
#: Where ``torch_geometric.nn.models.SchNet.from_qm9_pretrained`` downloads its weights.
PYG_SCHNET_URL = "http://www.quantum-machine.org/datasets/trained_schnet_models.zip"
PYG_SCHNET_FOLDER = "trained_schnet_models"
#: The enthalpy H at 298.15 K model (PyG QM9 target 9, eV).
PYG_SCHNET_MODEL = "qm9_enthalpy_H"
#: PyG's Hartree-to-eV factor (``torch_geometric.datasets.qm9.HAR2EV``); its labels use it.
PYG_HARTREE_TO_EV = 27.211386246


def network_problem(url: str, timeout_s: float = 3.0) -> str | None:
    """None if a TCP connection to ``url``'s host opens within ``timeout_s``, else why not.

    Name resolution runs in a daemon thread too, so that a hanging resolver is bounded.
    """
    import socket
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    outcome: dict[str, str | None] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome["problem"] = None
        except OSError as exc:
            outcome["problem"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    if "problem" not in outcome:
        return f"no answer from {host}:{port} within {timeout_s:g} s"
    return outcome["problem"]


def _schnetpack_free_pickle() -> Any:
    """A ``pickle_module`` for ``torch.load`` that reads schnetpack models without schnetpack.

    Every ``schnetpack.*`` class (and function) becomes a plain ``nn.Module`` stand-in that
    keeps its attributes, parameters, buffers and sub-modules: enough to copy weights out.
    """
    import pickle
    import types

    import torch

    class SchnetpackStandIn(torch.nn.Module):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.split(".")[0] == "schnetpack":
                return SchnetpackStandIn
            return super().find_class(module, name)

    mod = types.ModuleType("schnetpack_free_pickle")
    for name in ("dump", "dumps", "loads", "Pickler", "HIGHEST_PROTOCOL", "UnpicklingError"):
        setattr(mod, name, getattr(pickle, name))
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    return mod


class _RadiusGraph:
    """PyG SchNet's ``interaction_graph`` from :func:`al.data.graph.radius_graph` (no
    ``torch_cluster``): ``(pos [N, 3], batch [N]) -> (edge_index [2, E], edge_weight [E])``."""

    def __init__(self, cutoff: float) -> None:
        self.cutoff = cutoff

    def __call__(self, pos: Any, batch: Any) -> tuple[Any, Any]:
        from al.data.graph import radius_graph

        edge_index = radius_graph(pos, batch, self.cutoff)
        edge_weight = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
        return edge_index, edge_weight


class PyGSchNetOracle(Oracle):
    """PyTorch Geometric's pretrained SchNet (``SchNet.from_qm9_pretrained``, target 9).

    The model predicts the total enthalpy H at 298.15 K in eV; the label is
    ``(H / 27.211386246 - sum_atoms H_ref) * 27.211386`` (PyG's Hartree factor back to
    Hartree, minus the atomic reference enthalpies of :mod:`al.data.qm9`, in our eV), the
    atomization enthalpy on the DFT target's scale. It runs in float64: total enthalpies
    are ~10^4 eV, where float32 would round to ~1 meV.

    Weights: the archive ``trained_schnet_models.zip`` (schnetpack models, as PyG uses them)
    is downloaded once into ``root`` (default ``<al cache>/pyg_schnet``) and read without
    schnetpack, PyG's dataset object or ``torch_cluster``: the radius graph comes from
    :func:`al.data.graph.radius_graph`. Without the cached weights and without network
    access, building the oracle fails within ~3 s with one :class:`OracleError` (PyG's own
    download could hang); offline, use ``oracle=pretrained``.

    Caveat: PyG's SchNet was trained on a *random* QM9 split (its ``split.npz``) that
    overlaps our test molecules, so its labels look better on our test set than they are;
    do not report its test MAE as an oracle accuracy. ``pretrained`` was trained on our
    oracle split only.

    Args:
        data: the molecules to label.
        cost: cost per label (default 0.001).
        root: cache folder holding (or to hold) ``trained_schnet_models/``.
        batch_size: molecules per forward pass.
        connect_timeout_s: how long the connectivity check may take.
    """

    default_cost = 0.001

    def __init__(
        self,
        data: MolecularData,
        *,
        cost: float | None = None,
        root: str | Path | None = None,
        batch_size: int = 256,
        connect_timeout_s: float = 3.0,
    ) -> None:
        super().__init__(data, cost=cost)
        self.root = Path(root) if root is not None else self.default_root()
        self.batch_size = int(batch_size)
        self.connect_timeout_s = float(connect_timeout_s)
        self._net: Any = None
        reason = self.unavailable_reason(self.root, self.connect_timeout_s)
        if reason:
            raise OracleError(reason)

    @staticmethod
    def default_root() -> Path:
        from al.data.load import cache_dir

        return cache_dir() / "pyg_schnet"

    @classmethod
    def weights_path(cls, root: Path) -> Path:
        return root / PYG_SCHNET_FOLDER / PYG_SCHNET_MODEL / "best_model"

    @classmethod
    def unavailable_reason(cls, root: Path | None = None, timeout_s: float = 3.0) -> str | None:
        """None if the weights are cached or can be downloaded, else a one-line reason."""
        root = Path(root) if root is not None else cls.default_root()
        if cls.weights_path(root).is_file():
            return None
        problem = network_problem(PYG_SCHNET_URL, timeout_s)
        if problem is None:
            return None
        return (
            f"the pyg_schnet oracle cannot download its weights ({problem}): it needs network "
            f"access to download {PYG_SCHNET_URL}, or a pre-filled cache folder "
            f"{root / PYG_SCHNET_FOLDER} (that archive unzipped there); offline, use "
            "oracle=pretrained"
        )

    def load(self) -> Any:
        """PyG's SchNet with the pretrained weights (downloaded on first use), float64, eval."""
        if self._net is not None:
            return self._net
        import torch

        weights = self.weights_path(self.root)
        if not weights.is_file():
            from torch_geometric.data import download_url, extract_zip

            try:
                archive = download_url(PYG_SCHNET_URL, str(self.root), log=False)
                extract_zip(archive, str(self.root), log=False)
                Path(archive).unlink()
            except Exception as exc:
                raise OracleError(
                    f"cannot download the pyg_schnet weights {PYG_SCHNET_URL} into "
                    f"{self.root}: {type(exc).__name__}: {exc}; offline, use oracle=pretrained"
                ) from exc
        try:
            state = torch.load(
                weights,
                map_location="cpu",
                weights_only=False,
                pickle_module=_schnetpack_free_pickle(),
            )
            self._net = _pyg_schnet_from_schnetpack(state).double().eval()
        except Exception as exc:
            raise OracleError(
                f"cannot read the pyg_schnet weights {weights}: {type(exc).__name__}: {exc}"
            ) from exc
        return self._net

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from al.data.elements import ATOM_REF_H298_HA

        net = self.load()
        ref = torch.zeros(int(max(ATOM_REF_H298_HA)) + 1, dtype=torch.float64)
        for z, h in ATOM_REF_H298_HA.items():
            ref[z] = h
        value = np.full(rows.size, np.nan)
        status = np.full(rows.size, STATUS_OK, dtype=object)
        for start in range(0, rows.size, self.batch_size):
            part = slice(start, start + self.batch_size)
            idx = torch.as_tensor(rows[part], dtype=torch.long)
            try:
                z, pos, batch, _ = self.data.batch(idx.to(self.data.ptr.device))
                z, pos, batch = z.cpu(), pos.cpu().double(), batch.cpu()
                with torch.no_grad():
                    h_ev = net(z, pos, batch).reshape(-1).double()  # [B], total H in eV
                ref_ha = torch.zeros(idx.numel(), dtype=torch.float64).index_add(0, batch, ref[z])
                label = ((h_ev / PYG_HARTREE_TO_EV - ref_ha) * HARTREE_TO_EV).numpy()
            except Exception as exc:  # recorded per row
                log.warning(
                    "event=label_failed oracle=%s rows=%d status=error:%s message=%r",
                    self.name,
                    idx.numel(),
                    type(exc).__name__,
                    str(exc),
                )
                status[part] = f"error:{type(exc).__name__}"
                continue
            value[part] = label
            status[part] = np.where(np.isfinite(label), STATUS_OK, STATUS_NON_FINITE)
        return value, status

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "url": PYG_SCHNET_URL,
            "root": str(self.root),
            "target": "PyG QM9 target 9 (H, eV) minus atomic reference enthalpies",
            "caveat": "trained on a random QM9 split that overlaps the test set",
        }


def _copy_param(dst: Any, src: Any, what: str) -> None:
    """Copy ``src`` (a tensor) into the parameter ``dst``, shapes checked."""
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"{what}: shape {tuple(src.shape)} in the file, {tuple(dst.shape)} here")
    dst.data.copy_(src.detach().to(dst.dtype))


def _pyg_schnet_from_schnetpack(state: Any) -> Any:
    """PyG's SchNet with the weights of a schnetpack QM9 model, mapped as in
    ``torch_geometric.nn.models.SchNet.from_qm9_pretrained`` (target 9, no dipole)."""
    import torch
    from torch_geometric.datasets.qm9 import atomrefs
    from torch_geometric.nn.aggr import MeanAggregation, SumAggregation
    from torch_geometric.nn.models import SchNet

    atomref = torch.zeros(100)
    atomref[torch.tensor([1, 6, 7, 8, 9])] = torch.tensor(atomrefs[9])
    rep, out = state.representation, state.output_modules[0]
    net = SchNet(
        hidden_channels=128,
        num_filters=128,
        num_interactions=len(rep.interactions),
        num_gaussians=50,
        cutoff=10.0,
        interaction_graph=_RadiusGraph(10.0),
        atomref=atomref.view(-1, 1),
    )
    _copy_param(net.embedding.weight, rep.embedding.weight, "embedding")
    for k, (src, dst) in enumerate(zip(rep.interactions, net.interactions, strict=True)):
        pairs = [
            (dst.mlp[0].weight, src.filter_network[0].weight),
            (dst.mlp[0].bias, src.filter_network[0].bias),
            (dst.mlp[2].weight, src.filter_network[1].weight),
            (dst.mlp[2].bias, src.filter_network[1].bias),
            (dst.lin.weight, src.dense.weight),
            (dst.lin.bias, src.dense.bias),
            (dst.conv.lin1.weight, src.cfconv.in2f.weight),
            (dst.conv.lin2.weight, src.cfconv.f2out.weight),
            (dst.conv.lin2.bias, src.cfconv.f2out.bias),
        ]
        for j, (d, s) in enumerate(pairs):
            _copy_param(d, s, f"interaction {k} tensor {j}")
    mlp = out.out_net[1].out_net
    _copy_param(net.lin1.weight, mlp[0].weight, "lin1.weight")
    _copy_param(net.lin1.bias, mlp[0].bias, "lin1.bias")
    _copy_param(net.lin2.weight, mlp[1].weight, "lin2.weight")
    _copy_param(net.lin2.bias, mlp[1].bias, "lin2.bias")
    net.readout = MeanAggregation() if out.atom_pool.average is True else SumAggregation()
    net.mean = float(out.standardize.mean.item())
    net.std = float(out.standardize.stddev.item())
    if getattr(out, "atomref", None) is not None:
        _copy_param(net.atomref.weight, out.atomref.weight, "atomref")
    else:
        net.atomref = None
    net.scale = 1.0
    return net


#: The oracle registry: spec name -> class. CLI choices, the factory and tests read it.
ORACLES: dict[str, type[Oracle]] = {
    "dft": DFTOracle,
    "xtb": XTBOracle,
    "model": ModelOracle,
    "pretrained": PretrainedOracle,
    "pyg_schnet": PyGSchNetOracle,
}


def oracle_choices() -> list[str]:
    """Valid specs as shown to users: ``["dft", "xtb", "model:<MLflow model URI>"]``."""
    return [f"{k}:{c.argument}" if c.argument else k for k, c in ORACLES.items()]


def oracle_spec_problem(spec: str) -> str | None:
    """What is wrong with an oracle spec (one line), or None when it names an oracle."""
    name, sep, arg = str(spec).strip().partition(":")
    cls = ORACLES.get(name.strip().lower())
    if cls is None:
        return f"unknown oracle {spec!r}; expected one of: {', '.join(oracle_choices())}"
    if cls.argument is None and sep:
        return f"oracle {name!r} takes no argument, got {spec!r}"
    if cls.argument is not None and not arg.strip():
        return f"oracle {name!r} needs an argument: {name}:{cls.argument}"
    return None


def build_oracle(spec: str | Oracle, *, data: MolecularData, cost: float | None = None) -> Oracle:
    """An oracle from a spec (``dft``, ``xtb``, ``model:<uri>``) or an instance as it is.

    Args:
        spec: a registry name, optionally ``name:argument``; or an :class:`Oracle`.
        data: the molecules the oracle labels by QM9 index.
        cost: cost per label; None keeps the oracle's default. Not accepted with an
            instance (set its ``cost_per_label`` instead).

    Raises:
        ValueError: an unknown name (the message lists the valid choices), a missing or
            unexpected argument, or a cost given with an instance.
    """
    if isinstance(spec, Oracle):
        if cost is not None:
            raise ValueError(
                f"cost={cost} given with an oracle instance; set its cost_per_label instead"
            )
        return spec
    problem = oracle_spec_problem(spec)
    if problem:
        raise ValueError(problem)
    name, _, arg = str(spec).strip().partition(":")
    cls = ORACLES[name.strip().lower()]
    if cls.argument is None:
        return cls(data, cost=cost)
    return cls(data, arg.strip(), cost=cost)
