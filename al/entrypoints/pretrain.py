"""The ``pretrain`` entry point: an oracle model trained on the oracle split, registered.

A pretrained model stands in for the expensive labeller (DFT) in campaigns. It is trained
only on molecules of the *oracle* split (see :mod:`al.data.splits`), so it has never seen a
test or pool molecule; its validation molecules come from the oracle split too, and it is
evaluated on the test split. The model is logged as a pyfunc model (:mod:`al.pyfunc`),
registered in the MLflow Model Registry under ``register_as`` with the alias = ``fidelity``,
and is then usable as ``oracle=model:models:/qm9-oracle@lofi``.

Two presets (``fidelity``) set the model size and budget; any key given explicitly beats the
preset. ``export`` additionally writes the checkpoint and its provenance as the files the
package ships (``al/data/pretrained/qm9_oracle.pt`` + ``.json``, read by the ``pretrained``
oracle in :mod:`al.oracles`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from al import tracking
from al.config import ConfigError, build_config, option, subset, to_dict
from al.data.config import DataConfig
from al.data.load import load_data
from al.data.molecules import MolecularData
from al.data.qm9pack import qm9pack_data_dir
from al.data.splits import Splits
from al.entrypoints.train import log_test_evaluation
from al.models import ModelConfig, build_model, count_parameters
from al.models.checkpoint import save_checkpoint
from al.runtime import configure_threads
from al.tracking import Artifacts, Metrics
from al.tracking.names import KIND_PRETRAIN, TAG_FIDELITY
from al.tracking.pyfunc import log_pyfunc_model
from al.tracking.registry import file_sha256, oracle_version_tags, register_oracle
from al.tracking.runs import set_experiment
from al.training.config import FitConfig
from al.training.fit import FitResult, fit, predict, resolve_device, seed_everything
from al.training.split import split_validation

log = logging.getLogger(__name__)

FIDELITIES = ("lofi", "hifi")
#: Artifact of the pretrain run: every oracle-split molecule used, ``qm9_index, role``.
TRAIN_INDEX_ARTIFACT = "train_qm9_index.csv"
#: File names of an export (the shipped oracle is ``al/data/pretrained/<these>``).
EXPORT_CHECKPOINT = "qm9_oracle.pt"
EXPORT_PROVENANCE = "qm9_oracle.json"

#: Per-fidelity settings; explicit keys override them. Measured on this project's 2-core CPU
#: (2026-11), default split: lofi (4.5k parameters) test MAE 0.354 eV, fit 3 s (13 s in all);
#: hifi (159k parameters, 27,000 + 3,000 molecules, 60 epochs) test MAE 0.029 eV, fit 25 min
#: with --threads 1 on cores shared with other jobs (~12 min expected on idle cores at the
#: ~2,400 mol/s measured there).
PRESETS: dict[str, dict[str, Any]] = {
    "lofi": {
        "model": "schnet",
        "hidden": 32,
        "n_interactions": 1,
        "filter_groups": 16,
        "dropout": 0.0,
        "train_size": 1000,
        "epochs": 30,
        "patience": 10,
        "batch_size": 64,
    },
    "hifi": {
        "model": "schnet",
        "hidden": 128,
        "n_interactions": 3,
        "filter_groups": 16,
        "dropout": 0.0,
        "train_size": 30_000,
        "epochs": 60,
        "patience": 15,
        "batch_size": 64,
    },
}


@dataclass
class PretrainConfig(ModelConfig, FitConfig, DataConfig):
    """The ``pretrain`` entry point: an oracle model on the oracle split.

    Resolve it with :func:`resolve_pretrain_config` so that the ``fidelity`` preset is
    applied below the explicit keys; constructed directly, the field defaults apply.
    """

    fidelity: str = option("lofi", "preset of model size and budget", choices=FIDELITIES)
    train_size: int = option(1000, "oracle-split molecules drawn (train + validation)", min=2)
    register_as: str = option("qm9-oracle", "registered model name ('' = do not register)")
    experiment_name: str = option("al-oracles", "MLflow experiment (when not set by mlflow run)")
    export: str = option("", "folder to write qm9_oracle.pt + qm9_oracle.json into ('' = none)")


def resolve_pretrain_config(values: Mapping[str, Any]) -> PretrainConfig:
    """Dataclass defaults < the ``fidelity`` preset < ``values``; checked like every config.

    Raises:
        ConfigError: an unknown key, a bad value, or an unknown fidelity.
    """
    values = {k: v for k, v in values.items() if v is not None and v != ""}
    fidelity = str(values.get("fidelity", PretrainConfig.fidelity)).strip()
    if fidelity not in PRESETS:
        raise ConfigError(
            f"config key 'fidelity': {fidelity!r} is not one of {', '.join(FIDELITIES)}"
        )
    return build_config(PretrainConfig, {**PRESETS[fidelity], **values, "fidelity": fidelity})


def reproduce_command(config: PretrainConfig) -> str:
    """The shortest ``al pretrain`` command that resolves to ``config``.

    Keys equal to the preset's (or the default's) value are left out; settings that do not
    change the model (experiment, registry name, progress bars) too.
    """
    base = resolve_pretrain_config({"fidelity": config.fidelity})
    skip = {"fidelity", "experiment_name", "register_as", "progress", "device", "threads"}
    parts = ["al", "pretrain", "--fidelity", config.fidelity]
    for f in fields(PretrainConfig):
        value = getattr(config, f.name)
        if f.name in skip or value == getattr(base, f.name):
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        parts += [f"--{f.name.replace('_', '-')}", text]
    return " ".join(parts)


def draw_oracle_rows(
    data: Any, splits: Any, train_size: int, config: FitConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation rows ``([n_train], [n_val])``, all from the oracle split:
    ``train_size`` random ones (seeded with ``config.seed``), split by
    :func:`~al.training.split.split_validation`.

    Raises:
        ValueError: ``train_size`` exceeds the oracle split.
        RuntimeError: a drawn molecule is not in the oracle split (a broken split; never
            train an oracle on test or pool molecules).
    """
    oracle = data.rows_of(splits.oracle)
    if train_size > oracle.numel():
        raise ValueError(
            f"train_size={train_size} exceeds the oracle split ({oracle.numel()} molecules); "
            "lower train_size or raise n_oracle"
        )
    gen = torch.Generator().manual_seed(config.seed)
    chosen = oracle[torch.randperm(oracle.numel(), generator=gen)[:train_size]]
    train_rows, val_rows = split_validation(chosen, config)
    ids = data.qm9_index[chosen].numpy()
    if (
        not np.isin(ids, splits.oracle).all()
        or np.isin(ids, splits.test).any()
        or np.isin(ids, splits.pool).any()
    ):
        raise RuntimeError("pretrain drew a molecule outside the oracle split; refusing to train")
    return train_rows, val_rows


