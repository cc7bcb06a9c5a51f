import pytest

from al.loop.stopping import (
    STOPPING_RULES,
    CampaignProgress,
    Plateau,
    PoolExhausted,
    build_rules,
    first_reason,
)


def progress(**kw) -> CampaignProgress:
    base = dict(round=1, n_labelled=100, n_requested=100, cost_spent=1.0, test_mae_history=[1.0])
    return CampaignProgress(**{**base, **kw})


@pytest.mark.parametrize(
    ("key", "value", "stops", "goes_on"),
    [
        ("rounds", 3, progress(round=3), progress(round=2)),
        ("budget_labels", 120, progress(n_requested=120), progress(n_requested=119)),
        ("budget_cost", 5.0, progress(cost_spent=5.0), progress(cost_spent=4.99)),
        ("target_mae", 0.1, progress(test_mae_history=[0.3, 0.1]),
         progress(test_mae_history=[0.11])),
        ("plateau_rounds", 2, progress(test_mae_history=[0.5, 0.6, 0.7]),
         progress(test_mae_history=[0.5, 0.6, 0.4])),
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
    assert Plateau(3).check(progress(test_mae_history=[1.0, 1.0, 1.0])) is None
