"""The ``pretrained`` oracle: the oracle model shipped with the package, run in-process."""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import math
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from al.data.molecules import MolecularData
from al.oracles.base import NETWORK_CHUNK, Oracle, OracleError, PriorLabels, register_oracle

log = logging.getLogger(__name__)

PRETRAINED_DIR = "pretrained"
PRETRAINED_CHECKPOINT = "qm9_oracle.pt"


def packaged_checkpoint() -> Path:
    """Path of the shipped oracle checkpoint, ``al/data/pretrained/qm9_oracle.pt``.

    When the package runs from a zip (the copy stored with a logged model), the checkpoint
    and its ``.json`` are extracted once to a temporary folder removed at exit.
    """
    folder = resources.files("al.data").joinpath(PRETRAINED_DIR)
    if isinstance(folder, Path):
        return folder / PRETRAINED_CHECKPOINT
    return _extracted(folder) / PRETRAINED_CHECKPOINT


@functools.cache
def _extracted(folder: Any) -> Path:
    """A temporary copy of the checkpoint and its ``.json`` from ``folder`` (a resource
    inside a zip), made once per process and removed at exit."""
    out = Path(tempfile.mkdtemp(prefix="al-pretrained-"))
    atexit.register(shutil.rmtree, out, True)
    for name in (PRETRAINED_CHECKPOINT, Path(PRETRAINED_CHECKPOINT).with_suffix(".json").name):
        (out / name).write_bytes(folder.joinpath(name).read_bytes())
    return out


