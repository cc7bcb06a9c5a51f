"""The MLflow model: molecules in, energy mean and std (eV) out."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from al.baselines import BASELINES, Baseline, build_baseline
from al.data.molecules import molecules_frame
from al.models.base import set_mc_dropout
from al.models.checkpoint import load_checkpoint
from al.uncertainty.surrogates import SCORE_BATCH

INPUT_COLUMNS = ("z", "pos")


def predict_molecules(
    models: list,
    frame: pd.DataFrame,
    mc_samples: int = 20,
    batch_size: int = 0,
    std_scale: float = 1.0,
) -> pd.DataFrame:
    """Mean and std (eV) per molecule, one row per row of ``frame``, in its order.

    The std is the spread of an ensemble (several models), else of ``mc_samples`` MC-dropout
    passes (a model with dropout), else NaN: a single deterministic model has no uncertainty.
    A multi-fidelity model answers with its highest fidelity (its last output). Molecules
    are batched in order of size (``batch_size`` a batch, 0: the scoring batch of the
    device), as in :func:`al.training.fit.predict`: the models pad each molecule of a batch
    to the largest one.
    """
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"model input lacks column(s) {missing}; expected columns 'z' (atomic numbers) "
            "and 'pos' (positions in Angstrom, n x 3)"
        )
    device = next(models[0].parameters()).device
    batch_size = batch_size or SCORE_BATCH.get(device.type, SCORE_BATCH["cpu"])
    sizes = np.array([np.size(z) for z in frame["z"]], dtype=np.int64)
    order = np.argsort(sizes, kind="stable")
    means, stds = [], []
    for start in range(0, len(frame), batch_size):
        which = order[start : start + batch_size]
        chunk = frame.iloc[which]
        zs = [torch.as_tensor(np.asarray(z, dtype=np.int64).reshape(-1)) for z in chunk["z"]]
        ps = [torch.as_tensor(np.asarray(p, dtype=np.float32).reshape(-1, 3)) for p in chunk["pos"]]
        for k, (z, p) in enumerate(zip(zs, ps, strict=True)):
            if z.numel() != p.shape[0]:
                raise ValueError(
                    f"molecule {which[k]}: {z.numel()} atomic numbers but {p.shape[0]} positions"
                )
        z = torch.cat(zs).to(device)
        pos = torch.cat(ps).to(device)
        counts = torch.tensor([t.numel() for t in zs])
        batch = torch.repeat_interleave(torch.arange(len(zs)), counts).to(device)
        with torch.no_grad():
            if len(models) > 1:
                samples = torch.stack([m(z, pos, batch, len(zs)) for m in models])
            elif getattr(models[0], "heads", 0) > 1:  # a shallow ensemble: [K, B] (or [K, B, D])
                samples = models[0](z, pos, batch, len(zs))
            elif set_mc_dropout(models[0], True) > 0:
                samples = torch.stack(
                    [models[0](z, pos, batch, len(zs)) for _ in range(mc_samples)]
                )
                set_mc_dropout(models[0], False)
            else:
                set_mc_dropout(models[0], False)
                samples = models[0](z, pos, batch, len(zs))[None]
        if samples.dim() == 3:  # a multi-fidelity model: [K, B, D] -> highest fidelity
            samples = samples[..., -1]
        means.append(samples.double().mean(0).cpu())
        stds.append(
            samples.double().std(0).cpu() * std_scale
            if samples.shape[0] > 1
            else torch.full((len(zs),), float("nan"), dtype=torch.float64)
        )
    back = np.argsort(order, kind="stable")  # sorted position of each row of ``frame``
    mean = torch.cat(means).numpy()[back] if means else np.zeros(0)
    std = torch.cat(stds).numpy()[back] if stds else np.zeros(0)
    return pd.DataFrame({"mean_ev": mean, "std_ev": std})


class MoleculeEnergyModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a checkpoint of one model or an ensemble.

    A model trained by Δ-learning (its checkpoint's ``baseline`` is not ``none``) predicts
    the residual; the baseline of each input molecule is computed here (xTB on the given
    geometry, the composition fit, or the oracle model) and added to ``mean_ev``.
    """

    #: the Δ-learning baseline the checkpoint was trained with (set by :meth:`load_context`)
    baseline: Baseline | None = None

    def load_context(self, context: Any) -> None:
        self.models, self.meta = load_checkpoint(context.artifacts["checkpoint"])
        self.mc_samples = int(self.meta.get("mc_samples", 20))
        self.std_scale = float(self.meta.get("std_scale", 1.0))
        self.baseline = checkpoint_baseline(self.meta)

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        out = predict_molecules(self.models, model_input, self.mc_samples, std_scale=self.std_scale)
        baseline = self.baseline
        if baseline is not None and len(out):
            molecules = list(zip(model_input["z"], model_input["pos"], strict=True))
            out["mean_ev"] = out["mean_ev"].to_numpy() + baseline.of_molecules(molecules)
        return out


