"""A campaign on a pool of one's own molecules, recorded in memory: the held-out set it buys
in round 0 is its test set, never trained on, and its tables name the molecules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from test_campaign import TINY, no_mlflow  # noqa: F401 - the fixture

from al.config import subset
from al.data.pools import load_pool
from al.entrypoints.pool_campaign import heldout_splits
from al.loop.campaign import Campaign
from al.loop.config import CampaignConfig
from al.loop.schemes import build_scheme
from al.loop.selection import build_selection
from al.loop.stopping import build_rules
from al.loop.tracker import MemoryTracker
from al.models.config import ModelConfig
from al.oracles import build_oracle
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.uncertainty import build_surrogate


def test_a_pool_campaign_is_measured_on_its_held_out_labels(
    qm9_pool,
    no_mlflow,  # noqa: F811 - the fixture
    tmp_path,
) -> None:
    pool = load_pool(qm9_pool)
    data = pool.data
    cfg = CampaignConfig(**{**TINY, "pool": qm9_pool, "heldout_size": 15, "rounds": 2})
    splits = heldout_splits(data.qm9_index.numpy(), cfg.heldout_size, cfg.split_seed)
    assert len(splits.test) == 15 and not set(splits.test) & set(splits.pool)
    surrogate = build_surrogate(
        "ensemble", subset(ModelConfig, cfg), cfg.fit_config(), torch.device("cpu"),
        ensemble_size=cfg.ensemble_size,
    )  # fmt: skip
    oracles = [build_oracle("pretrained", data=data)]
    tracker = MemoryTracker(tmp_path)
    campaign = Campaign(
        cfg, data, splits, surrogate, oracles, build_rules(cfg.stopping_settings()),
        scheme=build_scheme("pool", cfg), tracker=tracker,
        selection=build_selection(data, oracles, cfg, "max_std", surrogate),
    )  # fmt: skip
    assert campaign.execute() == "rounds: 2 of 2 done"

    q = pd.concat([tracker.read_queried(r) for r in tracker.queried_rounds()], ignore_index=True)
    assert q.groupby(["round", "role"]).size().to_dict() == {
        (0, "heldout"): 15, (0, "train"): 30, (0, "validation"): 10, (1, "train"): 10,
        (2, "train"): 10,
    }  # fmt: skip
    held = q[q["role"] == "heldout"]
    assert sorted(held["qm9_index"]) == sorted(splits.test.tolist())
    # every row names its molecule: the pool's id and SMILES
    rows = data.rows_of(q["qm9_index"].to_numpy(np.int64)).tolist()
    assert q["id"].tolist() == [data.ids[r] for r in rows]
    assert q["smiles"].tolist() == [data.smiles[r] for r in rows]
    # the figures are measured on the held-out labels, which no fit ever trained on
    assert torch.equal(campaign.test, data.rows_of(np.sort(held["qm9_index"].to_numpy())))
    assert np.allclose(data.y[campaign.test].numpy(), held.sort_values("qm9_index")["label"])
    for round_ in range(3):
        _, train_rows, val_rows = campaign.training_set(round_)
        assert not set(train_rows.tolist()) & set(campaign.test.tolist())
        assert not set(val_rows.tolist()) & set(campaign.test.tolist())
    steps = tracker.metrics_frame()
    assert steps[CM.N_HELDOUT].tolist() == [15, 15, 15]
    # the held-out and validation labels are paid like any: 0.001 a label (pretrained)
    assert np.allclose(steps[CM.COST_HELDOUT], 15 * 0.001)
    assert np.allclose(steps[CM.COST_SPENT], np.array([55, 65, 75]) * 0.001)
    assert steps[CM.N_LABELLED].tolist() == [30, 40, 50]
    assert steps[CM.TEST_MAE].notna().all()
