"""Fit the per-element reference that puts GFN2-xTB energies on the DFT target's scale.

The ``xtb`` oracle labels a molecule with ``27.211386 * E_xtb + sum_atoms c[z]`` (eV). The
coefficients ``c`` (eV per atom of H, C, N, O, F) are fitted here (by
:func:`al.oracles.xtb.fit_xtb_reference`, least squares) against the QM9 target on random
molecules of the ORACLE split only, never test or pool, so that
xTB labels carry no information about the molecules a campaign is evaluated or run on. A
further set of oracle-split molecules gives a held-out error. Writes the JSON the oracle
loads (``al/data/xtb_reference.json``).

Usage::

    python benchmarks/xtb_reference.py               # 2000 + 500 molecules, ~7 ms each
    python benchmarks/xtb_reference.py --n 500 --out /tmp/ref.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path

import numpy as np

from al.data.elements import HARTREE_TO_EV
from al.data.load import load_qm9
from al.data.splits import SplitConfig, make_splits, split_record
from al.oracles.xtb import XTB_METHOD, fit_xtb_reference, xtb_energies

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "al" / "data" / "xtb_reference.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="oracle-split molecules to fit on")
    p.add_argument("--n-heldout", type=int, default=500, help="further ones to evaluate on")
    p.add_argument("--seed", type=int, default=0, help="seed of the molecule sample")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--n-oracle", type=int, default=50_000)
    p.add_argument("--accuracy", type=float, default=1.0, help="tblite accuracy setting")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    data = load_qm9()
    config = SplitConfig(args.split_seed, args.n_test, args.n_oracle)
    splits = make_splits(data.qm9_index.numpy(), config)
    if args.n + args.n_heldout > splits.oracle.size:
        raise SystemExit(f"--n + --n-heldout exceeds the oracle split ({splits.oracle.size})")
    chosen = np.random.default_rng(args.seed).choice(
        splits.oracle, args.n + args.n_heldout, replace=False
    )
    rows = data.rows_of(chosen).numpy()
    comp = data.composition(data.rows_of(chosen)).numpy()  # [m, 5]: H, C, N, O, F
    y = data.y.numpy()[rows]

    t0 = time.perf_counter()
    energy = xtb_energies(data, rows, args.accuracy)
    seconds = time.perf_counter() - t0
    fit = np.zeros(rows.size, dtype=bool)
    fit[: args.n] = True
    stats = fit_xtb_reference(energy, comp, y, fit)

    try:
        out_name = str(args.out.resolve().relative_to(REPO))
    except ValueError:
        out_name = str(args.out)
    command = (
        f"python benchmarks/xtb_reference.py --n {args.n} --n-heldout {args.n_heldout} "
        f"--seed {args.seed} --split-seed {args.split_seed} --n-test {args.n_test} "
        f"--n-oracle {args.n_oracle} --accuracy {args.accuracy:g} --out {out_name}"
    )
    record = {
        "method": XTB_METHOD,
        "accuracy": args.accuracy,
        "model": "label_ev = energy_scale_ev_per_hartree * E_xtb_hartree + sum_atoms c[z]",
        "energy_scale_ev_per_hartree": HARTREE_TO_EV,
        **stats,
        "sample_seed": args.seed,
        "split": split_record(splits, config),
        "split_digest": splits.digest(),
        "data_digest": data.digest(),
        "command": command,
        "tblite_version": importlib.metadata.version("tblite"),
        "seconds_per_molecule": seconds / rows.size,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"GFN2-xTB on {rows.size} oracle-split molecules: {seconds / rows.size * 1e3:.1f} ms "
        f"each, {record['n_failed']} failed"
    )
    print(
        "coefficients (eV/atom): "
        + ", ".join(f"{s} {v:.4f}" for s, v in record["coefficients_ev"].items())
    )
    print(f"fit MAE      {record['fit_mae_ev']:.4f} eV on {record['n_fit']} molecules")
    print(f"held-out MAE {record['heldout_mae_ev']:.4f} eV on {record['n_heldout']} molecules")
    print(f"composition-only held-out MAE {record['heldout_composition_only_mae_ev']:.4f} eV")
    corr = record["heldout_correlation_beyond_composition"]
    print(f"correlation of xTB and DFT beyond composition (held-out) {corr:.3f}")
    print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
