"""Baselines for Δ-learning: a cheap estimate of the target that the surrogate corrects.

A :class:`Baseline` gives one value in eV per molecule on the DFT target's scale
(:meth:`Baseline.values`), computed once per molecule (kept in memory by QM9 index), and
counts what it spent: each molecule is paid ``cost_per_molecule`` once, the first time its
value is needed, except the molecules marked :meth:`Baseline.free` (the test set, which is
evaluation only, like its DFT labels).

A molecule whose baseline cannot be computed (an xTB SCF that does not converge, a model
that returns NaN) falls back to the packaged composition prior
(:func:`al.data.reference.composition_prior`) for that molecule: it stays in training and
scoring, its residual is just larger. Each such molecule is recorded in
:attr:`Baseline.failed` and counted in a logged warning.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from al import progress
from al.data.cache import cache_dir
from al.data.elements import ELEMENTS, HARTREE_TO_EV
from al.data.molecules import MAX_QM9_INDEX, MolecularData
from al.data.reference import composition_prior, fit_composition
from al.oracles import (
    ORACLES,
    Oracle,
    OracleError,
    PriorLabels,
    XTBReference,
    build_oracle,
    failure_status,
    load_xtb_reference,
)
from al.oracles import xtb_energy_hartree as _xtb_energy_hartree
from al.registry import Registry, Spec

log = logging.getLogger(__name__)

#: Measured GFN2-xTB / DFT cost ratio on these machines: 6.7 ms against ~150 s per QM9
#: molecule (4.5e-5), rounded up.
XTB_BASELINE_COST = 1e-4


class Baseline:
    """A cheap per-molecule estimate of the target (eV), paid once per molecule.

    Subclasses set ``name`` and ``default_cost`` and implement :meth:`_compute`.

    Args:
        cost: cost per molecule; None keeps ``default_cost``.
    """

    name: ClassVar[str] = ""
    default_cost: ClassVar[float] = 0.0
    #: The package a logged model needs to compute this baseline (pip requirement name).
    requirement: ClassVar[str | None] = None
    #: The atomic numbers it can compute (None: every element); a campaign leaves the
    #: other molecules out of its pool.
    supported_elements: ClassVar[frozenset[int] | None] = None
    #: whether :meth:`values` keeps computed values (False: they change with :meth:`fit`)
    memo: ClassVar[bool] = True

    def __init__(self, cost: float | None = None) -> None:
        #: whether the cost was given (else the baseline's default, in DFT labels)
        self.cost_given = cost is not None
        cost = self.default_cost if cost is None else float(cost)
        if not math.isfinite(cost) or cost < 0:
            raise ValueError(f"baseline cost per molecule must be a finite number >= 0, got {cost}")
        self.cost_per_molecule = cost
        self.spec: str = self.name
        size = MAX_QM9_INDEX + 1
        self._value = np.full(size, math.nan)
        self._known = np.zeros(size, dtype=bool)
        self._paid = np.zeros(size, dtype=bool)
        self._free = np.zeros(size, dtype=bool)
        self._failed = np.zeros(size, dtype=bool)

    @classmethod
    def from_spec(cls, spec: Spec[Any], cost: float | None = None) -> Baseline:
        """The baseline of a parsed spec (:data:`BASELINES`); ``cost`` per molecule, None
        for its default. A baseline whose spec takes an argument reads it here."""
        return cls(cost=cost)

    # --- what a campaign calls ----------------------------------------------------------------
    def values(self, data: MolecularData, rows: Tensor, *, pay: bool = True) -> Tensor:
        """The baseline of the data rows ``rows`` (``[n]``), eV, ``[n]`` float64 (finite).

        Computes the molecules not seen yet; with ``pay`` charges those not paid nor free.
        """
        rows_np = rows.detach().cpu().numpy().astype(np.int64).reshape(-1)
        idx = data.qm9_index[rows_np].numpy().astype(np.int64)
        self._grow(int(idx.max()) + 1 if idx.size else 0)
        if self.memo:
            todo_idx, first = np.unique(idx, return_index=True)
            todo = ~self._known[todo_idx]
            if todo.any():
                self._value[todo_idx[todo]] = self._filled(data, rows_np[first[todo]])
                self._known[todo_idx[todo]] = True
            out = self._value[idx].copy()
        else:
            out = self._filled(data, rows_np)
        if pay:
            self._paid[idx[~self._free[idx]]] = True
        return torch.from_numpy(out)

    def unpaid(self, qm9_index: np.ndarray | Tensor) -> np.ndarray:
        """``[m]`` bool: which of the molecules ``qm9_index`` a :meth:`values` call would
        charge now (neither paid nor free)."""
        idx = np.asarray(qm9_index, dtype=np.int64).reshape(-1)
        self._grow(int(idx.max()) + 1 if idx.size else 0)
        return ~(self._paid[idx] | self._free[idx])

    def free(self, qm9_index: np.ndarray | Tensor) -> None:
        """Never charge the molecules ``qm9_index`` (``[m]``), e.g. the test set."""
        idx = np.asarray(qm9_index, dtype=np.int64).reshape(-1)
        self._grow(int(idx.max()) + 1 if idx.size else 0)
        self._free[idx] = True

    def fit(self, composition: Tensor, y: Tensor) -> None:
        """Adapt to the labelled molecules (``composition [n, 5]``, ``y [n]``); most
        baselines are fixed and ignore this."""

    @property
    def n_paid(self) -> int:
        """Molecules charged so far."""
        return int(self._paid.sum())

    @property
    def cost_spent(self) -> float:
        """``cost_per_molecule`` x molecules charged so far."""
        return self.cost_per_molecule * self.n_paid

    @property
    def failed(self) -> np.ndarray:
        """QM9 indices whose baseline fell back to the composition prior, ``[f]``."""
        return np.flatnonzero(self._failed)

    def of_molecules(self, molecules: list[tuple[Any, Any]]) -> np.ndarray:
        """The baseline of molecules given as ``(z [n], pos [n, 3] Angstrom)``, ``[m]`` eV.

        Nothing is kept or charged: for a logged model predicting a user's molecules.
        """
        if not molecules:
            return np.zeros(0)
        data = molecules_data(molecules)
        return self._filled(data, np.arange(len(molecules)), cached=False)

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild this baseline (:func:`build_baseline`) and
        the molecules charged so far (``baseline_paid``: QM9 indices as a base64 bit set),
        so that a resumed campaign never charges a molecule twice."""
        paid = np.flatnonzero(self._paid)
        bits = np.packbits(self._paid[: int(paid[-1]) + 1 if paid.size else 0])
        return {"baseline": self.spec, "baseline_paid": base64.b64encode(bits.tobytes()).decode()}

    def load_meta(self, meta: dict[str, Any]) -> None:
        """Take back what :meth:`meta` recorded (fitted state, molecules charged)."""
        packed = meta.get("baseline_paid")
        if packed:
            bits = np.unpackbits(np.frombuffer(base64.b64decode(packed), dtype=np.uint8))
            paid = np.flatnonzero(bits)
            self._grow(int(paid[-1]) + 1 if paid.size else 0)
            self._paid[paid] = True

    def describe(self) -> dict[str, Any]:
        """Flat settings for run params and logs."""
        return {"baseline": self.spec, "baseline_cost_per_molecule": self.cost_per_molecule}

    def prior_labels(self, data: MolecularData) -> PriorLabels | None:
        """The DFT labels this baseline was built from before the campaign (None: none;
        ``data``: the molecules, for a baseline that needs them to be built)."""
        return None

    def prepare(self, data: MolecularData) -> None:
        """Load what a lazily loaded baseline needs, so that one that cannot work is
        refused before a campaign creates its run; nothing by default."""

    # --- what a baseline defines --------------------------------------------------------------
    def _compute(
        self, data: MolecularData, rows: np.ndarray, cached: bool = True
    ) -> np.ndarray:  # pragma: no cover - abstract
        """Values ``[m]`` (eV, NaN where the molecule failed) of the data rows ``[m]``;
        ``cached`` allows a store keyed by QM9 index (False for molecules without one)."""
        raise NotImplementedError

    # --- helpers --------------------------------------------------------------------------------
    def _filled(self, data: MolecularData, rows: np.ndarray, cached: bool = True) -> np.ndarray:
        """:meth:`_compute`, with the composition prior where it failed (recorded, counted)."""
        value = np.asarray(self._compute(data, rows, cached), dtype=np.float64)
        bad = ~np.isfinite(value)
        if bad.any():
            comp = data.composition(torch.as_tensor(rows[bad]))
            value[bad] = (comp @ composition_prior()).numpy()
            if cached:
                self._failed[data.qm9_index[rows[bad]].numpy()] = True
            log.warning(
                "event=baseline_failed baseline=%s count=%d fallback=composition first=%s",
                self.spec, int(bad.sum()), data.qm9_index[rows[bad][:10]].tolist(),
            )  # fmt: skip
        return value

    def _grow(self, size: int) -> None:
        """Make the per-index arrays hold index ``size - 1``."""
        if size <= self._value.size:
            return
        extra = size - self._value.size
        self._value = np.concatenate([self._value, np.full(extra, math.nan)])
        for name in ("_known", "_paid", "_free", "_failed"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, bool)]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, cost_per_molecule={self.cost_per_molecule})"


