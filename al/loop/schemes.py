"""Data schemes: which pool molecules a round may choose from, and when to retrain.

A scheme is chosen once, from the strategy preset's ``scheme`` field (:data:`SCHEMES`):

``pool``
    Every round offers the whole pool (minus what was asked for, subsampled to
    ``pool_subsample``) and the surrogate is retrained every round.
``stream``
    The pool arrives in chunks of ``stream_chunk`` molecules in a seeded order; round ``r``
    offers only the ``r``-th chunk. The surrogate is retrained once the labelled set has
    grown by ``retrain_fraction`` since the model was trained (the online data scheme).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from al.loop.config import CampaignConfig
from al.loop.seeds import round_generator
from al.registry import Registry


class DataScheme(Protocol):
    """What the campaign asks of a data scheme."""

    name: str
    #: whether a multi-fidelity campaign (several oracles) can run on it
    multi_fidelity: ClassVar[bool]

    def candidates(
        self, round_: int, pool: Tensor, qm9_index: Tensor, closed: Tensor
    ) -> Tensor: ...

    def needs_refit(self, n_labelled: int, trained_on: int) -> bool: ...


#: The registry of data schemes: a strategy preset's ``scheme`` names one.
SCHEMES: Registry[type[PoolScheme]] = Registry("data scheme")


@SCHEMES.register("pool")
@dataclass(frozen=True)
class PoolScheme:
    """Score the whole (subsampled) pool and retrain every round.

    Attributes:
        seed: the campaign seed (subsamples depend only on seed and round).
        pool_subsample: candidates scored per round (0 = all free pool molecules).
    """

    seed: int
    pool_subsample: int = 0

    name = "pool"
    multi_fidelity: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: CampaignConfig) -> PoolScheme:
        return cls(config.seed, config.pool_subsample)

    def offered(self, round_: int, pool: Tensor) -> Tensor:
        """The pool rows on offer in ``round_`` (``[m]`` of the ``[n_pool]`` rows)."""
        return pool

    def candidates(self, round_: int, pool: Tensor, qm9_index: Tensor, closed: Tensor) -> Tensor:
        """Offered pool rows whose molecule is not closed, subsampled when
        ``pool_subsample`` is set.

        Args:
            round_: the acquisition round (1, 2, ...).
            pool: ``[n_pool]`` int64 rows of the pool into the data set.
            qm9_index: ``[n_mol]`` QM9 index of every row of the data set.
            closed: ``[c]`` int64 QM9 indices never to be offered again.

        Returns:
            ``[m]`` int64 rows, sorted when subsampled.
        """
        offered = self.offered(round_, pool)
        free = offered[~torch.isin(qm9_index[offered], closed)]
        n = self.pool_subsample
        if n and free.numel() > n:
            gen = round_generator(self.seed, round_, "subsample")
            free = free[torch.randperm(free.numel(), generator=gen)[:n]].sort().values
        return free

    def needs_refit(self, n_labelled: int, trained_on: int) -> bool:
        """Whether to retrain now: always, in the pool scheme."""
        return True


@SCHEMES.register("stream")
@dataclass(frozen=True)
class StreamScheme(PoolScheme):
    """Chunks of the pool arrive in a seeded order; retrain only on enough new labels.

    Attributes:
        chunk: pool molecules arriving per round.
        retrain_fraction: retrain once the labelled set grew by this share of the size
            the current model was trained on.
    """

    chunk: int = 2000
    retrain_fraction: float = 0.2

    name = "stream"
    multi_fidelity: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: CampaignConfig) -> StreamScheme:
        return cls(config.seed, config.pool_subsample, config.stream_chunk, config.retrain_fraction)

    def offered(self, round_: int, pool: Tensor) -> Tensor:
        """The ``round_``-th chunk of a seeded permutation of the pool, sorted."""
        order = torch.randperm(pool.numel(), generator=round_generator(self.seed, 0, "stream"))
        c = self.chunk
        return pool[order[(round_ - 1) * c : round_ * c]].sort().values

    def needs_refit(self, n_labelled: int, trained_on: int) -> bool:
        """True without a model yet, or once ``n_labelled - trained_on`` reaches
        ``retrain_fraction * trained_on``."""
        if not trained_on:
            return True
        return n_labelled - trained_on >= self.retrain_fraction * trained_on


def build_scheme(name: str, config: CampaignConfig) -> DataScheme:
    """The scheme ``name`` with the campaign's settings; unknown names list the valid ones."""
    return SCHEMES.get(name).from_config(config)
