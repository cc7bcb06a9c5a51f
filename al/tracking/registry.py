"""The MLflow model registry: registering oracle models under a name and an alias."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def register_oracle(
    model_uri: str, name: str, alias: str, tags: Mapping[str, str]
) -> tuple[str, str]:
    """Register ``model_uri`` as a new version of ``name`` with ``tags``; point ``alias`` at it.

    Returns ``("models:/<name>@<alias>", version)``.
    """
    mv = mlflow.register_model(model_uri, name, tags=dict(tags))
    MlflowClient().set_registered_model_alias(name, alias, mv.version)
    log.info("event=oracle_registered name=%s version=%s alias=%s", name, mv.version, alias)
    return f"models:/{name}@{alias}", str(mv.version)