def checkpoint_baseline(meta: dict[str, Any]) -> Baseline | None:
    """The Δ-learning baseline a checkpoint was trained with (None: ``none`` or absent).

    Raises ``ValueError`` (one line) when it cannot be rebuilt here, e.g. ``xtb`` without
    tblite installed.
    """
    spec = str(meta.get("baseline", "none") or "none")
    try:
        baseline = build_baseline(spec)
    except Exception as exc:
        raise ValueError(
            f"this model predicts a residual over the baseline {spec!r}, which cannot be "
            f"computed here: {exc}"
        ) from None
    if baseline is not None:
        baseline.load_meta(meta)
    return baseline


def pip_requirements(baseline: str = "none") -> list[str]:
    """The logged model's requirements (its networks are plain torch: no PyTorch
    Geometric); a baseline adds the package it needs (its class's ``requirement``: ``xtb``:
    tblite, ``ani1x``/``ani1ccx``: torchani). ``ValueError`` for an unknown baseline spec."""
    reqs = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        "pyyaml",
    ]
    cls = BASELINES.parse(baseline).obj
    package = cls.requirement if cls is not None else None
    if package:
        from importlib.metadata import PackageNotFoundError, version

        try:
            reqs.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            reqs.append(package)
    return reqs


def zip_package(dst: Path) -> Path:
    """The ``al`` package (sources and data, no bytecode) as one zip file ``dst/al.zip``,
    importable with the zip on ``sys.path`` (``al.zip/al/...``).

    A logged model carries this one file rather than the package's ~90: an artifact
    server takes one request per file, so this is what makes a round's model cheap to log
    over HTTP (``benchmarks/round_logging.py``). The entry file ``al/mlflow_model.py`` puts
    the zip on ``sys.path`` when it loads the model in a process without ``al``.
    """
    import zipfile

    import al

    root = Path(al.__file__).parent
    out = dst / "al.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                zf.write(path, Path("al") / path.relative_to(root))
    return out


def _model_arguments(checkpoint: Path, code_dir: Path) -> dict[str, Any]:
    """The arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for ``checkpoint``: the
    ``al`` package's code (zipped into ``code_dir``) and requirements, and methane as the
    input example."""
    import al

    example = molecules_frame(
        [
            (
                [6, 1, 1, 1, 1],
                [
                    [0, 0, 0],
                    [0.63, 0.63, 0.63],
                    [-0.63, -0.63, 0.63],
                    [-0.63, 0.63, -0.63],
                    [0.63, -0.63, -0.63],
                ],
            )
        ]
    )
    return {
        "python_model": str(Path(al.__file__).parent / "mlflow_model.py"),
        "artifacts": {"checkpoint": str(checkpoint)},
        "code_paths": [str(zip_package(code_dir))],
        "pip_requirements": pip_requirements(_baseline_of(checkpoint)),
        "input_example": example,
    }


def _baseline_of(checkpoint: Path) -> str:
    """The ``baseline`` recorded in a checkpoint's metadata (``none`` when absent)."""
    rec = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return str(rec.get("meta", {}).get("baseline", "none") or "none")


def log_pyfunc_model(checkpoint: Path, name: str = "model") -> Any:
    """Log ``checkpoint`` as an MLflow model carrying the ``al`` package's code.

    Returns the ``ModelInfo`` (its ``model_uri`` is ``models:/m-...``).
    """
    with tempfile.TemporaryDirectory(prefix="al-code-") as code_dir:
        return mlflow.pyfunc.log_model(name=name, **_model_arguments(checkpoint, Path(code_dir)))


def save_pyfunc_model(checkpoint: Path, dst: Path) -> None:
    """Save ``checkpoint`` as the same model as :func:`log_pyfunc_model` to the local folder
    ``dst``, without a run."""
    with tempfile.TemporaryDirectory(prefix="al-code-") as code_dir:
        mlflow.pyfunc.save_model(path=str(dst), **_model_arguments(checkpoint, Path(code_dir)))
