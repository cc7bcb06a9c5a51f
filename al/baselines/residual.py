"""Δ-learning: a surrogate that learns ``target - baseline``, predicts ``baseline + residual``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from al.baselines.base import Baseline
from al.data.molecules import MolecularData
from al.training.fit import EpochStats, FitResult
from al.uncertainty import Prediction, Surrogate

log = logging.getLogger(__name__)


class ResidualSurrogate(Surrogate):
    """Wraps a surrogate so that it learns the residual ``y - baseline``.

    :meth:`fit` subtracts the baseline from the training and validation targets (every
    fidelity column of a multi-fidelity target) and fits the inner surrogate on the
    residual (its std calibration included); :meth:`predict` adds the baseline back to the
    mean, the members and the fidelity members. The std and the embedding are the inner
    surrogate's. Every molecule whose baseline is needed (training, validation, scored
    pool, test) is computed once and paid once (:class:`~al.baselines.base.Baseline`).

    Args:
        inner: the surrogate that learns the residual.
        baseline: the baseline.
    """

    def __init__(self, inner: Surrogate, baseline: Baseline) -> None:  # no super().__init__:
        self.inner, self.baseline = inner, baseline  # every other attribute is the inner's

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "baseline"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def provides(self) -> frozenset[str]:  # type: ignore[override]
        return self.inner.provides

    @property
    def std_scale(self) -> float:  # type: ignore[override]
        return self.inner.std_scale

    @property
    def baseline_cost(self) -> float:
        """What the baseline's cheap labels cost so far (``cost_per_molecule`` x paid)."""
        return self.baseline.cost_spent

    def residual_data(self, data: MolecularData, rows: Tensor) -> MolecularData:
        """``data`` with ``y[rows] - baseline`` (``y`` ``[n_mol]`` or ``[n_mol, D]``)."""
        b = self.baseline.values(data, rows).to(data.y)
        y = data.y.clone()
        y[rows] = y[rows] - (b[:, None] if y.dim() == 2 else b)
        return replace(data, y=y)

    def fit(
        self,
        data: MolecularData,
        train_rows: Tensor,
        val_rows: Tensor,
        on_epoch: Callable[[EpochStats], None] | None = None,
        warm: float = 0.0,
        steps: int = 0,
    ) -> FitResult:
        """Fit the baseline (if it adapts) on ``train_rows`` (``[n_train]``), then the inner
        surrogate on the residual of ``train_rows`` and ``val_rows`` (``[n_val]``); ``warm``
        and ``steps`` as in :meth:`al.uncertainty.surrogates.Surrogate.fit`."""
        target = data.y[train_rows]
        target = target[:, -1] if target.dim() == 2 else target  # the highest fidelity
        self.baseline.fit(data.composition(train_rows), target)
        rows = torch.cat([train_rows, val_rows])
        residual = self.residual_data(data, rows)
        return self.inner.fit(
            residual, train_rows, val_rows, on_epoch=on_epoch, warm=warm, steps=steps
        )

    def calibrate(self, data: MolecularData, rows: Tensor) -> float:
        """Calibrate the inner surrogate's std on the residual of ``rows`` (``[n]``)."""
        return self.inner.calibrate(self.residual_data(data, rows), rows)

    def predict(self, data: MolecularData, rows: Tensor, batch_size: int = 0) -> Prediction:
        """The inner prediction for ``rows`` (``[n]``) plus the baseline (mean, members
        ``[K, n]``, fidelity members ``[K, n, D]``); std and embedding unchanged."""
        pred = self.inner.predict(data, rows, batch_size)
        b = self.baseline.values(data, rows).to(pred.mean)
        return replace(
            pred,
            mean=pred.mean + b,
            members=None if pred.members is None else pred.members + b.to(pred.members),
            fidelity_members=(
                None if pred.fidelity_members is None
                else pred.fidelity_members + b.to(pred.fidelity_members)[None, :, None]
            ),
        )  # fmt: skip

    def members(self) -> list[torch.nn.Module]:
        return self.inner.members()

    def load_members(
        self, members: list[torch.nn.Module], meta: dict[str, Any] | None = None
    ) -> None:
        """The inner surrogate's members and std scale, the baseline's fitted state."""
        self.inner.load_members(members, meta)
        meta = meta or {}
        recorded = meta.get("baseline")
        if recorded is not None and recorded != self.baseline.spec:
            raise ValueError(
                f"the checkpoint was trained with baseline {recorded!r}, not {self.baseline.spec!r}"
            )
        self.baseline.load_meta(meta)

    def checkpoint_meta(self) -> dict[str, Any]:
        """The inner surrogate's metadata plus the baseline's (``baseline``: its spec)."""
        return {**self.inner.checkpoint_meta(), **self.baseline.meta()}

    def __repr__(self) -> str:
        return f"ResidualSurrogate({self.inner!r}, {self.baseline!r})"


def baseline_of(surrogate: Surrogate) -> Baseline | None:
    """The Δ-learning baseline of a surrogate: a :class:`ResidualSurrogate`'s, else None."""
    return surrogate.baseline if isinstance(surrogate, ResidualSurrogate) else None
