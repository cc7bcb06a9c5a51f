"""Test MAE per label count for campaigns in one experiment, mean and spread over seeds.

Reads campaign runs back from the tracking server (``MLFLOW_TRACKING_URI``) with the
public API and prints one row per (strategy, n_labelled).

    python benchmarks/learning_curves.py --experiment first-comparison
"""

from __future__ import annotations

import argparse

import pandas as pd
from mlflow.tracking import MlflowClient

from al.tracking import TAG_KIND, TAG_SEED, TAG_STRATEGY, CampaignMetrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--metric", default=CampaignMetrics.TEST_MAE)
    args = p.parse_args()
    client = MlflowClient()
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        raise SystemExit(f"no experiment named {args.experiment!r}")
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'campaign'", max_results=1000
    )
    rows = []
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        for m in client.get_metric_history(run.info.run_id, args.metric):
            rows.append(
                {"strategy": run.data.tags[TAG_STRATEGY], "seed": run.data.tags[TAG_SEED],
                 "n_labelled": m.step, args.metric: m.value}
            )  # fmt: skip
    if not rows:
        raise SystemExit("no finished campaign runs with that metric")
    df = pd.DataFrame(rows)
    table = (
        df.groupby(["strategy", "n_labelled"])[args.metric]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    wide = table.pivot(index="n_labelled", columns="strategy", values="mean")
    spread = table.pivot(index="n_labelled", columns="strategy", values="std")
    out = wide.map(lambda v: f"{v:.4f}") + " ± " + spread.map(lambda v: f"{v:.4f}")
    print(f"{args.metric}: mean ± std over seeds (seeds per cell: {int(table['count'].min())}"
          f"-{int(table['count'].max())})")  # fmt: skip
    print(out.to_string())


if __name__ == "__main__":
    main()
