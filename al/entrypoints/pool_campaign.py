"""Campaigns on a pool of one's own molecules (``pool=NAME``): the data and split they run
on, and what a campaign without ground truth refuses.

A pool (:mod:`al.data.pools`) has no ground truth, so its campaign buys its test set: the
*held-out set*, ``heldout_size`` molecules drawn at random from the pool with the split
seed, labelled in round 0 at the target fidelity (role ``heldout``), counted in the cost,
never offered for training and never trained on (:meth:`al.loop.campaign.Campaign.adopt_heldout`).
Every figure of such a campaign is measured on them; its metric keys stay ``test_*`` (so
reports read every campaign alike), and the run's tag ``al.evaluated_on`` says
``held-out labelled molecules``.
"""

from __future__ import annotations

import numpy as np

from al.baselines import Baseline
from al.config import ConfigError
from al.data.molecules import MolecularData
from al.data.pools import Pool, load_pool
from al.data.splits import Splits
from al.oracles import Oracle

__all__ = [
    "campaign_pool", "check_pool_digest", "check_pool_oracles", "check_units", "heldout_splits",
]  # fmt: skip


def heldout_splits(numbers: np.ndarray, size: int, seed: int) -> Splits:
    """The split of a pool campaign: ``size`` molecules of ``numbers`` (the pool's molecule
    numbers, ``[n]``) drawn with ``seed`` as the held-out set (``test``), the rest the pool;
    no oracle split. ConfigError, one line, when the pool is too small to keep any."""
    numbers = np.sort(np.asarray(numbers, dtype=np.int64))
    if size >= numbers.size:
        raise ConfigError(
            f"heldout_size {size} leaves no molecule to learn from in a pool of "
            f"{numbers.size}; expected a held-out set smaller than the pool (e.g. 10 % of it)"
        )
    perm = np.random.default_rng(seed).permutation(numbers)
    empty = np.zeros(0, dtype=np.int64)
    return Splits(seed=seed, test=np.sort(perm[:size]), oracle=empty, pool=np.sort(perm[size:]))


def campaign_pool(name: str, heldout_size: int, seed: int) -> tuple[Pool, MolecularData, Splits]:
    """The pool ``name`` (:func:`~al.data.pools.load_pool`; a missing one is one error
    line), its molecules and its held-out split (:func:`heldout_splits`)."""
    pool = load_pool(name)
    data = pool.data
    return pool, data, heldout_splits(data.qm9_index.numpy(), heldout_size, seed)


def check_pool_oracles(oracles: list[Oracle], pool: str) -> None:
    """ConfigError, one line, for an oracle that reads its labels from a data set's table
    (``dft``: QM9's values), which a pool of one's own molecules does not have."""
    for oracle in oracles:
        if oracle.reads_table:
            raise ConfigError(
                f"oracle {oracle.name!r} reads QM9's table of DFT values, which pool {pool!r} "
                "does not have; expected a labeller that computes a molecule from its "
                "geometry (xtb, ani1x, ani1ccx, pretrained, model:<uri>, pyscf) or external "
                "(your own DFT code: al ingest)"
            )


def check_units(oracles: list[Oracle], unit: str) -> None:
    """ConfigError, one line, when a labeller computed here (every one but ``external``),
    whose labels are in eV, is asked for labels in another ``unit``."""
    computed = [o.name for o in oracles if not o.answers_later]
    if unit != "eV" and computed:
        raise ConfigError(
            f"unit {unit!r}: the labeller(s) {', '.join(computed)} give eV; expected unit=eV, "
            "or oracle=external for labels in another unit"
        )


def check_cost_units(oracles: list[Oracle], baseline: Baseline | None = None) -> None:
    """ConfigError, one line, when a labeller that charges the CPU-hours each label took
    (``pyscf`` without a fixed cost) shares a campaign with a labeller or a baseline charged
    its default cost, which is in DFT labels (a DFT label = 1): the two would be added as
    one currency."""
    measured = [o.name for o in oracles if getattr(o, "cost_measured", False)]
    defaulted = [o.name for o in oracles
                 if not o.cost_given and not getattr(o, "cost_measured", False)]  # fmt: skip
    if baseline is not None and not baseline.cost_given and baseline.cost_per_molecule > 0:
        defaulted.append(f"baseline {baseline.spec}")
    if measured and defaulted:
        raise ConfigError(
            f"{', '.join(measured)} charges the CPU-hours each label took, but "
            f"{', '.join(defaulted)} would be charged a default cost in DFT labels; expected "
            "every cost in CPU-hours (costs=..., baseline_cost=...), or a fixed oracle cost "
            f"for {measured[0]}"
        )


def check_pool_digest(pool: Pool, recorded: str | None, run_id: str) -> None:
    """ConfigError, one line, when the pool a campaign resumes on is not the one it started
    on (``recorded``: the run's ``al.pool_digest`` tag; None: not recorded yet)."""
    if recorded and recorded != pool.digest:
        raise ConfigError(
            f"pool {pool.name!r} changed since campaign {run_id} started on it (digest "
            f"{pool.digest}, the campaign's {recorded}); resume on the pool it started on, or "
            "start a new campaign"
        )
