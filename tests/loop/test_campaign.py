"""The campaign algorithm without a tracking server: data schemes, selections, and a tiny
campaign recorded by :class:`MemoryTracker` (MLflow made unusable for the test)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from al.config import subset
from al.data.splits import SplitConfig, make_splits
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig
from al.loop.ledger import Labelled
from al.loop.schemes import PoolScheme, StreamScheme, build_scheme
from al.loop.selection import MultiFidelity, SingleFidelity, build_selection
from al.loop.stopping import build_rules
from al.loop.tracker import MemoryTracker
from al.models.config import ModelConfig
from al.oracles import build_oracle
from al.tracking import QUERIED_COLUMNS
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.uncertainty import Prediction, build_surrogate

TINY = dict(
    initial_size=30, batch_size=10, rounds=1, hidden=16, n_interactions=1, epochs=2,
    min_steps=0, val_min=0, val_size=10,
    ensemble_size=2, pool_subsample=200, n_test=100, progress=False, train_batch_size=32,
)  # fmt: skip
CHEAP = SimpleNamespace(name="cheap", cost_per_label=0.1)
HIGH = SimpleNamespace(name="dft", cost_per_label=1.0)


def queried(rows: list[tuple[int, str, str]], round_: int = 0) -> pd.DataFrame:
    """A queried table from ``(qm9_index, oracle, status)`` rows (label = index / 10)."""
    frame = pd.DataFrame(rows, columns=["qm9_index", "oracle", "status"])
    frame["label"] = np.where(frame["status"] == "ok", frame["qm9_index"] / 10, np.nan)
    frame["round"], frame["cost"] = round_, 1.0
    frame["score"] = frame["pred_mean"] = frame["pred_std"] = frame["label_std"] = np.nan
    frame["role"] = "train"
    return frame[list(QUERIED_COLUMNS)]


# --- data schemes ------------------------------------------------------------------------
def test_pool_scheme_offers_free_molecules_subsampled() -> None:
    qm9_index = torch.arange(100) + 1  # row r is molecule r + 1
    pool = torch.arange(10, 60)
    scheme = PoolScheme(seed=3, pool_subsample=20)
    closed = torch.tensor([11, 12, 13])
    a = scheme.candidates(1, pool, qm9_index, closed)
    assert a.numel() == 20 and torch.equal(a, a.sort().values)
    assert not torch.isin(qm9_index[a], closed).any() and torch.isin(a, pool).all()
    assert torch.equal(a, scheme.candidates(1, pool, qm9_index, closed))  # seeded
    assert not torch.equal(a, scheme.candidates(2, pool, qm9_index, closed))
    everything = PoolScheme(seed=3).candidates(1, pool, qm9_index, closed)
    assert everything.numel() == 47
    assert scheme.needs_refit(100, 99) and scheme.needs_refit(1, 0)


def test_stream_scheme_offers_chunks_and_retrains_on_growth() -> None:
    qm9_index = torch.arange(100) + 1
    pool = torch.arange(100)
    scheme = StreamScheme(seed=0, pool_subsample=0, chunk=30, retrain_fraction=0.25)
    empty = torch.empty(0, dtype=torch.int64)
    chunks = [set(scheme.candidates(r, pool, qm9_index, empty).tolist()) for r in (1, 2, 3, 4)]
    assert [len(c) for c in chunks] == [30, 30, 30, 10]
    assert set().union(*chunks) == set(range(100))  # disjoint chunks covering the pool
    closed = qm9_index[list(chunks[1])[:5]]
    assert len(scheme.candidates(2, pool, qm9_index, closed)) == 25
    assert scheme.needs_refit(10, 0)  # no model yet
    assert not scheme.needs_refit(124, 100) and scheme.needs_refit(125, 100)


def test_build_scheme_from_the_preset() -> None:
    cfg = CampaignConfig(stream_chunk=7, retrain_fraction=0.5, pool_subsample=9, seed=4)
    assert build_scheme("pool", cfg) == PoolScheme(4, 9)
    assert build_scheme("stream", cfg) == StreamScheme(4, 9, 7, 0.5)
    with pytest.raises(ValueError, match="expected one of: pool, stream"):
        build_scheme("batch", cfg)


# --- selections ----------------------------------------------------------------------------
def test_build_selection_by_number_of_oracles(qm9) -> None:
    cfg = CampaignConfig()
    assert type(build_selection(qm9, [HIGH], cfg, "max_std")) is SingleFidelity
    multi = build_selection(qm9, [CHEAP, HIGH], cfg, "high_only")
    assert type(multi) is MultiFidelity and multi.acquisition.name == "high_only"
    with pytest.raises(ValueError, match="at least one oracle"):
        build_selection(qm9, [], cfg, "max_std")


def test_single_fidelity_requests_closed_and_targets(qm9) -> None:
    sel = SingleFidelity(qm9, [HIGH], CampaignConfig(batch_size=3, seed=1), "max_std")
    rows = qm9.rows_of([5, 3, 9])
    first = sel.initial_request(rows)
    assert list(first.columns) == [
        "qm9_index", "fidelity", "score", "pred_mean", "pred_std", "role",
    ]  # fmt: skip
    assert first["qm9_index"].tolist() == [5, 3, 9] and (first["fidelity"] == 0).all()
    assert first[["score", "pred_mean", "pred_std"]].isna().all().all()

    lab = Labelled.empty()
    lab.add(queried([(5, "dft", "ok"), (3, "dft", "failed"), (9, "dft", "ok")]))
    assert sorted(sel.closed(lab).tolist()) == [3, 5, 9]  # failures are closed too
    y, train_rows = sel.training_targets(lab)
    assert y.shape == qm9.y.shape and int(y.isfinite().sum()) == 2
    assert train_rows.tolist() == qm9.rows_of([5, 9]).tolist()  # request order
    assert y[train_rows].tolist() == pytest.approx([0.5, 0.9])

    cand = qm9.rows_of([20, 21, 22, 23, 24])
    std = torch.tensor([0.1, 0.5, 0.2, 0.4, 0.3], dtype=torch.float64)
    pred = Prediction(mean=torch.zeros(5, dtype=torch.float64), std=std)
    out = sel.choose(1, cand, pred, lab)
    assert out["qm9_index"].tolist() == [21, 23, 24]  # highest std first
    assert out["pred_std"].tolist() == pytest.approx([0.5, 0.4, 0.3])


def test_multi_fidelity_requests_closed_bought_and_targets(qm9) -> None:
    cfg = CampaignConfig(batch_size=2, seed=1, oracles="xtb,dft")
    sel = MultiFidelity(qm9, [CHEAP, HIGH], cfg, "variance_reduction")
    first = sel.initial_request(qm9.rows_of([5, 3]))
    assert first[["qm9_index", "fidelity"]].values.tolist() == [[5, 0], [3, 0], [5, 1], [3, 1]]

    lab = Labelled.empty()
    lab.add(queried([(5, "cheap", "ok"), (5, "dft", "ok"), (3, "cheap", "ok"), (7, "dft", "x")]))
    assert sorted(sel.closed(lab).tolist()) == [5, 7]  # asked at the highest fidelity
    bought = sel.bought(qm9.rows_of([3, 5, 8]), lab)
    assert bought.tolist() == [[True, False], [True, True], [False, False]]
    y, train_rows = sel.training_targets(lab)
    assert y.shape == (qm9.y.numel(), 2)
    assert train_rows.tolist() == sorted(qm9.rows_of([3, 5]).tolist())  # unique
    r5, r3 = qm9.rows_of([5, 3]).tolist()
    assert y[r5].tolist() == pytest.approx([0.5, 0.5]) and y[r3, 0] == pytest.approx(0.3)
    assert y[r3, 1].isnan() and int(y.isfinite().sum()) == 3

    cand = qm9.rows_of([3, 20, 21])
    samples = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0)).double()
    pred = Prediction.from_samples(samples, None)
    out = sel.choose(1, cand, pred, lab)
    assert out["qm9_index"].is_unique and len(out)
    cost = sel.costs[torch.tensor(out["fidelity"].tolist())].sum()
    assert float(cost) <= 2 * 1.0 + 1e-9  # batch_size x the highest cost
    assert not ((out["qm9_index"] == 3) & (out["fidelity"] == 0)).any()  # bought already


# --- a tiny campaign without any tracking server -----------------------------------------
@pytest.fixture
def no_mlflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any use of MLflow fails the test; torch on one thread for the test's duration."""

    def refuse(*args, **kwargs):
        raise AssertionError("the campaign used MLflow")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setattr(mlflow, "start_run", refuse)
    monkeypatch.setattr(MlflowClient, "__init__", refuse)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_campaign(qm9, tracker: MemoryTracker, scheme: str = "pool", **kw) -> Campaign:
    cfg = CampaignConfig(**{**TINY, **kw})
    splits = make_splits(qm9.qm9_index.numpy(), SplitConfig(cfg.split_seed, cfg.n_test))
    surrogate = build_surrogate(
        "ensemble", subset(ModelConfig, cfg), cfg.fit_config(), torch.device("cpu"),
        ensemble_size=cfg.ensemble_size,
    )  # fmt: skip
    oracles = [build_oracle("dft", data=qm9)]
    return Campaign(
        cfg, qm9, splits, surrogate, oracles, build_rules(cfg.stopping_settings()),
        scheme=build_scheme(scheme, cfg),
        selection=build_selection(qm9, oracles, cfg, "max_std", surrogate),
        tracker=tracker,
    )  # fmt: skip


