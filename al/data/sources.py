"""Where QM9 is read from: the ``source`` key's registry.

Each source registers itself beside its loader (:mod:`al.data.qm9pack`,
:mod:`al.data.pyg_source`); :func:`al.data.load.load_qm9` asks the registry, never a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from al.registry import Registry

if TYPE_CHECKING:
    from al.data.molecules import MolecularData


@dataclass(frozen=True)
class DataSource:
    """A way to read QM9.

    Attributes:
        load: reads the molecules from a folder (None: the source's own default).
        default_root: the folder read when none is given; None when the source needs one
            (``data_root``).
    """

    load: Callable[[Path | None], MolecularData]
    default_root: Callable[[], Path] | None = None

    def root(self, name: str, root: str | Path | None) -> Path:
        """The folder to read: ``root``, or the default; ValueError (one line) when the
        source has no default and none was given."""
        if root is not None:
            return Path(root).resolve()
        if self.default_root is None:
            raise ValueError(f"source {name!r} needs its folder: set data_root")
        return self.default_root()


#: Data sources by name (the ``source`` key).
SOURCES: Registry[DataSource] = Registry("data source")
