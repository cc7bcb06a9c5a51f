"""Oracles: the labellers an active-learning campaign pays for.

An oracle takes QM9 indices and returns one :class:`LabelResult` row per requested index,
in request order: a value in eV (the atomization enthalpy at 298.15 K) and ``"ok"``, or NaN
and a short failure reason. Failures are recorded, never dropped, and the campaign goes on.

Three kinds, one registry (:data:`ORACLES`), one factory (:func:`build_oracle`):

``dft``
    The QM9 ground truth (B3LYP/6-31G(2df,p)) read from the data set. Cost 1 per label.
``xtb``
    GFN2-xTB single points computed live with ``tblite``, mapped onto the DFT target by a
    per-element linear reference fitted on the oracle split (``al/data/xtb_reference.json``,
    written by ``benchmarks/xtb_reference.py``). Cost 0.01 per label.
``model:<MLflow model URI>``
    A logged pyfunc model (``al.pyfunc``), e.g. ``model:models:/m-abc`` or
    ``model:runs:/<run id>/model``, loaded on the first label call. Cost 0.001 per label.

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

from al.data.qm9 import ELEMENTS, HARTREE_TO_EV, SYMBOLS, MolecularData

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
        from al.pyfunc import molecules_frame

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


#: The oracle registry: spec name -> class. CLI choices, the factory and tests read it.
ORACLES: dict[str, type[Oracle]] = {
    "dft": DFTOracle,
    "xtb": XTBOracle,
    "model": ModelOracle,
}


def oracle_choices() -> list[str]:
    """Valid specs as shown to users: ``["dft", "xtb", "model:<MLflow model URI>"]``."""
    return [f"{k}:{c.argument}" if c.argument else k for k, c in ORACLES.items()]


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
    name, sep, arg = str(spec).strip().partition(":")
    cls = ORACLES.get(name.strip().lower())
    if cls is None:
        raise ValueError(f"unknown oracle {spec!r}; expected one of {', '.join(oracle_choices())}")
    if cls.argument is None:
        if sep:
            raise ValueError(f"oracle {name!r} takes no argument, got {spec!r}")
        return cls(data, cost=cost)
    if not arg.strip():
        raise ValueError(f"oracle {name!r} needs an argument: {name}:{cls.argument}")
    return cls(data, arg.strip(), cost=cost)
