"""Geometries from SMILES: RDKit ETKDG, MMFF94 (or UFF), then GFN2-xTB optimisation with
tblite through ASE, each molecule with a recorded outcome, in a resumable on-disk store.

:mod:`~al.data.conformers.pipeline` is one molecule, :mod:`~al.data.conformers.store` the
cache, :mod:`~al.data.conformers.run` many molecules in parallel and
:mod:`~al.data.conformers.io` the files in and out. ``al geometry`` is the command line.
"""

from al.data.conformers.io import (
    OUTPUT_SUFFIXES,
    SmilesInputError,
    check_output,
    qm9_smiles,
    qm9_split_smiles,
    read_smiles,
    read_smiles_rows,
    write_geometries,
)
from al.data.conformers.pipeline import (
    STATUS_BONDS_CHANGED,
    STATUS_EMBEDDING_FAILED,
    STATUS_NOT_CONVERGED,
    STATUS_OK,
    STATUS_SCF,
    STATUS_UNPARSABLE,
    STATUS_UNSUPPORTED_ELEMENT,
    STATUSES,
    GeometryRecord,
    GeometrySettings,
    bonds_changed,
    canonical_smiles,
    changed_bonds,
    covalent_bonds,
    graph_bonds,
    optimise_smiles,
)
from al.data.conformers.run import GeometryRun, compute_geometries
from al.data.conformers.store import GeometryStore, default_folder

__all__ = [
    "OUTPUT_SUFFIXES",
    "STATUSES",
    "STATUS_BONDS_CHANGED",
    "STATUS_EMBEDDING_FAILED",
    "STATUS_NOT_CONVERGED",
    "STATUS_OK",
    "STATUS_SCF",
    "STATUS_UNPARSABLE",
    "STATUS_UNSUPPORTED_ELEMENT",
    "GeometryRecord",
    "GeometryRun",
    "GeometrySettings",
    "GeometryStore",
    "SmilesInputError",
    "bonds_changed",
    "canonical_smiles",
    "changed_bonds",
    "check_output",
    "compute_geometries",
    "covalent_bonds",
    "default_folder",
    "graph_bonds",
    "optimise_smiles",
    "qm9_smiles",
    "qm9_split_smiles",
    "read_smiles",
    "read_smiles_rows",
    "write_geometries",
]
