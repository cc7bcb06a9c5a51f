"""Saving and loading trained models (weights, hyper-parameters, reference energies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from al.models.base import AtomisticModel
from al.models.registry import MODELS, build_model

FORMAT = 1


def model_record(model: AtomisticModel) -> dict[str, Any]:
    name = next(k for k, cls in MODELS.items() if type(model) is cls)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"name": name, "hparams": model.hparams(), "state_dict": state}


def save_checkpoint(
    models: list[AtomisticModel], path: str | Path, meta: dict[str, Any] | None = None
) -> Path:
    """Write one or more models (an ensemble) and free-form metadata to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"format": FORMAT, "models": [model_record(m) for m in models], "meta": meta or {}}, path
    )
    return path


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[list[AtomisticModel], dict[str, Any]]:
    """The models in ``path`` (in eval mode, on ``device``) and the metadata."""
    rec = torch.load(path, map_location="cpu", weights_only=True)
    if rec.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {rec.get('format')!r}")
    models = []
    for m in rec["models"]:
        model = build_model(m["name"], **m["hparams"])
        model.load_state_dict(m["state_dict"])
        models.append(model.to(device).eval())
    return models, rec.get("meta", {})
