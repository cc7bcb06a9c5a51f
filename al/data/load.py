"""Loading QM9 from a source through the on-disk cache, and the campaign's fixed split."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch

from al.data.cache import cache_dir
from al.data.config import SOURCES, DataConfig
from al.data.molecules import MolecularData, _from_record, _save_atomic, _to_record
from al.data.splits import SplitConfig, Splits, make_splits

log = logging.getLogger(__name__)

#: Bump when the cached layout or the target definition changes.
CACHE_FORMAT = 1


def load_qm9(
    source: str = "qm9pack", root: str | Path | None = None, cache: Path | None = None
) -> MolecularData:
    """Load QM9 from ``source``, through the on-disk cache.

    Args:
        source: ``"qm9pack"`` (offline default) or ``"pyg"`` (a PyTorch Geometric ``QM9``
            root given as ``root``).
        root: folder of the source (qm9pack: its CSV folder; pyg: the dataset root).
        cache: cache folder; default :func:`cache_dir`.
    """
    reader = SOURCES.get(source)  # an unknown name: one line
    folder = reader.root(source, root)
    # Keyed by the source files themselves (path, size, mtime), so a changed source or
    # another root gets its own cache entry.
    # (a missing folder finds no cache entry; its source loader then says what is wrong)
    stats = sorted(
        f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in (folder.rglob("*") if folder.exists() else [])
        if p.is_file() and p.suffix in (".csv", ".pt")
    )
    key = "|".join([source, str(folder), *stats])
    tag = hashlib.sha256(key.encode()).hexdigest()[:8]
    path = (Path(cache) if cache else cache_dir()) / f"qm9-{source}-{tag}-v{CACHE_FORMAT}.pt"
    if path.exists():
        t0 = time.perf_counter()
        data = _from_record(torch.load(path, weights_only=True))
        log.debug("event=cache_hit path=%s seconds=%.3f", path, time.perf_counter() - t0)
        return data
    t0 = time.perf_counter()
    data = reader.load(Path(root) if root is not None else None)
    log.info(
        "event=parsed source=%s molecules=%d seconds=%.1f",
        source,
        len(data),
        time.perf_counter() - t0,
    )
    _save_atomic(_to_record(data), path)
    return data


def load_data(config: DataConfig) -> tuple[MolecularData, Splits]:
    """The molecules and the fixed split named by ``config``."""
    data = load_qm9(config.source, config.data_root or None)
    splits = make_splits(
        data.qm9_index.numpy(), SplitConfig(config.split_seed, config.n_test, config.n_oracle)
    )
    geometry = getattr(config, "geometry", "dft")
    if geometry in ("xtb", "dft_on_xtb_set"):  # the same split, on what has a geometry
        from al.data.xtb_geometry import restrict_splits, xtb_geometry_data

        at_xtb, counts = xtb_geometry_data(data)
        full, splits = splits, restrict_splits(splits, at_xtb.qm9_index.numpy())
        if geometry == "xtb":  # else QM9's own positions, on the same molecules
            data = at_xtb
        log.info(
            "event=geometry_%s molecules=%d of %d test=%d of %d pool=%d of %d statuses=%s",
            geometry, len(at_xtb), sum(counts.values()), len(splits.test), len(full.test),
            len(splits.pool), len(full.pool), dict(counts),
        )  # fmt: skip
    return data, splits