#: The baseline registry (the ``baseline`` key): spec name -> class, None for ``none``.
#: Each baseline registers itself where it is defined; :mod:`al.baselines` imports them all.
BASELINES: Registry[type[Baseline] | None] = Registry("baseline")
BASELINES.register("none", None, description="no baseline: the surrogate learns the target")


def molecules_data(molecules: list[tuple[Any, Any]]) -> MolecularData:
    """``(z [n], pos [n, 3])`` pairs as :class:`MolecularData` with QM9 indices 1..m and no
    target (NaN)."""
    zs = [torch.as_tensor(np.asarray(z, dtype=np.int64).reshape(-1)) for z, _ in molecules]
    ps = [torch.as_tensor(np.asarray(p, dtype=np.float32).reshape(-1, 3)) for _, p in molecules]
    counts = torch.tensor([0, *(z.numel() for z in zs)], dtype=torch.int64)
    m = len(molecules)
    return MolecularData(
        z=torch.cat(zs), pos=torch.cat(ps), ptr=torch.cumsum(counts, 0),
        y=torch.full((m,), math.nan, dtype=torch.float64),
        qm9_index=torch.arange(1, m + 1, dtype=torch.int64), smiles=[""] * m,
    )  # fmt: skip


@BASELINES.register("composition")
class CompositionBaseline(Baseline):
    """The per-element linear fit of the labelled molecules (composition only), refitted by
    each :meth:`fit`; before the first fit, the packaged prior. Cost 0.

    The model already fits per-element reference energies on its training targets
    (:meth:`al.models.base.AtomisticModel.fit_reference`), so this baseline changes little
    against ``none``: the model's own fit of the residual is then about 0.
    """

    name = "composition"
    memo = False

    def __init__(self, cost: float | None = None) -> None:
        super().__init__(cost)
        self.coef = composition_prior().clone()  # [5] eV per atom

    def fit(self, composition: Tensor, y: Tensor) -> None:
        self.coef = fit_composition(composition, y, context="baseline")

    def _compute(self, data: MolecularData, rows: np.ndarray, cached: bool = True) -> np.ndarray:
        return (data.composition(torch.as_tensor(rows)) @ self.coef).numpy()

    def meta(self) -> dict[str, Any]:
        coef = dict(zip(ELEMENTS, self.coef.tolist(), strict=True))
        return {**super().meta(), "baseline_coefficients_ev": coef}

    def load_meta(self, meta: dict[str, Any]) -> None:
        super().load_meta(meta)
        coef = meta.get("baseline_coefficients_ev")
        if coef:
            self.coef = torch.tensor([float(coef[s]) for s in ELEMENTS], dtype=torch.float64)


