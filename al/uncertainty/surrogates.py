"""Uncertainty-aware surrogates: what they predict for a set of molecules."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from al import progress
from al.data.molecules import MolecularData
from al.models import AtomisticModel, ModelConfig, build_model, set_mc_dropout
from al.models.ensemble import EnsembleModel
from al.models.shallow import ShallowEnsembleModel
from al.registry import Registry
from al.training.config import FitConfig, step_budget
from al.training.fit import EpochStats, FitResult, fit, predict
from al.training.metrics import calibration_scale
from al.training.split import split_validation
from al.uncertainty.prediction import Prediction

#: Molecules per scoring batch by device: small batches stay in the CPU's caches (128 is
#: 1.8x faster than 1,024 on CPU, ``benchmarks/scoring.py``); a GPU wants large ones.
SCORE_BATCH: dict[str, int] = {"cpu": 128, "cuda": 1024}


class Surrogate:
    """A model family that predicts mean, std and embeddings, trained by ``fit``.

    Subclasses declare what they provide; acquisition functions declare what they need.
    They implement ``_build`` (a new, untrained model) and ``_samples`` (member, head or
    pass energies); ``fit`` trains the model, then calibrates the std on the validation
    set: ``std_scale`` is the one factor ``s`` that minimises the Gaussian NLL of the
    validation errors under ``s x std``, and ``predict`` returns ``std = s x std_raw``
    (both are in the :class:`Prediction`).
    """

    name: str = ""
    provides: frozenset[str] = frozenset()
    #: the dropout rate a campaign gives the model when its config sets none (0: none)
    default_dropout: ClassVar[float] = 0.0

    def __init__(
        self, model_config: ModelConfig, fit_config: FitConfig, device: torch.device
    ) -> None:
        self.model_config, self.fit_config, self.device = model_config, fit_config, device
        self.model: torch.nn.Module | None = None
        #: energies per molecule: 1, or the number of fidelities of a multi-fidelity campaign
        self.n_outputs = 1
        #: calibration factor of the std, fitted on the validation set after each fit
        self.std_scale = 1.0

    def fit(
        self,
        data: MolecularData,
        train_rows: Tensor,
        val_rows: Tensor,
        on_epoch: Callable[[EpochStats], None] | None = None,
        warm: float = 0.0,
        steps: int = 0,
    ) -> FitResult:
        """Train on ``train_rows`` (``[n_train]``), early-stopping on ``val_rows``
        (``[n_val]``), then calibrate ``std_scale`` on the validation rows.

        When the ``val_min`` floor asks for more validation rows than ``val_rows`` holds,
        seeded random training rows are moved there first
        (:func:`~al.training.split.split_validation`; ``FitResult.val_rows`` are the ones
        used).

        ``warm`` > 0 continues from the current weights (when there are any) with a schedule
        of that share of a fit from scratch's steps (:func:`~al.training.config.step_budget`
        on ``n_train``, ``min_steps`` scaled alike); 0 trains from scratch. ``steps`` > 0
        runs exactly that many steps, to the end of the schedule (early stopping would end a
        long schedule while its learning rate is still high), from scratch, or with ``warm``
        > 0 from the current weights (a fresh schedule: a warm re-anneal).
        """
        config, warm_fit = self.fit_config, warm > 0 and self.model is not None
        if steps > 0:
            config = replace(config, max_steps=steps, min_steps=steps)
        elif warm_fit:
            cold = step_budget(config, train_rows.numel())
            config = replace(
                config,
                max_steps=max(1, math.ceil(warm * cold)),
                min_steps=math.ceil(warm * config.min_steps),
            )
        if not warm_fit:
            self.model = self._build().to(self.device)
        weight = self._sample_weight(train_rows.numel())  # [K, n_train] or None
        train_rows, val_rows, weight = _validation_floor(train_rows, val_rows, weight, config)
        result = fit(self.model, data, train_rows, val_rows, config, on_epoch,
                     sample_weight=weight)  # fmt: skip
        result.warm = warm_fit
        rows = result.val_rows if result.val_rows is not None else val_rows
        result.std_scale = self.calibrate(data, rows)
        return result

    def calibrate(self, data: MolecularData, rows: Tensor) -> float:
        """Set and return ``std_scale`` from the errors on ``rows`` (``[n]``; 1 without any
        labelled row). Targets are ``data.y`` (its last column with several fidelities)."""
        self.std_scale = 1.0
        if rows.numel() == 0:
            return 1.0
        target = data.y[rows.to(data.y.device)].cpu()
        if target.dim() > 1:
            target = target[:, -1]
        present = torch.isfinite(target)
        if not bool(present.any()):
            return 1.0
        pred = self.predict(data, rows[present.to(rows.device)])
        assert pred.std_raw is not None
        self.std_scale = calibration_scale(pred.mean, pred.std_raw, target[present])
        return self.std_scale

    @property
    def passes(self) -> int:
        """Forward passes over every molecule a prediction makes (what its bar counts)."""
        return 1

    def predict(self, data: MolecularData, rows: Tensor, batch_size: int = 0) -> Prediction:
        """Mean, calibrated and raw std, embedding and members for ``rows`` (``[n]``), in
        batches of ``batch_size`` molecules (0: :data:`SCORE_BATCH` for the device).

        Over more than one batch, a bar of the molecules (rate, ETA) shows on a terminal
        unless ``progress=false``; it counts every pass (:attr:`passes` per molecule).
        """
        assert self.model is not None, "fit or load the surrogate first"
        batch_size = batch_size or SCORE_BATCH.get(self.device.type, SCORE_BATCH["cpu"])
        n = rows.numel() * self.passes
        if not progress.shown(self.fit_config.progress and rows.numel() > batch_size):
            samples, emb = self._samples(data, rows, batch_size, None)
        else:
            with progress.bar(total=n, desc="predict", unit="mol", leave=False) as counter:
                samples, emb = self._samples(data, rows, batch_size, counter)
        return Prediction.from_samples(samples, emb, std_scale=self.std_scale)

    def _build(self) -> torch.nn.Module:  # pragma: no cover - abstract
        """A new, untrained model (seeded from ``fit_config.seed``)."""
        raise NotImplementedError

    def _sample_weight(self, n_train: int) -> Tensor | None:
        """Per-sample training weights (``[K, n_train]``), or None for uniform ones."""
        return None

    def _samples(
        self, data: MolecularData, rows: Tensor, batch_size: int, counter: tqdm | None
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Energies ``[K, n]`` (``[K, n, D]``) and embeddings ``[n, F]``; ``counter`` (a bar
        or None) advances by the molecules of each batch of each pass."""
        raise NotImplementedError

    def members(self) -> list[torch.nn.Module]:  # pragma: no cover - abstract
        """The trained model(s) to checkpoint (:func:`al.models.checkpoint.save_checkpoint`)."""
        raise NotImplementedError

    def load_members(
        self, members: list[torch.nn.Module], meta: dict[str, Any] | None = None
    ) -> None:
        """Take trained ``members`` (from :meth:`members` or a checkpoint) and, from the
        checkpoint's ``meta``, the calibration ``std_scale`` (1 when absent)."""
        self._load(members)
        self.std_scale = float((meta or {}).get("std_scale", 1.0))

    def _load(self, members: list[torch.nn.Module]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"uncertainty": self.name, "n_outputs": self.n_outputs, "std_scale": self.std_scale}

    #: campaign setting -> constructor argument, for the settings this method uses
    SETTINGS: ClassVar[dict[str, str]] = {}

    @classmethod
    def build(
        cls,
        model_config: ModelConfig,
        fit_config: FitConfig,
        device: torch.device,
        **settings: Any,
    ) -> Surrogate:
        """The surrogate from the campaign's settings (``ensemble_size``, ``bootstrap``,
        ``mc_samples``); each method takes the ones named in its :attr:`SETTINGS`."""
        chosen = {arg: settings[key] for key, arg in cls.SETTINGS.items() if key in settings}
        return cls(model_config, fit_config, device, **chosen)

    def _new_model(self, seed: int) -> AtomisticModel:
        torch.manual_seed(seed)
        cfg = self.model_config
        return build_model(cfg.model, **cfg.model_kwargs(), n_outputs=self.n_outputs)


