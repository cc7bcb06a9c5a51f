"""The ``al_loop`` entry point's settings: one active-learning campaign."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import ClassVar

from al.acquisition import ACQUISITIONS, MF_ACQUISITIONS, STRATEGIES
from al.baselines import baseline_choices, baseline_spec_problem
from al.config import ConfigError, option
from al.data.config import DataConfig
from al.loop.stopping import STOPPING_RULES
from al.models.config import ModelConfig
from al.oracles import oracle_choices, oracle_spec_problem
from al.tracking.registry import register_as_problem
from al.training.config import FitConfig
from al.uncertainty import UNCERTAINTIES


def oracle_list_problem(value: str) -> str | None:
    """The first unknown oracle of a comma-separated list, or None."""
    for spec in (o.strip() for o in value.split(",") if o.strip()):
        problem = oracle_spec_problem(spec)
        if problem:
            return problem
    return None


def baseline_cost_problem(value: float) -> str | None:
    """None for a cost per molecule >= 0 or the sentinel -1 (the baseline's default)."""
    if value == -1 or value >= 0:
        return None
    return f"{value!r} is not a cost per molecule; expected a number >= 0, or -1 for its default"


def parse_checkpoints(value: str) -> list[int]:
    """The label counts of ``checkpoints`` (``"2000, 3000"``), sorted (none for ``all``,
    every round); ValueError if any is not a whole number > 0."""
    if value.strip().lower() == "all":
        return []
    out = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        if not part.isdigit() or int(part) <= 0:
            raise ValueError(
                f"{value!r} is not a list of label counts; expected whole numbers > 0 "
                "separated by commas, e.g. 2000,3000"
            )
        out.append(int(part))
    return sorted(set(out))


def checkpoints_problem(value: str) -> str | None:
    """None for a valid ``checkpoints`` value, else why not."""
    try:
        parse_checkpoints(value)
    except ValueError as err:
        return str(err)
    return None


def label_timeout_problem(value: float) -> str | None:
    """None for a limit in seconds > 0 or the sentinel -1 (the oracle's default), else why."""
    if value == -1 or (math.isfinite(value) and value > 0):
        return None
    return f"{value!r} is not a time limit; expected seconds > 0, or -1 for the oracle's default"


def oracle_cost_problem(value: float) -> str | None:
    """None for a cost per label > 0 or the sentinel -1 (the oracle's default), else why."""
    if value == -1 or value > 0:
        return None
    return (
        f"{value!r} is not a cost per label; expected a number > 0, or -1 for the oracle's default"
    )


@dataclass
class PoolKeys:
    """A campaign on a pool of one's own molecules (``al pool create``): which pool, its
    held-out set, and what its labels are."""

    pool: str = option(
        "", "a pool of one's own molecules (al pool create NAME FILE) instead of QM9; with no "
        "ground truth, the figures are measured on held-out labelled molecules (heldout_size)",
        group="pool",
    )  # fmt: skip
    heldout_size: int = option(
        100, "pool campaigns: random pool molecules labelled in round 0 at the target "
        "fidelity, paid like any label and never trained on, on which every figure is "
        "measured (the test set of a campaign without ground truth)", min=1, group="pool",
    )  # fmt: skip
    target: str = option(
        "H298 atomization enthalpy", "what the labels are (a pool campaign's own scalar, "
        "from an external labeller), as its batches, runs and figures say", group="pool",
    )  # fmt: skip
    unit: str = option(
        "eV", "the labels' unit; the labellers computed here (xtb, ani1x, pyscf, models) "
        "give eV, another unit needs oracle=external", group="pool",
    )  # fmt: skip


@dataclass
class CampaignConfig(ModelConfig, FitConfig, DataConfig, PoolKeys):
    """The ``al_loop`` entry point: one active-learning campaign.

    ``strategy`` names a preset (uncertainty method + acquisition function, see
    :mod:`al.strategies`); ``uncertainty`` and ``acquisition`` override its parts.
    """

    strategy: str = option(
        "ensemble",
        "preset: uncertainty method + acquisition",
        choices=tuple(STRATEGIES),
        group="acquisition",
    )
    acquisition: str = option(
        "",
        "acquisition function (overrides the strategy's)",
        choices=("", *ACQUISITIONS),
        group="acquisition",
        default_text="the strategy's",
    )
    uncertainty: str = option(
        "",
        "uncertainty method (overrides the strategy's)",
        choices=("", *UNCERTAINTIES),
        group="surrogate",
        default_text="the strategy's",
    )
    oracle: str = option(
        "dft", f"labeller: {', '.join(oracle_choices())}", check=oracle_spec_problem, group="oracle"
    )
    batch_dir: str = option(
        "batches", "oracle=external: the folder a round's batch to label is written to (a "
        "subfolder per campaign run), as well as onto the run", group="oracle",
    )  # fmt: skip
    oracle_cost: float = option(
        -1.0,
        "cost per label, > 0 (-1: the oracle's default)",
        check=oracle_cost_problem,
        group="oracle",
    )
    label_timeout_s: float = option(
        -1.0, "wall-clock limit in seconds of one label computed live (pyscf); a molecule "
        "over it is recorded as 'timeout' (-1: the oracle's default, one hour)",
        check=label_timeout_problem, group="oracle",
    )  # fmt: skip
    oracles: str = option(
        "", "several labellers, cheapest first, comma-separated (e.g. xtb,dft): multi-fidelity",
        check=oracle_list_problem, group="oracle",
    )  # fmt: skip
    costs: str = option(
        "", "cost per label of each of oracles, e.g. 0.01,1.0 (empty: defaults)", group="oracle"
    )
    baseline: str = option(
        "none", "Δ-learning: the surrogate learns target - baseline, every prediction adds it "
        f"back: {', '.join(baseline_choices())}", check=baseline_spec_problem, group="surrogate",
    )  # fmt: skip
    baseline_cost: float = option(
        -1.0, "cost per molecule of the baseline, >= 0 (-1: its default)",
        check=baseline_cost_problem, group="surrogate",
    )  # fmt: skip
    mf_acquisition: str = option(
        "variance_reduction", "multi-fidelity: how (molecule, fidelity) pairs are chosen",
        choices=tuple(MF_ACQUISITIONS), group="acquisition",
    )  # fmt: skip
    round_cost: float = option(
        0.0,
        "multi-fidelity: cost per round (0 = batch_size x the last oracle's cost)",
        min=0.0,
        group="oracle",
    )
    cheap_share: float = option(
        0.5, "multi-fidelity cheap_first: share of a round's cost for the cheap oracle",
        min=0.0, max=1.0, group="oracle",
    )  # fmt: skip
    initial_size: int = option(1000, "random labels in round 0", min=1, group="budget and stopping")
    batch_size: int = option(100, "labels asked for per round", min=1, group="budget and stopping")
    rounds: int = option(
        3, "acquisition rounds after round 0 (0 = no limit)", min=0, group="budget and stopping"
    )
    budget_labels: int = option(
        0, "label requests at most, initial set included; rounds are clipped to it (0 = none)",
        min=0, group="budget and stopping",
    )  # fmt: skip
    budget_cost: float = option(
        0.0,
        "cost at most, initial set included; rounds are clipped to it (0 = none)",
        min=0.0,
        group="budget and stopping",
    )
    target_mae: float = option(
        0.0,
        "stop when the round's validation MAE (eV) is at most this (0 = none)",
        min=0.0,
        group="budget and stopping",
    )
    plateau_rounds: int = option(
        0,
        "stop after this many rounds without a better validation MAE (0 = off)",
        min=0,
        group="budget and stopping",
    )
    epochs: int = option(40, "maximum epochs per round's fit", min=1, group="training")
    patience: int = option(
        10, "early stopping: validations without improvement", min=1, group="training"
    )
    min_steps: int = option(
        600, "optimizer steps a fit from scratch gets at least, whatever the labelled-set "
        "size (a warm fit: warm_fraction of them); early stopping waits for them too", min=0,
        group="training",
    )  # fmt: skip
    val_min: int = option(
        100, "val_size=0 only: validation floor in molecules, at least this many labels are "
        "held out each round, at most val_max_fraction of them (0 = off)", min=0, group="training",
    )  # fmt: skip
    val_size: int = option(
        500, "validation set: random pool molecules labelled in round 0 at the target "
        "fidelity, paid like any label and never trained on; they drive early stopping, the "
        "kept weights, std_scale and the stopping rules (0 = the older per-round split of "
        "the labelled set, val_fraction of it, which validates on molecules that earlier "
        "rounds trained on)", min=0, group="training",
    )  # fmt: skip
    checkpoints: str = option(
        "", "label counts (comma-separated, e.g. 2000,3000), or all (every round), at which "
        "the labelled set is also refitted from scratch to convergence (converged_steps) "
        "and evaluated, beside the campaign's own fit", check=checkpoints_problem, group="training",
    )  # fmt: skip
    converged_steps: int = option(
        10000, "checkpoints: optimizer steps of a converged refit, all of them run, the best "
        "validation weights kept", min=1, group="training",
    )  # fmt: skip
    warm_start: bool = option(
        True,
        "a round's fit continues from the previous round's weights (shorter schedule)",
        group="training",
    )
    warm_fraction: float = option(
        0.3,
        "a warm fit's steps as a share of a fit from scratch's",
        min=0.01,
        max=1.0,
        group="training",
    )
    final_refit: bool = option(
        False,
        "after warm starts, refit the last round from scratch for the final model",
        group="training",
    )
    final_refit_steps: int = option(
        0, "final_refit: optimizer steps of the refit, all of them run (no early stopping; "
        "the best validation weights are kept); 0 = a fit from scratch's budget", min=0,
        group="training",
    )  # fmt: skip
    final_refit_warm: bool = option(
        False, "final_refit: continue from the warm chain's weights with a fresh schedule of "
        "final_refit_steps (a warm re-anneal) instead of starting from scratch",
        group="training",
    )  # fmt: skip
    ensemble_size: int = option(
        5, "deep-ensemble members (shallow: heads)", min=2, group="surrogate"
    )
    bootstrap: bool = option(False, "Poisson bootstrap per ensemble member", group="surrogate")
    mc_samples: int = option(20, "MC-dropout passes", min=2, group="surrogate")
    pool_subsample: int = option(
        5000, "pool molecules scored per round (0 = whole pool)", min=0, group="acquisition"
    )
    train_batch_size: int = option(64, "molecules per training batch", min=1, group="training")
    stream_chunk: int = option(
        2000, "stream scheme: pool molecules arriving per round", min=1, group="acquisition"
    )
    retrain_fraction: float = option(
        0.2,
        "stream scheme: retrain once the labelled set grew by this fraction",
        min=0.0,
        group="acquisition",
    )
    resume: str = option("", "run id of a campaign to continue", group="tracking and run")
    journal_lost: bool = option(
        False, "resume without the campaign's label journal (lost with its machine): labels "
        "paid after its last recorded round are bought again", group="tracking and run",
    )  # fmt: skip
    experiment_name: str = option(
        "al", "MLflow experiment (when not set by mlflow run)", group="tracking and run"
    )
    register_as: str = option(
        "", "register the final model in the model registry under this name, or name@alias "
        "to point an alias at it too ('' = not registered)", check=register_as_problem,
        group="tracking and run",
    )  # fmt: skip
    surrogate_config: str = option(
        "",
        "YAML of model and fit settings (e.g. runs:/<id>/best_params.yaml), below config",
        group="tracking and run",
    )

    #: Surrogate-config keys that have another name here (``batch_size`` counts labels).
    SURROGATE_RENAMES: ClassVar[dict[str, str]] = {"batch_size": "train_batch_size"}

    def label_timeout(self) -> float | None:
        """The wall-clock limit of one live label in seconds; None: the oracle's default."""
        return None if self.label_timeout_s == -1 else self.label_timeout_s

    def fidelities(self) -> list[tuple[str, float | None]]:
        """The labellers as ``(spec, cost or None for the default)``, cheapest first.

        One entry unless ``oracles`` names several (a multi-fidelity campaign).
        """
        specs = [o.strip() for o in self.oracles.split(",") if o.strip()] if self.oracles else []
        if not specs:
            if self.costs:
                raise ConfigError("config key 'costs' is given without 'oracles'")
            return [(self.oracle, self.oracle_cost if self.oracle_cost >= 0 else None)]
        if len(set(specs)) != len(specs):
            raise ConfigError(f"config key 'oracles': {self.oracles!r} names an oracle twice")
        if not self.costs:
            return [(spec, None) for spec in specs]
        try:
            costs = [float(c) for c in self.costs.split(",")]
        except ValueError:
            raise ConfigError(
                f"config key 'costs': {self.costs!r} is not a comma-separated list of numbers"
            ) from None
        if len(costs) != len(specs):
            raise ConfigError(
                f"config key 'costs': {len(costs)} cost(s) for {len(specs)} oracle(s) "
                f"({self.oracles}); give one per oracle, in the same order"
            )
        if any(not c > 0 for c in costs):
            raise ConfigError(f"config key 'costs': every cost must be > 0, got {self.costs!r}")
        if any(b < a for a, b in itertools.pairwise(costs)):
            raise ConfigError(
                f"config key 'costs': {self.costs!r} is not cheapest first; give the oracles "
                "and their costs from the cheapest to the target (the last one)"
            )
        return list(zip(specs, costs, strict=True))

    def fit_config(self) -> FitConfig:
        """The settings of every fit; with a validation set (``val_size``) no fit moves
        training rows into validation (``val_min`` off)."""
        values = {f.name: getattr(self, f.name) for f in fields(FitConfig)}
        values["batch_size"] = self.train_batch_size
        if self.val_size > 0:
            values["val_min"] = 0
        return FitConfig(**values)

    def stopping_settings(self) -> dict[str, float]:
        """The values of the stopping-rule keys (:data:`al.loop.stopping.STOPPING_RULES`)."""
        return {key: getattr(self, key) for key in STOPPING_RULES}


@dataclass(frozen=True)
class LoopSettings:
    """The settings the loop (:class:`al.loop.campaign.Campaign`) reads, and only those:
    :meth:`of` takes them from a :class:`CampaignConfig`, whose keys they share.

    Attributes:
        seed: the campaign seed (the validation set, the initial rows, per-round splits).
        rounds: acquisition rounds after round 0 (0: no limit), for the progress bar.
        progress: show the progress bar on a terminal.
        initial_size, val_size, val_fraction: round 0's sizes, and the per-round
            validation share when there is no validation set (``val_size=0``).
        warm_start, warm_fraction: a round's fit continues from the last weights, on that
            share of a fit from scratch's schedule.
        final_refit, final_refit_steps, final_refit_warm: refit the last round at the end,
            from scratch or from the warm chain's weights.
        checkpoints, converged_steps: the converged refits (``checkpoints`` as in the config).
        budget_labels, budget_cost: the budgets, named in round 0's error lines.
        pool: a pool campaign's pool ('' for QM9): its test set is bought in round 0 (the
            held-out labelled molecules) instead of read from a ground-truth table.
        unit, target: a pool campaign's labels' unit and name, as its figures say them.
    """

    seed: int
    rounds: int
    progress: bool
    initial_size: int
    val_size: int
    val_fraction: float
    warm_start: bool
    warm_fraction: float
    final_refit: bool
    final_refit_steps: int
    final_refit_warm: bool
    checkpoints: str
    converged_steps: int
    budget_labels: int
    budget_cost: float
    pool: str = ""
    unit: str = "eV"
    target: str = "H298 atomization enthalpy"

    @classmethod
    def of(cls, config: CampaignConfig | LoopSettings) -> LoopSettings:
        """The loop's settings of ``config`` (settings are returned as they are)."""
        if isinstance(config, LoopSettings):
            return config
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def checkpoint_counts(self) -> list[int]:
        """The converged checkpoints' label counts, sorted (none when not set, or ``all``)."""
        return parse_checkpoints(self.checkpoints)

    @property
    def checkpoint_every_round(self) -> bool:
        """``checkpoints=all``: a converged refit after every round (multi-fidelity campaigns,
        read at equal cost rather than at label counts)."""
        return self.checkpoints.strip().lower() == "all"

    @property
    def warm_share(self) -> float:
        """The share of a full schedule a round's fit gets when it continues from the last
        round's weights (``warm_fraction``), or 0: from scratch."""
        return self.warm_fraction if self.warm_start else 0.0