def test_a_stream_whose_chunks_run_out_gets_its_final_refit(qm9, no_mlflow, tmp_path) -> None:
    """A stream campaign without a round limit stops when its chunks run out (two chunks:
    round 3 is offered nothing), and that way out refits its last round like any other (here
    a re-anneal of the warm weights): ``final_refit.*`` at the last step, with its own steps."""
    cfg = CampaignConfig(**TINY)
    splits = make_splits(qm9.qm9_index.numpy(), SplitConfig(cfg.split_seed, cfg.n_test))
    chunk = -(-len(splits.pool) // 2)  # the pool in two chunks
    tracker = MemoryTracker(tmp_path)
    campaign = tiny_campaign(
        qm9, tracker, scheme="stream", rounds=0, stream_chunk=chunk, retrain_fraction=0.2,
        final_refit=True, final_refit_steps=5, final_refit_warm=True,
    )  # fmt: skip
    assert campaign.execute() == "no candidates left"
    steps = tracker.metrics_frame()
    assert steps.index.tolist() == [30, 40, 50]  # rounds 0, 1 and 2 (the second chunk)
    assert steps[CM.WARM_START].tolist() == [0, 1, 1]  # the last round's fit was warm
    assert steps[CM.final_refit(CM.TEST_MAE)].notna().tolist() == [False, False, True]
    assert steps.loc[50, CM.final_refit(CM.FIT_STEPS)] == 5  # final_refit_steps, all run
    assert steps.loc[50, CM.final_refit(CM.WARM_START)] == 1  # a re-anneal of the warm chain
    assert len(tracker.fits) == 3  # the final refit is no round's fit


@pytest.mark.slow
def test_tiny_campaign_in_memory_and_resumed(qm9, no_mlflow, tmp_path) -> None:
    tracker = MemoryTracker(tmp_path)
    campaign = tiny_campaign(qm9, tracker, final_refit=True, final_refit_steps=5)
    assert campaign.execute() == "rounds: 1 of 1 done"

    assert tracker.queried_rounds() == [0, 1] and tracker.completed_round() == 1
    q = pd.concat([tracker.read_queried(r) for r in (0, 1)], ignore_index=True)
    assert list(q.columns) == list(QUERIED_COLUMNS)
    assert q.groupby(["round", "role"]).size().to_dict() == {
        (0, "train"): 30, (0, "validation"): 10, (1, "train"): 10,
    }  # fmt: skip
    assert q["qm9_index"].is_unique  # never asked twice
    assert set(q["qm9_index"]) <= set(campaign.splits.pool.tolist())
    assert q.loc[q["round"] == 1, "pred_std"].notna().all()
    steps = tracker.metrics_frame()
    assert steps.index.tolist() == [30, 40]
    assert steps[CM.N_LABELLED].tolist() == [30, 40]
    assert steps[CM.COST_SPENT].tolist() == [40.0, 50.0]  # the validation set is paid for
    assert steps[CM.N_VALIDATION].tolist() == [10, 10]
    assert steps[CM.RETRAINED].tolist() == [1, 1] and steps[CM.TEST_MAE].notna().all()
    assert steps[CM.TIME_SCORE].isna().tolist() == [True, False]  # scoring from round 1
    assert steps[CM.TIME_LOG].notna().all()
    assert [f.status for f in tracker.fits] == ["FINISHED", "FINISHED"]
    assert all(f.checkpoint.exists() for f in tracker.fits) and len(tracker.fits[0].epochs) == 2
    # round 1 continued from round 0's weights on a shorter schedule; the last round was
    # then refitted from scratch, its evaluation kept beside the warm one at the same step
    assert steps[CM.WARM_START].tolist() == [0, 1]
    assert steps[CM.final_refit(CM.TEST_MAE)].isna().tolist() == [True, False]
    assert steps[CM.FIT_STEPS].tolist() == [2, 2]  # 2 epochs x 1 step; warm: ceil(0.3 x 2 x 2)
    assert steps[CM.final_refit(CM.FIT_STEPS)].iloc[1] == 5  # final_refit_steps, all run
    assert steps[CM.final_refit(CM.WARM_START)].iloc[1] == 0  # from scratch
    assert campaign.mae_history == steps[CM.TEST_MAE].tolist()

    # a new campaign with the same tracker continues after the last completed round
    again = tiny_campaign(qm9, tracker, rounds=2)
    assert again.execute() == "rounds: 2 of 2 done"
    q2 = pd.concat([tracker.read_queried(r) for r in (0, 1, 2)], ignore_index=True)
    assert q2["qm9_index"].is_unique and q2.groupby("round").size().tolist() == [40, 10, 10]
    assert tracker.metric_history(CM.N_LABELLED) == [30, 40, 50]
    assert len(tracker.fits) == 3  # rounds 0 and 1 were not fitted again


def test_the_same_seed_gives_the_same_labelled_sets(qm9, no_mlflow, tmp_path) -> None:
    """Two campaigns of one seed ask for the same molecules and reach the same MAEs (their
    training batches of 27 molecules are cut into dense blocks of similar size)."""
    runs = []
    for k in range(2):
        tracker = MemoryTracker(tmp_path / str(k))
        campaign = tiny_campaign(qm9, tracker, rounds=2)
        assert campaign.execute() == "rounds: 2 of 2 done"
        q = pd.concat([tracker.read_queried(r) for r in (0, 1, 2)], ignore_index=True)
        runs.append((q["qm9_index"].tolist(), campaign.mae_history))
    assert runs[0] == runs[1]


def test_random_acquisition_scores_only_the_chosen(qm9, no_mlflow, tmp_path) -> None:
    """``random`` needs no prediction: the pool is not scored, only the chosen molecules
    are predicted (for the queried table's ``pred_mean``/``pred_std``)."""
    tracker = MemoryTracker(tmp_path)
    campaign = tiny_campaign(qm9, tracker, val_size=12)  # not the batch's 10
    cfg = CampaignConfig(**{**TINY, "val_size": 12})
    campaign.selection = build_selection(qm9, campaign.oracles, cfg, "random", campaign.surrogate)
    predicted: list[int] = []
    predict = campaign.surrogate.predict

    def counting(data, rows, **kw):
        predicted.append(rows.numel())
        return predict(data, rows, **kw)

    campaign.surrogate.predict = counting
    assert campaign.execute() == "rounds: 1 of 1 done"
    steps = tracker.metrics_frame()
    assert steps[CM.POOL_SCORED].tolist() == [0, 0]
    assert steps[CM.TIME_SCORE].iloc[1] == 0.0
    n_pool, n_test = campaign.pool.numel(), campaign.test.numel()
    assert n_pool not in predicted and predicted.count(10) == 1  # the 10 chosen, once
    assert predicted.count(n_test) == 2  # one evaluation per fit
    q = tracker.read_queried(1)
    assert q["pred_mean"].notna().all() and q["pred_std"].notna().all()
    assert q["score"].isna().all()


class RecordingSurrogate:
    """The real surrogate, every fit's training and validation rows recorded on the way."""

    def __init__(self, inner) -> None:
        self.inner, self.fits = inner, []

    def fit(self, data, train_rows, val_rows, **kw):
        self.fits.append((train_rows.clone(), val_rows.clone(), kw.get("steps", 0)))
        return self.inner.fit(data, train_rows, val_rows, **kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class KilledError(Exception):
    """Stands in for a kill in the middle of a converged fit."""


class KilledAtConverge(RecordingSurrogate):
    """The real surrogate, killed when a fit of ``steps`` steps (a converged fit) starts."""

    def __init__(self, inner, steps: int) -> None:
        super().__init__(inner)
        self.steps = steps

    def fit(self, data, train_rows, val_rows, **kw):
        if kw.get("steps") == self.steps:
            raise KilledError
        return super().fit(data, train_rows, val_rows, **kw)


@pytest.mark.slow
def test_a_converged_checkpoint_cut_short_is_fitted_on_its_own_round(
    qm9, no_mlflow, tmp_path
) -> None:
    """A kill during the converged fit at 40 labels: the resumed campaign fits the
    checkpoint on round 1's 40 labels, logged at step 40, before it goes on; a campaign
    that passed a checkpoint without its fit fits it on that round's labels, not the last."""
    tracker = MemoryTracker(tmp_path / "a")
    campaign = tiny_campaign(qm9, tracker, rounds=2, checkpoints="40", converged_steps=3)
    campaign.surrogate = KilledAtConverge(campaign.surrogate, steps=3)
    with pytest.raises(KilledError):
        campaign.execute()
    assert tracker.completed_round() == 1 and tracker.metric_history(CM.N_LABELLED) == [30, 40]
    assert CM.converged(CM.TEST_MAE) not in tracker.metrics_frame()

    again = tiny_campaign(qm9, tracker, rounds=2, checkpoints="40", converged_steps=3)
    again.surrogate = spy = RecordingSurrogate(again.surrogate)
    assert again.execute() == "rounds: 2 of 2 done"
    converged = tracker.metrics_frame()[CM.converged(CM.TEST_MAE)]
    assert converged.notna().tolist() == [False, True, False]  # at 40, not at 50
    train_rows, _, steps = spy.fits[0]  # the first fit after the resume
    assert steps == 3 and train_rows.numel() == 40

    # a checkpoint passed without its fit (older code, or a config that lacked it)
    late = MemoryTracker(tmp_path / "b")
    assert tiny_campaign(qm9, late, rounds=2).execute() == "rounds: 2 of 2 done"
    resumed = tiny_campaign(qm9, late, rounds=2, checkpoints="40", converged_steps=3)
    resumed.surrogate = spy = RecordingSurrogate(resumed.surrogate)
    assert resumed.execute() == "rounds: 2 of 2 done"
    assert late.metrics_frame()[CM.converged(CM.TEST_MAE)].notna().tolist() == [
        False, True, False
    ]  # fmt: skip
    assert [(rows.numel(), n) for rows, _, n in spy.fits] == [(40, 3)]


@pytest.mark.slow
def test_validation_set_is_never_trained_on(qm9, no_mlflow, tmp_path) -> None:
    """Every fit of a campaign (warm rounds, converged checkpoints, the final refit)
    validates on the same molecules, drawn from the pool in round 0, and trains on none of
    them; the converged checkpoint leaves the campaign's own model and figures as they were."""
    tracker = MemoryTracker(tmp_path / "a")
    campaign = tiny_campaign(
        qm9, tracker, rounds=3, checkpoints="40,50", converged_steps=3, final_refit=True,
        final_refit_steps=4,
    )  # fmt: skip
    campaign.surrogate = spy = RecordingSurrogate(campaign.surrogate)
    assert campaign.execute() == "rounds: 3 of 3 done"
    validation = tracker.validation
    assert validation is not None and len(validation) == 10
    val_idx = set(validation["qm9_index"])
    assert val_idx <= set(campaign.splits.pool.tolist())
    assert len(spy.fits) == 4 + 2 + 1  # rounds 0-3, checkpoints at 40 and 50, final refit
    for train_rows, val_rows, _ in spy.fits:
        trained = set(qm9.qm9_index[train_rows].tolist())
        assert not trained & val_idx  # 0 validation molecules ever trained on
        assert set(qm9.qm9_index[val_rows].tolist()) == val_idx  # the same set every fit
    steps = tracker.metrics_frame()
    assert steps.index.tolist() == [30, 40, 50, 60]
    converged = steps[CM.converged(CM.TEST_MAE)]
    assert converged.notna().tolist() == [False, True, True, False]
    assert steps.loc[40, CM.converged(CM.FIT_STEPS)] == 3  # converged_steps, all run
    for n in (40, 50):
        table = tracker.tables[f"converged/labels_{n:05d}/test.csv"]
        assert len(table) == campaign.test.numel()
        mae = (table["mean"] - table["target"]).abs().mean()
        assert mae == pytest.approx(steps.loc[n, CM.converged(CM.TEST_MAE)], rel=1e-5)
        val = tracker.tables[f"converged/labels_{n:05d}/validation.csv"]
        assert set(val["qm9_index"]) == val_idx  # the weights kept are the best on these
        val_mae = (val["mean"] - val["target"]).abs().mean()
        assert val_mae == pytest.approx(steps.loc[n, CM.converged(CM.VAL_MAE)], rel=1e-4)

    # without checkpoints the campaign asks for the same molecules and sees the same MAEs
    plain = tiny_campaign(qm9, MemoryTracker(tmp_path / "b"), rounds=3)
    assert plain.execute() == "rounds: 3 of 3 done"
    assert plain.mae_history == pytest.approx(campaign.mae_history, rel=1e-6)
    # checkpoints=all: one converged refit a round, each at its round's step
    every = tiny_campaign(
        qm9, tracker := MemoryTracker(tmp_path / "c"), rounds=1, checkpoints="all",
        converged_steps=2,
    )  # fmt: skip
    assert every.execute() == "rounds: 1 of 1 done"
    assert tracker.metrics_frame()[CM.converged(CM.TEST_MAE)].notna().tolist() == [True, True]
    assert (
        plain.labelled.table["qm9_index"].tolist() == campaign.labelled.table["qm9_index"].tolist()
    )
