"""Data: QM9 as flat tensors, radius graphs and the fixed splits."""

from al.data.graph import radius_graph
from al.data.qm9 import (
    ATOM_REF_H298_HA,
    ELEMENTS,
    HARTREE_TO_EV,
    SOURCES,
    MolecularData,
    cache_dir,
    load_qm9,
)
from al.data.splits import SplitConfig, Splits, make_splits

__all__ = [
    "ATOM_REF_H298_HA",
    "ELEMENTS",
    "HARTREE_TO_EV",
    "SOURCES",
    "MolecularData",
    "SplitConfig",
    "Splits",
    "cache_dir",
    "load_qm9",
    "make_splits",
    "radius_graph",
]
