"""The ``pyg_schnet`` oracle: PyTorch Geometric's pretrained SchNet (schnetpack weights).

The weights are downloaded once over HTTPS (certificate checked), checked against a pinned
sha256 before every load (:func:`check_digest`), read without schnetpack by an unpickler
that admits only an allow-list of globals (:func:`_weights_pickle`), and copied into PyG's
:class:`~torch_geometric.nn.models.SchNet` (:func:`_pyg_schnet_from_schnetpack`).

The file is a whole pickled schnetpack model, not a state dict, so ``torch.load``'s
``weights_only=True`` cannot read it; the allow-list plays its part: schnetpack classes
become inert stand-ins, ``torch.nn`` modules, tensors and parameters are rebuilt, and any
other global (``os.system``, ``builtins.eval``, ...) stops the load.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from al.data.elements import HARTREE_TO_EV
from al.data.molecules import MolecularData
from al.extras import MissingExtraError, require
from al.oracles.base import NETWORK_CHUNK, Oracle, OracleError, register_oracle

#: The archive ``torch_geometric.nn.models.SchNet.from_qm9_pretrained`` downloads (PyG
#: names it with ``http://``; the host serves the same file over HTTPS).
PYG_SCHNET_URL = "https://www.quantum-machine.org/datasets/trained_schnet_models.zip"
#: sha256 of ``trained_schnet_models/qm9_enthalpy_H/best_model`` in that archive. It must
#: equal the digest of the published file. Not pinned yet: no copy of the archive could be
#: checked where this code was written. Until it is, the weights are refused unless the
#: environment variable :data:`PYG_SCHNET_SHA256_ENV` (or the oracle's ``sha256``) gives
#: the digest of a copy you verified.
PYG_SCHNET_SHA256 = ""
#: Environment variable that supplies the expected sha256 while none is pinned here.
PYG_SCHNET_SHA256_ENV = "AL_PYG_SCHNET_SHA256"
PYG_SCHNET_FOLDER = "trained_schnet_models"
#: The enthalpy H at 298.15 K model (PyG QM9 target 9, eV).
PYG_SCHNET_MODEL = "qm9_enthalpy_H"
#: PyG's Hartree-to-eV factor (``torch_geometric.datasets.qm9.HAR2EV``); its labels use it.
PYG_HARTREE_TO_EV = 27.211386246


def network_problem(url: str, timeout_s: float = 3.0) -> str | None:
    """None if a TCP connection to ``url``'s host opens within ``timeout_s``, else why not.

    Name resolution runs in a daemon thread too, so that a hanging resolver is bounded.
    """
    import socket
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    outcome: dict[str, str | None] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome["problem"] = None
        except OSError as exc:
            outcome["problem"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    if "problem" not in outcome:
        return f"no answer from {host}:{port} within {timeout_s:g} s"
    return outcome["problem"]


def file_sha256(path: Path) -> str:
    """The sha256 of the file at ``path``, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_sha256(sha256: str | None = None) -> str:
    """The digest the weights must have: ``sha256`` if given, else the environment variable
    :data:`PYG_SCHNET_SHA256_ENV`, else the pinned :data:`PYG_SCHNET_SHA256` ("" = unknown)."""
    chosen = sha256 or os.environ.get(PYG_SCHNET_SHA256_ENV, "") or PYG_SCHNET_SHA256
    return chosen.strip().lower()


def digest_problem(path: Path, expected: str, data: bytes | None = None) -> str | None:
    """None when the file at ``path`` (its bytes ``data`` when given, as read once by the
    caller) has the sha256 ``expected``, else one line naming the expected and the actual
    digest."""
    actual = file_sha256(path) if data is None else hashlib.sha256(data).hexdigest()
    if expected and actual == expected:
        return None
    wanted = expected or f"unknown (set {PYG_SCHNET_SHA256_ENV} to the published file's sha256)"
    return (
        f"refusing the pyg_schnet weights {path}: sha256 {actual}, expected {wanted}; delete "
        "the file to download it again, or use oracle=pretrained"
    )


def check_digest(path: Path, expected: str, data: bytes | None = None) -> None:
    """Raise :class:`OracleError` unless the file at ``path`` (or its bytes ``data``) has
    the sha256 ``expected``."""
    problem = digest_problem(path, expected, data)
    if problem:
        raise OracleError(problem)


def is_torchscript(data: bytes) -> bool:
    """Whether ``data`` is a TorchScript archive (a zip with ``constants.pkl`` or ``code/``),
    which ``torch.load`` would hand to ``torch.jit.load`` past any ``pickle_module``."""
    import io
    import zipfile

    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


