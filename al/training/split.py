"""The validation split: how many labelled molecules are held out, and which ones.

Every fit validates on molecules it does not train on. :func:`validation_size` says how
many of a labelled set are held out (``val_fraction``, raised to the ``val_min`` floor up
to ``val_max_fraction``); :func:`split_validation` says which.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from al.training.config import FitConfig

log = logging.getLogger(__name__)

#: Added to the fit's seed for the draw of the rows that fill the ``val_min`` floor.
FLOOR_SEED_OFFSET = 7919


def _fraction_size(config: FitConfig, n: int) -> int:
    """``round(val_fraction x n)``, at least 1 and at most ``n - 1``; 0 when ``val_fraction``
    is 0 or ``n < 2``."""
    if config.val_fraction <= 0 or n < 2:
        return 0
    return min(max(1, round(config.val_fraction * n)), n - 1)


def validation_size(config: FitConfig, n: int) -> int:
    """Molecules of a labelled set of ``n`` to hold out for validation.

    ``round(val_fraction x n)`` (at least 1), raised to ``val_min`` but not beyond
    ``val_max_fraction x n``; never all of them. 0 when ``val_fraction`` is 0 or ``n < 2``.
    """
    if config.val_fraction <= 0 or n < 2:
        return 0
    size = max(1, round(config.val_fraction * n))
    if config.val_min > size:
        size = max(size, min(config.val_min, math.floor(config.val_max_fraction * n)))
    return min(size, n - 1)


def split_validation(
    rows: Tensor, config: FitConfig, held: int | None = None
) -> tuple[Tensor, Tensor]:
    """The training and validation rows of a labelled set ``rows`` (``[n]``, in a random
    order, e.g. a seeded permutation), ``([n - v], [v])`` with ``v`` the
    :func:`validation_size` (or ``held`` when that is larger).

    The first ``held`` rows are held out (default: the ``val_fraction`` share; ``held`` is
    what a caller already holds out at the front). When the ``val_min`` floor asks for more
    and any is held, the rest is drawn at random from the other rows, seeded with
    ``config.seed`` (+ :data:`FLOOR_SEED_OFFSET`), and appended. Called on
    ``torch.arange(n)`` it returns positions instead of rows.
    """
    n = rows.numel()
    held = _fraction_size(config, n) if held is None else held
    train, val = rows[held:], rows[:held]
    if held == 0 or config.val_min <= held:
        return train, val
    extra = validation_size(config, n) - held
    if extra <= 0:
        return train, val
    gen = torch.Generator().manual_seed(config.seed + FLOOR_SEED_OFFSET)
    order = torch.randperm(train.numel(), generator=gen).to(rows.device)
    log.info("event=validation_floor n_val=%d moved=%d", held, extra)
    return train[order[extra:]], torch.cat([val, train[order[:extra]]])
