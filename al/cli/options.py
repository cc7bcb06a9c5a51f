"""Command-line options built from the config dataclasses, grouped in the help.

A :class:`ConfigCommand` names its config class through a loader, so the class (and what
it imports) is read only when the command's options are needed: ``al --help`` imports no
config at all. Every command that takes a config gets ``--config`` and ``--print-config``.

The config modules import PyTorch and MLflow, so ``al <command> --help`` reads the config
options (and the help texts made from registries) from ``options.json`` instead: the same
options as the config class gives, saved by ``python -m al.cli.save_options`` and checked
against the config classes by the tests. A command that runs builds them from the class.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import click

from al.config import (
    ConfigError,
    build_config,
    coerce,
    field_type,
    mask_secrets,
    mask_values,
    read_yaml,
)

#: Help sections of the config options, in the order they are shown.
SECTIONS = (
    "data", "model", "training", "surrogate", "acquisition", "oracle", "budget and stopping",
    "tracking and run",
)  # fmt: skip


class _Optional(click.ParamType):
    """A typed config option: its empty value means "not given" (``mlflow run`` passes
    ``-P key=`` as an empty string), and a bad value is one line naming the key, worded as
    :func:`al.config.build_config` words it for a YAML file."""

    def __init__(self, inner: click.ParamType, key: str = "", tp: Any = str) -> None:
        self.inner, self.key, self.tp = inner, key, tp
        self.name = inner.name

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self.inner.get_metavar(param, ctx)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or value == "":
            return None
        try:
            return self.inner.convert(value, param, ctx)
        except click.BadParameter as err:
            key = self.key or (param.name if param is not None else "value")
            try:
                coerce(key, value, self.tp)
            except ConfigError as bad_type:
                raise click.ClickException(str(bad_type)) from None
            if isinstance(self.inner, click.Choice):
                choices = ", ".join(str(c) for c in self.inner.choices)
                raise click.ClickException(
                    f"config key {key!r}: {value!r} is not one of {choices}"
                ) from None
            raise click.ClickException(f"config key {key!r}: {err.message}") from None


_CLICK_TYPES: dict[Any, click.ParamType] = {
    int: click.INT, float: click.FLOAT, bool: click.BOOL, str: click.STRING,
}  # fmt: skip


def field_section(cls: type, f: dataclasses.Field[Any]) -> str:
    """The help section of field ``f``: its ``group`` metadata, else the ``GROUP`` of the
    config class that declares it (``DataConfig``: data)."""
    if "group" in f.metadata:
        return str(f.metadata["group"])
    for klass in cls.__mro__:
        if f.name in inspect.get_annotations(klass):
            return str(vars(klass).get("GROUP", "tracking and run"))
    return "tracking and run"


def _shown(f: dataclasses.Field[Any]) -> str:
    """The default as the help shows it: ``[default: x]`` for every option."""
    if "default_text" in f.metadata:
        return str(f.metadata["default_text"])
    default = f.default if f.default is not MISSING else None
    if isinstance(default, bool):
        return str(default).lower()
    return "''" if default == "" else str(default)


class ConfigOption(click.Option):
    """A config field's option; ``section`` is its heading in the help."""

    def __init__(self, *args: Any, section: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


def config_params(cls: type) -> list[click.Parameter]:
    """One typed ``--key`` option per config field, from the dataclass (names written once).

    Types come from the field annotations and choices from the registries the config reads
    (:class:`click.Choice`, without the empty choice: it is the described default); ranges
    and cross-field rules are checked by :func:`al.config.build_config`, so YAML and
    command line share one set of checks. Both ``--train-size`` and ``--train_size`` work:
    ``mlflow run -P train_size=...`` passes undeclared parameters in the second form. An
    empty value means "not given".
    """
    params: list[click.Parameter] = []
    for f in fields(cls):
        choices = f.metadata.get("choices")
        tp = field_type(cls, f.name)
        inner = (
            click.Choice([str(c) for c in choices if c != ""])
            if choices is not None
            else _CLICK_TYPES.get(tp, click.STRING)
        )
        spellings = {f"--{f.name.replace('_', '-')}", f"--{f.name}"}
        params.append(
            ConfigOption(
                [*sorted(spellings), f.name],
                type=_Optional(inner, f.name, tp),
                default=None,
                help=f"{f.metadata.get('help', '')} [default: {_shown(f)}]",
                section=field_section(cls, f),
            )
        )
    return params


#: The saved config options and help texts that ``--help`` reads (see the module's doc).
SAVED_OPTIONS = Path(__file__).with_name("options.json")


def describe(param: ConfigOption) -> dict[str, Any]:
    """A config option as ``options.json`` saves it: what its help line is made of."""
    inner = param.type.inner if isinstance(param.type, _Optional) else param.type
    kind: dict[str, Any] = (
        {"choices": [str(c) for c in inner.choices]}
        if isinstance(inner, click.Choice)
        else {"type": next((t.__name__ for t, c in _CLICK_TYPES.items() if c is inner), "str")}
    )
    return {"decls": [*param.opts, param.name], **kind, "help": param.help,
            "section": param.section}  # fmt: skip


def rebuild(record: dict[str, Any]) -> ConfigOption:
    """The option :func:`describe` saved, as :func:`config_params` makes it."""
    types = {t.__name__: t for t in _CLICK_TYPES}
    tp = types.get(record.get("type", "str"), str)
    inner = click.Choice(record["choices"]) if "choices" in record else _CLICK_TYPES[tp]
    name = record["decls"][-1]
    return ConfigOption(record["decls"], type=_Optional(inner, name, tp), default=None,
                        help=record["help"], section=record["section"])  # fmt: skip


@functools.cache
def _saved() -> dict[str, Any]:
    """``options.json`` (empty when it is missing: the help then reads the config classes)."""
    try:
        return dict(json.loads(SAVED_OPTIONS.read_text()))
    except (OSError, ValueError):
        return {}


def saved_params(command: str) -> list[click.Parameter] | None:
    """The saved config options of ``command``, or None when none are saved."""
    records = _saved().get("commands", {}).get(command)
    return None if records is None else [rebuild(r) for r in records]


def help_key(help_text: Callable[[], str]) -> str:
    """The name a help text function's text is saved under in ``options.json``."""
    return f"{help_text.__module__}:{help_text.__qualname__}"


class LazyHelpOption(click.Option):
    """An option whose help text is made when the help is shown (it reads a registry); the
    saved text, when there is one, spares the registry's imports."""

    def __init__(self, *args: Any, help_text: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_text = help_text

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        saved = _saved().get("help_texts", {}).get(help_key(self.help_text))
        self.help = saved if saved is not None else self.help_text()
        return super().get_help_record(ctx)


def _masked(err: BaseException) -> click.ClickException:
    """A user error as it was raised, passwords masked (a tracking URI's, in the client's
    own message too)."""
    return click.ClickException(mask_secrets(str(err).strip("'\"")))


def _surrogate_values(cls: type, source: str) -> dict[str, Any]:
    """Model and fit settings from a YAML file or an MLflow artifact URI (``runs:/...``),
    renamed to ``cls``'s keys where they differ."""
    from al.models.config import ModelConfig
    from al.training.config import FitConfig

    path = source
    if re.match(r"^[a-zA-Z][\w+.-]+:/", source):
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=source)
        except (MlflowException, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"surrogate config {source!r} cannot be read: {first}") from None
    values = read_yaml(path)
    allowed = [f.name for f in fields(ModelConfig)] + [f.name for f in fields(FitConfig)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(
            f"surrogate config {source!r}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(sorted(allowed))}"
        )
    renames = getattr(cls, "SURROGATE_RENAMES", {})
    return {renames.get(k, k): v for k, v in values.items()}


def _resolve(cls: type, config_file: str | None, overrides: dict[str, Any]) -> Any:
    """Defaults < surrogate_config < config file < explicit options."""
    given = {k: v for k, v in overrides.items() if v not in (None, "")}
    try:
        from_file = read_yaml(config_file) if config_file else {}
        surrogate = given.get("surrogate_config") or from_file.get("surrogate_config")
        base = _surrogate_values(cls, str(surrogate)) if surrogate else {}
        return build_config(cls, {**base, **from_file, **given})
    except ConfigError as err:
        raise _masked(err) from None


def config_yaml(config: Any) -> str:
    """The resolved config as YAML, passwords masked: a config file that repeats the run."""
    import yaml

    return yaml.safe_dump(mask_values(dataclasses.asdict(config)), sort_keys=False)


Resolver = Callable[[type, "str | None", dict[str, Any]], Any]


class ConfigCommand(click.Command):
    """A command whose options are the fields of a config class, loaded on first use.

    The callback gets the resolved ``config``, ``given`` (the keys set by the file or an
    option) and its own options; ``--print-config`` prints the config and runs nothing.
    """

    def __init__(
        self, *args: Any, config: Callable[[], type], resolver: Resolver = _resolve, **kwargs: Any
    ) -> None:
        self._loader, self._resolver, self._built = config, resolver, False
        self._help_params: list[click.Parameter] | None = None  # while --help is parsed
        super().__init__(*args, **kwargs)
        self._params[:0] = [
            click.Option(["--config", "config_file"], default=None,
                         help="YAML file of the same keys"),
            click.Option(["--print-config"], is_flag=True, help="print the resolved config as "
                         "YAML (passwords masked) and run nothing"),
        ]  # fmt: skip

    def config_class(self) -> type:
        """The config class (importing its module and what that imports)."""
        return self._loader()

    @property
    def params(self) -> list[click.Parameter]:  # type: ignore[override]
        """The command's own options, then the config's (built once, when first read)."""
        if self._help_params is not None:
            return self._help_params
        if not self._built:
            self._built = True
            self._params += config_params(self.config_class())
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params, self._built = list(value), False

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """With ``--help`` among the arguments, a first pass with the saved config options
        shows the help without importing the config; when it shows none (``--help`` was an
        option's value, say), the arguments are parsed again with the config's own options."""
        saved = None
        if any(a in ctx.help_option_names for a in args):
            saved = saved_params(self.name or "")
        if saved is None:
            return super().parse_args(ctx, args)
        own = [p for p in self._params if not isinstance(p, ConfigOption)]
        self._help_params = [*own, *saved]
        try:
            # a copy, for the parser consumes its list; the help option prints and exits
            super().parse_args(ctx, list(args))
        except click.ClickException:
            pass  # no help shown: the second pass reports the error with the real options
        finally:
            self._help_params = None
        ctx.params.clear()
        ctx._parameter_source.clear()
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        cls = self.config_class()
        keys = {f.name for f in fields(cls)}
        overrides = {k: ctx.params.pop(k) for k in list(ctx.params) if k in keys}
        config_file = ctx.params.pop("config_file")
        config = self._resolver(cls, config_file, overrides)
        if ctx.params.pop("print_config"):
            click.echo(config_yaml(config), nl=False)
            return None
        given = {k for k, v in overrides.items() if v not in (None, "")}
        given |= set(read_yaml(config_file)) if config_file else set()
        ctx.params.update(config=config, given=given)
        return super().invoke(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command's own options, then one section per group of config options."""
        sections: dict[str, list[tuple[str, str]]] = {"options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue
            sections.setdefault(getattr(param, "section", "options"), []).append(record)
        order = ["options", *SECTIONS, *sorted(set(sections) - {"options", *SECTIONS})]
        for name in order:
            if sections.get(name):
                with formatter.section(name.capitalize()):
                    formatter.write_dl(sections[name])