#: Globals a schnetpack model file may name besides ``schnetpack.*`` and ``torch.nn``
#: modules: containers, tensor and parameter rebuilding, and the functions schnetpack keeps
#: as attributes (initialisers, activations). Anything else stops the load.
_ALLOWED_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        ("torch.nn.parameter", "Parameter"),
        ("torch.nn.backends.thnn", "_get_thnn_function_backend"),
        *(
            ("torch.nn.init", name)
            for name in (
                "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_",
                "orthogonal_", "uniform_", "normal_", "constant_", "zeros_", "ones_",
            )
        ),
        *(
            ("torch.nn.functional", name)
            for name in ("softplus", "relu", "silu", "tanh", "sigmoid", "elu", "gelu")
        ),
    }
)  # fmt: skip
_MODULE_ALIASES = {"__builtin__": "builtins"}  # protocol 2 pickles written by Python 2


def _weights_pickle() -> Any:
    """A ``pickle_module`` for ``torch.load`` that reads schnetpack models without schnetpack
    and without running code from the file.

    Every ``schnetpack.*`` class (and function) becomes a plain ``nn.Module`` stand-in that
    keeps its attributes, parameters, buffers and sub-modules: enough to copy weights out.
    ``torch.nn.modules`` classes and :data:`_ALLOWED_GLOBALS` are admitted; any other global
    raises :class:`pickle.UnpicklingError` naming it. (``torch.load`` itself resolves the
    storage types.)
    """
    import io
    import pickle
    import types

    import torch

    class SchnetpackStandIn(torch.nn.Module):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            module = _MODULE_ALIASES.get(module, module)
            if module.split(".")[0] == "schnetpack":
                return SchnetpackStandIn
            if (module, name) in _ALLOWED_GLOBALS:
                return super().find_class(module, name)
            if module.startswith("torch.nn.modules.") and "." not in name:
                found = super().find_class(module, name)
                if isinstance(found, type) and issubclass(found, torch.nn.Module):
                    return found
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")

    mod = types.ModuleType("weights_pickle")
    for name in ("dump", "dumps", "Pickler", "HIGHEST_PROTOCOL", "UnpicklingError"):
        setattr(mod, name, getattr(pickle, name))
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    mod.loads = lambda data, **kw: Unpickler(io.BytesIO(data), **kw).load()  # type: ignore[attr-defined]
    return mod


def _download(url: str, dest: Path, timeout_s: float = 60.0) -> None:
    """``url`` into ``dest`` (through a temporary file), TLS certificates checked."""
    import shutil
    import tempfile
    import urllib.request

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                shutil.copyfileobj(response, tmp, 1 << 20)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    Path(tmp.name).replace(dest)


class _RadiusGraph:
    """PyG SchNet's ``interaction_graph`` from :func:`al.data.graph.radius_graph` (no
    ``torch_cluster``): ``(pos [N, 3], batch [N]) -> (edge_index [2, E], edge_weight [E])``."""

    def __init__(self, cutoff: float) -> None:
        self.cutoff = cutoff

    def __call__(self, pos: Any, batch: Any) -> tuple[Any, Any]:
        from al.data.graph import radius_graph

        edge_index = radius_graph(pos, batch, self.cutoff)
        edge_weight = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
        return edge_index, edge_weight


