"""Data: QM9 as flat tensors (sources, on-disk cache), the element table, radius graphs,
the fixed splits and .xyz files."""

from al.data.cache import CACHE_ENV, cache_dir
from al.data.elements import ATOM_REF_H298_HA, ELEMENTS, HARTREE_TO_EV, PROPERTY, SYMBOLS
from al.data.graph import radius_graph
from al.data.load import SOURCES, load_data, load_qm9
from al.data.molecules import MAX_QM9_INDEX, MolecularData, molecules_frame
from al.data.qm9pack import N_MOLECULES, qm9pack_data_dir
from al.data.splits import SplitConfig, Splits, make_splits

__all__ = [
    "ATOM_REF_H298_HA",
    "CACHE_ENV",
    "ELEMENTS",
    "HARTREE_TO_EV",
    "MAX_QM9_INDEX",
    "N_MOLECULES",
    "PROPERTY",
    "SOURCES",
    "SYMBOLS",
    "MolecularData",
    "SplitConfig",
    "Splits",
    "cache_dir",
    "load_data",
    "load_qm9",
    "make_splits",
    "molecules_frame",
    "qm9pack_data_dir",
    "radius_graph",
]
