"""Stopping rules: small objects with one method, built from the campaign config."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CampaignProgress:
    """What the rules look at after each completed round."""

    round: int
    n_labelled: int
    n_requested: int
    cost_spent: float
    test_mae_history: list[float] = field(default_factory=list)
    pool_left: int = 1


class StoppingRule:
    def check(self, progress: CampaignProgress) -> str | None:  # pragma: no cover
        """A reason to stop, or None to go on."""
        raise NotImplementedError


@dataclass
class MaxRounds(StoppingRule):
    rounds: int

    def check(self, p: CampaignProgress) -> str | None:
        return f"rounds: {p.round} of {self.rounds} done" if p.round >= self.rounds else None


@dataclass
class LabelBudget(StoppingRule):
    labels: int

    def check(self, p: CampaignProgress) -> str | None:
        if p.n_requested >= self.labels:
            return f"label budget: {p.n_requested} of {self.labels} spent"
        return None


@dataclass
class CostBudget(StoppingRule):
    cost: float

    def check(self, p: CampaignProgress) -> str | None:
        if p.cost_spent >= self.cost:
            return f"cost budget: {p.cost_spent:g} of {self.cost:g} spent"
        return None


@dataclass
class TargetMAE(StoppingRule):
    mae: float

    def check(self, p: CampaignProgress) -> str | None:
        if p.test_mae_history and p.test_mae_history[-1] <= self.mae:
            return f"target MAE: {p.test_mae_history[-1]:.4f} <= {self.mae} eV"
        return None


@dataclass
class Plateau(StoppingRule):
    """No new best test MAE (by more than ``min_delta`` eV) in the last ``rounds`` rounds."""

    rounds: int
    min_delta: float = 0.0

    def check(self, p: CampaignProgress) -> str | None:
        h = p.test_mae_history
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


#: Registry: config key -> rule class (a value of 0 switches the rule off).
STOPPING_RULES: dict[str, type[StoppingRule]] = {
    "rounds": MaxRounds,
    "budget_labels": LabelBudget,
    "budget_cost": CostBudget,
    "target_mae": TargetMAE,
    "plateau_rounds": Plateau,
}


def build_rules(settings: dict[str, float]) -> list[StoppingRule]:
    """Rules for every non-zero setting, plus the pool running out."""
    rules: list[StoppingRule] = [
        STOPPING_RULES[key](value) for key, value in settings.items() if value
    ]
    return [*rules, PoolExhausted()]


def first_reason(rules: list[StoppingRule], progress: CampaignProgress) -> str | None:
    for rule in rules:
        reason = rule.check(progress)
        if reason:
            return reason
    return None
