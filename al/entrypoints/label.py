"""The ``label`` entry point: label a CSV of QM9 indices (or of a pool's ids) with an oracle,
logged as a run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from al import tracking
from al.data.load import load_qm9
from al.data.pools import load_pool, numbers_by_id
from al.oracles import Oracle, build_oracle
from al.tracking.registry import register_oracles

log = logging.getLogger(__name__)


def run_label(
    oracle_spec: str,
    input_csv: str | Path,
    output: str | Path | None = None,
    cost: float | None = None,
    experiment_name: str = "al",
    echo: Callable[[str], None] | None = None,
    pool: str = "",
    timeout_s: float | None = None,
) -> str:
    """Label the ``qm9_index`` column of ``input_csv`` with an oracle; log it as a run.
    ``timeout_s`` limits each label of an oracle that computes them live (``pyscf``).

    With ``pool``, the ``id`` column names molecules of that pool (e.g. a campaign's batch
    for its external labeller), and the output is the input table with its ``label``,
    ``status`` and ``cost`` columns filled in: a labels file for ``al ingest``.

    Every input row gets an output row (failures with their status). Each distinct molecule
    is labelled, and paid for, once: a repeated ``qm9_index`` shares the first row's label
    and status with cost 0, so the ``cost`` column sums to what was spent; the run records
    how many rows were collapsed (``n_duplicates``). Returns the run id.
    """
    path = Path(input_csv)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist")
    if pool:
        return _label_pool(pool, oracle_spec, path, output, cost, experiment_name, echo, timeout_s)
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
    oracle = build_oracle(oracle_spec, data=data, cost=cost, timeout_s=timeout_s)
    requested = index.to_numpy().astype("int64")  # [n_rows]
    return _label_and_log(oracle, requested, None, path, output, experiment_name, echo)


def _label_pool(
    pool: str, oracle_spec: str, path: Path, output: str | Path | None, cost: float | None,
    experiment_name: str, echo: Callable[[str], None] | None, timeout_s: float | None = None,
) -> str:  # fmt: skip
    """:func:`run_label` on the ``id`` column of ``path``, molecules of ``pool``."""
    table = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    if "id" not in table.columns:
        raise ValueError(
            f"{path}: no 'id' column; expected a CSV with the pool's molecule ids in an id "
            f"column, e.g. a campaign's batch (found: {', '.join(map(str, table.columns))})"
        )
    data = load_pool(pool).data
    number = numbers_by_id(data)
    unknown = [i for i in table["id"] if i not in number]
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} id(s) not in pool {pool!r}, e.g. {unknown[0]!r}; "
            "expected ids of that pool (al pool info NAME)"
        )
    oracle = build_oracle(oracle_spec, data=data, cost=cost, timeout_s=timeout_s)
    requested = np.array([number[i] for i in table["id"]], dtype=np.int64)
    return _label_and_log(oracle, requested, table, path, output, experiment_name, echo)


def _label_and_log(
    oracle: Oracle, requested: np.ndarray, given: pd.DataFrame | None, path: Path,
    output: str | Path | None, experiment_name: str, echo: Callable[[str], None] | None,
) -> str:  # fmt: skip
    """Label ``requested`` (``[n_rows]`` indices), each distinct molecule once, log the run;
    the output is ``given`` (a pool's table) with its label columns filled in, if given."""
    register_oracles([oracle])  # the shipped pretrained oracle, once per tracking server
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
    if given is not None:  # a pool's batch: its own table, labelled
        frame = given.assign(**{c: frame[c].to_numpy() for c in ("label", "status", "cost")})
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