@dataclass
class PretrainResult:
    """What :func:`run_pretrain` produced.

    Attributes:
        run_id: the MLflow run.
        model_uri: the logged pyfunc model, ``models:/m-<id>``.
        registered_uri: ``models:/<register_as>@<fidelity>``, or "" when not registered.
        version: the registered model version ("" when not registered).
        test_mae: test-split MAE in eV.
        export: the exported checkpoint path, or None.
    """

    run_id: str
    model_uri: str
    registered_uri: str
    version: str
    test_mae: float
    export: Path | None = None


def run_pretrain(
    config: PretrainConfig, echo: Callable[[str], None] | None = None
) -> PretrainResult:
    """Train an oracle model on the oracle split, log, register and optionally export it."""
    import mlflow

    configure_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    data, splits = load_data(subset(DataConfig, config))
    train_rows, val_rows = draw_oracle_rows(data, splits, config.train_size, config)
    test = data.rows_of(splits.test)

    set_experiment(config.experiment_name)
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        log_pretrain_inputs(config, data, splits, train_rows, val_rows, device)
        model = build_model(config.model, **subset(ModelConfig, config).model_kwargs()).to(device)
        n_params = count_parameters(model)
        tracking.log_metrics({Metrics.N_PARAMETERS: n_params}, step=0)
        log.info(
            "event=pretrain_start fidelity=%s model=%s params=%d train=%d val=%d device=%s",
            config.fidelity,
            config.model,
            n_params,
            train_rows.numel(),
            val_rows.numel(),
            device,
        )
        logger = tracking.EpochLogger(run_id)
        result = fit(model, data, train_rows, val_rows, subset(FitConfig, config), on_epoch=logger)
        logger.flush()

        model = model.cpu().eval()
        pred, _ = predict(model, data, test, amp=False)
        if pred.dim() > 1:  # a multi-output model: its last (highest) fidelity
            pred = pred[..., -1]
        test_metrics, base = log_test_evaluation(
            pred, data, train_rows, test, result, config.train_size,
            f"{config.fidelity} oracle, test",
        )  # fmt: skip
        record = OracleRecord(
            config, data, splits, train_rows.numel(), val_rows.numel(), test.numel(), n_params,
            test_metrics, base, result,
        )  # fmt: skip
        published = publish_oracle(model, record, run_id)
    log.info(
        "event=pretrain_done run_id=%s fidelity=%s test_mae=%.4f baseline_mae=%.4f "
        "seconds=%.1f registered=%s",
        run_id,
        config.fidelity,
        test_metrics["mae"],
        base,
        result.seconds,
        published.registered_uri or "-",
    )
    if echo is not None:
        echo(
            f"{config.fidelity} oracle: test MAE {test_metrics['mae']:.4f} eV (per-element linear "
            f"baseline {base:.4f} eV), {train_rows.numel()} oracle-split molecules, "
            f"{len(result.history)} epochs in {result.seconds:.0f} s; run {run_id}; "
            f"model {published.registered_uri or published.model_uri}"
            + (f"; exported to {published.export}" if published.export else "")
        )
    return published


