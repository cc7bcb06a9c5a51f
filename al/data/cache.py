"""Where the project keeps what it computed once (QM9's parsed cache, geometries, energies),
and how its JSON-lines stores append."""

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


def append_durably(path: Path, payload: bytes) -> None:
    """Append ``payload`` (whole lines) to ``path`` and fsync before returning: what every
    JSON-lines store of the project (label journal, geometry and energy caches) writes
    with. A last line cut short by a kill is closed off first, so it never swallows the
    new one; the folder is created when missing."""
    if not payload:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            payload = b"\n" + payload  # close off a partial line
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
