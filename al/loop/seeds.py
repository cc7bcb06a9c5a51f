"""Seeded randomness of a campaign: one generator per (seed, round, purpose)."""

from __future__ import annotations

import hashlib

import torch


def round_generator(seed: int, round_: int, purpose: str) -> torch.Generator:
    """A generator that depends only on (seed, round, purpose): a resumed round draws the
    same subsample and makes the same choices as the interrupted one would have."""
    digest = hashlib.sha256(f"{seed}/{round_}/{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
