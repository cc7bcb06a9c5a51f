"""Carry a grid's finished campaigns to another machine: a SQLite tracking store and its
artifact folder, packed small enough to keep beside the report.

A grid of converged campaigns costs many CPU-hours; its store is what lets a rerun skip
finished cells (``al experiment`` reads their status) and what ``al compare`` reads. This
packs the finished campaigns of one experiment:

- the database (a consistent copy by SQLite's backup API), with every campaign run that is
  not FINISHED, and its children, marked deleted, so that a rerun starts them afresh;
- the artifacts ``al compare`` reads: each campaign's queried tables, validation and
  converged-checkpoint predictions, configs, and its final round's test predictions. Model
  weights, figures and the other rounds' predictions stay behind (the runs still list them;
  they are not needed to report or to resume a grid).

``unpack`` extracts into a folder and points the database at it (artifact paths are
rewritten from the packed root to the new one)::

    python experiments/pack_store.py pack --db $GRIDS/protocol.db \\
        --experiment grid-mission_protocol --out protocol_store.tar.xz
    python experiments/pack_store.py unpack protocol_store.tar.xz --into $GRIDS

Then ``MLFLOW_TRACKING_URI=sqlite:///$GRIDS/protocol.db al experiment --grid ...`` goes on
with the cells not finished, and ``al compare`` reads the finished ones.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import tarfile
import tempfile
from pathlib import Path

MANIFEST = "pack_manifest.json"
#: artifacts of a campaign run that are packed (paths relative to its artifact folder)
CAMPAIGN_KEEP = re.compile(
    r"^(config\.yaml|validation\.csv|grid\.yaml|rounds/round_\d+/queried\.csv"
    r"|converged/labels_\d+/(test|validation)\.csv)$"
)
FINAL_ROUND_KEEP = "predictions/test.csv"


def _runs(db: sqlite3.Connection, experiment: str) -> list[tuple[str, str, str, dict]]:
    """``(run_id, status, artifact_uri, tags)`` of every live run of ``experiment``."""
    row = db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (experiment,))
    found = row.fetchone()
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in the database")
    runs = db.execute(
        "SELECT run_uuid, status, artifact_uri FROM runs "
        "WHERE experiment_id = ? AND lifecycle_stage = 'active'",
        (found[0],),
    ).fetchall()
    out = []
    for run_id, status, uri in runs:
        tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
        out.append((run_id, status, uri, tags))
    return out


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def pack(db_path: Path, experiment: str, out: Path) -> None:
    """Write ``out`` (.tar.xz): the finished campaigns of ``experiment`` in ``db_path``."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / db_path.name
        with sqlite3.connect(db_path) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        with sqlite3.connect(copy) as db:
            runs = _runs(db, experiment)
            done, dropped = _finished(runs)
            db.executemany(
                "UPDATE runs SET lifecycle_stage = 'deleted' WHERE run_uuid = ?",
                [(rid,) for rid in dropped],
            )
            (location,) = db.execute(
                "SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)
            ).fetchone()
        root = _local(location).parent
        files = _artifacts(runs, done)
        n_campaigns = sum(tags.get("al.kind") == "campaign" for *_, tags in runs)
        manifest = {
            "root": str(root), "db": db_path.name, "experiment": experiment,
            "campaigns_finished": len(done), "campaigns_left_out": n_campaigns - len(done),
        }  # fmt: skip
        (Path(tmp) / MANIFEST).write_text(json.dumps(manifest, indent=1))
        with tarfile.open(out, "w:xz", preset=9) as tar:
            tar.add(Path(tmp) / MANIFEST, MANIFEST)
            tar.add(copy, db_path.name)
            for f in files:
                tar.add(f, f"artifacts/{f.relative_to(root).as_posix()}")
    size = out.stat().st_size / 1e6
    print(f"{out}: {len(done)} finished campaign(s), {len(files)} artifact file(s), "
          f"{size:.1f} MB; {n_campaigns - len(done)} unfinished left out")  # fmt: skip


def _finished(runs: list[tuple[str, str, str, dict]]) -> tuple[set[str], list[str]]:
    """The FINISHED campaign runs, and the runs to mark deleted: the other campaign runs
    and their children (a rerun of the grid starts those campaigns afresh)."""
    campaigns = {rid: st for rid, st, _, tags in runs if tags.get("al.kind") == "campaign"}
    done = {rid for rid, st in campaigns.items() if st == "FINISHED"}
    left = set(campaigns) - done
    dropped = [rid for rid, _, _, tags in runs
               if rid in left or tags.get("mlflow.parentRunId") in left]  # fmt: skip
    return done, dropped


def _artifacts(runs: list[tuple[str, str, str, dict]], done: set[str]) -> list[Path]:
    """The artifact files packed: :data:`CAMPAIGN_KEEP` of each finished campaign, and the
    test predictions of its final round."""
    last: dict[str, tuple[int, str]] = {}  # campaign -> (round, its child's artifact folder)
    files = []
    for rid, _, uri, tags in runs:
        base = _local(uri)
        if rid in done:
            files += [p for p in base.rglob("*") if p.is_file()
                      and CAMPAIGN_KEEP.match(p.relative_to(base).as_posix())]  # fmt: skip
        parent = tags.get("mlflow.parentRunId", "")
        if parent in done and tags.get("al.kind") == "round":
            round_ = int(tags.get("al.round", -1))
            if round_ > last.get(parent, (-2, ""))[0]:
                last[parent] = (round_, uri)
    finals = [_local(uri) / FINAL_ROUND_KEEP for _, uri in last.values()]
    return files + [p for p in finals if p.is_file()]


def unpack(archive: Path, into: Path) -> None:
    """Extract ``archive`` into ``into`` and point its database's artifact paths there."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        manifest = json.load(tar.extractfile(MANIFEST))
        db_path = into / manifest["db"]
        if db_path.exists():
            raise SystemExit(f"{db_path} exists; unpack into an empty folder")
        tar.extractall(into / "_unpacked", filter="data")
    src = into / "_unpacked"
    (src / manifest["db"]).rename(db_path)
    if (src / "artifacts").exists():
        for f in (src / "artifacts").rglob("*"):
            if f.is_file():
                dest = into / "mlruns" / f.relative_to(src / "artifacts")
                dest.parent.mkdir(parents=True, exist_ok=True)
                f.rename(dest)
    old, new = manifest["root"], str((into / "mlruns").resolve())
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE experiments SET artifact_location = "
                   "replace(artifact_location, ?, ?)", (old, new))  # fmt: skip
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        if db.execute("SELECT name FROM sqlite_master WHERE name = 'logged_models'").fetchone():
            db.execute("UPDATE logged_models SET artifact_location = "
                       "replace(artifact_location, ?, ?)", (old, new))  # fmt: skip
    for p in sorted(src.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    src.rmdir()
    print(
        f"{db_path}: {manifest['campaigns_finished']} finished campaign(s) of "
        f"{manifest['experiment']!r}; artifacts under {into / 'mlruns'}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack the finished campaigns of an experiment")
    p.add_argument("--db", type=Path, required=True, help="the SQLite tracking database")
    p.add_argument("--experiment", required=True, help="the grid's experiment name")
    p.add_argument("--out", type=Path, required=True, help="the archive to write (.tar.xz)")
    u = sub.add_parser("unpack", help="extract an archive and point its database at it")
    u.add_argument("archive", type=Path)
    u.add_argument("--into", type=Path, required=True, help="folder of the restored store")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.db, args.experiment, args.out)
    else:
        unpack(args.archive, args.into)


if __name__ == "__main__":
    sys.exit(main())
