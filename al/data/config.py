"""Where molecules come from and how they are split (keys of every entry point)."""

from __future__ import annotations

from dataclasses import dataclass

from al.config import option

#: Where QM9 can be read from (:func:`al.data.load.load_qm9`).
SOURCES = ("qm9pack", "pyg")


@dataclass
class DataConfig:
    """Where molecules come from and how they are split."""

    #: The help section of these keys on the command line.
    GROUP = "data"

    source: str = option("qm9pack", "data source", choices=SOURCES)
    data_root: str = option("", "folder of the source (pyg: the QM9 root)")
    split_seed: int = option(0, "seed of the test/oracle/pool split")
    n_test: int = option(10_000, "size of the test split", min=1)
    n_oracle: int = option(50_000, "size of the oracle split", min=0)
