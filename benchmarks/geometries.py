"""Geometries from SMILES: how many molecules come out ``ok``, and how fast.

Runs :func:`al.data.conformers.compute_geometries` (RDKit ETKDGv3, MMFF94, GFN2-xTB
optimisation with tblite through ASE's LBFGS) on the first ``--n`` QM9 molecules, or on a
SMILES file, with ``--workers`` processes of one thread each, and prints the count of each
status, the share converged (``ok``) and molecules/s overall and per worker, with the load
average before and after (on a shared machine the rate depends on it).

The store goes to a fresh temporary folder unless ``--cache`` names one, so every molecule is
computed and timed; with ``--cache`` a second run computes nothing.

Usage::

    python benchmarks/geometries.py --n 40 --workers 1
    python benchmarks/geometries.py --smiles molecules.smi --workers 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from al.data.conformers import GeometrySettings, compute_geometries, qm9_smiles, read_smiles


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40, help="first N QM9 molecules")
    p.add_argument("--smiles", type=Path, default=None, help="a .smi/.txt/.csv file instead")
    p.add_argument("--pool", type=int, default=0,
                   help="N random molecules of the default split's pool instead (seeded by "
                   "--sample-seed): a sample of the sizes a campaign meets")  # fmt: skip
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--column", default="smiles", help="SMILES column of a CSV")
    p.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    p.add_argument("--fmax", type=float, default=0.05, help="eV/Angstrom")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=None, help="store folder (default: fresh)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return p.parse_args(argv)


def pool_sample(n: int, seed: int) -> list[tuple[str, str]]:
    """``(name, smiles)`` of ``n`` random molecules of the default split's pool, sorted by
    QM9 index (``numpy.random.default_rng(seed)``)."""
    import numpy as np

    from al.data.config import DataConfig
    from al.data.load import load_data

    data, splits = load_data(DataConfig())
    pick = np.sort(np.random.default_rng(seed).choice(np.asarray(splits.pool), n, replace=False))
    rows = data.rows_of(pick)
    return [(f"qm9_{int(q)}", data.smiles[int(r)]) for q, r in zip(pick, rows, strict=True)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.pool:
        rows = pool_sample(args.pool, args.sample_seed)
    else:
        rows = read_smiles(args.smiles, args.column) if args.smiles else qm9_smiles(args.n)
    settings = GeometrySettings(fmax=args.fmax, max_steps=args.max_steps, seed=args.seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="geometries-") as fresh:
        run = compute_geometries(
            [s for _, s in rows], settings, workers=args.workers,
            cache=args.cache or fresh, show_progress=False, echo=print,
        )  # fmt: skip
    load_after = os.getloadavg()
    counts = run.counts()
    n = len(run.records)
    steps = [r.n_steps for r in run.records if r.has_geometry]
    seconds = [r.seconds for r in run.records if r.has_geometry]
    result = {
        "source": (
            f"{args.pool} random pool molecules (seed {args.sample_seed})"
            if args.pool
            else str(args.smiles)
            if args.smiles
            else f"QM9 first {args.n}"
        ),
        "molecules": n,
        "computed": run.computed,
        "workers": run.workers,
        "settings": settings.record(),
        "counts": counts,
        "share_ok": counts.get("ok", 0) / n if n else float("nan"),
        "seconds": run.seconds,
        "molecules_per_s": run.rate,
        "molecules_per_s_per_worker": run.rate / run.workers,
        "mean_steps": sum(steps) / len(steps) if steps else float("nan"),
        "mean_seconds_per_molecule": sum(seconds) / len(seconds) if seconds else float("nan"),
        "load_before": load_before,
        "load_after": load_after,
        "cores": os.cpu_count(),
    }
    print(f"# {result['source']}: {n} molecules, {run.workers} worker(s), {os.cpu_count()} cores")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    print("status counts: " + ", ".join(f"{s} {c}" for s, c in counts.items()))
    print(f"share ok (converged, bonds kept): {result['share_ok']:.3f}")
    print(
        f"computed {run.computed} in {run.seconds:.1f} s: {run.rate:.2f} molecules/s, "
        f"{result['molecules_per_s_per_worker']:.2f} per worker; mean "
        f"{result['mean_steps']:.1f} LBFGS steps, {result['mean_seconds_per_molecule']:.3f} s "
        "per molecule"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
