"""Settings of an HPO study, and the sampler and pruner registries they name.

The registries map a name to a factory; optuna is imported inside the factories so that
the ``al`` command line starts without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from al.config import option
from al.data.config import DataConfig
from al.registry import Registry
from al.training.config import DEVICES

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler


def _quiet_experimental() -> None:
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)


#: Samplers by name: a factory of the seed (each registers itself below).
SAMPLERS: Registry[Callable[[int], BaseSampler]] = Registry("sampler")
#: Pruners by name: a factory of the maximum epochs per trial.
PRUNERS: Registry[Callable[[int], BasePruner]] = Registry("pruner")


@SAMPLERS.register("tpe", description="tree-structured Parzen estimator (multivariate)")
def _tpe(seed: int) -> BaseSampler:
    from optuna.samplers import TPESampler

    _quiet_experimental()
    # constant_liar: parallel workers see running trials as bad, so they spread out
    return TPESampler(seed=seed, multivariate=True, constant_liar=True)


@SAMPLERS.register("gp", description="Gaussian-process Bayesian optimisation")
def _gp(seed: int) -> BaseSampler:
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed)


@SAMPLERS.register("random", description="uniform at random")
def _random(seed: int) -> BaseSampler:
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


@PRUNERS.register("median", description="below the median of earlier trials at an epoch")
def _median(epochs: int) -> BasePruner:
    from optuna.pruners import MedianPruner

    # the first epochs of a one-cycle schedule say little: judge after a fifth of them
    return MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 5))


@PRUNERS.register("hyperband", description="successive halving over epoch budgets")
def _hyperband(epochs: int) -> BasePruner:
    from optuna.pruners import HyperbandPruner

    return HyperbandPruner(min_resource=max(1, epochs // 10), max_resource=epochs)


@PRUNERS.register("none", description="no pruning: every trial runs to the end")
def _no_pruning(epochs: int) -> BasePruner:
    from optuna.pruners import NopPruner

    return NopPruner()


def build_sampler(name: str, seed: int) -> BaseSampler:
    """The sampler registered as ``name``, seeded."""
    return SAMPLERS.get(name)(seed)


def build_pruner(name: str, epochs: int) -> BasePruner:
    """The pruner registered as ``name``, for trials of at most ``epochs`` epochs."""
    return PRUNERS.get(name)(epochs)


@dataclass
class HPOConfig(DataConfig):
    """The ``hpo`` entry point: an Optuna study of surrogate settings, tracked in MLflow.

    Every trial trains on the same ``train_size`` random pool molecules (seeded), so trials
    differ only in their settings.
    """

    study_name: str = option("al-hpo", "Optuna study name (workers with the same name share it)")
    storage: str = option(
        "sqlite:///optuna.db",
        "Optuna storage (SQLAlchemy URL; ${VAR} is read from the environment)",
    )
    n_trials: int = option(30, "finished trials (complete + pruned) over all workers", min=1)
    n_workers: int = option(1, "worker processes started on this machine", min=1)
    timeout: float = option(
        0.0, "seconds after which workers start no new trial (0 = none)", min=0.0
    )
    sampler: str = option("tpe", "Optuna sampler", choices=tuple(SAMPLERS))
    pruner: str = option(
        "median", "Optuna pruner (on validation MAE per epoch)", choices=tuple(PRUNERS)
    )
    fixed: str = option("", "search-space keys held fixed, e.g. 'model=schnet,hidden=128'")
    train_size: int = option(1000, "labelled pool molecules per trial (train + validation)", min=4)
    val_fraction: float = option(
        0.2, "share of train_size held out for validation", min=0.05, max=0.5
    )
    epochs: int = option(40, "epochs per trial (the maximum when epochs_min > 0)", min=1)
    epochs_min: int = option(0, "tune epochs in [epochs_min, epochs] (0 = fixed)", min=0)
    patience: int = option(10, "early stopping within a trial", min=1)
    seed: int = option(0, "seed of the labelled set, the weights and the sampler")
    sampler_seed: int = option(
        -1, "sampler seed (-1: seed); worker k adds 1000 k; give every machine its own"
    )
    device: str = option("auto", "auto picks CUDA when present", choices=DEVICES)
    amp: bool = option(True, "bf16 autocast (CUDA only)")
    compile: bool = option(False, "torch.compile the model (CUDA only)")
    threads: int = option(0, "CPU threads per worker (0 = cores / n_workers)", min=0)
    progress: bool = option(True, "a bar of the study's trials on a terminal")
    heartbeat_interval: int = option(60, "seconds between heartbeats of a running trial", min=1)
    grace_period: int = option(0, "seconds without heartbeat until a trial is dead (0 = 2x)", min=0)
    max_retry: int = option(3, "times a dead worker's trial is run again", min=0)
    experiment_name: str = option("al", "MLflow experiment (when not set by mlflow run)")
