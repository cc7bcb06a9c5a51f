"""Optional dependencies, installed with the package's extras (``pip install al[pyg]``).

Only the features that need one import it, when they are used; without it they stop with
one line that names the extra to install.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

#: extra -> (the module it installs, its name for people)
EXTRAS: dict[str, tuple[str, str]] = {
    "pyg": ("torch_geometric", "PyTorch Geometric"),
    # grids on a dask cluster (`al experiment --backend dask`)
    "cluster": ("distributed", "dask.distributed"),
    # the `pyscf` oracle (DFT computed live)
    "dft": ("pyscf", "PySCF"),
}


class MissingExtraError(RuntimeError):
    """A feature needs an optional dependency that is not installed."""


def require(extra: str, feature: str) -> ModuleType:
    """The module of ``extra``, imported; a :class:`MissingExtraError` (one line that names
    ``feature`` and the install command) when it is not installed."""
    module, name = EXTRAS[extra]
    try:
        return import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{feature} needs {name}, which is not installed: pip install al[{extra}]"
        ) from None