@register_oracle("pyg_schnet")
class PyGSchNetOracle(Oracle):
    """PyTorch Geometric's pretrained SchNet (``SchNet.from_qm9_pretrained``, target 9).

    The model predicts the total enthalpy H at 298.15 K in eV; the label is
    ``(H / 27.211386246 - sum_atoms H_ref) * 27.211386`` (PyG's Hartree factor back to
    Hartree, minus the atomic reference enthalpies of :mod:`al.data.qm9`, in our eV), the
    atomization enthalpy on the DFT target's scale. It runs in float64: total enthalpies
    are ~10^4 eV, where float32 would round to ~1 meV.

    Weights: the archive ``trained_schnet_models.zip`` (schnetpack models, as PyG uses them)
    is downloaded once over HTTPS into ``root`` (default ``<al cache>/pyg_schnet``) and read
    without schnetpack, PyG's dataset object or ``torch_cluster``: the radius graph comes
    from :func:`al.data.graph.radius_graph`. The model file must have the expected sha256
    (:func:`expected_sha256`) and may name only allow-listed globals (:func:`_weights_pickle`);
    otherwise it is refused with one :class:`OracleError`, before anything in it runs.
    Without the cached weights and without network access, building the oracle fails within
    ~3 s with one :class:`OracleError` (PyG's own download could hang); offline, use
    ``oracle=pretrained``.

    Caveat: PyG's SchNet was trained on a *random* QM9 split (its ``split.npz``) that
    overlaps our test molecules, so its labels look better on our test set than they are;
    do not report its test MAE as an oracle accuracy. ``pretrained`` was trained on our
    oracle split only.

    Args:
        data: the molecules to label.
        cost: cost per label (default 0.001).
        root: cache folder holding (or to hold) ``trained_schnet_models/``.
        batch_size: molecules per forward pass.
        connect_timeout_s: how long the connectivity check may take.
        sha256: the digest the model file must have (default: :func:`expected_sha256`).
    """

    journal_chunk = NETWORK_CHUNK  # one forward pass a call

    default_cost = 0.001

    def __init__(
        self,
        data: MolecularData,
        *,
        cost: float | None = None,
        root: str | Path | None = None,
        batch_size: int = 256,
        connect_timeout_s: float = 3.0,
        sha256: str | None = None,
    ) -> None:
        super().__init__(data, cost=cost)
        self.root = Path(root) if root is not None else self.default_root()
        self.batch_size = int(batch_size)
        self.connect_timeout_s = float(connect_timeout_s)
        self.sha256 = expected_sha256(sha256)
        self._net: Any = None
        reason = self.unavailable_reason(self.root, self.connect_timeout_s, self.sha256)
        if reason:
            raise OracleError(reason)

    @staticmethod
    def default_root() -> Path:
        from al.data.cache import cache_dir

        return cache_dir() / "pyg_schnet"

    @classmethod
    def weights_path(cls, root: Path) -> Path:
        return root / PYG_SCHNET_FOLDER / PYG_SCHNET_MODEL / "best_model"

    @classmethod
    def unavailable_reason(
        cls, root: Path | None = None, timeout_s: float = 3.0, sha256: str | None = None
    ) -> str | None:
        """None if PyTorch Geometric is installed and the weights are cached with the
        expected sha256, or can be downloaded and checked; else a one-line reason."""
        try:
            require("pyg", "the pyg_schnet oracle")
        except MissingExtraError as err:
            return str(err)
        root = Path(root) if root is not None else cls.default_root()
        expected = expected_sha256(sha256)
        if cls.weights_path(root).is_file():
            return digest_problem(cls.weights_path(root), expected)
        problem = network_problem(PYG_SCHNET_URL, timeout_s)
        if problem is None:
            if expected:
                return None
            return (
                f"the pyg_schnet oracle cannot check a download of {PYG_SCHNET_URL}: the sha256 "
                f"of its {PYG_SCHNET_MODEL}/best_model is not pinned; set "
                f"{PYG_SCHNET_SHA256_ENV} to the published file's sha256, or use "
                "oracle=pretrained"
            )
        return (
            f"the pyg_schnet oracle cannot download its weights ({problem}): it needs network "
            f"access to download {PYG_SCHNET_URL}, or a pre-filled cache folder "
            f"{root / PYG_SCHNET_FOLDER} (that archive unzipped there); offline, use "
            "oracle=pretrained"
        )

    def load(self) -> Any:
        """PyG's SchNet with the pretrained weights (downloaded on first use), float64, eval."""
        if self._net is not None:
            return self._net
        import torch

        weights = self.weights_path(self.root)
        if not weights.is_file():
            import zipfile

            archive = self.root / PYG_SCHNET_URL.rpartition("/")[2]
            try:
                _download(PYG_SCHNET_URL, archive)
                with zipfile.ZipFile(archive) as zipped:
                    zipped.extractall(self.root)  # member paths are kept inside root
            except Exception as exc:
                raise OracleError(
                    f"cannot download the pyg_schnet weights {PYG_SCHNET_URL} into "
                    f"{self.root}: {type(exc).__name__}: {exc}; offline, use oracle=pretrained"
                ) from exc
            finally:
                archive.unlink(missing_ok=True)
        # read once: the digest is of the very bytes loaded (a file swapped in between
        # is never seen), and nothing in them is read before the digest matches
        data = weights.read_bytes()
        check_digest(weights, self.sha256, data)
        if is_torchscript(data):  # torch.load would run it through torch.jit.load
            raise OracleError(
                f"refusing the pyg_schnet weights {weights}: a TorchScript archive, not a "
                "weights file; delete it to download the published file again, or use "
                "oracle=pretrained"
            )
        try:
            # weights_only=True cannot read a pickled schnetpack model; the allow-list of
            # _weights_pickle stands in for it
            state = torch.load(
                io.BytesIO(data),
                map_location="cpu",
                weights_only=False,
                pickle_module=_weights_pickle(),
            )
            self._net = _pyg_schnet_from_schnetpack(state).double().eval()
        except Exception as exc:
            raise OracleError(
                f"cannot read the pyg_schnet weights {weights}: {type(exc).__name__}: {exc}"
            ) from exc
        return self._net

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from al.data.elements import ATOM_REF_H298_HA

        net = self.load()
        ref = torch.zeros(int(max(ATOM_REF_H298_HA)) + 1, dtype=torch.float64)
        for z, h in ATOM_REF_H298_HA.items():
            ref[z] = h

        def predict(part: np.ndarray) -> np.ndarray:
            idx = torch.as_tensor(part, dtype=torch.long)
            z, pos, batch, _ = self.data.batch(idx.to(self.data.ptr.device))
            z, pos, batch = z.cpu(), pos.cpu().double(), batch.cpu()
            with torch.no_grad():
                h_ev = net(z, pos, batch).reshape(-1).double()  # [B], total H in eV
            ref_ha = torch.zeros(idx.numel(), dtype=torch.float64).index_add(0, batch, ref[z])
            return ((h_ev / PYG_HARTREE_TO_EV - ref_ha) * HARTREE_TO_EV).numpy()

        return self._label_in_batches(rows, predict, self.batch_size)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "url": PYG_SCHNET_URL,
            "sha256": self.sha256,
            "root": str(self.root),
            "target": "PyG QM9 target 9 (H, eV) minus atomic reference enthalpies",
            "caveat": "trained on a random QM9 split that overlaps the test set",
        }


