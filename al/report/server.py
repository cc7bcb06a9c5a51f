"""What the report writes to the tracking server, and how it points back at it: links to
runs in the MLflow UI, the report run (nested under its grid's parent run), and the alias
on the registered model of the best arm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from al.config import mask_secrets
from al.report.build import Report
from al.report.stats import CONVERGED_ERRORS
from al.tracking import (
    KIND_EXPERIMENT,
    KIND_REPORT,
    TAG_KIND,
    TAG_PARENT,
    TAG_REPORT_OF,
    TAG_REPORT_RUN,
    run_name,
)
from al.tracking import CampaignMetrics as CM  # noqa: N817 - used in every metric key
from al.tracking.registry import set_alias_of_run


# --- links ------------------------------------------------------------------------------------
def ui_base(uri: str) -> str:
    """The address of the MLflow UI that serves tracking URI ``uri``: an http(s) URL without
    its user, password, query or fragment ("" for any other URI: a database, a folder)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{parts.port}" if parts.port else host
    return mask_secrets(urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")))


def run_links(run_ids: Iterable[str], experiment_id: str, uri: str) -> dict[str, str]:
    """Run id -> its page in the MLflow UI of ``uri``; empty when ``uri`` is not an
    http(s) URL (:func:`ui_base`) or the experiment is not known."""
    base = ui_base(uri)
    if not base or not experiment_id:
        return {}
    return {r: f"{base}/#/experiments/{experiment_id}/runs/{r}" for r in run_ids}


# --- the report run ---------------------------------------------------------------------------
def grid_parent(client: Any, runs: Iterable[Any]) -> str:
    """The grid's parent run (``al.kind=experiment``) when every run compared is nested
    under the same one, else ""."""
    parents = {r.data.tags.get(TAG_PARENT, "") for r in runs}
    if len(parents) != 1 or "" in parents:
        return ""
    (parent,) = parents
    try:
        kind = client.get_run(parent).data.tags.get(TAG_KIND)
    except Exception:  # a parent deleted meanwhile: the report stands on its own
        return ""
    return parent if kind == KIND_EXPERIMENT else ""


def log_report(
    client: Any,
    output_dir: Path,
    experiment_id: str,
    report_of: str,
    params: dict[str, Any],
    parent: str = "",
    tags: dict[str, str] | None = None,
) -> str:
    """Log ``output_dir`` as the artifacts of a run tagged ``al.kind=report`` in the
    experiment, nested under ``parent`` (a grid's parent run) when given; returns its id.
    Under ``mlflow run`` (``MLFLOW_RUN_ID`` set) the project's own run is used when it is
    in the same experiment."""
    from mlflow.entities import Param, RunTag

    tags = {TAG_KIND: KIND_REPORT, TAG_REPORT_OF: report_of, **(tags or {})}
    if parent:
        tags[TAG_PARENT] = parent
    wrapper = os.environ.get("MLFLOW_RUN_ID", "")
    run_id = ""
    if wrapper:
        try:
            if client.get_run(wrapper).info.experiment_id == experiment_id:
                run_id = wrapper
        except Exception:
            run_id = ""
    own = not run_id
    if own:
        name = run_name("report", report_of[:40] if not parent else "grid")
        run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
    existing = client.get_run(run_id).data.params
    client.log_batch(
        run_id,
        params=[Param(k, str(v)) for k, v in params.items() if k not in existing],
        tags=[RunTag(k, v) for k, v in tags.items()],
        synchronous=True,
    )
    try:
        client.log_artifacts(run_id, str(output_dir))
    except Exception:
        if own:
            client.set_terminated(run_id, "FAILED")
        raise
    if own:
        client.set_terminated(run_id, "FINISHED")
        if wrapper:
            client.set_tag(wrapper, TAG_REPORT_RUN, run_id)
    return run_id


# --- the best arm -----------------------------------------------------------------------------
@dataclass
class BestArm:
    """The arm with the lowest value of the report's primary metric, and the run of it whose
    model is the one aliased (its lowest final test MAE)."""

    grid: str
    arm: str
    metric: str
    value: float
    run_id: str
    #: ``models:/<name>@<alias>`` once the alias is set; "" when the model is not registered
    model: str = ""

    def describe(self, alias: str) -> str:
        """One sentence for the report."""
        where = f" (grid {self.grid})" if self.grid else ""
        text = (
            f"Best arm: {self.arm}{where}, by {self.metric} ({self.value:.4g} eV); its model is "
            f"that of run {self.run_id}, its seed with the lowest final test_mae"
        )
        if self.model:
            return f"{text}: registered, alias {alias!r} now points at it ({self.model})."
        return f"{text}; not registered (register_as), so no alias {alias!r} was set."


def best_arm(report: Report) -> BestArm | None:
    """The arm with the lowest primary metric over the report: the mean converged test MAE
    at the last converged checkpoint when the report has converged checkpoints, else the
    mean final test MAE over seeds. None without a finite value."""
    key = CONVERGED_ERRORS[0]
    if report.has_converged:
        table = pd.concat([g.converged for g in report.grids if not g.converged.empty])
        table = table[table["step"] == table["step"].max()].dropna(subset=[key])
        metric = f"mean {key} over seeds at {table['step'].max():,.0f} labels"
    else:
        table, key = pd.concat([g.summary for g in report.grids]), "final_mae"
        table = table.dropna(subset=[key])
        metric = f"mean final {CM.TEST_MAE} over seeds"
    if table.empty:
        return None
    row = table.loc[table[key].idxmin()]
    hist = report.histories.dropna(subset=[CM.TEST_MAE])
    hist = hist[(hist["arm"] == row["arm"]) & (hist["grid"] == row["grid"])]
    finals = hist.sort_values("step").groupby("run_id")[CM.TEST_MAE].last()
    if finals.empty or not math.isfinite(float(row[key])):
        return None
    return BestArm(str(row["grid"]), str(row["arm"]), metric, float(row[key]), finals.idxmin())


def alias_best(report: Report, alias: str) -> BestArm | None:
    """Find the best arm (:func:`best_arm`), point ``alias`` at its registered model when it
    has one, and say so in the report's notes."""
    best = best_arm(report)
    if best is None:
        return None
    try:
        best.model = set_alias_of_run(best.run_id, alias)
    except Exception as err:  # the report stands without the alias; say why
        report.notes.append(f"{best.describe(alias)} Setting the alias failed: {err}")
        return best
    report.notes.append(best.describe(alias))
    return best
