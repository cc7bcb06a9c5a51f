"""The MLflow model registry: registering oracle models under a name and an alias.

``al pretrain`` registers the models it trains with :func:`register_oracle`. The oracle
model shipped with the package (the ``pretrained`` oracle) is registered by
:func:`register_oracles`, which ``al label`` and ``al_loop`` call once their oracles are
built: the oracles themselves never touch MLflow (tracking sits above them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from al.oracles.base import Oracle
from al.oracles.pretrained import PretrainedOracle
from al.tracking.log import log_params
from al.tracking.names import (
    KIND_PRETRAIN,
    ORACLE_EXPERIMENT,
    TAG_FIDELITY,
    TAG_KIND,
    TAG_REGISTERED_MODEL,
    TAG_SHA256,
    TAG_SPLIT_DIGEST,
)
from al.tracking.pyfunc import save_pyfunc_model

log = logging.getLogger(__name__)

#: Registered model the shipped oracle is registered as, and the alias it gets.
PRETRAINED_REGISTERED_NAME = "qm9-oracle-pretrained"
PRETRAINED_ALIAS = "shipped"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def oracle_version_tags(
    *, fidelity: str, test_mae: str, split_digest: str, train_size: str, sha256: str, run_id: str
) -> dict[str, str]:
    """The tags of a registered oracle model version (``al pretrain`` and the shipped one)."""
    return {
        "fidelity": fidelity,
        "test_mae": test_mae,
        "split_digest": split_digest,
        "train_size": train_size,
        "sha256": sha256,
        "run_id": run_id,
    }


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


def tracking_configured() -> bool:
    """True when a tracking URI was set (env or ``mlflow.set_tracking_uri``) or a run is
    active; imports nothing when MLflow was never imported and no URI is in the env."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return True
    if "mlflow" not in sys.modules:
        return False
    return mlflow.tracking.is_tracking_uri_set() or mlflow.active_run() is not None


def register_oracles(oracles: Sequence[Oracle]) -> None:
    """Register in the current tracking server those of ``oracles`` that need it; never raises.

    That is each shipped ``pretrained`` oracle (:class:`PretrainedOracle`) whose ``register``
    mode allows it (``"auto"``: only when :func:`tracking_configured`), once per checkpoint:
    see :func:`register_pretrained_oracle`. Its ``registered_uri`` is set. A failure (no
    server, no permission) is one logged warning: labelling must not depend on the tracking
    server. Call it once the oracles are built, when a campaign or ``al label`` starts.
    """
    done: dict[str, str | None] = {}  # sha256 -> registered URI (None: failed)
    for oracle in oracles:
        if not isinstance(oracle, PretrainedOracle) or oracle.register_mode == "never":
            continue
        if oracle.register_mode == "auto" and not tracking_configured():
            log.debug(
                "event=oracle_registration_skipped oracle=%s reason=no_tracking_uri", oracle.name
            )
            continue
        if oracle.sha256 not in done:
            try:
                done[oracle.sha256] = register_pretrained_oracle(oracle)
            except Exception as exc:  # labelling must not depend on the tracking server
                done[oracle.sha256] = None
                log.warning(
                    "event=oracle_registration_failed oracle=%s name=%s message=%r",
                    oracle.name,
                    PRETRAINED_REGISTERED_NAME,
                    f"{type(exc).__name__}: {exc}",
                )
        oracle.registered_uri = done[oracle.sha256]


def register_pretrained_oracle(oracle: PretrainedOracle) -> str:
    """Register the shipped model in the current tracking server, once per checkpoint.

    Returns ``models:/qm9-oracle-pretrained/<version>``: the version whose ``sha256`` tag
    equals the oracle's checkpoint's, created (and given the alias ``shipped``) in a short
    run of experiment ``al-oracles`` if there is none. Everything goes through
    :class:`mlflow.MlflowClient` with explicit ids, so the caller's active run and
    experiment (a campaign's) are neither used nor changed. Raises whatever MLflow raises
    (no server, no permission).
    """
    client = MlflowClient()
    for mv in client.search_model_versions(f"name='{PRETRAINED_REGISTERED_NAME}'"):
        if mv.tags.get("sha256") == oracle.sha256:
            uri = f"models:/{PRETRAINED_REGISTERED_NAME}/{mv.version}"
            log.info("event=oracle_already_registered uri=%s", uri)
            return uri
    return _log_and_register(client, oracle)


