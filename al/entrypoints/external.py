"""A campaign that waits for an external labeller: its batch written out, its run marked.

When a round asks the ``external`` oracle (:mod:`al.oracles.external`) for labels, the
campaign stops with :class:`~al.loop.journal.AwaitingLabels`. :func:`write_batch` writes
the molecules waiting for a label where the user asked (``batch_dir/<run id>/``) and onto
the run (``rounds/round_NNN/``):

``round_NNN.csv``
    One row per molecule: ``id`` (a pool's id, a QM9 index for QM9), ``number`` (the
    molecule's number in the pool: ``qm9_index`` of the queried tables), ``smiles``,
    ``role`` (``train``, ``validation`` or ``heldout``), ``score`` (the acquisition value),
    ``pred_mean`` and ``pred_std`` (the surrogate's prediction, in ``unit``), an empty
    ``label`` column to fill in, ``unit`` and ``target``. This file with its labels filled
    in is a valid labels file for ``al ingest``; a ``status`` column may say why a label
    failed (e.g. ``scf_not_converged``), recorded as a failed label.
``round_NNN.xyz``
    The same molecules' geometries as one extended XYZ file, a frame per molecule with its
    ``id``, ``number`` and ``smiles`` in the comment line.

The run gets the tag ``al.awaiting_labels`` (``round r: k molecules``) and the status
``SCHEDULED`` (never ``FINISHED``); ``al al-loop --resume`` clears the tag when it goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from al import tracking
from al.data.molecules import MolecularData
from al.loop.journal import AwaitingLabels

log = logging.getLogger(__name__)

__all__ = ["BATCH_COLUMNS", "batch_paths", "clear_awaiting", "write_batch"]

#: Columns of a batch file, in order.
BATCH_COLUMNS = (
    "id", "number", "smiles", "role", "score", "pred_mean", "pred_std", "label", "unit", "target",
)  # fmt: skip


def batch_paths(batch_dir: str | Path, run_id: str, round_: int) -> tuple[Path, Path]:
    """The batch table and geometries of round ``round_``: ``batch_dir/<run id>/round_NNN``
    ``.csv`` and ``.xyz``."""
    stem = Path(batch_dir).expanduser().resolve() / run_id / f"round_{round_:03d}"
    return stem.with_suffix(".csv"), stem.with_suffix(".xyz")


def batch_table(wait: AwaitingLabels, data: MolecularData, unit: str, target: str) -> pd.DataFrame:
    """The batch of ``wait`` as the user gets it (:data:`BATCH_COLUMNS`)."""
    batch = wait.batch if wait.batch is not None else pd.DataFrame({"qm9_index": []})
    number = batch["qm9_index"].to_numpy(np.int64)
    ids = batch["id"] if "id" in batch else number.astype(str)
    smiles = batch["smiles"] if "smiles" in batch else _smiles(data, number)
    frame = pd.DataFrame({"id": np.asarray(ids, dtype=str), "number": number,
                          "smiles": np.asarray(smiles, dtype=str)})  # fmt: skip
    for col in ("role", "score", "pred_mean", "pred_std"):
        frame[col] = batch[col].to_numpy() if col in batch else np.nan
    frame["label"], frame["unit"], frame["target"] = "", unit, target
    return frame[list(BATCH_COLUMNS)]


def _smiles(data: MolecularData, number: np.ndarray) -> list[str]:
    if not data.smiles:
        return [""] * number.size
    return [data.smiles[r] for r in data.rows_of(number).tolist()]


def _write_xyz(path: Path, frame: pd.DataFrame, data: MolecularData) -> None:
    """The geometries of ``frame``'s molecules as one extended XYZ file (ASE's writer)."""
    from ase import Atoms
    from ase.io import write

    atoms = []
    for row, (ident, number, smiles) in zip(
        data.rows_of(frame["number"].to_numpy(np.int64)).tolist(),
        frame[["id", "number", "smiles"]].itertuples(index=False, name=None),
        strict=True,
    ):
        a, b = int(data.ptr[row]), int(data.ptr[row + 1])
        mol = Atoms(numbers=data.z[a:b].cpu().numpy(), positions=data.pos[a:b].cpu().numpy())
        mol.info.update({"id": str(ident), "number": int(number), "smiles": str(smiles)})
        atoms.append(mol)
    write(path, atoms, format="extxyz")


def write_batch(
    wait: AwaitingLabels, data: MolecularData, run_id: str, batch_dir: str | Path,
    unit: str, target: str,
) -> Path:  # fmt: skip
    """Write the batch of ``wait`` to ``batch_dir`` and onto the run ``run_id`` (artifacts
    ``rounds/round_NNN/round_NNN.csv`` and ``round_NNN.xyz``), tag the run as waiting;
    returns the batch table's path."""
    table, xyz = batch_paths(batch_dir, run_id, wait.round)
    table.parent.mkdir(parents=True, exist_ok=True)
    frame = batch_table(wait, data, unit, target)
    frame.to_csv(table, index=False)
    _write_xyz(xyz, frame, data)
    folder, client = tracking.round_folder(wait.round), MlflowClient()
    client.log_artifact(run_id, str(table), folder)
    client.log_artifact(run_id, str(xyz), folder)
    waiting = f"round {wait.round}: {len(frame)} molecules"
    client.set_tag(run_id, tracking.TAG_AWAITING_LABELS, waiting)
    log.info(
        "event=awaiting_labels run_id=%s round=%d n=%d batch=%s",
        run_id, wait.round, len(frame), table,
    )  # fmt: skip
    return table


def clear_awaiting(run_id: str) -> None:
    """The campaign goes on: its ``al.awaiting_labels`` tag, if any, is removed."""
    run = mlflow.get_run(run_id)
    if tracking.TAG_AWAITING_LABELS in run.data.tags:
        MlflowClient().delete_tag(run_id, tracking.TAG_AWAITING_LABELS)
