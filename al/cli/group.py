"""The ``al`` group: logging, password masking and ``--version``, before any subcommand."""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

import click

from al import progress
from al.config import SecretMaskingFilter, mask_secrets


def package_version() -> str:
    """The installed package's version (``al --version``)."""
    try:
        return version("al")
    except PackageNotFoundError:  # a source tree that was never installed
        from al import __version__

        return __version__


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"al {package_version()}")
        ctx.exit()


@click.group()
@click.option("--log-level", default="INFO", show_default=True, help="logging level")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="print the version and exit")  # fmt: skip
def main(log_level: str) -> None:
    """Active learning of small GNNs for QM9 atomization enthalpies, tracked in MLflow."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # no password reaches a log line (ours or MLflow's); on a terminal, lines go above bars
    progress.guard_logging(SecretMaskingFilter)
    if not sys.stderr.isatty():  # MLflow's download bars, written into logs and pipes
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if mask_secrets(uri) != uri:  # MLflow prints every run's URL, password and all
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