def log_pretrain_inputs(
    config: PretrainConfig,
    data: MolecularData,
    splits: Splits,
    train_rows: torch.Tensor,
    val_rows: torch.Tensor,
    device: torch.device,
) -> None:
    """Tags, parameters, resolved config, split, the table of the oracle-split molecules
    used (:data:`TRAIN_INDEX_ARTIFACT`) and the training data set of the active run;
    ``train_rows`` ``[n_train]``, ``val_rows`` ``[n_val]``."""
    import mlflow

    digest = splits.digest()
    resolved = to_dict(config)
    mlflow.set_tags(
        {
            tracking.TAG_KIND: KIND_PRETRAIN,
            tracking.TAG_MODEL: config.model,
            tracking.TAG_SEED: str(config.seed),
            tracking.TAG_SPLIT_DIGEST: digest,
            TAG_FIDELITY: config.fidelity,
        }
    )
    tracking.log_params(
        {
            **resolved,
            "split_digest": digest,
            "n_train": train_rows.numel(),
            "n_val": val_rows.numel(),
            "device_resolved": str(device),
            "command": reproduce_command(config),
        }
    )
    tracking.log_dict_artifact(resolved, Artifacts.CONFIG)
    tracking.log_text_artifact(splits.to_json(), Artifacts.SPLITS)
    roles = np.array(["train"] * train_rows.numel() + ["val"] * val_rows.numel())
    used = torch.cat([train_rows, val_rows])
    table = np.rec.fromarrays([data.qm9_index[used].numpy(), roles], names="qm9_index,role")
    tracking.log_text_artifact(
        "qm9_index,role\n" + "".join(f"{i},{r}\n" for i, r in table), TRAIN_INDEX_ARTIFACT
    )
    tracking.log_dataset(
        data.qm9_index[train_rows].numpy(),
        data.y[train_rows].numpy(),
        f"qm9-{data.digest()}-oracle-train-{digest}",
        str(config.data_root or qm9pack_data_dir()),
        "training",
    )