class EnergyBaseline(Baseline):
    """A labeller's total energy on the DFT scale, ``HARTREE_TO_EV * E + sum_atoms c[z]``
    with a per-element reference (:class:`~al.oracles.XTBReference`); the energies (Hartree)
    are kept on disk by QM9 index in ``<cache>/<file name>``. Subclasses compute them
    (:meth:`_run`). An element the reference was not fitted on gives NaN: the composition
    prior stands in.

    Args:
        cost: cost per molecule.
        cache: folder of the store (default ``al.data.cache.cache_dir() / "baselines"``).
        reference: the per-element reference.
        file_name: the store's file name.
    """

    def __init__(
        self,
        cost: float | None,
        cache: str | Path | None,
        reference: XTBReference,
        file_name: str,
    ) -> None:
        super().__init__(cost)
        self.reference = reference
        coeffs = reference.coefficients_ev
        self.coef = torch.tensor(
            [coeffs.get(z, math.nan) for z in ELEMENTS.values()], dtype=torch.float64
        )  # [5] eV per atom, NaN for an element not fitted
        folder = Path(cache) if cache is not None else cache_dir() / "baselines"
        self.path = self._qm9_path = folder / file_name
        self._store: dict[int, float] | None = None

    def use_store_of(self, data: MolecularData) -> None:
        """Keep the energies of ``data`` in its own store: QM9 at its own geometries in the
        file of :attr:`path`, any other molecules (a pool, whose numbers are not QM9
        indices; QM9 at GFN2-xTB geometries) in one named by their structure digest."""
        path = self._qm9_path
        if data.source.startswith("pool:") or data.geometry != "dft":
            path = path.with_name(f"{path.stem}-{data.structure_digest()}{path.suffix}")
        if path != self.path:
            self.path, self._store = path, None

    def _compute(self, data: MolecularData, rows: np.ndarray, cached: bool = True) -> np.ndarray:
        idx = data.qm9_index[rows].numpy()
        self.use_store_of(data)
        store = self._load() if cached else {}
        energy = np.array([store.get(int(q), math.nan) for q in idx], dtype=np.float64)
        todo = np.flatnonzero([int(q) not in store for q in idx])
        if todo.size:
            self._run(data, rows, idx, energy, todo, store if cached else None)
        comp = data.composition(torch.as_tensor(rows))  # [m, 5]
        offset = torch.where(comp > 0, comp * self.coef, 0.0).sum(1)  # NaN where not fitted
        return HARTREE_TO_EV * energy + offset.numpy()

    def _run(
        self,
        data: MolecularData,
        rows: np.ndarray,
        idx: np.ndarray,
        energy: np.ndarray,
        todo: np.ndarray,
        store: dict[int, float] | None,
    ) -> None:  # pragma: no cover - abstract
        """Fill ``energy[todo]`` (Hartree; NaN where it failed) of the data rows
        ``rows[todo]`` (QM9 indices ``idx[todo]``), adding them to ``store`` (saved) when
        given."""
        raise NotImplementedError

    def _load(self) -> dict[int, float]:
        """The store (QM9 index -> Hartree, NaN = failed), read from disk once."""
        if self._store is None:
            self._store = self._read()
        return self._store

    def _read(self) -> dict[int, float]:
        if not self.path.exists():
            return {}
        try:
            with np.load(self.path) as rec:
                return dict(zip(rec["qm9_index"].tolist(), rec["energy_ha"].tolist(), strict=True))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("event=energy_cache_unreadable path=%s message=%r", self.path, str(exc))
            return {}

    def _save(self, store: dict[int, float]) -> None:
        """Merge ``store`` with the file (another process may have added to it), atomically."""
        merged = {**self._read(), **store}
        store.update(merged)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                keys = np.fromiter(merged.keys(), dtype=np.int64, count=len(merged))
                vals = np.fromiter(merged.values(), dtype=np.float64, count=len(merged))
                np.savez(fh, qm9_index=keys, energy_ha=vals)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "baseline_cache": str(self.path)}

    def prior_labels(self, data: MolecularData) -> PriorLabels | None:
        """None: the packaged reference's DFT labels are not a cost of Δ-learning. The
        surrogate fits per-element reference energies on its own targets
        (:meth:`al.models.base.AtomisticModel.fit_reference`), so a per-element offset in
        the baseline, this reference or none, leaves its predictions unchanged
        (``tests/baselines/test_baseline.py`` checks it). The ``xtb`` and ANI oracles, whose
        labels a surrogate learns as they are, do carry them."""
        return None


