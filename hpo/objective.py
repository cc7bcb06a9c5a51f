"""The objective: train one surrogate with a trial's settings; best validation MAE (eV).

All trials of a study train on the same labelled set (``train_size`` random pool
molecules, split into training and validation by ``val_fraction``), so they differ only
in their settings. The validation MAE of every epoch is reported to Optuna, which may
prune the trial; every trial is one MLflow run nested under the study's run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any

import mlflow
import optuna
import torch
from torch import Tensor

from al import tracking
from al.config import build_config, subset
from al.data.config import DataConfig
from al.data.molecules import MolecularData
from al.models import build_model, count_parameters
from al.models.config import ModelConfig
from al.tracking import Metrics
from al.training.config import FitConfig
from al.training.fit import EpochStats, fit, resolve_device
from al.training.split import split_validation
from hpo.config import HPOConfig
from hpo.space import SearchSpace

log = logging.getLogger(__name__)

#: Trial user attributes.
ATTR_CONFIG = "al.surrogate_config"
ATTR_RUN_ID = "al.mlflow_run_id"
ATTR_SURPLUS = "al.surplus"


class SurplusTrialError(Exception):
    """A trial started after the study's budget was already given to other trials."""


@dataclass
class LabelledSet:
    """The molecules every trial trains on: row indices into ``data``."""

    data: MolecularData
    train_rows: Tensor
    val_rows: Tensor


def labelled_set(config: HPOConfig) -> LabelledSet:
    """``train_size`` random pool molecules (seeded), split into training and validation
    (:func:`~al.training.split.split_validation`)."""
    from al.data.load import load_data

    data, splits = load_data(subset(DataConfig, config))
    pool = data.rows_of(splits.pool)
    if config.train_size > pool.numel():
        raise ValueError(f"train_size={config.train_size} exceeds the pool ({pool.numel()})")
    gen = torch.Generator().manual_seed(config.seed)
    chosen = pool[torch.randperm(pool.numel(), generator=gen)[: config.train_size]]
    split = FitConfig(val_fraction=config.val_fraction, seed=config.seed)  # as every trial's
    return LabelledSet(data, *split_validation(chosen, split))


def within_budget(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` is one of the study's ``n_trials``.

    Trial numbers are handed out atomically by the storage, so counting the live trials
    (finished, running or queued) numbered below this one gives every worker the same
    answer: two workers that start a trial at the same moment cannot both take the last.
    """
    live = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.WAITING,
    )
    before = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < number]
    return len(before) < n_trials


class Objective:
    """Callable for :meth:`optuna.Study.optimize`: fit, report each epoch, log a nested run.

    Args:
        config: the study's settings (fixed fit settings, budget).
        space: what each trial samples.
        labelled: the molecules all trials train on.
        parent_run_id: the study's MLflow run; each trial's run is nested under it.
        experiment_id: the experiment of the parent run.
    """

    def __init__(
        self,
        config: HPOConfig,
        space: SearchSpace,
        labelled: LabelledSet,
        parent_run_id: str,
        experiment_id: str,
    ) -> None:
        self.config, self.space, self.labelled = config, space, labelled
        self.parent_run_id, self.experiment_id = parent_run_id, experiment_id
        self.device = resolve_device(config.device)

    def fit_config(self, values: dict[str, Any]) -> FitConfig:
        c = self.config
        fixed = {
            "patience": c.patience, "val_fraction": c.val_fraction, "seed": c.seed,
            "device": c.device, "amp": c.amp, "compile": c.compile, "threads": c.threads,
            "progress": False,  # the study shows one bar of trials, not one per fit
        }  # fmt: skip
        keys = {f.name for f in fields(FitConfig)}
        return build_config(FitConfig, {**fixed, **{k: v for k, v in values.items() if k in keys}})

    def __call__(self, trial: optuna.Trial) -> float:
        if not within_budget(trial.study, trial.number, self.config.n_trials):
            trial.set_user_attr(ATTR_SURPLUS, True)
            raise SurplusTrialError(f"trial {trial.number}: the study already has its trials")
        values = self.space.sample(trial)
        trial.set_user_attr(ATTR_CONFIG, values)
        run = mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=tracking.trial_run_name(trial.number),
            nested=True,
            parent_run_id=self.parent_run_id,
            tags={
                tracking.TAG_KIND: tracking.KIND_TRIAL,
                tracking.TAG_STUDY: self.config.study_name,
                tracking.TAG_TRIAL_NUMBER: str(trial.number),
                tracking.TAG_MODEL: str(values["model"]),
                tracking.TAG_SEED: str(self.config.seed),
            },
        )
        run_id = run.info.run_id
        trial.set_user_attr(ATTR_RUN_ID, run_id)
        state, status = tracking.TRIAL_FAILED, "FAILED"
        try:
            value = self._train(trial, run_id, values)
            if not math.isfinite(value):
                return math.nan  # diverged: Optuna records the trial as failed
            state, status = tracking.TRIAL_COMPLETE, "FINISHED"
            return value
        except optuna.TrialPruned:
            state, status = tracking.TRIAL_PRUNED, "FINISHED"
            raise
        finally:
            mlflow.set_tag(tracking.TAG_TRIAL_STATE, state)
            mlflow.end_run(status)

    def _train(self, trial: optuna.Trial, run_id: str, values: dict[str, Any]) -> float:
        model_keys = {f.name for f in fields(ModelConfig)}
        model_config = build_config(ModelConfig, {k: values[k] for k in model_keys if k in values})
        fit_config = self.fit_config(values)
        tracking.log_params({**values, "trial_number": trial.number}, run_id=run_id)
        model = build_model(model_config.model, **model_config.model_kwargs()).to(self.device)
        tracking.log_metrics({Metrics.N_PARAMETERS: count_parameters(model)}, step=0, run_id=run_id)
        logger = tracking.EpochLogger(run_id)
        best = math.inf

        def on_epoch(stats: EpochStats) -> None:
            nonlocal best
            logger(stats)
            if not math.isfinite(stats.val_mae):
                return
            best = min(best, stats.val_mae)
            trial.report(stats.val_mae, stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {stats.epoch}: val MAE {stats.val_mae:.4f} eV")

        lab = self.labelled
        try:
            result = fit(model, lab.data, lab.train_rows, lab.val_rows, fit_config, on_epoch)
            best = result.best_val_mae
        finally:
            logger.flush()
            tracking.log_metrics(
                {Metrics.BEST_VAL_MAE: best}, step=self.config.train_size, run_id=run_id
            )
        log.info(
            "event=trial_done trial=%d val_mae=%.4f epochs=%d seconds=%.1f",
            trial.number, best, len(result.history), result.seconds,
        )  # fmt: skip
        tracking.log_metrics(
            {Metrics.BEST_EPOCH: result.best_epoch, Metrics.FIT_SECONDS: result.seconds},
            step=self.config.train_size, run_id=run_id,
        )  # fmt: skip
        return best