@dataclass
class OracleRecord:
    """What a pretrain run knows of its oracle model: settings, data, sizes and results."""

    config: PretrainConfig
    data: MolecularData
    splits: Splits
    n_train: int
    n_val: int
    n_test: int
    n_params: int
    test_metrics: dict[str, float]
    baseline_mae: float
    result: FitResult

    def meta(self) -> dict[str, Any]:
        """The checkpoint's metadata."""
        c = self.config
        return {
            "kind": "oracle",
            "fidelity": c.fidelity,
            "split_digest": self.splits.digest(),
            "split": {"seed": c.split_seed, "n_test": c.n_test, "n_oracle": c.n_oracle},
            "data_digest": self.data.digest(),
            "train_size": c.train_size,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "test_mae": self.test_metrics["mae"],
            "config": to_dict(c),
        }

    def provenance(self, model: torch.nn.Module, run_id: str, tracking_uri: str) -> dict:
        """The exported checkpoint's provenance (:func:`export_checkpoint`)."""
        c, meta = self.config, self.meta()
        return {
            "command": reproduce_command(c),
            "split_digest": meta["split_digest"],
            "split": meta["split"],
            "data_digest": meta["data_digest"],
            "train_size": c.train_size,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "trained_on": "oracle split only (no test or pool molecule)",
            "test_mae_ev": self.test_metrics["mae"],
            "test_rmse_ev": self.test_metrics["rmse"],
            "test_max_ae_ev": self.test_metrics["max_ae"],
            "baseline_test_mae_ev": self.baseline_mae,
            "n_test": self.n_test,
            "model": {"name": c.model, **model.hparams()},
            "n_parameters": self.n_params,
            "fit": {f.name: getattr(c, f.name) for f in fields(FitConfig)},
            "best_epoch": self.result.best_epoch,
            "epochs_run": len(self.result.history),
            "fit_seconds": round(self.result.seconds, 1),
            "mlflow_run_id": run_id,
            "mlflow_tracking_uri": tracking_uri,
        }


def publish_oracle(model: torch.nn.Module, record: OracleRecord, run_id: str) -> PretrainResult:
    """Log the oracle ``model`` as a pyfunc model of run ``run_id``, register it as
    ``register_as@fidelity`` (unless ``register_as`` is empty) and export it (with
    ``export``)."""
    import mlflow

    config = record.config
    with tracking.tmpdir() as tmp:
        ckpt = save_checkpoint([model], Path(tmp) / EXPORT_CHECKPOINT, meta=record.meta())
        sha = file_sha256(ckpt)
        info = log_pyfunc_model(ckpt, Artifacts.MODEL_NAME)
        mlflow.set_tags({tracking.TAG_MODEL_URI: info.model_uri, tracking.TAG_SHA256: sha})
        registered_uri, version = "", ""
        if config.register_as:
            registered_uri, version = register_oracle(
                info.model_uri,
                config.register_as,
                alias=config.fidelity,
                tags=oracle_version_tags(
                    fidelity=config.fidelity,
                    test_mae=f"{record.test_metrics['mae']:.6f}",
                    split_digest=record.splits.digest(),
                    train_size=str(config.train_size),
                    sha256=sha,
                    run_id=run_id,
                ),
            )
            mlflow.set_tag(tracking.TAG_REGISTERED_MODEL, registered_uri)
        exported = None
        if config.export:
            provenance = record.provenance(model, run_id, mlflow.get_tracking_uri())
            exported = export_checkpoint(ckpt, config.export, provenance)
    return PretrainResult(
        run_id, info.model_uri, registered_uri, version, record.test_metrics["mae"], exported
    )


def export_checkpoint(checkpoint: str | Path, folder: str | Path, provenance: dict) -> Path:
    """Copy ``checkpoint`` to ``folder/qm9_oracle.pt`` and write ``qm9_oracle.json`` beside it.

    The JSON holds ``provenance`` plus the file's sha256 and size, the date, and the
    package and library versions. Returns the checkpoint's new path.
    """
    import mlflow

    import al

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / EXPORT_CHECKPOINT
    shutil.copyfile(checkpoint, dst)
    record = {
        "file": EXPORT_CHECKPOINT,
        "sha256": file_sha256(dst),
        "size_bytes": dst.stat().st_size,
        **provenance,
        "reproduce": (
            f"{provenance.get('command', 'al pretrain')} rewrites both files (MLFLOW_TRACKING_URI "
            "may point anywhere, e.g. sqlite:////tmp/pretrain-mlflow.db); the weights and so "
            "the sha256 can differ in the last bits across machines and library versions"
        ),
        "target": "H_atomization_298K_eV (QM9, B3LYP/6-31G(2df,p)), eV",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "package": {"al": al.__version__},
        "versions": {
            "torch": torch.__version__,
            "mlflow": mlflow.__version__,
            "python": platform.python_version(),
        },
    }
    (folder / EXPORT_PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
    log.info("event=oracle_exported path=%s sha256=%s", dst, record["sha256"])
    return dst
