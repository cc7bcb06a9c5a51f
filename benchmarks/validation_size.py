"""How precise is a campaign's validation MAE at a given validation-set size?

Reads the validation predictions of converged checkpoints
(``converged/labels_NNNNN/validation.csv`` on campaign runs) from a tracking store and,
for each (checkpoint size, run), the standard error of the validation MAE at the set's
own size and at smaller subsets (bootstrap over molecules, seeded): how well a set of
``n`` molecules pins down the MAE that early stopping and the stopping rules read. The
test set is not read.

    MLFLOW_TRACKING_URI=sqlite:///$GRIDS/protocol.db \\
        python benchmarks/validation_size.py --experiment-name grid-mission_protocol
"""

from __future__ import annotations

import argparse
import re

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient


def standard_error(abs_err: np.ndarray, n: int, rng: np.random.Generator, reps: int) -> float:
    """Bootstrap standard error of the MAE of ``n`` molecules drawn from ``abs_err``."""
    idx = rng.integers(0, abs_err.size, size=(reps, n))
    return float(abs_err[idx].mean(1).std(ddof=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment-name", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    client = MlflowClient()
    exp = client.get_experiment_by_name(args.experiment_name)
    if exp is None:
        raise SystemExit(f"no experiment {args.experiment_name!r} in {mlflow.get_tracking_uri()}")
    runs = client.search_runs([exp.experiment_id], "tags.`al.kind` = 'campaign'", max_results=1000)
    rng = np.random.default_rng(args.seed)
    rows = []
    for run in runs:
        for folder in client.list_artifacts(run.info.run_id, "converged"):
            match = re.search(r"labels_(\d+)$", folder.path)
            if not match:
                continue
            path = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=f"{folder.path}/validation.csv"
            )
            table = pd.read_csv(path)
            err = (table["mean"] - table["target"]).abs().to_numpy()
            tags = run.data.tags
            row = {
                "arm": tags.get("al.cell", ""), "seed": tags.get("al.seed"),
                "labels": int(match.group(1)), "n_val": err.size, "val_mae": err.mean(),
            }  # fmt: skip
            for n in args.sizes:
                row[f"se_{n}_pct"] = 100 * standard_error(err, n, rng, args.reps) / err.mean()
            rows.append(row)
    if not rows:
        raise SystemExit("no converged validation predictions found")
    frame = pd.DataFrame(rows).sort_values(["labels", "arm", "seed"])
    pd.set_option("display.width", 200)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\nmean over runs, per checkpoint (standard error of the validation MAE, % of it):")
    cols = [f"se_{n}_pct" for n in args.sizes]
    print(
        frame.groupby("labels")[["val_mae", *cols]].mean().to_string(float_format="{:.3g}".format)
    )


if __name__ == "__main__":
    main()
