"""The ``xtb`` oracle: GFN2-xTB single points computed live with ``tblite``.

A GFN2-xTB total energy is put on the DFT target's scale by a per-element linear reference
(:class:`XTBReference`), fitted by :func:`fit_xtb_reference` on molecules of the oracle split
only (``benchmarks/xtb_reference.py`` runs the fit and writes ``al/data/xtb_reference.json``,
the packaged reference that :func:`load_xtb_reference` reads). The ANI oracles
(:mod:`al.oracles.ani`) put their energies on the same scale with the same reference code.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from al import progress
from al.data.elements import ELEMENTS, HARTREE_TO_EV, SYMBOLS
from al.data.molecules import MolecularData
from al.oracles.base import (
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_SCF,
    STATUS_TIMEOUT,
    STATUS_UNSUPPORTED_ELEMENT,
    Oracle,
    OracleError,
    PriorLabels,
    register_oracle,
)

log = logging.getLogger(__name__)

BOHR_PER_ANGSTROM = 1.8897261246
XTB_REFERENCE_FILE = "xtb_reference.json"
XTB_METHOD = "GFN2-xTB"


@dataclass(frozen=True)
class XTBReference:
    """Per-element linear map from a total energy (GFN2-xTB's, or an ANI ensemble's) to the
    DFT target.

    ``label_ev = HARTREE_TO_EV * E + sum_atoms coefficients_ev[z]``.

    Attributes:
        coefficients_ev: eV per atom of each atomic number (only the elements it was fitted on).
        method: the energy's method (``GFN2-xTB``, ``ANI-1x``, ...).
        meta: the rest of the reference file (fit statistics, split digest, command).
        labeller: short name of the labeller, for the prior-label source (``xTB``, ``ANI``).
    """

    coefficients_ev: dict[int, float]
    method: str = XTB_METHOD
    accuracy: float = 1.0
    meta: dict[str, Any] | None = None
    labeller: str = "xTB"

    def prior_labels(self) -> PriorLabels:
        """The DFT labels of the molecules this reference was fitted on and checked on
        (``n_fit + n_heldout`` of its file; NaN when the file does not say)."""
        meta = self.meta or {}
        n = float(meta.get("n_fit", math.nan)) + float(meta.get("n_heldout", 0))
        return PriorLabels(
            n, f"{self.labeller} per-element reference: n_fit + n_heldout ({self.method})"
        )

    def offset_ev(self, z: np.ndarray) -> float:
        """``sum_atoms coefficients_ev[z]`` of one molecule; ``KeyError`` for an unfitted z."""
        return float(sum(self.coefficients_ev[int(a)] for a in z))


def load_xtb_reference(
    path: str | Path | None = None, *, packaged: str = XTB_REFERENCE_FILE
) -> XTBReference:
    """Read the reference written by ``benchmarks/xtb_reference.py`` (default: the packaged
    ``al/data/<packaged>``, e.g. ``ani1x_reference.json`` for the ANI-1x oracle)."""
    if path is None:
        text = resources.files("al.data").joinpath(packaged).read_text()
        where = f"al/data/{packaged}"
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
        labeller=str(rec.get("labeller", "xTB")),
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


@register_oracle("xtb")
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

    def prior_labels(self) -> PriorLabels:
        """The DFT labels its per-element reference was fitted and checked on."""
        return self.reference.prior_labels()

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
        out = [
            self._label_one(int(r)) for r in progress.bar(rows, desc="xTB", unit="mol", leave=False)
        ]
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


def xtb_energies(data: MolecularData, rows: np.ndarray, accuracy: float = 1.0) -> np.ndarray:
    """GFN2-xTB total energies in Hartree of the data rows ``rows`` (``[m]``).

    NaN where tblite failed; each failure is logged as a warning with its status.
    """
    ptr, z, pos = data.ptr.numpy(), data.z.numpy(), data.pos.numpy()
    out = np.full(rows.size, np.nan)
    for k, r in enumerate(progress.bar(rows.tolist(), desc="xTB", unit="mol")):
        a, b = int(ptr[r]), int(ptr[r + 1])
        try:
            out[k] = xtb_energy_hartree(z[a:b], pos[a:b].astype(np.float64), accuracy=accuracy)
        except Exception as exc:  # a failed molecule is left out of the fit, and counted
            log.warning(
                "event=xtb_failed qm9_index=%d status=%s message=%r",
                int(data.qm9_index[r]),
                failure_status(exc),
                str(exc),
            )
    return out


def fit_xtb_reference(
    energy_ha: np.ndarray,
    composition: np.ndarray,
    target_ev: np.ndarray,
    fit: np.ndarray,
    elements: tuple[str, ...] = tuple(ELEMENTS),
) -> dict[str, Any]:
    """Fit the per-element reference ``c`` of ``target = HARTREE_TO_EV * E + comp @ c``.

    Least squares on the rows marked ``fit`` whose energy is finite; the other rows are
    held out to measure the error, against a composition-only model fitted on the same rows.
    ``E`` is any total energy in Hartree: GFN2-xTB's, or an ANI ensemble's.

    Args:
        energy_ha: total energies in Hartree, ``[m]`` (NaN where the labeller failed).
        composition: atoms per element, ``[m, k]``, columns in ``elements`` order.
        target_ev: the DFT target in eV, ``[m]``.
        fit: rows to fit on, ``[m]`` (bool); the rest are held out.
        elements: the symbols of the columns (default all of :data:`ELEMENTS`; the ANI
            oracles fit H, C, N, O only).

    Returns:
        The reference file's fit fields: ``coefficients_ev`` (element symbol -> eV per atom),
        ``n_fit``, ``n_heldout``, ``n_failed``, ``fit_mae_ev``, ``heldout_mae_ev``,
        ``heldout_composition_only_mae_ev`` and ``heldout_correlation_beyond_composition``
        (correlation of xTB's and DFT's deviations from the composition-only model: how much
        of what composition cannot explain xTB gets right).
    """
    ok = np.isfinite(energy_ha)
    fit = np.asarray(fit, dtype=bool)
    held = ~fit
    held_ok = held & ok
    resid = target_ev - HARTREE_TO_EV * energy_ha
    c, *_ = np.linalg.lstsq(composition[fit & ok], resid[fit & ok], rcond=None)
    pred = HARTREE_TO_EV * energy_ha + composition @ c
    c0, *_ = np.linalg.lstsq(composition[fit], target_ev[fit], rcond=None)
    base = composition @ c0
    nan = float("nan")
    return {
        "coefficients_ev": {s: float(v) for s, v in zip(elements, c, strict=True)},
        "n_fit": int((fit & ok).sum()),
        "n_heldout": int(held_ok.sum()),
        "n_failed": int((~ok).sum()),
        "fit_mae_ev": float(np.abs(pred - target_ev)[fit & ok].mean()),
        "heldout_mae_ev": float(np.abs(pred - target_ev)[held_ok].mean()) if held_ok.any() else nan,
        "heldout_composition_only_mae_ev": (
            float(np.abs(base - target_ev)[held].mean()) if held.any() else nan
        ),
        "heldout_correlation_beyond_composition": (
            float(np.corrcoef((pred - base)[held_ok], (target_ev - base)[held_ok])[0, 1])
            if held_ok.sum() > 2
            else nan
        ),
    }
