"""The label journal, and campaigns killed by fault injection (no server: MemoryTracker).

A kill is an exception that is not an ``Exception`` (:class:`Killed`), raised from a wrapped
oracle or tracker method: nothing after that point runs, as with SIGKILL.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from al.config import subset
from al.data.splits import SplitConfig, make_splits
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig
from al.loop.journal import LabelJournal, journal_path
from al.loop.ledger import Labelled
from al.loop.records import learning_curve
from al.loop.schemes import build_scheme
from al.loop.selection import build_selection
from al.loop.stopping import build_rules
from al.loop.tracker import MemoryTracker
from al.models.config import ModelConfig
from al.oracles import NETWORK_CHUNK, build_oracle
from al.tracking import QUERIED_COLUMNS
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.uncertainty import build_surrogate

TINY = dict(
    initial_size=20, batch_size=8, rounds=2, hidden=8, n_interactions=1, filter_groups=4,
    epochs=1, min_steps=0, val_min=0, val_size=20, ensemble_size=2, pool_subsample=100, n_test=50,
    progress=False, train_batch_size=32,
)  # fmt: skip


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing catches it on its way out."""


pytestmark = pytest.mark.usefixtures("one_thread")


class Paying:
    """Wraps an oracle's ``label``: records every index paid for, and can kill the process
    at its ``kill_at``-th call."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at, self.inner = kill_at, None
        self.paid: list[int] = []
        self.calls = 0

    def __call__(self, qm9_index: np.ndarray, **kw):
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at:
            raise Killed
        self.paid += [int(i) for i in qm9_index]
        return self.inner(qm9_index, **kw)


def campaign(
    qm9, tracker: MemoryTracker, paying: Paying | None = None, chunk: int | None = None, **kw
) -> Campaign:
    cfg = CampaignConfig(**{**TINY, **kw})
    splits = make_splits(qm9.qm9_index.numpy(), SplitConfig(cfg.split_seed, cfg.n_test))
    surrogate = build_surrogate(
        "ensemble", subset(ModelConfig, cfg), cfg.fit_config(), torch.device("cpu"),
        ensemble_size=cfg.ensemble_size,
    )  # fmt: skip
    oracle = build_oracle("dft", data=qm9)
    if chunk is not None:  # asked as a network labeller is: a forward pass of `chunk` a call
        oracle.journal_chunk = chunk  # type: ignore[misc]
    if paying is not None:
        paying.inner = oracle.label
        oracle.label = paying  # type: ignore[method-assign]
    return Campaign(
        cfg, qm9, splits, surrogate, [oracle], build_rules(cfg.stopping_settings()),
        scheme=build_scheme("pool", cfg),
        selection=build_selection(qm9, [oracle], cfg, "max_std", surrogate),
        tracker=tracker,
    )  # fmt: skip


def recorded(tracker: MemoryTracker) -> pd.DataFrame:
    return pd.concat([tracker.read_queried(r) for r in tracker.queried_rounds()])


# --- the journal itself ----------------------------------------------------------------------
def test_journal_keeps_requests_and_paid_chunks(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AL_JOURNAL_DIR", str(tmp_path / "j"))
    assert journal_path("abc123") == tmp_path / "j" / "abc123.jsonl"
    assert journal_path("memory:/x/y").name == "memory__x_y.jsonl"
    journal = LabelJournal(journal_path("abc123"))
    assert journal.request(0) is None and len(journal.paid(0)) == 0
    request = pd.DataFrame({"qm9_index": [5, 7, 9], "fidelity": [0, 0, 0], "score": np.nan,
                            "pred_mean": [1.0, 2.0, 3.0], "pred_std": np.nan})  # fmt: skip
    journal.log_request(0, request)
    answers = pd.DataFrame({"qm9_index": [9, 5], "oracle": "dft", "label": [-1.5, np.nan],
                            "status": ["ok", "timeout"], "cost": [1.0, 1.0]})  # fmt: skip
    journal.log_labels(0, [2, 0], answers)
    with open(journal.path, "a") as fh:  # a record cut short by a kill
        fh.write('{"kind": "labels", "round": 0, "rows": [{"posi')
    stored = journal.request(0)
    assert stored is not None and stored["qm9_index"].tolist() == [5, 7, 9]
    assert stored["pred_mean"].tolist() == [1.0, 2.0, 3.0] and stored["score"].isna().all()
    paid = journal.paid(0)
    assert sorted(paid.index) == [0, 2] and paid.loc[2, "label"] == -1.5
    assert np.isnan(paid.loc[0, "label"]) and paid.loc[0, "status"] == "timeout"
    assert journal.requested_rounds() == [0]
    journal.log_request(0, request)  # a new request of the round: earlier answers are not its
    assert len(journal.paid(0)) == 0


def test_steps_per_round_counts_every_round() -> None:
    labelled = Labelled.empty()
    for r, statuses in enumerate((["ok", "ok"], ["timeout"], ["ok"])):
        labelled.add(pd.DataFrame({
            "qm9_index": range(10 * r, 10 * r + len(statuses)), "round": r, "oracle": "dft",
            "label": 1.0, "status": statuses, "cost": 1.0, "score": np.nan,
            "pred_mean": np.nan, "pred_std": np.nan, "role": "train", "label_std": np.nan,
        })[list(QUERIED_COLUMNS)])  # fmt: skip
    assert labelled.steps_per_round() == {0: 2, 1: 2, 2: 3}
    assert labelled.counts_per_round() == [2, 2, 3]  # a round of failures keeps its place
    labelled.add(pd.DataFrame({
        "qm9_index": [100, 101], "round": 0, "oracle": "dft", "label": 1.0, "status": "ok",
        "cost": 1.0, "role": "validation",
    }))  # fmt: skip
    assert labelled.steps_per_round() == {0: 2, 1: 2, 2: 3}  # validation labels: no step
    assert len(labelled.ok) == 3 and len(labelled.validation_ok) == 2
    assert labelled.cost_spent == 6.0  # but they are paid for


def test_memory_tracker_history_by_step_latest_wins(tmp_path) -> None:
    tracker = MemoryTracker(tmp_path)
    tracker.log_round_metrics(20, {CM.TEST_MAE: 1.0})
    tracker.log_round_metrics(28, {CM.TEST_MAE: 0.9})
    tracker.log_round_metrics(28, {CM.TEST_MAE: 0.8})  # the round redone after a kill
    tracker.log_round_metrics(36, {CM.TEST_MAE: 0.7})
    assert tracker.metric_by_step(CM.TEST_MAE) == {20: 1.0, 28: 0.8, 36: 0.7}
    assert tracker.metric_history(CM.TEST_MAE) == [1.0, 0.8, 0.7]


# --- campaigns killed and resumed --------------------------------------------------------------
@pytest.mark.slow
def test_killed_before_the_round_was_recorded_pays_nothing_twice(qm9, tmp_path) -> None:
    """Killed after the oracle answered round 1, before its table reached the tracker."""
    tracker = MemoryTracker(tmp_path)
    log_queried = tracker.log_queried

    def dies_on_round_1(round_: int, frame: pd.DataFrame) -> None:
        if round_ == 1:
            raise Killed
        log_queried(round_, frame)

    first = Paying()
    tracker.log_queried = dies_on_round_1  # type: ignore[method-assign]
    with pytest.raises(Killed):
        campaign(qm9, tracker, first).execute()
    assert tracker.queried_rounds() == [0] and len(first.paid) == 48  # round 1 paid, unrecorded

    tracker.log_queried = log_queried  # type: ignore[method-assign]
    second = Paying()
    assert campaign(qm9, tracker, second).execute() == "rounds: 2 of 2 done"
    table = recorded(tracker)
    assert table.groupby("round").size().tolist() == [40, 8, 8]  # 20 of them validation
    paid = first.paid + second.paid
    assert len(paid) == len(table) == len(set(paid))  # none paid twice, none lost
    assert sorted(first.paid[40:]) == sorted(tracker.read_queried(1)["qm9_index"])
    assert second.paid == tracker.read_queried(2)["qm9_index"].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [1, NETWORK_CHUNK])
def test_killed_mid_batch_pays_again_at_most_the_call_in_flight(qm9, tmp_path, chunk) -> None:
    """Round 0 asks for 150 labels, one molecule a call (as the DFT table is asked) or a
    network labeller's forward pass of 64; killed on the third call: only that call's
    labels are bought again, and what they first cost is counted."""
    tracker = MemoryTracker(tmp_path)
    first = Paying(kill_at=3)
    with pytest.raises(Killed):
        campaign(qm9, tracker, first, chunk, initial_size=150, budget_labels=150).execute()
    assert tracker.queried_rounds() == [] and len(first.paid) == 2 * chunk

    second = Paying()
    big = campaign(qm9, tracker, second, chunk, initial_size=150, budget_labels=150)
    assert big.execute() == "label budget: 150 of 150 spent"
    table = recorded(tracker)
    assert len(table) == 150 and table["qm9_index"].is_unique
    in_flight = min(chunk, 150 - 2 * chunk)
    assert len(second.paid) == 150 - 2 * chunk  # only the call in flight was bought again
    assert sorted(first.paid + second.paid) == sorted(table["qm9_index"])
    # the call in flight was asked twice: what its first ask cost is in cost_spent
    assert big.labelled.cost_lost == in_flight
    steps = tracker.metrics_frame()
    assert steps[CM.COST_LOST].tolist() == [in_flight]
    assert steps[CM.COST_SPENT].tolist() == [table["cost"].sum() + in_flight]


def test_lost_cost_counts_asks_without_answers(tmp_path) -> None:
    """Asked and answered: nothing lost; asked, killed, asked again: the first ask's cost;
    a round's new request starts its positions afresh."""
    journal = LabelJournal(tmp_path / "j.jsonl")
    request = pd.DataFrame({"qm9_index": [5, 7], "fidelity": [0, 1]})
    answers = pd.DataFrame({"qm9_index": [5], "oracle": "x", "label": [1.0], "status": "ok",
                            "cost": [0.5]})  # fmt: skip
    journal.log_request(0, request)
    journal.log_asked(0, [0], 0.5)
    journal.log_labels(0, [0], answers)
    journal.log_asked(0, [1], 2.0)  # killed in flight
    assert journal.lost_cost() == 2.0  # still unanswered: paid, as far as anyone knows
    journal.log_asked(0, [1], 2.0)
    journal.log_labels(0, [1], answers.assign(qm9_index=[7], cost=[2.0]))
    assert journal.lost_cost() == 2.0
    journal.log_request(0, request)  # the round asked again from scratch
    journal.log_asked(0, [0], 0.5)
    journal.log_labels(0, [0], answers)
    assert journal.lost_cost() == 2.0


