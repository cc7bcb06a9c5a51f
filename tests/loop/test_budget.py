"""Budgets are hard caps: tiny campaigns (recorded by :class:`MemoryTracker`) never spend
more labels or cost than ``budget_labels`` / ``budget_cost``, the initial set included, with
one oracle or two."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from al.config import ConfigError, subset
from al.data.splits import SplitConfig, make_splits
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig
from al.loop.schemes import build_scheme
from al.loop.selection import build_selection
from al.loop.stopping import build_rules
from al.loop.tracker import MemoryTracker
from al.models.config import ModelConfig
from al.oracles import Oracle, build_oracle
from al.uncertainty import build_surrogate

#: fits of a couple of optimizer steps: the budgets, not the model, are under test
TINY = dict(
    initial_size=40, batch_size=20, rounds=4, hidden=16, n_interactions=1, epochs=1,
    min_steps=0, val_min=0, val_size=0, warm_start=False, ensemble_size=2, pool_subsample=100,
    n_test=50, progress=False, train_batch_size=32,
)  # fmt: skip


class Cheap(Oracle):
    """A cheap fidelity: the ground truth shifted by 0.1 eV, cost 0.5 a label."""

    default_cost = 0.5

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = self.data.y.numpy().astype(np.float64)[rows] + 0.1
        return y, np.full(rows.size, "ok", dtype=object)


pytestmark = pytest.mark.usefixtures("one_thread")


def campaign(qm9, tmp_path, two_oracles: bool = False, **kw) -> tuple[Campaign, MemoryTracker]:
    """A tiny campaign on the dft oracle (cost ``oracle_cost``, default 1), or on
    ``Cheap`` (0.5) + dft (1.0) with ``two_oracles``."""
    cfg = CampaignConfig(**{**TINY, **kw})
    splits = make_splits(qm9.qm9_index.numpy(), SplitConfig(cfg.split_seed, cfg.n_test))
    dft = build_oracle("dft", data=qm9, cost=cfg.oracle_cost if cfg.oracle_cost >= 0 else None)
    oracles = [Cheap(qm9), dft] if two_oracles else [dft]
    surrogate = build_surrogate(
        "ensemble", subset(ModelConfig, cfg), cfg.fit_config(), torch.device("cpu"),
        ensemble_size=cfg.ensemble_size, n_outputs=len(oracles),
    )  # fmt: skip
    acquisition = cfg.mf_acquisition if two_oracles else "max_std"
    tracker = MemoryTracker(tmp_path)
    run = Campaign(
        cfg, qm9, splits, surrogate, oracles, build_rules(cfg.stopping_settings()),
        scheme=build_scheme("pool", cfg),
        selection=build_selection(qm9, oracles, cfg, acquisition, surrogate),
        tracker=tracker,
    )  # fmt: skip
    return run, tracker


def spent(tracker: MemoryTracker) -> pd.DataFrame:
    """Every request of the campaign (``QUERIED_COLUMNS``)."""
    return pd.concat([tracker.read_queried(r) for r in tracker.queried_rounds()])


@pytest.mark.parametrize(
    ("settings", "per_round", "reason"),
    [
        # 40 + 20 would be 60 of 50: the last round is clipped to the 10 left
        (dict(budget_labels=50), [40, 10], "label budget: 50 of 50 spent"),
        # cost 2 a label: 80 + 7 x 2 = 94 of 95, then not even one more label fits
        (dict(budget_cost=95.0, oracle_cost=2.0), [40, 7], "budget: nothing more fits"),
        # a budget below the initial set: the initial set is clipped, nothing follows
        (dict(budget_labels=25), [25], "label budget: 25 of 25 spent"),
        (dict(budget_cost=30.0), [30], "cost budget: 30 of 30 spent"),
    ],
)
def test_one_oracle_never_spends_past_the_budget(
    qm9, tmp_path, settings: dict, per_round: list[int], reason: str
) -> None:
    run, tracker = campaign(qm9, tmp_path, **settings)
    assert run.execute().startswith(reason)
    q = spent(tracker)
    assert q.groupby("round").size().tolist() == per_round
    assert len(q) <= settings.get("budget_labels", len(q))
    assert q["cost"].sum() <= settings.get("budget_cost", np.inf) + 1e-9
    assert tracker.metric_history("cost_spent")[-1] == pytest.approx(q["cost"].sum())


@pytest.mark.parametrize(
    ("settings", "per_round"),
    [
        # round 0: 40 molecules x (0.5 + 1.0) = 60; round 1 may spend 20, only 10 are left
        (dict(budget_cost=70.0), [80, 10]),
        # round 0: 80 requests; round 1 would buy 20 high labels, only 10 requests are left
        (dict(budget_labels=90), [80, 10]),
        # a budget below the initial set: 20 molecules at both fidelities cost 30
        (dict(budget_cost=30.0), [40]),
        # 25 molecules at both fidelities, then the one label left buys one high label
        (dict(budget_labels=51), [50, 1]),
    ],
)
def test_two_oracles_never_spend_past_the_budget(
    qm9, tmp_path, settings: dict, per_round: list[int]
) -> None:
    run, tracker = campaign(qm9, tmp_path, two_oracles=True, mf_acquisition="high_only", **settings)
    run.execute()
    q = spent(tracker)
    assert q.groupby("round").size().tolist() == per_round
    assert len(q) <= settings.get("budget_labels", len(q))
    assert q["cost"].sum() <= settings.get("budget_cost", np.inf) + 1e-9
    first = q[q["round"] == 0]
    assert first.groupby("oracle").size().tolist() == [per_round[0] // 2] * 2  # both fidelities


def test_two_oracles_round_cost_is_clipped_for_any_acquisition(qm9, tmp_path) -> None:
    run, tracker = campaign(
        qm9, tmp_path, two_oracles=True, mf_acquisition="cheap_first", budget_cost=66.0
    )
    run.execute()
    q = spent(tracker)
    assert q["cost"].sum() <= 66.0 + 1e-9 and q["round"].max() >= 1


def test_a_budget_that_pays_for_nothing_is_refused(qm9, tmp_path) -> None:
    run, tracker = campaign(qm9, tmp_path, two_oracles=True, budget_cost=1.0)
    with pytest.raises(ConfigError, match="pay for no initial molecule; expected at least 2"):
        run.execute()
    assert tracker.queried_rounds() == []  # nothing was paid for


def test_the_validation_set_is_paid_within_the_budgets(qm9, tmp_path) -> None:
    """The validation set is bought first, at the target fidelity, and counted; the initial
    set gets what is left; a budget below the validation set is refused before any label."""
    run, tracker = campaign(qm9, tmp_path / "a", val_size=10, budget_labels=45)
    assert run.execute().startswith("label budget: 45 of 45 spent")
    q = spent(tracker)
    assert q.groupby("role").size().to_dict() == {"train": 35, "validation": 10}
    assert tracker.metric_history("cost_spent") == [45.0]
    assert tracker.metric_history("n_labelled") == [35]

    run, tracker = campaign(qm9, tmp_path / "b", two_oracles=True, val_size=10, budget_cost=40.0)
    run.execute()
    q = spent(tracker)
    val = q[q["role"] == "validation"]
    assert len(val) == 10 and (val["oracle"] == "dft").all()  # the target fidelity only
    first = q[(q["round"] == 0) & (q["role"] == "train")]
    assert first.groupby("oracle").size().tolist() == [20, 20]  # (40 - 10) / 1.5 molecules

    run, tracker = campaign(qm9, tmp_path / "c", val_size=10, budget_labels=8)
    with pytest.raises(ConfigError, match="do not pay for the validation set"):
        run.execute()
    assert tracker.queried_rounds() == []  # nothing was paid for


def test_a_baseline_is_paid_within_the_cost_budget(qm9, tmp_path) -> None:
    """Δ-learning charges its baseline for every new molecule it scores or labels: the
    cost budget covers those charges too (the scored pool is cut to what is left), so
    cost_spent never passes it."""
    from al.baselines import ResidualSurrogate, XTBBaseline

    run, tracker = campaign(qm9, tmp_path, budget_cost=70.0, pool_subsample=100)
    baseline = XTBBaseline(cost=0.2)
    baseline.free(run.splits.test)
    run.surrogate = ResidualSurrogate(run.surrogate, baseline)
    run.selection.surrogate = run.surrogate
    run.execute()
    spent = tracker.metric_history("cost_spent")
    assert spent[-1] <= 70.0 + 1e-9 and len(spent) >= 2  # a round after round 0 ran
    assert tracker.metric_history("cost_baseline")[-1] > 0  # the baseline was charged
    assert spent == sorted(spent)
