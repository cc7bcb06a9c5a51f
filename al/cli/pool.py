"""``al pool``: a chemist's own molecules as a versioned pool (create, list, info).

Only click is imported here; each command imports :mod:`al.data.pools` when it runs.
"""

from __future__ import annotations

import click


@click.group()
def pool() -> None:
    """Your own molecules (SMILES, CSV, SDF, XYZ) as a named, versioned pool."""


@pool.command("create")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--smiles-column", default=None, help="SMILES column of a CSV file [default: smiles]")
@click.option("--id-column", default=None, help="column (CSV), property (SDF) or key "
              "(extended XYZ) of the ids [default: names in the file, else InChIKey]")  # fmt: skip
@click.option("--reoptimise", is_flag=True, help="re-optimise coordinates given in the file "
              "with GFN2-xTB (default: keep them)")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="geometry processes, one thread each [default: the cores]")  # fmt: skip
@click.option("--overwrite", is_flag=True, help="replace a pool of the same name")
def create(
    name: str,
    file: str,
    smiles_column: str | None,
    id_column: str | None,
    reoptimise: bool,
    workers: int | None,
    overwrite: bool,
) -> None:
    """Make the pool NAME from FILE (.smi, .csv, .sdf, .xyz, .extxyz): molecules without 3D
    coordinates get GFN2-xTB geometries (cached); each molecule gets an id and a status."""
    from al.data.pools import PoolError, create_pool

    try:
        create_pool(
            name, file, smiles_column=smiles_column, id_column=id_column,
            reoptimise=reoptimise, workers=workers, overwrite=overwrite, echo=click.echo,
        )  # fmt: skip
    except (PoolError, RuntimeError, OSError) as err:
        raise click.ClickException(" ".join(str(err).split("\n")[:1])) from None


@pool.command("list")
def list_() -> None:
    """One line per pool: name, usable/total molecules, digest, creation time."""
    from al.data.pools import list_line, list_pools, pool_dir

    metas = list_pools()
    if not metas:
        click.echo(f"no pools in {pool_dir()}; make one with: al pool create NAME FILE")
    for meta in metas:
        click.echo(list_line(meta))


@pool.command("info")
@click.argument("name")
def info(name: str) -> None:
    """The pool NAME: source, settings, digest, counts by status."""
    from al.data.pools import PoolError, load_pool

    try:
        found = load_pool(name)
    except PoolError as err:
        raise click.ClickException(str(err)) from None
    for line in found.info():
        click.echo(line)
