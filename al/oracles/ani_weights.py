"""The weights of the published ANI-1x and ANI-1ccx ensembles, offline.

TorchANI reads them from their original NeuroChem files (``torchani.neurochem``). The
``torchani==2.0`` wheel on the package registry carries those files
(``torchani/resources/ani-1x_8x*``, ``ani-1ccx_8x*``), so the package registry is the only
place they need to come from: :func:`fetch_ani_weights` runs ``pip download torchani==2.0
--no-deps`` (or takes a wheel you downloaded), checks the wheel's sha256, extracts the files
each model needs into the cache folder (:func:`ani_dir`: ``$AL_ANI_DIR``, else
``<al cache>/ani``, e.g. ``~/.cache/al/ani``) and checks them against a sha256 per model.
``al weights ani`` is its command.

The digests below are pinned: NeuroChem's network files are parsed with ``eval`` by
TorchANI, so a file is read only after its model's digest matched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from al.oracles.base import OracleError

log = logging.getLogger(__name__)

#: Registry name -> NeuroChem folder of the 8-network ensemble.
ANI_MODELS: dict[str, str] = {"ani1x": "ani-1x_8x", "ani1ccx": "ani-1ccx_8x"}
#: The registry release that carries the NeuroChem files, and its wheel.
ANI_WHEEL_REQUIREMENT = "torchani==2.0"
ANI_WHEEL_FILE = "torchani-2.0-py3-none-any.whl"
ANI_WHEEL_SHA256 = "87db70affc847c3aa26081607166580a6e6b01f33e09218e2c5b26f66b45ed89"
#: sha256 of each model's files (:func:`weights_digest`), as extracted from that wheel.
ANI_WEIGHTS_SHA256: dict[str, str] = {
    "ani1x": "ad3dc090548a9a6356dac6fdd354a111566139d5889e177391e751fac17275f5",
    "ani1ccx": "1001bc43ea05abb9316878658b4bc2c09f99187c6bf6c3febf558c594a8cc906",
}
#: Folder of the weights (default ``<al cache>/ani``).
ANI_DIR_ENV = "AL_ANI_DIR"
#: ``0`` (or ``false``, ``no``, ``off``) forbids fetching the weights: absent weights are an error.
ANI_DOWNLOAD_ENV = "AL_ANI_DOWNLOAD"
#: The ensemble's constants file and self energies, at the top of a model's folder.
_TOP_FILES = ("rHCNO-5.2R_16-3.5A_a4-8.params", "sae_linfit.dat")
_WHEEL_PREFIX = "torchani/resources/"


def ani_dir() -> Path:
    """``$AL_ANI_DIR``, else ``<al cache>/ani`` (:func:`al.data.cache.cache_dir`)."""
    from al.data.cache import cache_dir

    env = os.environ.get(ANI_DIR_ENV)
    return Path(env).expanduser() if env else cache_dir() / "ani"


def downloads_allowed() -> bool:
    """False when ``$AL_ANI_DOWNLOAD`` forbids fetching the weights."""
    return os.environ.get(ANI_DOWNLOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _needed(rel: str) -> bool:
    """Whether a path inside a model's folder (``train3/networks/ANN-H.nnf``) is needed."""
    parts = rel.split("/")
    if len(parts) == 1:
        return parts[0] in _TOP_FILES
    return len(parts) == 3 and parts[0].startswith("train") and parts[1] == "networks"


def weights_digest(folder: Path) -> str:
    """sha256 over the needed files of one model's folder (relative path and content of
    each, in sorted order); empty when the folder holds none."""
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and _needed(p.relative_to(folder).as_posix())
    )
    if not files:
        return ""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode() + b"\0" + hashlib.sha256((folder / rel).read_bytes()).digest())
    return h.hexdigest()


def model_folder(model: str, root: Path | None = None) -> Path:
    """Where ``model``'s NeuroChem files are (or go): ``<root>/ani-1x_8x``."""
    if model not in ANI_MODELS:
        raise ValueError(f"unknown ANI model {model!r}; expected one of: {', '.join(ANI_MODELS)}")
    return (ani_dir() if root is None else Path(root)) / ANI_MODELS[model]


def weights_problem(model: str, root: Path | None = None) -> str | None:
    """None when ``model``'s weights are in ``root`` with the pinned digest, else why not."""
    folder = model_folder(model, root)
    if not folder.is_dir():
        return f"no {model} weights in {folder.parent}"
    digest = weights_digest(folder)
    if digest != ANI_WEIGHTS_SHA256[model]:
        got = digest[:16] or "no files"
        return f"the {model} weights in {folder} do not match their pinned sha256 ({got})"
    return None


