"""ANI-1x and ANI-1ccx as labellers of QM9: held-out MAE and throughput; their references.

For each model: the ensemble's energies at QM9's DFT geometries, put on the target's scale
by the per-element linear reference (:func:`al.oracles.xtb.fit_xtb_reference`, H C N O)
fitted on random oracle-split molecules without F (``--n-fit``, plus ``--n-heldout`` to
check it), then the MAE against QM9's H298 atomization enthalpy on a seeded sample of
test-split molecules without F (``--n-test``), and the throughput of the padded batches
(molecules/s, the weights already loaded). ``--write-references`` writes the packaged
references the oracles and baselines read (``al/data/<model>_reference.json``).

Usage::

    python benchmarks/ani_labellers.py --n-test 2000 --threads 1
    python benchmarks/ani_labellers.py --write-references    # refit the packaged references
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from al.data.elements import ELEMENTS, HARTREE_TO_EV
from al.data.load import load_qm9
from al.data.splits import SplitConfig, make_splits, split_record
from al.oracles.ani import (
    ANI_METHODS,
    ANI_REFERENCE_FILES,
    ani_energies,
    load_ani,
    supported,
)
from al.oracles.ani_weights import ANI_MODELS, ANI_WEIGHTS_SHA256, ANI_WHEEL_FILE, ani_weights
from al.oracles.xtb import fit_xtb_reference
from al.runtime import configure_threads

REPO = Path(__file__).resolve().parents[1]
HCNO = ("H", "C", "N", "O")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(ANI_MODELS), help="comma-separated")
    p.add_argument("--n-test", type=int, default=2000, help="test-split molecules without F")
    p.add_argument("--n-fit", type=int, default=2000, help="oracle-split molecules to fit on")
    p.add_argument("--n-heldout", type=int, default=500, help="further ones to check the fit")
    p.add_argument("--seed", type=int, default=0, help="seed of the molecule samples")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--n-split-test", type=int, default=10_000)
    p.add_argument("--n-split-oracle", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--write-references", action="store_true",
                   help="write al/data/<model>_reference.json")  # fmt: skip
    return p.parse_args(argv)


def sample(pool: np.ndarray, n: int, rng: np.random.Generator, data, ok_rows) -> np.ndarray:
    """``n`` random rows of the QM9 indices ``pool`` whose molecules ANI supports."""
    rows = data.rows_of(rng.permutation(pool)).numpy()
    rows = rows[ok_rows(rows)]
    if rows.size < n:
        raise SystemExit(f"only {rows.size} molecules without F in that split, {n} asked")
    return rows[:n]


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    threads = configure_threads(args.threads)
    data = load_qm9()
    config = SplitConfig(args.split_seed, args.n_split_test, args.n_split_oracle)
    splits = make_splits(data.qm9_index.numpy(), config)
    z, pos, ptr = data.z.numpy(), data.pos.numpy(), data.ptr.numpy()
    y = data.y.numpy()

    def ok_rows(rows: np.ndarray) -> np.ndarray:
        return supported(z, ptr, rows)

    rng = np.random.default_rng(args.seed)
    ref_rows = sample(splits.oracle, args.n_fit + args.n_heldout, rng, data, ok_rows)
    test_rows = sample(splits.test, args.n_test, rng, data, ok_rows)
    cols = [list(ELEMENTS).index(s) for s in HCNO]
    comp_ref = data.composition(torch.as_tensor(ref_rows)).numpy()[:, cols]  # [m, 4]
    comp_test = data.composition(torch.as_tensor(test_rows)).numpy()[:, cols]
    fit = np.arange(ref_rows.size) < args.n_fit

    load_before = os.getloadavg()
    print(
        f"threads {threads}; load average {load_before[0]:.2f} {load_before[1]:.2f} "
        f"{load_before[2]:.2f} (1, 5, 15 min) on {os.cpu_count()} cores; reference on "
        f"{args.n_fit} + {args.n_heldout} oracle-split molecules, MAE on {args.n_test} "
        f"test-split molecules (no F), seed {args.seed}, split digest {splits.digest()}"
    )
    out = {}
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        t0 = time.perf_counter()
        net = load_ani(model, str(ani_weights(model)))
        load_s = time.perf_counter() - t0
        e_ref, _ = ani_energies(net, z, pos, ptr, ref_rows, args.batch_size)
        t0 = time.perf_counter()
        e_test, std_test = ani_energies(net, z, pos, ptr, test_rows, args.batch_size)
        seconds = time.perf_counter() - t0
        stats = fit_xtb_reference(e_ref, comp_ref, y[ref_rows], fit, elements=HCNO)
        coef = np.array([stats["coefficients_ev"][s] for s in HCNO])
        err = HARTREE_TO_EV * e_test + comp_test @ coef - y[test_rows]
        c0, *_ = np.linalg.lstsq(comp_ref[fit], y[ref_rows][fit], rcond=None)
        comp_only = np.abs(comp_test @ c0 - y[test_rows]).mean()
        std_ev = HARTREE_TO_EV * std_test
        rank = np.corrcoef(np.argsort(np.argsort(std_ev)), np.argsort(np.argsort(np.abs(err))))
        row = {
            "test_mae_ev": float(np.abs(err).mean()),
            "test_rmse_ev": float(np.sqrt((err**2).mean())),
            "test_composition_only_mae_ev": float(comp_only),
            "molecules_per_s": test_rows.size / seconds,
            "load_s": load_s,
            "median_std_ev": float(np.median(std_ev)),
            "spearman_std_abs_error": float(rank[0, 1]),
            **stats,
        }
        out[model] = row
        print(
            f"{model:8s} test MAE {row['test_mae_ev']:.4f} eV (RMSE {row['test_rmse_ev']:.4f}; "
            f"composition only {comp_only:.4f}); oracle-split held-out MAE "
            f"{stats['heldout_mae_ev']:.4f} eV; {row['molecules_per_s']:.0f} molecules/s "
            f"(weights loaded in {load_s:.1f} s); ensemble std median "
            f"{row['median_std_ev'] * 1e3:.1f} meV, Spearman(std, |error|) "
            f"{row['spearman_std_abs_error']:.2f}"
        )
        if args.write_references:
            write_reference(model, args, stats, splits, config, data, row)
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    return out


def write_reference(model, args, stats, splits, config, data, row) -> None:
    """``al/data/<model>_reference.json``, read by :func:`al.oracles.load_xtb_reference`."""
    path = REPO / "al" / "data" / ANI_REFERENCE_FILES[model]
    command = (
        f"python benchmarks/ani_labellers.py --models {model} --n-fit {args.n_fit} "
        f"--n-heldout {args.n_heldout} --seed {args.seed} --split-seed {args.split_seed} "
        f"--n-split-test {args.n_split_test} --n-split-oracle {args.n_split_oracle} "
        "--write-references"
    )
    record = {
        "method": ANI_METHODS[model],
        "labeller": "ANI",
        "model": "label_ev = energy_scale_ev_per_hartree * E_mean_hartree + sum_atoms c[z]",
        "energy_scale_ev_per_hartree": HARTREE_TO_EV,
        **stats,
        "sample_seed": args.seed,
        "sample": "oracle-split molecules without F",
        "split": split_record(splits, config),
        "split_digest": splits.digest(),
        "data_digest": data.digest(),
        "command": command,
        "weights": f"NeuroChem files of {ANI_WHEEL_FILE}",
        "weights_sha256": ANI_WEIGHTS_SHA256[model],
        "torchani_version": importlib.metadata.version("torchani"),
        "molecules_per_s": row["molecules_per_s"],
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
