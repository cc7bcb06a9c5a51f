"""The command line itself: version, printed config, grouped help, a light start."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields, replace
from importlib.metadata import version
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from al.cli import _resolve, main
from al.cli.options import SAVED_OPTIONS, SECTIONS, ConfigCommand, ConfigOption
from al.cli.save_options import current_options
from al.config import build_config
from al.loop.config import CampaignConfig
from hpo.config import HPOConfig

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mlflow", "optuna", "pandas", "matplotlib", "al.entrypoints", "hpo.study")


def test_version_is_the_package_version() -> None:
    out = CliRunner().invoke(main, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"al {version('al')}"


def test_printed_config_is_what_would_run(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text("rounds: 7\nstrategy: random\n")
    args = ["--config", str(config_file), "--batch-size", "50", "--acquisition", "bald"]
    out = CliRunner().invoke(main, ["al-loop", *args, "--print-config"])
    assert out.exit_code == 0, out.output
    printed = build_config(CampaignConfig, yaml.safe_load(out.output))
    expected = _resolve(CampaignConfig, str(config_file), {"batch_size": "50",
                                                           "acquisition": "bald"})  # fmt: skip
    assert printed == expected and printed.rounds == 7 and printed.batch_size == 50


def test_printed_config_masks_the_password() -> None:
    storage = "postgresql://al:s3cret@db.example/optuna"
    out = CliRunner().invoke(main, ["hpo", "--storage", storage, "--print-config"])
    assert out.exit_code == 0, out.output
    assert "s3cret" not in out.output
    printed = build_config(HPOConfig, yaml.safe_load(out.output))
    expected = _resolve(HPOConfig, None, {"storage": storage})
    assert printed == replace(expected, storage="postgresql://al:***@db.example/optuna")


def test_grouped_help_lists_every_option_once() -> None:
    command = main.commands["al-loop"]
    ctx = click.Context(command, info_name="al-loop")
    text = command.get_help(ctx)
    for title in SECTIONS:
        assert f"\n{title.capitalize()}:\n" in text, title
    records = [p.get_help_record(ctx) for p in command.params if isinstance(p, ConfigOption)]
    assert len(records) == len(fields(CampaignConfig))
    for record in records:
        assert record is not None and text.count(f"  {record[0]}") == 1, record[0]
    assert "[|" not in text and "|]" not in text  # no empty choice
    assert "(default:" not in text  # one way of showing defaults: [default: x]


@pytest.mark.slow
def test_help_imports_nothing_heavy() -> None:
    """Building the command tree and printing every command's help stays clear of the heavy
    imports (the config options come from the saved ones)."""
    script = (
        "import json, sys\n"
        "import click\n"
        "from al.cli import main\n"
        "def paths(group, prefix):\n"
        "    for name, command in group.commands.items():\n"
        "        yield [*prefix, name]\n"
        "        if isinstance(command, click.Group):\n"
        "            yield from paths(command, [*prefix, name])\n"
        "shown = []\n"
        "for args in ([], ['--version'], *paths(main, [])):\n"
        "    try:\n"
        "        main([*args, '--help'] if args != ['--version'] else args,\n"
        "             standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    shown.append(' '.join(args))\n"
        f"print(json.dumps([shown, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"al-loop", "train", "pretrain", "hpo", "hpo-worker", "label", "data info"} <= set(shown)
    assert heavy == []


def _config_commands() -> dict[str, ConfigCommand]:
    return {n: c for n, c in main.commands.items() if isinstance(c, ConfigCommand)}


def test_saved_options_are_the_config_classes_options() -> None:
    """``options.json`` holds what the config classes and registries give today."""
    saved = json.loads(SAVED_OPTIONS.read_text())
    assert saved == current_options(), "run `python -m al.cli.save_options` and commit it"
    assert set(saved["commands"]) == set(_config_commands())


def test_help_from_the_saved_options_is_the_config_classes_help() -> None:
    for name, command in _config_commands().items():
        shown = CliRunner().invoke(main, [name, "--help"], prog_name="al", terminal_width=80)
        assert shown.exit_code == 0, shown.output
        with click.Context(main, info_name="al", terminal_width=80) as parent:
            ctx = click.Context(command, info_name=name, parent=parent)
            assert shown.output == command.get_help(ctx) + "\n", name


def test_help_as_an_option_value_is_parsed_with_the_config_options() -> None:
    out = CliRunner().invoke(main, ["hpo", "--study-name", "--help", "--print-config"])
    assert out.exit_code == 0, out.output
    assert yaml.safe_load(out.output)["study_name"] == "--help"