def how_to_fetch(root: Path) -> str:
    """The one-line instruction that gets the weights into ``root``."""
    env = f"{ANI_DIR_ENV}={root} " if root != ani_dir() else ""
    return (
        f"run `{env}al weights ani` where the package registry is reachable, or copy "
        f"{ANI_WHEEL_FILE} (`pip download {ANI_WHEEL_REQUIREMENT} --no-deps`) here and run "
        f"`{env}al weights ani --wheel {ANI_WHEEL_FILE}`"
    )


def ani_weights(model: str, root: Path | None = None) -> Path:
    """The folder of ``model``'s checked NeuroChem files, fetched first if absent.

    Raises:
        OracleError: one line, when they are absent (or corrupt) and cannot be fetched
            (downloads forbidden by ``$AL_ANI_DOWNLOAD``, or the fetch failed).
    """
    root = ani_dir() if root is None else Path(root)
    problem = weights_problem(model, root)
    if problem is None:
        return model_folder(model, root)
    if not downloads_allowed():
        raise OracleError(
            f"{problem} and fetching them is off ({ANI_DOWNLOAD_ENV}=0): {how_to_fetch(root)}"
        )
    log.info("event=ani_weights_fetch model=%s root=%s reason=%r", model, root, problem)
    fetch_ani_weights(root, models=(model,))
    return model_folder(model, root)


def fetch_ani_weights(
    root: Path | None = None,
    wheel: Path | None = None,
    models: tuple[str, ...] = tuple(ANI_MODELS),
    timeout_s: float = 600.0,
) -> Path:
    """Put the NeuroChem files of ``models`` into ``root`` (default :func:`ani_dir`), checked.

    Args:
        root: the weights folder.
        wheel: a ``torchani-2.0`` wheel already on disk; None runs ``pip download``.
        models: which ensembles.
        timeout_s: how long ``pip download`` may take.

    Returns:
        ``root``. A model whose checked files are there already is left as it is.

    Raises:
        OracleError: one line, when the wheel cannot be had, or a digest does not match.
    """
    root = ani_dir() if root is None else Path(root)
    todo = [m for m in models if weights_problem(m, root) is not None]
    if not todo:
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:
        path = Path(wheel) if wheel is not None else _pip_download(Path(tmp), root, timeout_s)
        if not path.is_file():
            raise OracleError(f"no wheel at {path}: {how_to_fetch(root)}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != ANI_WHEEL_SHA256:
            raise OracleError(
                f"{path} is not the published {ANI_WHEEL_FILE} (sha256 {digest[:16]}, expected "
                f"{ANI_WHEEL_SHA256[:16]}): {how_to_fetch(root)}"
            )
        for model in todo:
            _extract(path, model, root, Path(tmp))
    return root


def _pip_download(dest: Path, root: Path, timeout_s: float) -> Path:
    """``pip download torchani==2.0 --no-deps`` into ``dest``; the wheel's path."""
    cmd = [
        sys.executable, "-m", "pip", "download", ANI_WHEEL_REQUIREMENT, "--no-deps",
        "--only-binary=:all:", "--dest", str(dest), "--disable-pip-version-check",
        "--no-input", "--quiet", "--retries", "1", "--timeout", "30",
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OracleError(
            f"cannot fetch the ANI weights ({type(exc).__name__}): {how_to_fetch(root)}"
        ) from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"pip exited with {done.returncode}"
        raise OracleError(f"cannot fetch the ANI weights (pip: {why}): {how_to_fetch(root)}")
    return dest / ANI_WHEEL_FILE


def _extract(wheel: Path, model: str, root: Path, tmp: Path) -> None:
    """Extract ``model``'s needed files from ``wheel`` into ``tmp``, check the digest, and
    move the folder into ``root`` (another process that got there first wins)."""
    name = ANI_MODELS[model]
    prefix = f"{_WHEEL_PREFIX}{name}/"
    staged = tmp / name
    with zipfile.ZipFile(wheel) as zipped:
        for member in zipped.namelist():
            rel = member[len(prefix) :] if member.startswith(prefix) else ""
            if rel and not member.endswith("/") and _needed(rel):
                out = staged.joinpath(*rel.split("/"))  # parts checked by _needed: no ".."
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zipped.read(member))
    digest = weights_digest(staged)
    if digest != ANI_WEIGHTS_SHA256[model]:
        raise OracleError(
            f"the {model} files in {wheel.name} do not match their pinned sha256 (got "
            f"{digest[:16]}); report it, the wheel's own digest matched"
        )
    target = model_folder(model, root)
    if target.exists():
        if weights_problem(model, root) is None:
            return  # fetched meanwhile by another process
        shutil.rmtree(target)
    try:
        staged.rename(target)
    except OSError:
        if weights_problem(model, root) is not None:
            raise
    log.info("event=ani_weights_ready model=%s folder=%s", model, target)
