"""Uncertainty-aware surrogates: what they predict for a set of molecules."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from al.data.molecules import MolecularData
from al.models import AtomisticModel, ModelConfig, build_model, set_mc_dropout
from al.models.ensemble import EnsembleModel
from al.training.config import FitConfig
from al.training.fit import EpochStats, FitResult, fit, predict
from al.uncertainty.prediction import Prediction


class Surrogate:
    """A model family that predicts mean, std and embeddings; trained from scratch by ``fit``.

    Subclasses declare what they provide; acquisition functions declare what they need.
    """

    name: str = ""
    provides: frozenset[str] = frozenset()

    def __init__(
        self, model_config: ModelConfig, fit_config: FitConfig, device: torch.device
    ) -> None:
        self.model_config, self.fit_config, self.device = model_config, fit_config, device
        self.model: torch.nn.Module | None = None
        #: energies per molecule: 1, or the number of fidelities of a multi-fidelity campaign
        self.n_outputs = 1

    def fit(
        self,
        data: MolecularData,
        train_rows: Tensor,
        val_rows: Tensor,
        on_epoch: Callable[[EpochStats], None] | None = None,
    ) -> FitResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(
        self, data: MolecularData, rows: Tensor, batch_size: int = 512
    ) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError

    def members(self) -> list[AtomisticModel]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_members(self, members: list[AtomisticModel]) -> None:  # pragma: no cover
        raise NotImplementedError

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"uncertainty": self.name, "n_outputs": self.n_outputs}

    @classmethod
    def build(
        cls,
        model_config: ModelConfig,
        fit_config: FitConfig,
        device: torch.device,
        **settings: Any,
    ) -> Surrogate:  # pragma: no cover - abstract
        """The surrogate from the campaign's settings (``ensemble_size``, ``bootstrap``,
        ``mc_samples``); each method takes the ones it uses."""
        raise NotImplementedError

    def _new_model(self, seed: int) -> AtomisticModel:
        torch.manual_seed(seed)
        cfg = self.model_config
        return build_model(cfg.model, **cfg.model_kwargs(), n_outputs=self.n_outputs)


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

    @classmethod
    def build(
        cls,
        model_config: ModelConfig,
        fit_config: FitConfig,
        device: torch.device,
        **settings: Any,
    ) -> EnsembleSurrogate:
        return cls(model_config, fit_config, device, settings.get("ensemble_size", 5),
                   settings.get("bootstrap", False))  # fmt: skip

    def fit(
        self,
        data: MolecularData,
        train_rows: Tensor,
        val_rows: Tensor,
        on_epoch: Callable[[EpochStats], None] | None = None,
    ) -> FitResult:
        seed = self.fit_config.seed
        members = [self._new_model(seed * 1009 + k) for k in range(self.size)]
        self.model = EnsembleModel(members).to(self.device)
        weight = None
        if self.bootstrap:
            gen = torch.Generator().manual_seed(seed + 17)
            rate = torch.ones(self.size, train_rows.numel())
            weight = torch.poisson(rate, generator=gen)
        return fit(self.model, data, train_rows, val_rows, self.fit_config, on_epoch,
                   sample_weight=weight)  # fmt: skip

    def predict(self, data: MolecularData, rows: Tensor, batch_size: int = 512) -> Prediction:
        assert self.model is not None, "fit or load the surrogate first"
        self.model.eval()
        energies, emb = predict(
            self.model, data, rows, batch_size, self.fit_config.amp, embeddings=True
        )
        return Prediction.from_samples(energies, emb.mean(0))

    def members(self) -> list[AtomisticModel]:
        assert isinstance(self.model, EnsembleModel), "fit or load the surrogate first"
        return [m.cpu() for m in self.model.members()]

    def load_members(self, members: list[AtomisticModel]) -> None:
        self.model = EnsembleModel(members).to(self.device).eval()

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "ensemble_size": self.size}


class MCDropoutSurrogate(Surrogate):
    """One model with dropout kept on at inference; the spread of ``samples`` passes."""

    name = "mc_dropout"
    provides = frozenset({"mean", "std", "embedding", "members"})

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

    @classmethod
    def build(
        cls,
        model_config: ModelConfig,
        fit_config: FitConfig,
        device: torch.device,
        **settings: Any,
    ) -> MCDropoutSurrogate:
        return cls(model_config, fit_config, device, settings.get("mc_samples", 20))

    def fit(
        self,
        data: MolecularData,
        train_rows: Tensor,
        val_rows: Tensor,
        on_epoch: Callable[[EpochStats], None] | None = None,
    ) -> FitResult:
        self.model = self._new_model(self.fit_config.seed * 1009).to(self.device)
        return fit(self.model, data, train_rows, val_rows, self.fit_config, on_epoch)

    def predict(self, data: MolecularData, rows: Tensor, batch_size: int = 512) -> Prediction:
        assert self.model is not None, "fit or load the surrogate first"
        model, amp = self.model, self.fit_config.amp
        model.eval()
        set_mc_dropout(model, False)
        _, emb = predict(model, data, rows, batch_size, amp, embeddings=True)
        set_mc_dropout(model, True)
        try:
            passes = torch.stack(
                [predict(model, data, rows, batch_size, amp)[0] for _ in range(self.samples)]
            )
        finally:
            set_mc_dropout(model, False)
        return Prediction.from_samples(passes, emb)

    def members(self) -> list[AtomisticModel]:
        assert self.model is not None, "fit or load the surrogate first"
        return [copy.deepcopy(self.model).cpu()]

    def load_members(self, members: list[AtomisticModel]) -> None:
        self.model = members[0].to(self.device).eval()

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "mc_samples": self.samples}