def _validation_floor(
    train_rows: Tensor, val_rows: Tensor, weight: Tensor | None, config: FitConfig
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``val_rows`` raised to the ``val_min`` floor with rows of ``train_rows``
    (:func:`~al.training.split.split_validation` of the labelled set, validation rows first),
    and the training weights (``[..., n_train]``) of the rows that stay."""
    n_val = val_rows.numel()
    positions = torch.arange(n_val + train_rows.numel(), device=train_rows.device)
    train_pos, val_pos = split_validation(positions, config, held=n_val)
    if val_pos.numel() == n_val:
        return train_rows, val_rows, weight
    rows = torch.cat([val_rows, train_rows.to(val_rows.device)])
    kept = train_pos - n_val  # positions in train_rows
    return rows[train_pos], rows[val_pos], None if weight is None else weight[..., kept.cpu()]


#: The registry of uncertainty methods (the ``uncertainty`` key): config choices, CLI,
#: strategies and tests read it; each surrogate registers itself below.
UNCERTAINTIES: Registry[type[Surrogate]] = Registry("uncertainty")


@UNCERTAINTIES.register("ensemble")
class EnsembleSurrogate(Surrogate):
    """A deep ensemble of ``size`` members with different seeds, trained in one pass.

    Args:
        size: number of members K.
        bootstrap: train each member on a Poisson(1) bootstrap reweighting of the data.
    """

    name = "ensemble"
    provides = frozenset({"mean", "std", "embedding", "members"})

    def __init__(
        self,
        model_config: ModelConfig,
        fit_config: FitConfig,
        device: torch.device,
        size: int = 5,
        bootstrap: bool = False,
    ) -> None:
        super().__init__(model_config, fit_config, device)
        if size < 2:
            raise ValueError(f"an ensemble needs at least 2 members for a spread, got {size}")
        self.size, self.bootstrap = size, bootstrap

    SETTINGS: ClassVar[dict[str, str]] = {"ensemble_size": "size", "bootstrap": "bootstrap"}

    def _build(self) -> torch.nn.Module:
        seed = self.fit_config.seed
        return EnsembleModel([self._new_model(seed * 1009 + k) for k in range(self.size)])

    def _sample_weight(self, n_train: int) -> Tensor | None:
        """Poisson(1) bootstrap counts per member, ``[K, n_train]`` (with ``bootstrap``)."""
        if not self.bootstrap:
            return None
        gen = torch.Generator().manual_seed(self.fit_config.seed + 17)
        return torch.poisson(torch.ones(self.size, n_train), generator=gen)

    def _samples(
        self, data: MolecularData, rows: Tensor, batch_size: int, counter: tqdm | None
    ) -> tuple[Tensor, Tensor]:
        assert self.model is not None
        self.model.eval()
        energies, emb = predict(
            self.model, data, rows, batch_size, self.fit_config.amp, True, counter
        )
        assert emb is not None
        # [K, n, F] -> [n, K * F] / sqrt(K): dot products of these are the mean of the members'
        # last-layer kernels, and the ensemble's mean energy is linear in them
        return energies, emb.permute(1, 0, 2).flatten(1) / math.sqrt(self.size)

    def members(self) -> list[torch.nn.Module]:
        assert isinstance(self.model, EnsembleModel), "fit or load the surrogate first"
        return [m.cpu() for m in self.model.members()]

    def _load(self, members: list[torch.nn.Module]) -> None:
        self.model = EnsembleModel(members).to(self.device).eval()  # type: ignore[arg-type]

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "ensemble_size": self.size}


@UNCERTAINTIES.register("mc_dropout")
class MCDropoutSurrogate(Surrogate):
    """One model with dropout kept on at inference; the spread of ``samples`` passes."""

    name = "mc_dropout"
    provides = frozenset({"mean", "std", "embedding", "members"})
    default_dropout = 0.1  # MC dropout needs some

    def __init__(
        self,
        model_config: ModelConfig,
        fit_config: FitConfig,
        device: torch.device,
        samples: int = 20,
    ) -> None:
        if model_config.dropout <= 0:
            raise ValueError("MC dropout needs dropout > 0 (e.g. dropout=0.1)")
        if samples < 2:
            raise ValueError(f"MC dropout needs at least 2 passes, got mc_samples={samples}")
        super().__init__(model_config, fit_config, device)
        self.samples = samples

    SETTINGS: ClassVar[dict[str, str]] = {"mc_samples": "samples"}

    def _build(self) -> torch.nn.Module:
        return self._new_model(self.fit_config.seed * 1009)

    @property
    def passes(self) -> int:
        """One deterministic pass for the embedding, then ``samples`` with dropout on."""
        return self.samples + 1

    def _samples(
        self, data: MolecularData, rows: Tensor, batch_size: int, counter: tqdm | None
    ) -> tuple[Tensor, Tensor]:
        assert self.model is not None
        model, amp = self.model, self.fit_config.amp
        model.eval()
        set_mc_dropout(model, False)
        _, emb = predict(model, data, rows, batch_size, amp, True, counter)
        set_mc_dropout(model, True)
        try:
            passes = torch.stack(
                [
                    predict(model, data, rows, batch_size, amp, counter=counter)[0]
                    for _ in range(self.samples)
                ]
            )
        finally:
            set_mc_dropout(model, False)
        assert emb is not None
        return passes, emb

    def members(self) -> list[torch.nn.Module]:
        assert self.model is not None, "fit or load the surrogate first"
        return [copy.deepcopy(self.model).cpu()]

    def _load(self, members: list[torch.nn.Module]) -> None:
        self.model = members[0].to(self.device).eval()

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "mc_samples": self.samples}


@UNCERTAINTIES.register("shallow")
class ShallowEnsembleSurrogate(Surrogate):
    """A shallow ensemble: one trunk with ``heads`` last-layer heads, NLL-trained (DPOSE).

    Kellner & Ceriotti, Mach. Learn.: Sci. Technol. 2024 (arXiv:2402.16621): the heads'
    spread, trained by the Gaussian NLL of their mean and variance, is the uncertainty. It
    costs about one model to train and to score (:class:`~al.models.shallow.ShallowEnsembleModel`).
    The embedding is the per-molecule sum of the features the heads are linear in.

    Args:
        heads: number of heads K (the ``ensemble_size`` key).
    """

    name = "shallow"
    provides = frozenset({"mean", "std", "embedding", "members"})

    def __init__(
        self,
        model_config: ModelConfig,
        fit_config: FitConfig,
        device: torch.device,
        heads: int = 5,
    ) -> None:
        super().__init__(model_config, fit_config, device)
        if heads < 2:
            raise ValueError(f"a shallow ensemble needs at least 2 heads for a spread, got {heads}")
        self.heads = heads

    SETTINGS: ClassVar[dict[str, str]] = {"ensemble_size": "heads"}

    def _build(self) -> torch.nn.Module:
        torch.manual_seed(self.fit_config.seed * 1009)
        cfg = self.model_config
        return ShallowEnsembleModel.build(
            cfg.model, self.heads, n_outputs=self.n_outputs, **cfg.model_kwargs()
        )

    def _samples(
        self, data: MolecularData, rows: Tensor, batch_size: int, counter: tqdm | None
    ) -> tuple[Tensor, Tensor]:
        assert self.model is not None
        self.model.eval()
        energies, emb = predict(
            self.model, data, rows, batch_size, self.fit_config.amp, True, counter
        )
        assert emb is not None
        return energies, emb

    def members(self) -> list[torch.nn.Module]:
        assert isinstance(self.model, ShallowEnsembleModel), "fit or load the surrogate first"
        return [copy.deepcopy(self.model).cpu()]

    def _load(self, members: list[torch.nn.Module]) -> None:
        (model,) = members
        if not isinstance(model, ShallowEnsembleModel):
            raise ValueError(
                f"a shallow-ensemble checkpoint holds one ShallowEnsembleModel, got {model!r}"
            )
        self.model = model.to(self.device).eval()
        self.heads = model.heads

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "ensemble_size": self.heads}
