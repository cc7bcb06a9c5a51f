"""Fixed, seeded, recorded splits of QM9: test, oracle and pool, disjoint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SPLIT_NAMES = ("test", "oracle", "pool")


@dataclass
class Splits:
    """QM9 indices of each split (sorted ``int64`` arrays) and how they were drawn."""

    seed: int
    test: np.ndarray = field(repr=False)
    oracle: np.ndarray = field(repr=False)
    pool: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        seen = np.concatenate([self.test, self.oracle, self.pool])
        if np.unique(seen).size != seen.size:
            raise ValueError("splits overlap: a molecule is in two of test, oracle, pool")

    def sizes(self) -> dict[str, int]:
        return {name: int(getattr(self, name).size) for name in SPLIT_NAMES}

    def digest(self) -> str:
        """A short hash of the three index sets; equal digests mean identical splits."""
        h = hashlib.sha256()
        for name in SPLIT_NAMES:
            h.update(name.encode())
            h.update(np.ascontiguousarray(getattr(self, name), dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def to_json(self) -> str:
        record = {"seed": self.seed, "digest": self.digest(), "sizes": self.sizes()}
        record.update({name: getattr(self, name).tolist() for name in SPLIT_NAMES})
        return json.dumps(record)

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> Splits:
        rec = json.loads(Path(path).read_text())
        splits = cls(
            seed=int(rec["seed"]),
            **{name: np.asarray(rec[name], dtype=np.int64) for name in SPLIT_NAMES},
        )
        if "digest" in rec and rec["digest"] != splits.digest():
            raise ValueError(f"split file {path} is corrupt: its digest does not match")
        return splits


@dataclass(frozen=True)
class SplitConfig:
    """How to split: sizes of test and oracle sets, the rest is the pool."""

    seed: int = 0
    n_test: int = 10_000
    n_oracle: int = 50_000


def make_splits(qm9_index: np.ndarray, config: SplitConfig = SplitConfig()) -> Splits:
    """Draw the splits from all molecules with a seeded permutation.

    Args:
        qm9_index: every molecule's QM9 index, ``[n_mol]``.
    """
    qm9_index = np.asarray(qm9_index, dtype=np.int64)
    n = qm9_index.size
    if config.n_test + config.n_oracle >= n:
        raise ValueError(
            f"n_test + n_oracle = {config.n_test + config.n_oracle} leaves no pool "
            f"out of {n} molecules"
        )
    perm = np.random.default_rng(config.seed).permutation(np.sort(qm9_index))
    a, b = config.n_test, config.n_test + config.n_oracle
    return Splits(
        seed=config.seed,
        test=np.sort(perm[:a]),
        oracle=np.sort(perm[a:b]),
        pool=np.sort(perm[b:]),
    )


def split_record(splits: Splits, config: SplitConfig) -> dict:
    """Small dict describing a split, for run params and logs."""
    return {
        **asdict(config),
        "digest": splits.digest(),
        **{f"n_{k}": v for k, v in splits.sizes().items()},
    }
