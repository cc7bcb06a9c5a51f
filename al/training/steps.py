"""What a training step does for each kind of model: batch, forward pass, loss, clipping.

:func:`~al.training.fit.fit` is one loop for every model; the :class:`TrainStep` chosen
once for the model by :func:`train_step` supplies what differs between them:

- a single model (:class:`TrainStep`): one batch, the MSE of its energies;
- a deep ensemble (:class:`MembersStep`): each member its own batch and its own MSE (their
  sum), and its own gradient-norm clipping;
- a shallow ensemble (:class:`HeadsStep`): the mean of its heads' MSEs for the first
  ``nll_warmup`` share of the steps, then the Gaussian NLL of the heads' mean and variance
  (:func:`~al.training.losses.ensemble_nll`); the best weights are looked for only after
  that warm-up.

Energies and targets enter the losses in units of the model's target ``scale``. With
``D > 1`` outputs (fidelities) targets are ``[b, D]`` with NaN where a molecule has no
label of that fidelity; the losses average over the labels present.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from al.data.molecules import MolecularData
from al.models.base import AtomisticModel
from al.models.ensemble import EnsembleModel
from al.models.shallow import ShallowEnsembleModel
from al.training import losses
from al.training.config import FitConfig


@dataclass
class Batch:
    """A training batch: the forward pass's ``inputs``, the targets ``y`` (eV, ``[b(, D)]``,
    ``[K, b(, D)]`` for a deep ensemble) and the loss weights (``[b]`` or ``[K, b]``, None
    for uniform ones); ``size`` is ``b``, the molecules per member."""

    inputs: tuple
    y: Tensor
    weight: Tensor | None
    size: int


class TrainStep:
    """A single model's step; the base of the others.

    Args:
        model: the model being trained (reference energies already fitted).
        data: the molecules, on the model's device.
        train_rows: training rows of ``data``, ``[n_train]``.
        config: the fit's settings (``compile``, ``nll_warmup``).
        sample_weight: loss weight per training molecule, ``[n_train]`` or ``[K, n_train]``,
            on the device; None for uniform weights.
        total: the fit's optimizer steps.
    """

    #: batches drawn per step (one per ensemble member)
    members = 1

    def __init__(
        self,
        model: torch.nn.Module,
        data: MolecularData,
        train_rows: Tensor,
        config: FitConfig,
        sample_weight: Tensor | None,
        total: int,
    ) -> None:
        self.model, self.data, self.train_rows = model, data, train_rows
        self.sample_weight = sample_weight
        self.y_scale = model.scale.detach().float()  # [] or [D]
        device = next(model.parameters()).device
        self.forward_model = model
        if config.compile and device.type == "cuda" and self.members == 1:
            self.forward_model = torch.compile(model, dynamic=True)
        #: the step from which the best weights are looked for
        self.best_from = 0

    def batch(self, idx: Tensor) -> Batch:
        """The molecules at positions ``idx`` (``[members, b]``) of the training rows."""
        rows = self.train_rows[idx[0]]
        z, pos, batch, y = self.data.batch(rows)
        weight = None if self.sample_weight is None else self.sample_weight[..., idx[0]]
        return Batch((z, pos, batch, rows.numel()), y, weight, rows.numel())

    def forward(self, batch: Batch) -> Tensor:
        """Energies of the batch (eV): ``[b(, D)]``; ``[K, b(, D)]`` for ensembles."""
        return self.forward_model(*batch.inputs)

    def loss(self, pred: Tensor, batch: Batch, step: int) -> tuple[Tensor, Tensor]:
        """The loss to minimise at optimizer step ``step`` (0-based) and the training loss
        per molecule to report (detached), both scalars."""
        s = self.y_scale
        loss = losses.mse(pred.float() / s, batch.y.float() / s, batch.weight)
        return loss, loss.detach()

    def clip_(self, max_norm: float) -> None:
        """Clip the gradient norm to ``max_norm``."""
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)


class MembersStep(TrainStep):
    """A deep ensemble's step: member k trains on its own batch ``idx[k]``."""

    def __init__(
        self,
        model: EnsembleModel,
        data: MolecularData,
        train_rows: Tensor,
        config: FitConfig,
        sample_weight: Tensor | None,
        total: int,
    ) -> None:
        self.members = model.size
        super().__init__(model, data, train_rows, config, sample_weight, total)

    def batch(self, idx: Tensor) -> Batch:
        parts = [self.data.batch(self.train_rows[i]) for i in idx]
        y = torch.stack([p[3] for p in parts])  # [K, b(, D)]
        weight = None
        if self.sample_weight is not None:
            weight = (
                torch.gather(self.sample_weight, 1, idx)
                if self.sample_weight.dim() == 2
                else self.sample_weight[idx]
            )
        return Batch(([p[:3] for p in parts], idx.shape[1]), y, weight, idx.shape[1])

    def forward(self, batch: Batch) -> Tensor:
        return self.model.forward_members(*batch.inputs)

    def loss(self, pred: Tensor, batch: Batch, step: int) -> tuple[Tensor, Tensor]:
        s = self.y_scale
        loss = losses.member_mse(pred.float() / s, batch.y.float() / s, batch.weight)
        return loss, loss.detach() / self.members

    def clip_(self, max_norm: float) -> None:
        self.model.clip_grad_norms_(max_norm)


class HeadsStep(TrainStep):
    """A shallow ensemble's step: per-head MSE during the warm-up, then the heads' NLL."""

    def __init__(
        self,
        model: ShallowEnsembleModel,
        data: MolecularData,
        train_rows: Tensor,
        config: FitConfig,
        sample_weight: Tensor | None,
        total: int,
    ) -> None:
        super().__init__(model, data, train_rows, config, sample_weight, total)
        self.nll_from = round(config.nll_warmup * total)
        self.best_from = min(self.nll_from, total)

    def loss(self, pred: Tensor, batch: Batch, step: int) -> tuple[Tensor, Tensor]:
        pred, y = pred.float() / self.y_scale, batch.y.float() / self.y_scale  # [K, b(, D)]
        if step >= self.nll_from:
            loss = losses.ensemble_nll(pred, y, batch.weight)
        else:  # warm-up: each head fits the targets on its own
            w = None if batch.weight is None else batch.weight.expand(pred.shape[:2])
            loss = losses.member_mse(pred, y.expand_as(pred), w) / pred.shape[0]
        return loss, loss.detach()


#: The step of each model kind (the first that matches); any other model is a single one.
STEPS: tuple[tuple[type[torch.nn.Module], type[TrainStep]], ...] = (
    (EnsembleModel, MembersStep),
    (ShallowEnsembleModel, HeadsStep),
)


def train_step(
    model: AtomisticModel | EnsembleModel | ShallowEnsembleModel,
    data: MolecularData,
    train_rows: Tensor,
    config: FitConfig,
    sample_weight: Tensor | None,
    total: int,
) -> TrainStep:
    """The step for ``model``'s kind (see :class:`TrainStep` for the arguments)."""
    kind = next((s for m, s in STEPS if isinstance(model, m)), TrainStep)
    return kind(model, data, train_rows, config, sample_weight, total)
