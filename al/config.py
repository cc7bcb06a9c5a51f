"""Typed, validated configuration: dataclasses, YAML files and command-line overrides.

Every run resolves one config from (lowest to highest priority) the dataclass defaults, an
optional YAML file of the same keys, and explicit overrides. Unknown keys, wrong types and
values outside their choices or range are rejected with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from al.data.qm9 import SOURCES
from al.models import MODELS

T = TypeVar("T")
DEVICES = ("auto", "cpu", "cuda")
#: :data:`al.multifidelity.MF_ACQUISITIONS` (a test checks they agree; importing it here
#: would import the models).
MF_ACQUISITION_NAMES = ("variance_reduction", "high_only", "cheap_first")


class ConfigError(ValueError):
    """A config key or value that is not accepted; the message is one line."""


def _opt(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class ModelConfig:
    """The surrogate network."""

    model: str = _opt("schnet", "network architecture", choices=tuple(MODELS))
    hidden: int = _opt(128, "feature width", min=8)
    n_interactions: int = _opt(3, "interaction blocks", min=1)
    n_rbf: int = _opt(32, "Gaussians in the radial basis", min=2)
    cutoff: float = _opt(5.0, "interaction radius in Angstrom", min=1.0)
    filter_groups: int = _opt(16, "radial filters per block (divides hidden)", min=1)
    dropout: float = _opt(0.0, "dropout rate (MC dropout needs > 0)", min=0.0, max=0.9)

    def __post_init__(self) -> None:
        if self.hidden % self.filter_groups:
            raise ConfigError(
                f"hidden={self.hidden} must be divisible by filter_groups={self.filter_groups}"
            )

    def model_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(ModelConfig) if f.name != "model"}


@dataclass
class FitConfig:
    """How a surrogate is trained."""

    epochs: int = _opt(150, "maximum epochs", min=1)
    batch_size: int = _opt(64, "molecules per batch", min=1)
    lr: float = _opt(1e-3, "peak learning rate (AdamW)", min=0.0)
    weight_decay: float = _opt(0.0, "AdamW weight decay", min=0.0)
    patience: int = _opt(30, "early stopping: epochs without validation improvement", min=1)
    grad_clip: float = _opt(10.0, "gradient norm clip (0 = off)", min=0.0)
    val_fraction: float = _opt(0.1, "share of the labelled set held out", min=0.0, max=0.5)
    seed: int = _opt(0, "seed for weights, batches and subsets")
    device: str = _opt("auto", "auto picks CUDA when present", choices=DEVICES)
    amp: bool = _opt(True, "bf16 autocast (CUDA only)")
    compile: bool = _opt(False, "torch.compile the model (CUDA only)")
    threads: int = _opt(0, "CPU threads (0 = torch's default)", min=0)
    progress: bool = _opt(True, "show progress bars")


@dataclass
class DataConfig:
    """Where molecules come from and how they are split."""

    source: str = _opt("qm9pack", "data source", choices=SOURCES)
    data_root: str = _opt("", "folder of the source (pyg: the QM9 root)")
    split_seed: int = _opt(0, "seed of the test/oracle/pool split")
    n_test: int = _opt(10_000, "size of the test split", min=1)
    n_oracle: int = _opt(50_000, "size of the oracle split", min=0)


@dataclass
class TrainRunConfig(ModelConfig, FitConfig, DataConfig):
    """The ``train`` entry point: fit one model on random pool molecules."""

    train_size: int = _opt(1000, "labelled pool molecules (train + validation)", min=2)
    profile: bool = _opt(False, "write a torch.profiler trace of a few steps")
    experiment_name: str = _opt("al", "MLflow experiment (when not set by mlflow run)")
    surrogate_config: str = _opt(
        "", "YAML of model and fit settings (e.g. runs:/<id>/best_params.yaml), below config"
    )


def _type_of(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError
            return int(as_float)
        except (ValueError, OverflowError):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    return value


def build_config(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls(**values)`` with unknown keys, types, choices and ranges checked."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(map(repr, unknown))}; valid keys: "
            f"{', '.join(sorted(known))}"
        )
    resolved: dict[str, Any] = {}
    for key, value in values.items():
        f = known[key]
        value = _coerce(key, value, _type_of(cls, key))
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"config key {key!r}: {value!r} is not one of {', '.join(map(str, choices))}"
            )
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ConfigError(f"config key {key!r}: {value!r} is out of range, expected {bounds}")
        resolved[key] = value
    return cls(**resolved)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a clear error when the file is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else "invalid YAML"
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values")
    return data


def resolve_config(
    cls: type[T], config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> T:
    """Defaults <- YAML file <- overrides (``None`` values in overrides mean "not given")."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(read_yaml(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(cls, values)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def subset(cls: type[T], config: Any) -> T:
    """The fields of ``cls`` taken from a larger config (e.g. ModelConfig from a run config)."""
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass
class CampaignConfig(ModelConfig, FitConfig, DataConfig):
    """The ``al_loop`` entry point: one active-learning campaign.

    ``strategy`` names a preset (uncertainty method + acquisition function, see
    :mod:`al.strategies`); ``uncertainty`` and ``acquisition`` override its parts.
    """

    strategy: str = _opt("ensemble", "preset: uncertainty method + acquisition")
    acquisition: str = _opt("", "acquisition function (overrides the strategy's)")
    uncertainty: str = _opt("", "ensemble | mc_dropout (overrides the strategy's)")
    oracle: str = _opt(
        "dft", "labeller: dft, xtb, pretrained, pyg_schnet or model:<MLflow model URI>"
    )
    oracle_cost: float = _opt(-1.0, "cost per label (-1: the oracle's default)")
    oracles: str = _opt(
        "", "several labellers, cheapest first, comma-separated (e.g. xtb,dft): multi-fidelity"
    )
    costs: str = _opt("", "cost per label of each of oracles, e.g. 0.01,1.0 (empty: defaults)")
    mf_acquisition: str = _opt(
        "variance_reduction", "multi-fidelity: how (molecule, fidelity) pairs are chosen",
        choices=MF_ACQUISITION_NAMES,
    )  # fmt: skip
    round_cost: float = _opt(
        0.0, "multi-fidelity: cost per round (0 = batch_size x the last oracle's cost)", min=0.0
    )
    cheap_share: float = _opt(
        0.5, "multi-fidelity cheap_first: share of a round's cost for the cheap oracle",
        min=0.0, max=1.0,
    )  # fmt: skip
    initial_size: int = _opt(1000, "random labels in round 0", min=1)
    batch_size: int = _opt(100, "labels asked for per round", min=1)
    rounds: int = _opt(3, "acquisition rounds after round 0 (0 = no limit)", min=0)
    budget_labels: int = _opt(0, "stop when this many labels are spent (0 = none)", min=0)
    budget_cost: float = _opt(0.0, "stop when this much cost is spent (0 = none)", min=0.0)
    target_mae: float = _opt(0.0, "stop when test MAE (eV) is at most this (0 = none)", min=0.0)
    plateau_rounds: int = _opt(
        0, "stop after this many rounds without improvement (0 = off)", min=0
    )
    epochs: int = _opt(40, "maximum epochs per round's fit", min=1)
    patience: int = _opt(10, "early stopping: epochs without validation improvement", min=1)
    ensemble_size: int = _opt(5, "deep-ensemble members", min=2)
    bootstrap: bool = _opt(False, "Poisson bootstrap per ensemble member")
    mc_samples: int = _opt(20, "MC-dropout passes", min=2)
    pool_subsample: int = _opt(5000, "pool molecules scored per round (0 = whole pool)", min=0)
    train_batch_size: int = _opt(64, "molecules per training batch", min=1)
    stream_chunk: int = _opt(2000, "stream scheme: pool molecules arriving per round", min=1)
    retrain_fraction: float = _opt(
        0.2, "stream scheme: retrain once the labelled set grew by this fraction", min=0.0
    )
    resume: str = _opt("", "run id of a campaign to continue")
    experiment_name: str = _opt("al", "MLflow experiment (when not set by mlflow run)")
    surrogate_config: str = _opt(
        "", "YAML of model and fit settings (e.g. runs:/<id>/best_params.yaml), below config"
    )

    #: Surrogate-config keys that have another name here (``batch_size`` counts labels).
    SURROGATE_RENAMES: ClassVar[dict[str, str]] = {"batch_size": "train_batch_size"}

    def fidelities(self) -> list[tuple[str, float | None]]:
        """The labellers as ``(spec, cost or None for the default)``, cheapest first.

        One entry unless ``oracles`` names several (a multi-fidelity campaign).
        """
        specs = [o.strip() for o in self.oracles.split(",") if o.strip()] if self.oracles else []
        if not specs:
            if self.costs:
                raise ConfigError("config key 'costs' is given without 'oracles'")
            return [(self.oracle, self.oracle_cost if self.oracle_cost >= 0 else None)]
        if len(set(specs)) != len(specs):
            raise ConfigError(f"config key 'oracles': {self.oracles!r} names an oracle twice")
        if not self.costs:
            return [(spec, None) for spec in specs]
        try:
            costs = [float(c) for c in self.costs.split(",")]
        except ValueError:
            raise ConfigError(
                f"config key 'costs': {self.costs!r} is not a comma-separated list of numbers"
            ) from None
        if len(costs) != len(specs):
            raise ConfigError(
                f"config key 'costs': {len(costs)} cost(s) for {len(specs)} oracle(s) "
                f"({self.oracles}); give one per oracle, in the same order"
            )
        if any(not c > 0 for c in costs):
            raise ConfigError(f"config key 'costs': every cost must be > 0, got {self.costs!r}")
        return list(zip(specs, costs, strict=True))

    def fit_config(self) -> FitConfig:
        values = {f.name: getattr(self, f.name) for f in fields(FitConfig)}
        values["batch_size"] = self.train_batch_size
        return FitConfig(**values)
