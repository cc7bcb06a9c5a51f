"""Stopping rules: small objects built from the campaign config.

Every rule says whether to stop after a completed round (:meth:`StoppingRule.check`); the
budgets also say what is left of them (:meth:`StoppingRule.remaining`), so that the
campaign never asks for more than that: the budgets are hard caps, not checks after the
fact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from al.registry import Registry

#: slack for float cost sums (0.1 + 0.2 labels must fit a budget of 0.3)
COST_SLACK = 1e-9


@dataclass
class CampaignProgress:
    """What the rules look at after each completed round.

    ``val_mae_history`` holds the validation MAE (eV) of each round's fit, one per round;
    the test set is for reporting only and no rule reads it.
    """

    round: int
    n_labelled: int
    n_requested: int
    cost_spent: float
    val_mae_history: list[float] = field(default_factory=list)
    pool_left: int = 1


@dataclass(frozen=True)
class Allowance:
    """What is left of the budgets: label requests and cost (``inf``: no budget)."""

    labels: float = math.inf
    cost: float = math.inf

    def count(self, cost_each: float, labels_each: int = 1) -> float:
        """How many items fit, each ``labels_each`` requests costing ``cost_each`` in all
        (``inf``: any number; 0 when the budgets are spent)."""
        n = self.labels / labels_each
        if cost_each > 0:
            n = min(n, self.cost / cost_each + COST_SLACK)
        return max(0, math.floor(n)) if math.isfinite(n) else math.inf

    def __and__(self, other: Allowance) -> Allowance:
        """The tighter of two allowances."""
        return Allowance(min(self.labels, other.labels), min(self.cost, other.cost))


#: no budget at all
UNLIMITED = Allowance()


def affordable(
    unpaid: Tensor, left: Allowance, each: float, cheapest: float, generator: torch.Generator
) -> Tensor:
    """Which of ``n`` molecules to score when scoring charges ``each`` for every ``unpaid``
    one (``[n]`` bool; a Δ-learning baseline): all, when that leaves room in the cost
    budget for one more label (``cheapest`` + ``each``); else every paid one and a seeded
    random share of the unpaid ones that fits. ``[n]`` bool."""
    keep = torch.ones_like(unpaid, dtype=torch.bool)
    if each <= 0 or not math.isfinite(left.cost):
        return keep
    fits = max(0, math.floor((left.cost - cheapest - each) / each + COST_SLACK))
    new = torch.nonzero(unpaid).flatten()
    if new.numel() <= fits:
        return keep
    keep[new] = False
    keep[new[torch.randperm(new.numel(), generator=generator)[:fits]]] = True
    return keep


class StoppingRule:
    def check(self, progress: CampaignProgress) -> str | None:  # pragma: no cover
        """A reason to stop, or None to go on."""
        raise NotImplementedError

    def remaining(self, progress: CampaignProgress) -> Allowance:
        """What this rule still allows to be spent (no limit unless it is a budget)."""
        return UNLIMITED


#: Registry: config key -> rule class (a value of 0 switches the rule off); each rule
#: registers itself under its key below.
STOPPING_RULES: Registry[type[StoppingRule]] = Registry("stopping rule")


@STOPPING_RULES.register("rounds")
@dataclass
class MaxRounds(StoppingRule):
    """``rounds`` acquisition rounds are done."""

    rounds: int

    def check(self, p: CampaignProgress) -> str | None:
        return f"rounds: {p.round} of {self.rounds} done" if p.round >= self.rounds else None


@STOPPING_RULES.register("budget_labels")
@dataclass
class LabelBudget(StoppingRule):
    """``labels`` labels were asked for (a hard cap)."""

    labels: int

    def check(self, p: CampaignProgress) -> str | None:
        if p.n_requested >= self.labels:
            return f"label budget: {p.n_requested} of {self.labels} spent"
        return None

    def remaining(self, p: CampaignProgress) -> Allowance:
        return Allowance(labels=max(0, self.labels - p.n_requested))


@STOPPING_RULES.register("budget_cost")
@dataclass
class CostBudget(StoppingRule):
    """``cost`` was spent on labels and baselines (a hard cap)."""

    cost: float

    def check(self, p: CampaignProgress) -> str | None:
        if p.cost_spent >= self.cost:
            return f"cost budget: {p.cost_spent:g} of {self.cost:g} spent"
        return None

    def remaining(self, p: CampaignProgress) -> Allowance:
        return Allowance(cost=max(0.0, self.cost - p.cost_spent))


@STOPPING_RULES.register("target_mae")
@dataclass
class TargetMAE(StoppingRule):
    """The last round's validation MAE is at most ``mae`` eV."""

    mae: float

    def check(self, p: CampaignProgress) -> str | None:
        if p.val_mae_history and p.val_mae_history[-1] <= self.mae:
            return f"target MAE: validation MAE {p.val_mae_history[-1]:.4f} <= {self.mae} eV"
        return None


@STOPPING_RULES.register("plateau_rounds")
@dataclass
class Plateau(StoppingRule):
    """No new best validation MAE (by more than ``min_delta`` eV) in the last ``rounds``
    rounds. Rounds without a validation MAE (NaN: no validation set) are left out."""

    rounds: int
    min_delta: float = 0.0

    def check(self, p: CampaignProgress) -> str | None:
        h = [v for v in p.val_mae_history if math.isfinite(v)]
        if len(h) <= self.rounds:
            return None
        best_before = min(h[: -self.rounds])
        if min(h[-self.rounds :]) > best_before - self.min_delta:
            return f"plateau: no improvement in {self.rounds} rounds"
        return None


@dataclass
class PoolExhausted(StoppingRule):
    def check(self, p: CampaignProgress) -> str | None:
        return "pool exhausted" if p.pool_left <= 0 else None


def build_rules(settings: dict[str, float]) -> list[StoppingRule]:
    """Rules for every non-zero setting, plus the pool running out."""
    rules: list[StoppingRule] = [
        STOPPING_RULES.get(key)(value) for key, value in settings.items() if value
    ]
    return [*rules, PoolExhausted()]


def remaining(rules: list[StoppingRule], progress: CampaignProgress) -> Allowance:
    """What is left of every budget among ``rules`` after ``progress``."""
    left = UNLIMITED
    for rule in rules:
        left = left & rule.remaining(progress)
    return left


def first_reason(rules: list[StoppingRule], progress: CampaignProgress) -> str | None:
    """The first rule's reason to stop, or None to go on."""
    for rule in rules:
        reason = rule.check(progress)
        if reason:
            return reason
    return None