def _experiment_id(client: MlflowClient, name: str) -> str:
    """Id of experiment ``name``, created if missing (also by another process meanwhile)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def _log_and_register(client: MlflowClient, oracle: PretrainedOracle) -> str:
    """A short run in ``al-oracles`` holding the pyfunc model; a new registered version."""
    exp_id = _experiment_id(client, ORACLE_EXPERIMENT)
    prov = oracle.provenance
    run_id = client.create_run(
        exp_id,
        run_name="shipped-pretrained-oracle",
        tags={
            TAG_KIND: KIND_PRETRAIN,
            TAG_FIDELITY: PRETRAINED_ALIAS,
            TAG_SPLIT_DIGEST: oracle.split_digest,
            TAG_SHA256: oracle.sha256,
        },
    ).info.run_id
    status = "FAILED"
    try:
        log_params(
            {
                "command": prov.get("command", ""),
                "split_digest": oracle.split_digest,
                "n_train": prov.get("n_train", ""),
                "train_size": prov.get("train_size", ""),
                "test_mae_ev": prov.get("test_mae_ev", ""),
                "sha256": oracle.sha256,
                **{f"model.{k}": v for k, v in prov.get("model", {}).items()},
            },
            run_id=run_id,
        )
        client.log_dict(run_id, prov, "provenance.json")
        with tempfile.TemporaryDirectory(prefix="al-") as tmp:
            local = Path(tmp) / "model"
            save_pyfunc_model(oracle.path, local)
            logged = client.create_logged_model(
                exp_id, name="model", source_run_id=run_id, tags={"sha256": oracle.sha256}
            )
            client.log_model_artifacts(logged.model_id, str(local))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        tags = oracle_version_tags(
            fidelity=PRETRAINED_ALIAS,
            test_mae=str(prov.get("test_mae_ev", "")),
            split_digest=oracle.split_digest,
            train_size=str(prov.get("train_size", "")),
            sha256=oracle.sha256,
            run_id=run_id,
        )
        _, version = register_oracle(
            f"models:/{logged.model_id}", PRETRAINED_REGISTERED_NAME, PRETRAINED_ALIAS, tags
        )
        uri = f"models:/{PRETRAINED_REGISTERED_NAME}/{version}"
        client.set_tag(run_id, TAG_REGISTERED_MODEL, uri)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return uri


# --- a campaign's final model -----------------------------------------------------------------
def split_registered_name(spec: str) -> tuple[str, str]:
    """``name`` or ``name@alias`` -> ``(name, alias or "")``."""
    name, _, alias = spec.partition("@")
    return name.strip(), alias.strip()


def register_as_problem(spec: str) -> str | None:
    """None for a valid ``register_as`` (empty, ``name`` or ``name@alias``), else why not."""
    if not spec:
        return None
    name, alias = split_registered_name(spec)
    if not name or ("@" in spec and not alias) or "@" in alias or "/" in name + alias:
        return f"expected a registered model name, or name@alias, got {spec!r}"
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        return f"alias {alias!r} is reserved by MLflow (latest, v<number>); choose another"
    return None


def register_model(model_uri: str, spec: str, run_id: str) -> str:
    """Register ``model_uri`` as a new version of ``spec``'s name (``name`` or
    ``name@alias``, the alias then pointing at it); the version's ``run_id`` tag and the
    run's ``al.registered_model`` tag link them. Returns ``models:/<name>/<version>``."""
    name, alias = split_registered_name(spec)
    client = MlflowClient()
    mv = mlflow.register_model(model_uri, name, tags={"run_id": run_id})
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    uri = f"models:/{name}/{mv.version}"
    client.set_tag(run_id, TAG_REGISTERED_MODEL, uri)
    log.info("event=model_registered uri=%s alias=%s run_id=%s", uri, alias or "-", run_id)
    return uri


def set_alias_of_run(run_id: str, alias: str) -> str:
    """Point ``alias`` at the registered version of run ``run_id``'s model (its
    ``al.registered_model`` tag); returns ``models:/<name>@<alias>``, or "" when the run's
    model is not registered."""
    client = MlflowClient()
    uri = client.get_run(run_id).data.tags.get(TAG_REGISTERED_MODEL, "")
    if not uri.startswith("models:/"):
        return ""
    name, _, version = uri.removeprefix("models:/").rpartition("/")
    client.set_registered_model_alias(name, alias, version)
    log.info("event=alias_set name=%s alias=%s version=%s run_id=%s", name, alias, version, run_id)
    return f"models:/{name}@{alias}"
