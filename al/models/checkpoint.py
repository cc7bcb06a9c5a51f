"""Saving and loading trained models (weights, hyper-parameters, reference energies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from al.models.base import AtomisticModel
from al.models.registry import MODELS, build_model
from al.models.shallow import ShallowEnsembleModel

FORMAT = 1


def model_record(model: AtomisticModel | ShallowEnsembleModel) -> dict[str, Any]:
    """A model as plain data: registry name, hyper-parameters and weights. A shallow
    ensemble is its trunk plus ``heads``."""
    heads = model.heads if isinstance(model, ShallowEnsembleModel) else 0
    net = model.trunk if isinstance(model, ShallowEnsembleModel) else model
    name = MODELS.name_of(type(net))
    if name is None:
        raise ValueError(
            f"{type(net).__name__} is not a registered model; expected one of: {', '.join(MODELS)}"
        )
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    record = {"name": name, "hparams": net.hparams(), "state_dict": state}
    return {**record, "heads": heads} if heads else record


def save_checkpoint(
    models: list[AtomisticModel] | list[ShallowEnsembleModel],
    path: str | Path,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write one or more models (an ensemble, or one shallow ensemble) and free-form
    metadata to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"format": FORMAT, "models": [model_record(m) for m in models], "meta": meta or {}}, path
    )
    return path


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[list[Any], dict[str, Any]]:
    """The models in ``path`` (in eval mode, on ``device``) and the metadata.

    Models are :class:`AtomisticModel` s, or a :class:`ShallowEnsembleModel` for a record
    with ``heads``; ``meta`` holds what the saver put there (e.g. ``std_scale``).
    """
    rec = torch.load(path, map_location="cpu", weights_only=True)
    if rec.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {rec.get('format')!r}")
    models: list[Any] = []
    for m in rec["models"]:
        model = build_model(m["name"], **m["hparams"])
        model.load_state_dict(m["state_dict"])
        if m.get("heads"):
            model = ShallowEnsembleModel(model, int(m["heads"]))
        models.append(model.to(device).eval())
    return models, rec.get("meta", {})
