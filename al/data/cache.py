"""Where the project keeps what it computed once: QM9's parsed cache, geometries, energies."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AL_CACHE_DIR"


def cache_dir() -> Path:
    """``$AL_CACHE_DIR``, else ``$XDG_CACHE_HOME/al``, else ``~/.cache/al``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "al"
