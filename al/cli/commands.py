"""The ``al`` subcommands; each imports what it runs inside its function, so that building
the command tree (and printing help) imports no PyTorch, MLflow, Optuna or pandas."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from al.cli.group import main
from al.cli.options import ConfigCommand, LazyHelpOption, _masked, _Optional
from al.cli.pool import pool
from al.config import ConfigError, mask_secrets, read_yaml


def _train_config() -> type:
    from al.entrypoints.train import TrainRunConfig

    return TrainRunConfig


def _campaign_config() -> type:
    from al.loop.config import CampaignConfig

    return CampaignConfig


def _hpo_config() -> type:
    from hpo.config import HPOConfig

    return HPOConfig


def _pretrain_config() -> type:
    from al.entrypoints.pretrain import PretrainConfig

    return PretrainConfig


def _resolve_pretrain(cls: type, config_file: str | None, overrides: dict[str, Any]) -> Any:
    """The fidelity preset below the config file and the explicit options."""
    from al.entrypoints.pretrain import resolve_pretrain_config

    given = {k: v for k, v in overrides.items() if v not in (None, "")}
    try:
        return resolve_pretrain_config({**(read_yaml(config_file) if config_file else {}),
                                        **given})  # fmt: skip
    except ConfigError as err:
        raise _masked(err) from None


def _echo_masked(message: str) -> None:
    """``click.echo`` with passwords masked."""
    click.echo(mask_secrets(message))


def _oracle_help() -> str:
    from al.oracles import oracle_choices

    return f"the labeller: {', '.join(oracle_choices())}"


def _one_line(err: BaseException) -> click.ClickException:
    """A user error as one line, passwords masked."""
    text = str(err).strip("'\"").strip() or type(err).__name__
    return click.ClickException(mask_secrets(" ".join(text.split("\n")[:1])))


@main.command(cls=ConfigCommand, config=_train_config)
def train(config: Any, given: set[str]) -> None:
    """Train one surrogate on random pool molecules and log it to MLflow."""
    from al.entrypoints.train import run_train

    try:
        run_train(config, echo=click.echo)
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as err:
        raise _masked(err) from None


@main.command("al-loop", cls=ConfigCommand, config=_campaign_config)
def al_loop(config: Any, given: set[str]) -> None:
    """Run (or, with --resume RUN_ID, continue) an active-learning campaign."""
    from al.entrypoints.al_loop import run_campaign

    try:
        run_campaign(config, echo=_echo_masked, given=given)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: the run is KILLED, resumable
        from al.tracking.lease import exit_code, interrupt_signal

        sig, run_id = interrupt_signal(err), getattr(err, "run_id", "") or config.resume
        if run_id:
            line = f"resume it with the same settings and --resume {run_id}"
            click.echo(f"campaign {run_id} interrupted by {sig.name}; {line}", err=True)
        else:
            click.echo(f"campaign interrupted by {sig.name} before it started", err=True)
        sys.exit(exit_code(sig))
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as err:
        raise _masked(err) from None


@main.command(cls=ConfigCommand, config=_hpo_config)
def hpo(config: Any, given: set[str]) -> None:
    """Tune the surrogate with an Optuna study; trials are nested MLflow runs."""
    from hpo.study import run_study

    try:
        run_study(config, echo=_echo_masked)
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as err:
        raise _one_line(err) from None


@main.command("hpo-worker", hidden=True, cls=ConfigCommand, config=_hpo_config)
@click.option("--parent-run-id", required=True, help="the study's MLflow run")
@click.option("--experiment-id", required=True, help="the experiment of that run")
@click.option("--worker-index", type=int, default=0, help="offsets the sampler's seed")
def hpo_worker(
    config: Any, given: set[str], parent_run_id: str, experiment_id: str, worker_index: int
) -> None:
    """One worker of a study (started by `al hpo --n-workers N`)."""
    from hpo.study import run_worker

    try:
        run_worker(config, parent_run_id, experiment_id, worker_index)
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as err:
        raise _one_line(err) from None


@main.command(cls=ConfigCommand, config=_pretrain_config, resolver=_resolve_pretrain)
def pretrain(config: Any, given: set[str]) -> None:
    """Train an oracle model on the oracle split and register it (alias = fidelity).

    The fidelity preset (lofi or hifi) sets model size and budget; the config file and
    explicit options beat it. --export DIR also writes the checkpoint and its provenance.
    """
    from al.entrypoints.pretrain import run_pretrain

    try:
        run_pretrain(config, echo=click.echo)
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as err:
        raise _masked(err) from None


@main.command()
@click.option("--oracle", "oracle_spec", default="dft", show_default=True, cls=LazyHelpOption,
              help_text=_oracle_help)  # fmt: skip
@click.option("--input", "input_csv", required=True,
              help="CSV with a qm9_index column (with --pool: an id column)")  # fmt: skip
@click.option("--output", default="", help="CSV to write (default: only logged to MLflow)")
@click.option("--cost", default=None, type=float, help="cost per label (default: the oracle's)")
@click.option("--timeout-s", "--timeout_s", "timeout_s", default=None,
              type=click.FloatRange(min=0, min_open=True),
              help="wall-clock limit of one label computed live (pyscf), seconds "
              "(default: the oracle's, one hour)")  # fmt: skip
@click.option("--experiment-name", default="al", show_default=True)
@click.option(
    "--pool",
    default="",
    help="the ids of --input are molecules of this pool; "
    "the output is the input with its labels (a labels file for al ingest)",
)
def label(
    oracle_spec: str, input_csv: str, output: str, cost: float | None, timeout_s: float | None,
    experiment_name: str, pool: str,
) -> None:  # fmt: skip
    """Label the molecules of a CSV with an oracle and log the result as a run."""
    from al.data.pools import PoolError
    from al.entrypoints.label import run_label

    try:
        run_label(oracle_spec, input_csv, output or None, cost, experiment_name, echo=click.echo,
                  pool=pool, timeout_s=timeout_s)  # fmt: skip
    except (ValueError, KeyError, RuntimeError, FileNotFoundError, PoolError) as err:
        raise _masked(err) from None


@main.command()
@click.argument("run_id")
@click.argument("labels", type=click.Path())
def ingest(run_id: str, labels: str) -> None:
    """Record an external labeller's answers (LABELS: the batch's CSV with its label column
    filled in) for the round campaign RUN_ID waits for; then: al al-loop --resume RUN_ID.
    Rows that cannot be recorded are refused one line each, the rest recorded; the exit
    status is 1 when any row was refused."""
    from al.data.pools import PoolError
    from al.entrypoints.ingest import ingest as run_ingest

    try:
        done = run_ingest(run_id, labels, echo=click.echo)
    except (ValueError, KeyError, RuntimeError, FileNotFoundError, PoolError) as err:
        raise _masked(err) from None
    if done.refused:
        raise SystemExit(1)


@main.command()
@click.option(
    "--model", "model_uri", required=True, help="MLflow model URI (models:/..., runs:/...)"
)
@click.option("--output", "-o", default="-", help="CSV to write (default: standard output)")
@click.option(
    "--qm9-format", is_flag=True, help="files are QM9 .xyz (3 trailing lines per molecule)"
)
@click.argument("files", nargs=-1, required=True, type=click.Path())
def predict(model_uri: str, output: str, qm9_format: bool, files: tuple[str, ...]) -> None:
    """Predict energies (mean and std, eV) for molecules in .xyz files."""
    import mlflow

    from al.data.molecules import molecules_frame
    from al.data.xyz import XYZError, read_xyz

    if output != "-" and not Path(output).resolve().parent.is_dir():
        raise click.ClickException(
            f"--output {output}: its folder {Path(output).resolve().parent} does not exist; "
            "expected a file in an existing folder, or - for standard output"
        )
    molecules = []
    try:
        for path in files:
            if not Path(path).is_file():
                raise click.ClickException(f"{path}: no such file")
            molecules += read_xyz(path, qm9=qm9_format)
    except XYZError as err:
        raise _masked(err) from None
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError, ValueError) as err:
        first = (
            str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        )
        raise click.ClickException(
            mask_secrets(
                f"model {model_uri!r} cannot be loaded: {first}; expected an MLflow model URI "
                "that exists on the tracking server (models:/<name>@<alias>, models:/m-<id>, "
                "runs:/<run id>/<path>) or a local model folder"
            )
        ) from None
    out = model.predict(molecules_frame([(m.z, m.pos) for m in molecules]))
    out.insert(0, "n_atoms", [len(m.z) for m in molecules])
    out.insert(0, "name", [m.name for m in molecules])
    if output == "-":
        out.to_csv(sys.stdout, index=False)
    else:
        try:
            out.to_csv(output, index=False)
        except OSError as err:
            raise click.ClickException(f"--output {output}: cannot write it ({err})") from None
        click.echo(f"wrote {len(out)} predictions to {output}", err=True)


@main.group()
def data() -> None:
    """Inspect the QM9 data."""


@data.command("info")
@click.option("--source", default="qm9pack", show_default=True)
@click.option("--root", default=None, help="source folder (pyg: the QM9 root)")
@click.option("--split-seed", default=0, show_default=True)
@click.option("--n-test", default=10_000, show_default=True)
@click.option("--n-oracle", default=50_000, show_default=True)
# the choices of al.data.config.GEOMETRIES, written out so that the command tree imports no
# PyTorch (a test checks they agree)
@click.option("--geometry", type=click.Choice(["dft", "xtb", "dft_on_xtb_set"]), default="dft",
              show_default=True, help="QM9's own positions, GFN2-xTB's from the SMILES, or "
              "QM9's own on the molecules that have a GFN2-xTB one")  # fmt: skip
def data_info(
    source: str, root: str | None, split_seed: int, n_test: int, n_oracle: int, geometry: str
) -> None:
    """Summary of the data set, its target, its geometries and the split."""
    import torch

    from al.data.cache import cache_dir
    from al.data.config import DataConfig
    from al.data.elements import PROPERTY, SYMBOLS
    from al.data.load import load_data

    try:
        d, splits = load_data(DataConfig(source, root or "", split_seed, n_test, n_oracle,
                                         geometry))  # fmt: skip
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        raise _masked(err) from None
    n = d.n_atoms.float()
    counts = torch.bincount(d.z, minlength=10)
    click.echo(f"source           {d.source} (digest {d.digest()})")
    click.echo(f"cache            {cache_dir()}")
    where = (
        "QM9's own (B3LYP)" if d.geometry == "dft" else f"GFN2-xTB from the SMILES ({d.geometry})"
    )
    click.echo(f"geometries       {where}")
    lo, hi = int(d.qm9_index.min()), int(d.qm9_index.max())
    click.echo(f"molecules        {len(d):,}  (QM9 index {lo}..{hi})")
    click.echo(
        f"atoms            {d.z.numel():,}  ({n.mean():.1f} per molecule, "
        f"{int(n.min())}..{int(n.max())})"
    )
    elements = ", ".join(f"{SYMBOLS[z]} {int(counts[z]):,}" for z in SYMBOLS)
    click.echo(f"elements         {elements}")
    y = d.y
    click.echo(
        f"target           {PROPERTY}: mean {y.mean():.3f}, std {y.std():.3f}, "
        f"min {y.min():.3f}, max {y.max():.3f} eV"
    )
    sizes = splits.sizes()
    click.echo(
        f"split            seed {split_seed}: test {sizes['test']:,}, oracle {sizes['oracle']:,}, "
        f"pool {sizes['pool']:,}; digest {splits.digest()}"
    )


@data.command("get")
@click.option("--source", default="qm9pack", show_default=True)
@click.option("--root", default=None, help="source folder (pyg: the QM9 root)")
@click.argument("indices", nargs=-1, required=True)
def data_get(source: str, root: str | None, indices: tuple[str, ...]) -> None:
    """CSV of ``qm9_index,smiles,n_atoms,target_ev`` for QM9 indices."""
    from al.data.load import load_qm9

    try:
        wanted = [int(i) for i in indices]
    except ValueError:
        bad = next(i for i in indices if not i.lstrip("-").isdigit())
        raise click.ClickException(f"QM9 index {bad!r} is not an integer") from None
    try:
        d = load_qm9(source, root)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        raise _masked(err) from None
    try:
        rows = d.rows_of(wanted)
    except KeyError as err:
        raise click.ClickException(str(err.args[0])) from None
    click.echo("qm9_index,smiles,n_atoms,target_ev")
    n_atoms = d.n_atoms
    for r in rows.tolist():
        smiles = d.smiles[r] if d.smiles else ""
        click.echo(f"{int(d.qm9_index[r])},{smiles},{int(n_atoms[r])},{float(d.y[r]):.6f}")


@main.command()
@click.argument("which")
@click.option("--wheel", default=None, help="torchani-2.0-py3-none-any.whl already on disk "
              "(default: pip downloads it from the package registry)")  # fmt: skip
def weights(which: str, wheel: str | None) -> None:
    """Fetch published weights into the cache, checked: ani (ANI-1x, ANI-1ccx; $AL_ANI_DIR)."""
    from al.oracles import OracleError, fetch_ani_weights

    if which != "ani":
        raise click.ClickException(f"unknown weights {which!r}; expected one of: ani")
    try:
        root = fetch_ani_weights(wheel=Path(wheel) if wheel else None)
    except OracleError as err:
        raise _one_line(err) from None
    click.echo(f"ANI-1x and ANI-1ccx weights checked in {root}")


@main.command("compare")
@click.option("--experiment-name", default="", help="experiment whose campaign runs to compare")
@click.option("--parent-run", default="", help="compare the campaign runs nested under this run")
@click.option("--output-dir", default="report", show_default=True, help="where the report goes")
@click.option("--baseline", default="random", show_default=True,
              help="arm (al.cell) or strategy the others are paired with, each arm with "
              "the one of its settings; arm:NAME pairs every arm with the arm NAME, "
              "whatever its settings")  # fmt: skip
@click.option("--mae-targets", default="", help="target MAEs in eV, e.g. 0.3,0.2 "
              "(default: the baseline's final MAE and 1.25 times it)")  # fmt: skip
@click.option("--arms", default="", help="only these arms (al.cell), e.g. lcmd,lcmd_b250 "
              "(default: every arm)")  # fmt: skip
@click.option("--log/--no-log", default=True, show_default=True,
              help="log the report as a run tagged al.kind=report")  # fmt: skip
def compare(
    experiment_name: str,
    parent_run: str,
    output_dir: str,
    baseline: str,
    mae_targets: str,
    arms: str,
    log: bool,
) -> None:
    """Compare finished campaign runs (learning curves, paired tests) and write a report."""
    from al.entrypoints.compare import CompareError, parse_targets, run_compare

    try:
        result = run_compare(
            experiment_name, parent_run, output_dir or "report", baseline or "random",
            parse_targets(mae_targets), log=log, echo=click.echo,
            arms=[a.strip() for a in arms.split(",") if a.strip()],
        )  # fmt: skip
    except CompareError as err:
        raise _masked(err) from None
    click.echo(f"report: {result.markdown} ({result.html.name} beside it)")
    if result.run_id:
        click.echo(f"report run: {result.run_id}")


@main.command()
@click.option("--grid", required=True, help="grid file, e.g. experiments/smoke.yaml")
@click.option("--workers", type=_Optional(click.IntRange(min=1)), default=None,
              help="campaigns run at once (default: 1)")  # fmt: skip
@click.option("--dry-run", "--dry_run", "dry_run", type=_Optional(click.BOOL), default=None,
              help="list the cells and their state, run nothing (default: false)")  # fmt: skip
@click.option("--log-dir", default="", help="folder for the campaigns' configs and logs")
@click.option("--experiment-name", "--experiment_name", "experiment_name", default="",
              help="MLflow experiment of the campaigns (default: the grid's experiment_name, "
              "else grid-<name>; `mlflow run --experiment-name` sets it too)")  # fmt: skip
@click.option("--threads", type=_Optional(click.IntRange(min=0)), default=None,
              help="CPU threads per campaign (default 0: cores / workers)")  # fmt: skip
@click.option("--backend", default=None, help="where the campaigns run: local or dask "
              "[default: local]")  # fmt: skip
@click.option("--scheduler", default="", help="dask: an existing scheduler (default: a local one)")
def experiment(
    grid: str,
    workers: int | None,
    dry_run: bool | None,
    log_dir: str,
    experiment_name: str,
    threads: int | None,
    backend: str | None,
    scheduler: str,
) -> None:
    """Run a grid of campaigns (cells x seeds) under one parent run; reruns skip finished
    cells and resume interrupted ones."""
    from al.entrypoints.experiment import GridRunner, chosen_experiment, dry_run_table, load_grid
    from al.entrypoints.grid_backends import BackendError

    try:
        spec = load_grid(grid, chosen_experiment(experiment_name))
        runner = GridRunner(spec, workers or 1, threads or 0, click.echo, backend or "local",
                            scheduler)  # fmt: skip
    except (ConfigError, ValueError) as err:
        raise _masked(err) from None
    if dry_run:
        click.echo(f"grid {spec.name!r} ({spec.path}), experiment {spec.experiment_name!r}:")
        click.echo(dry_run_table(runner.states()))
        return
    try:
        states = runner.run(Path(log_dir) if log_dir else None)
    except BackendError as err:
        raise _masked(err) from None
    failed = [s.cell.key for s in states if s.status == "failed"]
    click.echo(
        f"grid {spec.name!r}: {len(states) - len(failed)}/{len(states)} campaigns finished; "
        f"compare with: al compare --experiment-name {spec.experiment_name}"
    )
    if failed:
        raise click.ClickException(f"{len(failed)} campaign(s) failed: {', '.join(failed)}")


@main.command()
@click.option("--smiles", "smiles_file", default=None,
              help=".smi/.txt file (one SMILES per line, optional name) or .csv")  # fmt: skip
@click.option("--column", default="smiles", show_default=True, help="SMILES column of a CSV")
@click.option("--qm9", "qm9_n", type=_Optional(click.IntRange(min=1)), default=None,
              help="the first N QM9 molecules' SMILES instead of a file")  # fmt: skip
@click.option("--qm9-split", "qm9_split", type=_Optional(click.IntRange(min=0)), default=None,
              help="what geometry=xtb needs: QM9's test split and N molecules of its pool "
              "split (seeded) of the default split")  # fmt: skip
@click.option("--workers", type=_Optional(click.IntRange(min=1)), default=None,
              help="processes, one thread each (default: the cores)")  # fmt: skip
@click.option("--fmax", type=_Optional(click.FloatRange(min=0, min_open=True)), default=None,
              help="force threshold of the xTB optimisation, eV/A (default: 0.05)")  # fmt: skip
@click.option("--max-steps", "--max_steps", "max_steps", type=_Optional(click.IntRange(min=1)),
              default=None, help="optimiser steps before not_converged (default: 200)")  # fmt: skip
@click.option("--seed", type=_Optional(click.IntRange(min=0)), default=None,
              help="ETKDG random seed (default: 0)")  # fmt: skip
@click.option("--cache", default=None, help="folder of the geometry store (default: "
              "<al cache>/geometries)")  # fmt: skip
@click.option("--out", default=None, help="write an extended XYZ (.xyz) of the geometries "
              "or a CSV (.csv) of every molecule's status")  # fmt: skip
def geometry(
    smiles_file: str | None,
    column: str,
    qm9_n: int | None,
    qm9_split: int | None,
    workers: int | None,
    fmax: float | None,
    max_steps: int | None,
    seed: int | None,
    cache: str | None,
    out: str | None,
) -> None:
    """GFN2-xTB-optimised geometries from SMILES (RDKit ETKDG, MMFF94, then tblite), each
    molecule with its status; finished molecules are cached and never computed again."""
    from al.data.conformers import (
        GeometrySettings,
        SmilesInputError,
        check_output,
        compute_geometries,
        qm9_smiles,
        qm9_split_smiles,
        read_smiles,
        write_geometries,
    )

    if sum(x is not None for x in (smiles_file, qm9_n, qm9_split)) != 1:
        raise click.ClickException("give one of --smiles FILE, --qm9 N or --qm9-split N")
    given = {"fmax": fmax, "max_steps": max_steps, "seed": seed}
    try:
        settings = GeometrySettings(**{k: v for k, v in given.items() if v is not None})
        if out:
            check_output(out)
        if qm9_split is not None:
            rows = qm9_split_smiles(qm9_split)
        else:
            rows = read_smiles(smiles_file, column) if smiles_file else qm9_smiles(qm9_n or 0)
    except (SmilesInputError, ValueError, FileNotFoundError) as err:
        raise _one_line(err) from None
    names, inputs = [n for n, _ in rows], [s for _, s in rows]
    try:
        run = compute_geometries(inputs, settings, workers=workers, cache=cache, echo=click.echo)
    except (RuntimeError, OSError) as err:
        raise _one_line(err) from None
    click.echo(run.summary())
    if out:
        n = write_geometries(out, names, inputs, run.records)
        left = len(run.records) - n
        note = f" ({left} without a geometry left out; a .csv lists every status)" if left else ""
        click.echo(f"wrote {n} molecule(s) to {out}{note}")


main.add_command(pool)
