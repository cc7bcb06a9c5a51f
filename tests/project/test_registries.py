"""Names written once: every plug-in family is one registry, and the config's choices, the
command line, the MLproject comments and grid validation all read from it."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from al.acquisition import ACQUISITIONS, MF_ACQUISITIONS, STRATEGIES
from al.cli import main
from al.entrypoints.experiment import load_grid
from al.loop.config import CampaignConfig
from al.models import MODELS
from al.oracles import ORACLES, oracle_choices
from al.uncertainty import UNCERTAINTIES

REPO = Path(__file__).resolve().parents[2]


def _choices(key: str) -> tuple[str, ...]:
    return next(f.metadata["choices"] for f in fields(CampaignConfig) if f.name == key)


def test_config_choices_come_from_the_registries() -> None:
    assert _choices("strategy") == tuple(STRATEGIES)
    assert _choices("acquisition") == ("", *ACQUISITIONS)
    assert _choices("uncertainty") == ("", *UNCERTAINTIES)
    assert _choices("mf_acquisition") == tuple(MF_ACQUISITIONS)
    assert _choices("model") == tuple(MODELS)


def test_every_strategy_preset_names_registered_parts() -> None:
    for name, preset in STRATEGIES.items():
        assert preset.uncertainty in UNCERTAINTIES, name
        assert preset.acquisition in ACQUISITIONS, name


@pytest.mark.parametrize(
    ("key", "registry"),
    [("strategy", STRATEGIES), ("acquisition", ACQUISITIONS), ("uncertainty", UNCERTAINTIES)],
)
def test_cli_options_are_typed_choices(key: str, registry: dict) -> None:
    command = main.commands["al-loop"]
    option = next(p for p in command.params if p.name == key)
    inner = option.type.inner
    assert isinstance(inner, click.Choice)
    assert [c for c in inner.choices if c] == list(registry)
    typed = {p.name: p.type.inner for p in command.params if hasattr(p.type, "inner")}
    assert typed["rounds"] is click.INT and typed["budget_cost"] is click.FLOAT
    assert typed["bootstrap"] is click.BOOL


def test_mlproject_comments_list_every_registered_name() -> None:
    """The MLproject's comments name the choices; they must not drift from the registries."""
    for path in (REPO / "MLproject", REPO / "docker" / "MLproject"):
        text = path.read_text()
        for label, names in (
            ("strategy", STRATEGIES),
            ("uncertainty", UNCERTAINTIES),
            ("acquisition", ACQUISITIONS),
            ("mf_acquisition", MF_ACQUISITIONS),
            ("model", MODELS),
        ):
            assert f"{label} ({'|'.join(names)})" in text, (path.name, label)
        oracles = "|".join(oracle_choices())
        assert f"oracle ({oracles})" in text, path
        assert "model:<MLflow model URI>" in oracle_choices()
        assert set(ORACLES) <= set(re.split(r"[|:]", oracles))


@pytest.mark.parametrize(
    ("key", "typo", "listed"),
    [
        ("strategy", "ensembel", "random, ensemble"),
        ("acquisition", "max_sdt", "random, max_std"),
        ("uncertainty", "ensembles", "ensemble, mc_dropout"),
        ("oracle", "dtf", "dft, xtb"),
    ],
)
def test_a_misspelt_name_in_a_grid_fails_the_dry_run_in_one_line(
    tmp_path: Path, key: str, typo: str, listed: str
) -> None:
    grid = tmp_path / "typo.yaml"
    grid.write_text(f"name: typo\nseeds: [0]\ncells:\n  - name: a\n    {key}: {typo}\n")
    result = CliRunner().invoke(main, ["experiment", "--grid", str(grid), "--dry-run", "true"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"config key {key!r}" in lines[0] and repr(typo) in lines[0]
    assert listed in lines[0]
    with pytest.raises(ValueError, match=f"config key {key!r}"):
        load_grid(grid)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--strategy", "ensembel"], "strategy"),
        (["--acquisition", "max_sdt"], "acquisition"),
        (["--uncertainty", "ensembles"], "uncertainty"),
        (["--oracle", "dtf"], "oracle"),
        (["--oracles", "xtb,dtf"], "oracles"),
    ],
)
def test_a_misspelt_name_on_the_command_line_is_one_line(args: list[str], key: str) -> None:
    result = CliRunner().invoke(main, ["al-loop", *args])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: config key {key!r}"), result.output


def test_a_model_uri_oracle_is_accepted_by_the_config() -> None:
    from al.config import build_config

    cfg = build_config(CampaignConfig, {"oracle": "model:models:/qm9-oracle@lofi"})
    assert cfg.oracle == "model:models:/qm9-oracle@lofi"