@register_oracle("pretrained")
class PretrainedOracle(Oracle):
    """The oracle model shipped with the package, predicting in-process.

    The checkpoint (``al/data/pretrained/qm9_oracle.pt``) was written by ``al pretrain
    --export`` on the oracle split of the default split (split seed 0, 10,000 test, 50,000
    oracle molecules), so it never saw a test or pool molecule. Its provenance (command,
    split digest, training size, test MAE, hyper-parameters, sha256) is the ``.json`` beside
    it. The file's sha256 is checked when the oracle is built; labels come from
    :func:`al.models.checkpoint.load_checkpoint` + :func:`al.training.fit.predict`, without
    MLflow.

    The oracle never touches MLflow itself. When a campaign or ``al label`` starts,
    :func:`al.tracking.registry.register_oracles` registers it in the current tracking
    server as ``qm9-oracle-pretrained`` with the alias ``shipped`` (once per checkpoint: its
    ``sha256`` tag), and sets :attr:`registered_uri`. ``register`` says whether it should:
    ``"auto"`` (only when a tracking URI is set or a run is active), ``"always"`` or
    ``"never"``.

    Args:
        data: the molecules to label.
        cost: cost per label (default 0.001).
        path: a checkpoint with its ``.json`` provenance beside it (default: the shipped one).
        split_digest: the campaign's split digest; a warning is logged if it differs from
            the one the checkpoint was trained with (see :meth:`check_split`).
        register: ``"auto"``, ``"always"`` or ``"never"`` (see above).
        batch_size: molecules per forward pass.

    Raises:
        OracleError: the checkpoint or its provenance is missing, unreadable or corrupt.
    """

    journal_chunk = NETWORK_CHUNK  # one forward pass a call

    default_cost = 0.001
    REGISTER_MODES = ("auto", "always", "never")

    def __init__(
        self,
        data: MolecularData,
        *,
        cost: float | None = None,
        path: str | Path | None = None,
        split_digest: str | None = None,
        register: str = "auto",
        batch_size: int = 1024,
    ) -> None:
        from al.models.checkpoint import load_checkpoint

        if register not in self.REGISTER_MODES:
            raise ValueError(f"register must be one of {self.REGISTER_MODES}, got {register!r}")
        super().__init__(data, cost=cost)
        self.path = Path(path) if path is not None else packaged_checkpoint()
        self.provenance = read_provenance(self.path)
        if not self.path.is_file():
            raise OracleError(f"the pretrained oracle's checkpoint {self.path} does not exist")
        expected = str(self.provenance.get("sha256", ""))
        with open(self.path, "rb") as fh:
            actual = hashlib.file_digest(fh, "sha256").hexdigest()
        if actual != expected:
            raise OracleError(
                f"the pretrained oracle's checkpoint {self.path} is corrupt: its sha256 "
                f"{actual[:16]}... differs from {expected[:16]}... recorded in "
                f"{self.path.with_suffix('.json').name}; reinstall the package or rebuild it "
                f"with `{self.provenance.get('command', 'al pretrain --export DIR')}`"
            )
        self.sha256 = actual
        try:
            models, self.meta = load_checkpoint(self.path)
        except Exception as exc:
            raise OracleError(
                f"cannot load the pretrained oracle's checkpoint {self.path}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if len(models) != 1:
            raise OracleError(f"{self.path}: expected one model, found {len(models)}")
        self.model = models[0].eval()
        self.batch_size = int(batch_size)
        self.register_mode = register
        #: ``models:/qm9-oracle-pretrained/<version>`` once registered, else None.
        self.registered_uri: str | None = None
        if split_digest is not None:
            self.check_split(split_digest)

    def prior_labels(self) -> PriorLabels:
        """The DFT labels it was trained on: ``train_size`` (training + validation) of its
        provenance file."""
        n = float(self.provenance.get("train_size", math.nan))
        return PriorLabels(n, f"pretrained oracle {self.sha256[:12]}: train_size")

    @property
    def split_digest(self) -> str:
        """Digest of the split the checkpoint was trained on."""
        return str(self.provenance.get("split_digest", ""))

    def check_split(self, split_digest: str) -> bool:
        """False (and a logged warning) if ``split_digest`` is not the checkpoint's split:
        then its training molecules may be test or pool molecules of that campaign."""
        if split_digest == self.split_digest:
            return True
        log.warning(
            "event=oracle_split_mismatch oracle=%s campaign_split=%s oracle_split=%s "
            "message='the pretrained oracle was trained on the oracle split of another split: "
            "its training molecules may be in this campaign's test set or pool'",
            self.name,
            split_digest,
            self.split_digest,
        )
        return False

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from al.training.fit import predict

        def predict_all(part: np.ndarray) -> np.ndarray:
            mean, _ = predict(
                self.model,
                self.data,
                torch.as_tensor(part, dtype=torch.long),
                batch_size=self.batch_size,
                amp=False,
            )
            if mean.dim() > 1:  # a multi-output model: its last (highest) fidelity
                mean = mean[..., -1]
            return mean.numpy()

        # one call: predict batches by itself, and one failure fails the whole request
        return self._label_in_batches(rows, predict_all, rows.size)

    def describe(self) -> dict[str, Any]:
        prov = self.provenance
        return {
            **super().describe(),
            "path": str(self.path),
            "sha256": self.sha256,
            "split_digest": self.split_digest,
            "test_mae_ev": prov.get("test_mae_ev"),
            "n_train": prov.get("n_train"),
            "model": prov.get("model", {}).get("name"),
            "hidden": prov.get("model", {}).get("hidden"),
            "n_interactions": prov.get("model", {}).get("n_interactions"),
            "command": prov.get("command"),
            "registered_uri": self.registered_uri or "",
        }


def read_provenance(checkpoint: Path) -> dict[str, Any]:
    """The ``.json`` provenance beside ``checkpoint``; :class:`OracleError` if unreadable."""
    path = checkpoint.with_suffix(".json")
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise OracleError(
            f"the pretrained oracle's provenance {path} does not exist (it is written beside "
            "the checkpoint by `al pretrain --export DIR`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise OracleError(f"cannot read the pretrained oracle's provenance {path}: {exc}") from None
    if not isinstance(rec, dict) or "sha256" not in rec:
        raise OracleError(f"{path}: not an oracle provenance record (no 'sha256' key)")
    return rec
