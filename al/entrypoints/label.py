"""The ``label`` entry point: label a CSV of QM9 indices with an oracle, logged as a run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from al import tracking
from al.data.load import load_qm9
from al.oracles import build_oracle
from al.tracking.registry import register_oracles

log = logging.getLogger(__name__)


def run_label(
    oracle_spec: str,
    input_csv: str | Path,
    output: str | Path | None = None,
    cost: float | None = None,
    experiment_name: str = "al",
    echo: Callable[[str], None] | None = None,
) -> str:
    """Label the ``qm9_index`` column of ``input_csv`` with an oracle; log it as a run.

    Every input row gets an output row (failures with their status). Each distinct molecule
    is labelled, and paid for, once: a repeated ``qm9_index`` shares the first row's label
    and status with cost 0, so the ``cost`` column sums to what was spent; the run records
    how many rows were collapsed (``n_duplicates``). Returns the run id.
    """
    path = Path(input_csv)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    table = pd.read_csv(path)
    if "qm9_index" not in table.columns:
        raise ValueError(
            f"{path}: no 'qm9_index' column; expected a CSV with a qm9_index column "
            f"(found: {', '.join(map(str, table.columns)) or 'no columns'})"
        )
    index = pd.to_numeric(table["qm9_index"], errors="coerce")
    if index.isna().any() or (index % 1 != 0).any():
        line = int(index.isna().idxmax() if index.isna().any() else (index % 1 != 0).idxmax()) + 2
        raise ValueError(f"{path}:{line}: qm9_index must be an integer")
    data = load_qm9()
    oracle = build_oracle(oracle_spec, data=data, cost=cost)
    register_oracles([oracle])  # the shipped pretrained oracle, once per tracking server
    requested = index.to_numpy().astype("int64")  # [n_rows]
    first_row, distinct = pd.factorize(requested)  # [n_rows] -> [n_distinct], first-seen order
    result = oracle.label(np.asarray(distinct, dtype=np.int64))
    paid = result.to_frame()
    frame = paid.iloc[first_row].reset_index(drop=True)  # one row per input row
    repeated = pd.Series(requested).duplicated().to_numpy()
    frame.loc[repeated, "cost"] = 0.0
    n_duplicates = int(repeated.sum())
    if n_duplicates:
        log.info(
            "event=duplicates_collapsed rows=%d distinct=%d duplicates=%d",
            len(frame), len(paid), n_duplicates,
        )  # fmt: skip
    tracking.set_experiment(experiment_name)
    with mlflow.start_run() as run:
        mlflow.set_tags({tracking.TAG_KIND: tracking.KIND_LABEL, tracking.TAG_ORACLE: oracle.name})
        described = {f"oracle.{k}": v for k, v in oracle.describe().items()}
        tracking.log_params(
            {"oracle": oracle.name, "input": str(path), "n_requested": len(frame), **described}
        )
        tracking.log_metrics(
            {"cost_spent": float(paid["cost"].sum()), "n_ok": int(result.ok.sum()),
             "n_failed": int((~result.ok).sum()), "n_duplicates": n_duplicates}, step=0,
        )  # fmt: skip
        tracking.log_text_artifact(frame.to_csv(index=False), "labels.csv")
    if output:
        frame.to_csv(output, index=False)
    if echo is not None:
        collapsed = (
            f"; {n_duplicates} duplicate row(s) collapsed, labelled once" if n_duplicates else ""
        )
        echo(
            f"labelled {int(result.ok.sum())} of {len(paid)} molecules with {oracle.name} "
            f"(cost {paid['cost'].sum():g}{collapsed}); run {run.info.run_id}"
        )
    return run.info.run_id
