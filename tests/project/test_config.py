from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from al.cli import main
from al.config import ConfigError, build_config, resolve_config
from al.entrypoints.train import TrainRunConfig
from al.models import MODELS
from al.models.config import ModelConfig

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"epochs": 7, "lr": 0.01, "model": "painn"}))
    cfg = resolve_config(TrainRunConfig, cfg_file, {"epochs": "3", "lr": None})
    assert cfg.epochs == 3  # explicit beats file
    assert cfg.lr == 0.01  # file beats default; None means "not given"
    assert cfg.model == "painn"
    assert cfg.train_size == TrainRunConfig().train_size


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochz": 3}, "unknown config key(s) 'epochz'"),
        ({"epochs": "many"}, "'epochs': expected an integer"),
        ({"epochs": 2.5}, "'epochs': expected an integer"),
        ({"lr": "fast"}, "'lr': expected a number"),
        ({"model": "gpt"}, "'model': 'gpt' is not one of"),
        ({"device": "tpu"}, "'device': 'tpu' is not one of auto, cpu, cuda"),
        ({"dropout": 1.5}, "'dropout': 1.5 is out of range"),
        ({"train_size": 0}, "'train_size': 0 is out of range"),
        ({"amp": "maybe"}, "'amp': expected true or false"),
        ({"hidden": 100, "filter_groups": 16}, "divisible"),
    ],
)
def test_rejects_bad_values(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        build_config(TrainRunConfig, values)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_model_choices_come_from_the_registry() -> None:
    field = next(f for f in ModelConfig.__dataclass_fields__.values() if f.name == "model")
    assert tuple(field.metadata["choices"]) == tuple(MODELS)


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(TrainRunConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve_config(TrainRunConfig, bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(TrainRunConfig, broken)


def test_mlproject_train_entry_point() -> None:
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    train = spec["entry_points"]["train"]
    assert set(train["parameters"]) == {"config"}
    assert "al.cli train --config {config}" in train["command"]


def test_every_config_key_is_a_cli_option_in_both_spellings() -> None:
    train = main.commands["train"]
    opts = {o for p in train.params for o in p.opts}
    for key in TrainRunConfig.__dataclass_fields__:
        assert f"--{key}" in opts and f"--{key.replace('_', '-')}" in opts, key


def test_cli_rejects_bad_option_with_one_line() -> None:
    result = CliRunner().invoke(main, ["train", "--lr", "abc"])
    assert result.exit_code != 0
    assert result.output.strip() == "Error: config key 'lr': expected a number, got 'abc'"


def test_cli_empty_values_mean_not_given(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train_size: 5\nepochs: 0\n")
    # epochs=0 in the file is invalid; an empty --epochs must not hide that
    result = CliRunner().invoke(main, ["train", "--config", str(cfg_file), "--epochs", ""])
    assert result.exit_code != 0
    assert "'epochs': 0 is out of range" in result.output


def test_cli_data_get(qm9) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["data", "get", "1", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "qm9_index,smiles,n_atoms,target_ev"
    idx, smiles, n_atoms, target = lines[1].split(",")
    assert (idx, smiles, n_atoms) == ("1", "C", "5")
    assert float(target) == pytest.approx(-17.3897, abs=1e-4)
    assert lines[2].startswith("3,O,3,")
    bad = runner.invoke(main, ["data", "get", "1", "133886"])
    assert bad.exit_code != 0
    assert "133886" in bad.output
    notint = runner.invoke(main, ["data", "get", "x1"])
    assert notint.exit_code != 0 and "'x1' is not an integer" in notint.output


def test_cli_data_info(qm9) -> None:
    result = CliRunner().invoke(main, ["data", "info"])
    assert result.exit_code == 0, result.output
    assert "130,831" in result.output
    assert "test 10,000, oracle 50,000, pool 70,831" in result.output
    # its --geometry choices are written out (building the command tree imports no PyTorch):
    # they must be the config's
    from al.data.config import GEOMETRIES

    info = main.commands["data"].commands["info"]
    (option,) = [p for p in info.params if p.name == "geometry"]
    assert tuple(option.type.choices) == GEOMETRIES


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "configs").glob("*.yaml")))
def test_shipped_configs_load(path: Path) -> None:
    from al.loop.config import CampaignConfig

    cfg = resolve_config(CampaignConfig, path)
    assert cfg.initial_size > 0
