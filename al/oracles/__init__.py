"""Oracles: the labellers a campaign buys labels from, and their registry.

:mod:`al.oracles.base` is the contract and lists the oracles (``dft``, ``xtb``,
``model:<uri>``, ``pretrained``, ``pyg_schnet``, ``ani1x``, ``ani1ccx``, and ``pyscf``: DFT
computed live with PySCF, the electronic atomization energy), one module per oracle kind,
:mod:`al.oracles.registry` the registry and factory. Registering the shipped oracle in MLflow is
:func:`al.tracking.registry.register_oracles` (tracking sits above the oracles).
"""

# the registry first: it imports every oracle module, in the order the names are listed
from al.oracles.registry import ORACLES, build_oracle, oracle_choices, oracle_spec_problem

# isort: split
from al.oracles.ani import (
    ANI_ELEMENTS,
    ANI1ccxOracle,
    ANI1xOracle,
    ANIOracle,
    ani_energies,
    load_ani,
    supported,
    torchani_problem,
)
from al.oracles.ani_weights import (
    ANI_DIR_ENV,
    ANI_DOWNLOAD_ENV,
    ANI_MODELS,
    ani_dir,
    ani_weights,
    fetch_ani_weights,
)
from al.oracles.base import (
    FRAME_COLUMNS,
    NETWORK_CHUNK,
    STATUS_MISSING_TARGET,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_SCF,
    STATUS_TIMEOUT,
    STATUS_UNKNOWN,
    STATUS_UNSUPPORTED_ELEMENT,
    LabelResult,
    Oracle,
    OracleError,
    PriorLabels,
    RowLabels,
)
from al.oracles.dft import DFTOracle
from al.oracles.model import ModelOracle
from al.oracles.pretrained import (
    PRETRAINED_CHECKPOINT,
    PRETRAINED_DIR,
    PretrainedOracle,
    packaged_checkpoint,
    read_provenance,
)
from al.oracles.pyg_schnet import (
    PYG_HARTREE_TO_EV,
    PYG_SCHNET_FOLDER,
    PYG_SCHNET_MODEL,
    PYG_SCHNET_URL,
    PyGSchNetOracle,
    network_problem,
)
from al.oracles.pyscf import (
    DEFAULT_LEVEL,
    EnergyCache,
    JobOutcome,
    Level,
    PySCFOracle,
    level_problem,
    parse_level,
)
from al.oracles.xtb import (
    BOHR_PER_ANGSTROM,
    XTB_METHOD,
    XTB_REFERENCE_FILE,
    XTBOracle,
    XTBReference,
    failure_status,
    fit_xtb_reference,
    load_xtb_reference,
    xtb_energies,
    xtb_energy_hartree,
)

__all__ = [
    "ANI_DIR_ENV",
    "ANI_DOWNLOAD_ENV",
    "ANI_ELEMENTS",
    "ANI_MODELS",
    "BOHR_PER_ANGSTROM",
    "DEFAULT_LEVEL",
    "FRAME_COLUMNS",
    "NETWORK_CHUNK",
    "ORACLES",
    "PRETRAINED_CHECKPOINT",
    "PRETRAINED_DIR",
    "PYG_HARTREE_TO_EV",
    "PYG_SCHNET_FOLDER",
    "PYG_SCHNET_MODEL",
    "PYG_SCHNET_URL",
    "STATUS_MISSING_TARGET",
    "STATUS_NON_FINITE",
    "STATUS_OK",
    "STATUS_SCF",
    "STATUS_TIMEOUT",
    "STATUS_UNKNOWN",
    "STATUS_UNSUPPORTED_ELEMENT",
    "ANI1ccxOracle",
    "ANI1xOracle",
    "ANIOracle",
    "DFTOracle",
    "EnergyCache",
    "JobOutcome",
    "LabelResult",
    "Level",
    "ModelOracle",
    "Oracle",
    "OracleError",
    "PretrainedOracle",
    "PriorLabels",
    "PyGSchNetOracle",
    "PySCFOracle",
    "RowLabels",
    "XTBOracle",
    "XTBReference",
    "ani_dir",
    "ani_energies",
    "ani_weights",
    "build_oracle",
    "failure_status",
    "fetch_ani_weights",
    "fit_xtb_reference",
    "level_problem",
    "load_ani",
    "load_xtb_reference",
    "network_problem",
    "oracle_choices",
    "oracle_spec_problem",
    "packaged_checkpoint",
    "parse_level",
    "read_provenance",
    "supported",
    "torchani_problem",
    "xtb_energies",
    "xtb_energy_hartree",
]