@pytest.mark.slow
def test_round_redone_after_a_kill_keeps_the_learning_curve(qm9, tmp_path) -> None:
    """Killed between round 1's metrics and its completed mark, then between round 2's and
    its mark: the round's metrics are logged twice, the history is read by step."""
    tracker = MemoryTracker(tmp_path)
    complete = tracker.complete_round
    kill = {"round": 1}

    def dies(round_: int) -> None:
        if round_ == kill["round"]:
            raise Killed
        complete(round_)

    tracker.complete_round = dies  # type: ignore[method-assign]
    with pytest.raises(Killed):
        campaign(qm9, tracker).execute()
    kill["round"] = 2
    with pytest.raises(Killed):
        campaign(qm9, tracker).execute()
    assert [s for s, _ in tracker.metrics[CM.TEST_MAE]] == [20, 28, 28, 36]  # 28 twice
    kill["round"] = -1
    resumed = campaign(qm9, tracker, rounds=3)
    assert resumed.execute() == "rounds: 3 of 3 done"
    by_step = tracker.metric_by_step(CM.TEST_MAE)
    assert list(by_step) == [20, 28, 36, 44]
    assert resumed.mae_history == list(by_step.values())
    assert learning_curve(resumed.labelled, resumed.mae_history) == list(by_step.items())


