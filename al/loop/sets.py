"""A campaign's sets of molecules: round 0's validation set and random initial labels,
and each fit's training and validation rows.

Round 0's sets are drawn from the pool with the campaign's seed, each from its own stream
(:func:`~al.loop.seeds.round_generator`), so every arm of a seed validates on the same
molecules and the draws change nothing else. The entry point checks with
:func:`round0_requests` that the budgets pay for them before a campaign's run exists;
the campaign asks for them when it starts.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from al.config import ConfigError
from al.data.molecules import MolecularData
from al.loop.config import LoopSettings
from al.loop.ledger import Labelled
from al.loop.seeds import round_generator
from al.loop.selection import Selection
from al.loop.stopping import Allowance
from al.tracking.names import ROLE_HELDOUT
from al.training.config import FitConfig
from al.training.split import split_validation

__all__ = [
    "heldout_truth", "initial_rows", "round0_requests", "training_set", "validation_rows",
    "validation_set_size",
]  # fmt: skip


def validation_set_size(val_size: int, n_pool: int) -> int:
    """Molecules in the validation set: ``min(val_size, n_pool - 1)``, none when
    ``val_size`` is 0 (at least one pool molecule is left to train on)."""
    return min(val_size, n_pool - 1) if val_size > 0 else 0


def validation_rows(pool: Tensor, settings: LoopSettings) -> Tensor:
    """The validation set: :func:`validation_set_size` random rows of ``pool`` (``[n_pool]``
    rows), ``[v]``."""
    k = validation_set_size(settings.val_size, pool.numel())
    if k <= 0:
        return pool[:0]
    gen = round_generator(settings.seed, 0, "validation set")
    return pool[torch.randperm(pool.numel(), generator=gen)[:k]]


def initial_rows(pool: Tensor, settings: LoopSettings) -> Tensor:
    """``min(initial_size, n_pool - n_validation)`` random rows of ``pool`` outside the
    validation set, ``[n]``."""
    free = pool[~torch.isin(pool, validation_rows(pool, settings))]
    gen = round_generator(settings.seed, 0, "initial")
    k = min(settings.initial_size, free.numel())
    return free[torch.randperm(free.numel(), generator=gen)[:k]]


def round0_requests(
    settings: LoopSettings, selection: Selection, left: Allowance, pool: Tensor,
    heldout: Tensor | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Round 0's requests: the validation set (:func:`validation_rows` of ``pool``), a pool
    campaign's ``heldout`` rows (``[h]``, its test set, role ``heldout``), and as many of
    the :func:`initial_rows` as the budgets ``left`` pay for beyond them. One error line
    (:class:`ConfigError`) when they pay for the validation and held-out sets and not one
    initial label: checked before a campaign's run exists, and again when it starts."""
    frames = [selection.validation_request(validation_rows(pool, settings))]
    if heldout is not None and heldout.numel():
        frames.append(selection.validation_request(heldout, role=ROLE_HELDOUT))
    validation = pd.concat(frames, ignore_index=True)
    n, cost = len(validation), float(selection.costs[-1]) + selection.baseline_each
    if n and left.count(cost) < n:
        held = f" and the held-out set ({n - len(frames[0])})" if len(frames) > 1 else ""
        raise ConfigError(
            f"budget_labels={settings.budget_labels} and budget_cost={settings.budget_cost:g} "
            f"do not pay for the validation set (val_size={settings.val_size}){held}: {n} "
            f"labels at {cost:g}; expected budgets above it, or a smaller val_size"
        )
    if n:
        left = Allowance(left.labels - n, left.cost - n * cost)
    request = selection.initial_request(initial_rows(pool, settings), left)
    if request.empty:
        raise ConfigError(
            f"budget_labels={settings.budget_labels} and budget_cost={settings.budget_cost:g} "
            f"pay for no initial molecule; expected at least {selection.n_fidelities} label(s) "
            f"and a cost of {float(selection.costs.sum()):g} beyond the validation set's {n} "
            "label(s)"
        )
    return validation, request


def heldout_truth(data: MolecularData, labelled: Labelled) -> Tensor:
    """A pool campaign (no ground truth) is measured on its held-out set: the successful
    held-out labels of ``labelled`` become the truth in ``data.y`` (in place); returns
    their rows ``[h]``, by molecule number (a failed one is left out). RuntimeError, one
    line, when none got a label."""
    held = labelled.heldout_ok
    rows = data.rows_of(held["qm9_index"].to_numpy(np.int64))
    if rows.numel() == 0:
        raise RuntimeError(
            f"none of the {len(labelled.heldout)} held-out molecules of {data.source} got a "
            "label (see the queried table's status column): the campaign has nothing to "
            "measure its models on; label them (al ingest) or start again with another seed"
        )
    data.y[rows] = torch.tensor(held["label"].to_numpy(np.float64), dtype=data.y.dtype)
    return rows[torch.argsort(data.qm9_index[rows])]


def training_set(
    data: MolecularData, selection: Selection, labelled: Labelled, settings: LoopSettings,
    round_: int,
) -> tuple[MolecularData, Tensor, Tensor]:  # fmt: skip
    """``data`` with the oracle labels of ``labelled`` in ``y`` (layout from ``selection``:
    ``[n_mol]``, or ``[n_mol, D]`` with NaN), the training rows ``[m]`` and the validation
    rows ``[v]`` of a fit in ``round_``.

    With a validation set (``val_size``) these are every training label and the
    validation set, the same every round; without one (``val_size=0``), a seeded
    split of the labelled rows redrawn each round (``val_fraction`` of them).
    """
    y, rows = selection.training_targets(labelled)
    if settings.val_size > 0:
        y = y.clone()
        val_rows = selection.validation_targets(labelled, y)
        return replace(data, y=y), rows, val_rows
    gen = round_generator(settings.seed, round_, "validation")
    rows = rows[torch.randperm(rows.numel(), generator=gen)]
    # the val_fraction share (the one split of al.training); the surrogate's fit raises it
    # to the val_min floor
    share = FitConfig(val_fraction=settings.val_fraction, val_min=0)
    train_rows, val_rows = split_validation(rows, share)
    return replace(data, y=y), train_rows, val_rows
