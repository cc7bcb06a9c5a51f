"""``python -m al.cli.save_options``: write ``options.json``, the config options and the
registry-made help texts that ``al <command> --help`` shows without importing the configs.

Run it after changing a config field, its help or a registry the choices come from; the
tests fail while the saved options differ from the config classes'.
"""

from __future__ import annotations

import json
from typing import Any

import click

from al.cli import main
from al.cli.options import (
    SAVED_OPTIONS,
    ConfigCommand,
    ConfigOption,
    LazyHelpOption,
    config_params,
    describe,
    help_key,
)


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """Every command under ``group`` (those of subgroups too) by its path, e.g. ``data info``."""
    out: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        out[prefix + name] = command
        if isinstance(command, click.Group):
            out |= _commands(command, f"{prefix}{name} ")
    return out


def current_options(group: click.Group = main) -> dict[str, Any]:
    """What ``options.json`` should hold, built from the config classes and registries
    (this imports them all)."""
    commands: dict[str, list[dict[str, Any]]] = {}
    texts: dict[str, str] = {}
    for path, command in sorted(_commands(group).items()):
        if isinstance(command, ConfigCommand):
            params = config_params(command.config_class())
            commands[command.name or path] = [
                describe(p) for p in params if isinstance(p, ConfigOption)
            ]
        for param in command.params:
            if isinstance(param, LazyHelpOption):
                texts[help_key(param.help_text)] = param.help_text()
    return {"commands": commands, "help_texts": dict(sorted(texts.items()))}


def _dumps(saved: dict[str, Any]) -> str:
    """``options.json``'s text: one option or help text a line, so that a diff reads well."""
    blocks = []
    for command, records in saved["commands"].items():
        lines = ",\n".join(f"   {json.dumps(r)}" for r in records)
        blocks.append(f"  {json.dumps(command)}: [\n{lines}\n  ]")
    texts = ",\n".join(
        f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in saved["help_texts"].items()
    )
    commands = ",\n".join(blocks)
    return f'{{\n "commands": {{\n{commands}\n }},\n "help_texts": {{\n{texts}\n }}\n}}\n'


def write_options() -> None:
    """Write ``options.json`` from the config classes."""
    SAVED_OPTIONS.write_text(_dumps(current_options()))


if __name__ == "__main__":
    write_options()
    click.echo(f"wrote {SAVED_OPTIONS.name}")
