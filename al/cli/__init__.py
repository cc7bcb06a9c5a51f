"""The ``al`` command line: one click group behind every MLproject entry point.

Building the command tree imports no PyTorch, MLflow, Optuna or pandas: a command imports
what it runs when it runs, and a config's options are built when first needed.
"""

from al.cli import commands  # registers the subcommands on the group
from al.cli.group import main, package_version
from al.cli.options import _resolve, config_yaml

__all__ = ["_resolve", "config_yaml", "main", "package_version"]
