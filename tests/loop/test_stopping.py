import math

import pytest
import torch

from al.config import subset
from al.data.splits import SplitConfig, make_splits
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig
from al.loop.schemes import build_scheme
from al.loop.selection import build_selection
from al.loop.stopping import (
    STOPPING_RULES,
    Allowance,
    CampaignProgress,
    Plateau,
    PoolExhausted,
    TargetMAE,
    build_rules,
    first_reason,
    remaining,
)
from al.loop.tracker import MemoryTracker
from al.models.config import ModelConfig
from al.oracles import build_oracle
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.uncertainty import build_surrogate


def progress(**kw) -> CampaignProgress:
    base = dict(round=1, n_labelled=100, n_requested=100, cost_spent=1.0, val_mae_history=[1.0])
    return CampaignProgress(**{**base, **kw})


@pytest.mark.parametrize(
    ("key", "value", "stops", "goes_on"),
    [
        ("rounds", 3, progress(round=3), progress(round=2)),
        ("budget_labels", 120, progress(n_requested=120), progress(n_requested=119)),
        ("budget_cost", 5.0, progress(cost_spent=5.0), progress(cost_spent=4.99)),
        ("target_mae", 0.1, progress(val_mae_history=[0.3, 0.1]),
         progress(val_mae_history=[0.11])),
        ("plateau_rounds", 2, progress(val_mae_history=[0.5, 0.6, 0.7]),
         progress(val_mae_history=[0.5, 0.6, 0.4])),
    ],
)  # fmt: skip
def test_every_rule(key: str, value: float, stops: CampaignProgress, goes_on: CampaignProgress):
    rule = STOPPING_RULES[key](value)
    assert rule.check(stops)
    assert rule.check(goes_on) is None


def test_build_rules_skips_zero_settings_and_adds_pool_exhausted() -> None:
    rules = build_rules({"rounds": 0, "budget_labels": 10, "target_mae": 0.0})
    assert [type(r).__name__ for r in rules] == ["LabelBudget", "PoolExhausted"]
    assert first_reason(rules, progress(n_requested=5)) is None
    assert "label budget" in first_reason(rules, progress(n_requested=10))
    assert first_reason([PoolExhausted()], progress(pool_left=0)) == "pool exhausted"


def test_plateau_needs_enough_history() -> None:
    assert Plateau(3).check(progress(val_mae_history=[1.0, 1.0, 1.0])) is None


def test_mae_rules_read_validation_not_test() -> None:
    # the validation MAE is what counts; there is no test MAE in the progress at all
    assert not hasattr(CampaignProgress(1, 1, 1, 0.0), "test_mae_history")
    assert TargetMAE(0.1).check(progress(val_mae_history=[0.5, 0.2])) is None
    assert "validation MAE 0.0900" in TargetMAE(0.1).check(progress(val_mae_history=[0.09]))
    # no validation set: NaN never reaches a target and never counts as a plateau
    assert TargetMAE(0.1).check(progress(val_mae_history=[math.nan])) is None
    assert Plateau(1).check(progress(val_mae_history=[0.5, math.nan])) is None
    assert Plateau(1).check(progress(val_mae_history=[0.5, math.nan, 0.6]))


def test_budgets_say_what_is_left() -> None:
    rules = build_rules({"budget_labels": 50, "budget_cost": 30.0, "rounds": 3})
    left = remaining(rules, progress(n_requested=40, cost_spent=25.0))
    assert left == Allowance(labels=10, cost=5.0)
    assert left.count(1.0) == 5 and left.count(0.0) == 10 and left.count(2.0, 2) == 2
    assert left.count(6.0) == 0
    assert remaining(rules, progress(n_requested=60, cost_spent=31.0)) == Allowance(0, 0.0)
    assert remaining([PoolExhausted()], progress()).count(1.0) == math.inf
    # float sums: three labels of 0.1 fit a budget of 0.3
    assert Allowance(cost=0.3).count(0.1) == 3


def test_campaign_logs_val_mae_and_stops_on_it_not_on_test(qm9, tmp_path) -> None:
    """Round 0's validation MAE (set to 99 eV) is above the target although its test MAE is
    below it: the campaign goes on; round 1's (0.01 eV) stops it."""
    cfg = CampaignConfig(
        initial_size=30, batch_size=10, rounds=3, target_mae=50.0, hidden=16,
        n_interactions=1, epochs=1, min_steps=0, val_min=0, val_size=20, ensemble_size=2,
        pool_subsample=100, n_test=50, progress=False, train_batch_size=32,
    )  # fmt: skip
    splits = make_splits(qm9.qm9_index.numpy(), SplitConfig(cfg.split_seed, cfg.n_test))
    surrogate = build_surrogate("ensemble", subset(ModelConfig, cfg), cfg.fit_config(),
                                torch.device("cpu"), ensemble_size=2)  # fmt: skip
    val_maes = iter([99.0, 0.01])
    fit = surrogate.fit

    def fit_with_known_val_mae(*args, **kwargs):
        result = fit(*args, **kwargs)
        result.history[result.best_epoch].val_mae = next(val_maes)
        return result

    surrogate.fit = fit_with_known_val_mae
    oracles = [build_oracle("dft", data=qm9)]
    tracker = MemoryTracker(tmp_path)
    campaign = Campaign(
        cfg, qm9, splits, surrogate, oracles, build_rules(cfg.stopping_settings()),
        scheme=build_scheme("pool", cfg),
        selection=build_selection(qm9, oracles, cfg, "max_std", surrogate), tracker=tracker,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reason = campaign.execute()
    finally:
        torch.set_num_threads(threads)
    assert reason == "target MAE: validation MAE 0.0100 <= 50.0 eV"
    assert tracker.metric_history(CM.VAL_MAE) == [99.0, 0.01]
    assert tracker.metric_history(CM.TEST_MAE)[0] < 50.0  # the test set would have stopped it
    assert campaign.progress(1).val_mae_history == [99.0, 0.01]