def test_a_polite_kill_waits_until_the_answer_is_journalled(tmp_path) -> None:
    """SIGTERM arriving between the oracle's answer and its journal record is held until
    the record is on disk, then unwinds as usual."""
    import os
    import signal

    from al.loop.journal import deferred_signals

    class Term(BaseException):
        pass

    def raise_term(signum, frame):
        raise Term

    previous = signal.signal(signal.SIGTERM, raise_term)
    journal = LabelJournal(tmp_path / "j.jsonl")
    answer = pd.DataFrame({"qm9_index": [7], "oracle": ["xtb"], "label": [1.5],
                           "status": ["ok"], "cost": [0.01]})  # fmt: skip
    try:
        with pytest.raises(Term):
            with deferred_signals():
                os.kill(os.getpid(), signal.SIGTERM)  # the kill comes now...
                journal.log_labels(0, [0], answer)  # ...and waits for this
            pytest.fail("the signal was not delivered after the block")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert journal.paid(0)["qm9_index"].tolist() == [7]


def test_oracles_are_journalled_one_label_a_call_but_network_labellers() -> None:
    from al.oracles import ORACLES

    chunks = {name: cls.journal_chunk for name, cls in ORACLES.items()}
    assert chunks["dft"] == chunks["xtb"] == chunks["pyscf"] == 1
    assert {chunks[n] for n in ("ani1x", "ani1ccx", "pretrained", "model")} == {NETWORK_CHUNK}