def _copy_param(dst: Any, src: Any, what: str) -> None:
    """Copy ``src`` (a tensor) into the parameter ``dst``, shapes checked."""
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"{what}: shape {tuple(src.shape)} in the file, {tuple(dst.shape)} here")
    dst.data.copy_(src.detach().to(dst.dtype))


def _pyg_schnet_from_schnetpack(state: Any) -> Any:
    """PyG's SchNet with the weights of a schnetpack QM9 model, mapped as in
    ``torch_geometric.nn.models.SchNet.from_qm9_pretrained`` (target 9, no dipole)."""
    import torch
    from torch_geometric.datasets.qm9 import atomrefs
    from torch_geometric.nn.aggr import MeanAggregation, SumAggregation
    from torch_geometric.nn.models import SchNet

    atomref = torch.zeros(100)
    atomref[torch.tensor([1, 6, 7, 8, 9])] = torch.tensor(atomrefs[9])
    rep, out = state.representation, state.output_modules[0]
    net = SchNet(
        hidden_channels=128,
        num_filters=128,
        num_interactions=len(rep.interactions),
        num_gaussians=50,
        cutoff=10.0,
        interaction_graph=_RadiusGraph(10.0),
        atomref=atomref.view(-1, 1),
    )
    _copy_param(net.embedding.weight, rep.embedding.weight, "embedding")
    for k, (src, dst) in enumerate(zip(rep.interactions, net.interactions, strict=True)):
        pairs = [
            (dst.mlp[0].weight, src.filter_network[0].weight),
            (dst.mlp[0].bias, src.filter_network[0].bias),
            (dst.mlp[2].weight, src.filter_network[1].weight),
            (dst.mlp[2].bias, src.filter_network[1].bias),
            (dst.lin.weight, src.dense.weight),
            (dst.lin.bias, src.dense.bias),
            (dst.conv.lin1.weight, src.cfconv.in2f.weight),
            (dst.conv.lin2.weight, src.cfconv.f2out.weight),
            (dst.conv.lin2.bias, src.cfconv.f2out.bias),
        ]
        for j, (d, s) in enumerate(pairs):
            _copy_param(d, s, f"interaction {k} tensor {j}")
    mlp = out.out_net[1].out_net
    _copy_param(net.lin1.weight, mlp[0].weight, "lin1.weight")
    _copy_param(net.lin1.bias, mlp[0].bias, "lin1.bias")
    _copy_param(net.lin2.weight, mlp[1].weight, "lin2.weight")
    _copy_param(net.lin2.bias, mlp[1].bias, "lin2.bias")
    net.readout = MeanAggregation() if out.atom_pool.average is True else SumAggregation()
    net.mean = float(out.standardize.mean.item())
    net.std = float(out.standardize.stddev.item())
    if getattr(out, "atomref", None) is not None:
        _copy_param(net.atomref.weight, out.atomref.weight, "atomref")
    else:
        net.atomref = None
    net.scale = 1.0
    return net
