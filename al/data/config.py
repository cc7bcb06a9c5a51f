"""Where molecules come from and how they are split (keys of every entry point)."""

from __future__ import annotations

from dataclasses import dataclass

from al.config import option
from al.data import qm9pack  # noqa: F401 - registers the default source, listed first

# isort: split
from al.data import pyg_source  # noqa: F401 - registers its source
from al.data.sources import SOURCES

#: The ``geometry`` choices: QM9's own positions, GFN2-xTB's from the SMILES, or QM9's own
#: on the molecules that have a GFN2-xTB geometry (the xtb campaign's paired counterpart).
GEOMETRIES = ("dft", "xtb", "dft_on_xtb_set")


@dataclass
class DataConfig:
    """Where molecules come from and how they are split."""

    #: The help section of these keys on the command line.
    GROUP = "data"

    source: str = option("qm9pack", "data source", choices=tuple(SOURCES))
    data_root: str = option("", "folder of the source (pyg: the QM9 root)")
    split_seed: int = option(0, "seed of the test/oracle/pool split")
    n_test: int = option(10_000, "size of the test split", min=1)
    n_oracle: int = option(50_000, "size of the oracle split", min=0)
    geometry: str = option(
        "dft", "positions every model, baseline and model oracle sees: dft (QM9's own, the "
        "B3LYP optimum), xtb (GFN2-xTB geometries from the SMILES, al geometry "
        "--qm9-split; molecules without one are left out) or dft_on_xtb_set (QM9's own "
        "positions on the molecules xtb keeps: an xtb campaign's counterpart, paired "
        "molecule by molecule); labels stay QM9's",
        choices=GEOMETRIES,
    )  # fmt: skip