@BASELINES.register("xtb")
class XTBBaseline(EnergyBaseline):
    """GFN2-xTB on the DFT scale: ``HARTREE_TO_EV * E_xtb + sum_atoms c[z]`` with the
    packaged per-element reference (:func:`al.oracles.load_xtb_reference`).

    Energies are computed lazily, only for the molecules asked for, and kept on disk by QM9
    index (``<cache>/baselines/xtb-<method>-acc<accuracy>.npz``, written every
    ``save_every`` molecules), so each molecule is computed once per machine. A molecule
    whose SCF fails is stored as NaN (not computed again) and falls back to the composition
    prior. All of QM9 takes ~15 min on one core.

    Args:
        cost: cost per molecule (default :data:`XTB_BASELINE_COST`: the measured GFN2-xTB /
            DFT time ratio, far below the ``xtb`` oracle's multi-fidelity default).
        cache: folder of the store (default ``al.data.cache.cache_dir() / "baselines"``).
    """

    name = "xtb"
    default_cost = XTB_BASELINE_COST
    requirement = "tblite"
    save_every = 2000

    def __init__(self, cost: float | None = None, cache: str | Path | None = None) -> None:
        if importlib.util.find_spec("tblite") is None:
            raise ValueError("the xtb baseline needs tblite: pip install tblite")
        reference = load_xtb_reference()
        tag = f"{reference.method}-acc{reference.accuracy:g}"
        super().__init__(cost, cache, reference, f"xtb-{tag}.npz")

    def _run(
        self,
        data: MolecularData,
        rows: np.ndarray,
        idx: np.ndarray,
        energy: np.ndarray,
        todo: np.ndarray,
        store: dict[int, float] | None,
    ) -> None:
        """Fill ``energy[todo]`` (Hartree) by tblite, adding them to ``store`` (saved)."""
        ptr, z, pos = data.ptr.numpy(), data.z.numpy(), data.pos.numpy()
        bar = progress.bar(total=todo.size, desc="xTB baseline", unit="mol")
        where = f", cached in {self.path}" if store is not None else ""
        progress.note(
            bar, f"xTB baseline: computing {todo.size} molecule(s) (~{todo.size * 0.0067 / 60:.1f} "
            f"min on one core){where}", echo=log.info,
        )  # fmt: skip
        t0, done = time.perf_counter(), 0
        with bar:
            for k in todo.tolist():
                a, b = int(ptr[rows[k]]), int(ptr[rows[k] + 1])
                try:
                    energy[k] = _xtb_energy_hartree(
                        z[a:b], pos[a:b].astype(np.float64),
                        method=self.reference.method, accuracy=self.reference.accuracy,
                    )  # fmt: skip
                except Exception as exc:  # recorded as NaN: the composition prior stands in
                    log.warning(
                        "event=xtb_failed qm9_index=%d status=%s message=%r",
                        int(idx[k]), failure_status(exc), str(exc),
                    )  # fmt: skip
                if store is not None:
                    store[int(idx[k])] = float(energy[k])
                done += 1
                bar.update(1)
                if store is not None and done % self.save_every == 0:
                    self._save(store)
        if store is not None:
            self._save(store)
        log.info(
            "event=xtb_baseline_computed n=%d failed=%d seconds=%.1f",
            todo.size, int(np.isnan(energy[todo]).sum()), time.perf_counter() - t0,
        )  # fmt: skip


