"""Typed, validated configuration: the machinery every config dataclass shares.

Every run resolves one config from (lowest to highest priority) the dataclass defaults, an
optional YAML file of the same keys, and explicit overrides. Unknown keys, wrong types and
values outside their choices or range are rejected with one line naming the key.

The dataclasses live with the part they configure (:class:`al.data.config.DataConfig`,
:class:`al.models.config.ModelConfig`, :class:`al.training.config.FitConfig`,
:class:`al.loop.config.CampaignConfig`, ...); choices are read from the registries there,
so a name is written once. Field metadata: ``help``, ``choices`` (a tuple), ``check``
(a callable returning a one-line problem or None), ``min`` and ``max``.

:func:`mask_secrets` is the one place that hides passwords in URLs and connection strings
before a value reaches params, tags, artifacts, logs or the terminal.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

#: What a masked secret reads as.
MASK = "***"
# scheme://user:password@ and scheme://:password@ (the password ends at the first "@")
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?=@)")
# password=..., passwd=..., pwd=... in a query string or a key=value connection string
# (also URL-encoded: password%3D...); the value ends at &, ;, whitespace, a quote or %26/%3B
_KEY_PASSWORD = re.compile(
    r"(?P<head>(?:(?<=%3B)|(?<=%26)|(?<![A-Za-z0-9_]))(?:password|passwd|pwd)(?:=|%3D))"
    r"(?P<secret>(?:(?!%26|%3B)[^&;,\s#'\"])*)",
    re.IGNORECASE,
)
# ${VAR} or $VAR: a reference, expanded only when the connection opens; shown as it is
_REFERENCE = re.compile(r"\$\{?\w+\}?")


def mask_secrets(text: str) -> str:
    """``text`` with every literal password of a URL or connection string replaced by
    ``***``: ``scheme://user:pw@``, ``scheme://:pw@``, ``?password=``, ``&password=``,
    ``pwd=`` (any case, also URL-encoded). ``${VAR}`` references are kept as they are."""

    def hide(match: re.Match[str]) -> str:
        secret = match.group("secret")
        if not secret or _REFERENCE.fullmatch(secret):
            return match.group(0)
        return match.group("head") + MASK

    return _KEY_PASSWORD.sub(hide, _URL_PASSWORD.sub(hide, str(text)))


def mask_values(obj: Any) -> Any:
    """``obj`` (a mapping, list or scalar) with :func:`mask_secrets` applied to every string."""
    if isinstance(obj, str):
        return mask_secrets(obj)
    if isinstance(obj, Mapping):
        return {k: mask_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(mask_values(v) for v in obj)
    return obj


class SecretMaskingFilter(logging.Filter):
    """A logging filter that applies :func:`mask_secrets` to every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class ConfigError(ValueError):
    """A config key or value that is not accepted; the message is one line."""


def option(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its help text and validation metadata."""
    return field(default=default, metadata={"help": help, **meta})


def field_type(cls: type, name: str) -> Any:
    """The resolved annotation of field ``name`` of dataclass ``cls`` (e.g. ``int``)."""
    return typing.get_type_hints(cls)[name]


def coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return coerce(key, value, args[0])
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
        value = coerce(key, value, field_type(cls, key))
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"config key {key!r}: {value!r} is not one of "
                f"{', '.join(str(c) if c != '' else repr(c) for c in choices)}"
            )
        check = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:
            raise ConfigError(f"config key {key!r}: {problem}")
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
