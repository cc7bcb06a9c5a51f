"""What a pool costs to make: ``al pool create`` on a SMILES file, geometries computed from
scratch (a fresh geometry cache), then the first proposal of a campaign on it.

    python benchmarks/pool_create.py [--molecules 1000] [--workers 2] [--smiles FILE]

Without ``--smiles`` the file is ``--molecules`` SMILES of QM9 (a seeded sample of the pool
split of the default split: small H/C/N/O/F molecules, as a chemist's library of fragments
might be). Prints the wall time of the pool, seconds a molecule, the statuses, the wall
time of round 0's proposal (``oracle=external``: the random initial, validation and
held-out sets, 40 % of the pool, written out; no fit) and the load average before and
after.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecules", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--smiles", default="", help="a .smi file instead of QM9's SMILES")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="al-pool-bench-") as tmp:
        source = Path(args.smiles) if args.smiles else _qm9_smiles(Path(tmp), args.molecules)
        os.environ["AL_CACHE_DIR"] = str(Path(tmp) / "cache")  # nothing cached: all computed
        os.environ["AL_POOL_DIR"] = str(Path(tmp) / "pools")
        os.environ["AL_JOURNAL_DIR"] = str(Path(tmp) / "journal")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        from al.data.pools import create_pool

        print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}")
        t0 = time.perf_counter()
        pool = create_pool("bench", source, workers=args.workers, show_progress=False)
        seconds = time.perf_counter() - t0
        n = len(pool.table)
        print(f"pool: {n} molecules in {seconds:.1f} s with {args.workers} worker(s), "
              f"{seconds / n:.3f} s a molecule; statuses {pool.meta['counts']}")  # fmt: skip
        print(f"load average (1 min) after the pool: {os.getloadavg()[0]:.2f}")
        from al.config import build_config
        from al.entrypoints.al_loop import run_campaign
        from al.loop.config import CampaignConfig

        usable = int(pool.meta["molecules"]["usable"])
        sizes = {"initial_size": usable // 5, "val_size": usable // 10,
                 "heldout_size": usable // 10}  # fmt: skip
        config = build_config(CampaignConfig, {
            "pool": "bench", "oracle": "external", **sizes, "progress": False,
            "batch_size": max(1, usable // 10),
            "batch_dir": str(Path(tmp) / "batches"), "experiment_name": "pool-bench",
        })  # fmt: skip
        t0 = time.perf_counter()
        run_campaign(config)
        print(f"round 0's proposal ({sum(sizes.values())} molecules written out): "
              f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")


def _qm9_smiles(folder: Path, n: int) -> Path:
    """``n`` SMILES of the QM9 pool split (seeded), one ``SMILES id`` line each."""
    from al.data.config import DataConfig
    from al.data.load import load_data

    data, splits = load_data(DataConfig())
    chosen = np.random.default_rng(0).choice(splits.pool, size=n, replace=False)
    rows = data.rows_of(np.sort(chosen)).tolist()
    path = folder / "qm9_sample.smi"
    lines = [f"{data.smiles[r]} qm9-{int(data.qm9_index[r])}" for r in rows]
    path.write_text("smiles id\n" + "\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    main()