@BASELINES.register("model", argument=ORACLES.argument("model"))  # (decorators: last first)
@BASELINES.register("pretrained")
class OracleBaseline(Baseline):
    """A model oracle's label as the baseline: ``pretrained`` (the shipped oracle model) or
    ``model:<MLflow model URI>``. Its default cost is the oracle's default cost per label.

    Args:
        spec: the oracle spec (:func:`al.oracles.build_oracle`).
        cost: cost per molecule; None: the oracle's default.
    """

    name = "oracle"

    def __init__(self, spec: str, cost: float | None = None) -> None:
        oracle = ORACLES.parse(spec)
        super().__init__(oracle.obj.default_cost if cost is None else cost)
        self.cost_given = cost is not None
        self.spec = f"{oracle.name}:{oracle.argument}" if oracle.argument else oracle.name
        self._oracle: Oracle | None = None

    @classmethod
    def from_spec(cls, spec: Spec[Any], cost: float | None = None) -> OracleBaseline:
        """The oracle named like the baseline (``pretrained``, ``model:<uri>``)."""
        return cls(f"{spec.name}:{spec.argument}" if spec.argument else spec.name, cost)

    def _compute(self, data: MolecularData, rows: np.ndarray, cached: bool = True) -> np.ndarray:
        return self._built(data).label(data.qm9_index[rows].numpy()).value

    def _built(self, data: MolecularData) -> Oracle:
        if self._oracle is None or self._oracle.data.z is not data.z:
            self._oracle = build_oracle(self.spec, data=data)
        return self._oracle

    def prepare(self, data: MolecularData) -> None:
        """Load the oracle's model now: a URI that cannot be loaded is refused before a
        campaign creates its run."""
        try:
            self._built(data).prepare()
        except OracleError as exc:
            raise OracleError(f"baseline {self.spec!r}: {exc}") from None

    def prior_labels(self, data: MolecularData) -> PriorLabels | None:
        """The DFT labels its model was trained on (the oracle's lineage)."""
        return self._built(data).prior_labels()
