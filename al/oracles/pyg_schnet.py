"""The ``pyg_schnet`` oracle: PyTorch Geometric's pretrained SchNet (schnetpack weights).

The weights are downloaded once, read without schnetpack (:func:`_schnetpack_free_pickle`)
and copied into PyG's :class:`~torch_geometric.nn.models.SchNet`
(:func:`_pyg_schnet_from_schnetpack`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from al.data.elements import HARTREE_TO_EV
from al.data.molecules import MolecularData
from al.oracles.base import Oracle, OracleError

#: Where ``torch_geometric.nn.models.SchNet.from_qm9_pretrained`` downloads its weights.
PYG_SCHNET_URL = "http://www.quantum-machine.org/datasets/trained_schnet_models.zip"
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


def _schnetpack_free_pickle() -> Any:
    """A ``pickle_module`` for ``torch.load`` that reads schnetpack models without schnetpack.

    Every ``schnetpack.*`` class (and function) becomes a plain ``nn.Module`` stand-in that
    keeps its attributes, parameters, buffers and sub-modules: enough to copy weights out.
    """
    import pickle
    import types

    import torch

    class SchnetpackStandIn(torch.nn.Module):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module.split(".")[0] == "schnetpack":
                return SchnetpackStandIn
            return super().find_class(module, name)

    mod = types.ModuleType("schnetpack_free_pickle")
    for name in ("dump", "dumps", "loads", "Pickler", "HIGHEST_PROTOCOL", "UnpicklingError"):
        setattr(mod, name, getattr(pickle, name))
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()  # type: ignore[attr-defined]
    return mod


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


class PyGSchNetOracle(Oracle):
    """PyTorch Geometric's pretrained SchNet (``SchNet.from_qm9_pretrained``, target 9).

    The model predicts the total enthalpy H at 298.15 K in eV; the label is
    ``(H / 27.211386246 - sum_atoms H_ref) * 27.211386`` (PyG's Hartree factor back to
    Hartree, minus the atomic reference enthalpies of :mod:`al.data.qm9`, in our eV), the
    atomization enthalpy on the DFT target's scale. It runs in float64: total enthalpies
    are ~10^4 eV, where float32 would round to ~1 meV.

    Weights: the archive ``trained_schnet_models.zip`` (schnetpack models, as PyG uses them)
    is downloaded once into ``root`` (default ``<al cache>/pyg_schnet``) and read without
    schnetpack, PyG's dataset object or ``torch_cluster``: the radius graph comes from
    :func:`al.data.graph.radius_graph`. Without the cached weights and without network
    access, building the oracle fails within ~3 s with one :class:`OracleError` (PyG's own
    download could hang); offline, use ``oracle=pretrained``.

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
    """

    default_cost = 0.001

    def __init__(
        self,
        data: MolecularData,
        *,
        cost: float | None = None,
        root: str | Path | None = None,
        batch_size: int = 256,
        connect_timeout_s: float = 3.0,
    ) -> None:
        super().__init__(data, cost=cost)
        self.root = Path(root) if root is not None else self.default_root()
        self.batch_size = int(batch_size)
        self.connect_timeout_s = float(connect_timeout_s)
        self._net: Any = None
        reason = self.unavailable_reason(self.root, self.connect_timeout_s)
        if reason:
            raise OracleError(reason)

    @staticmethod
    def default_root() -> Path:
        from al.data.load import cache_dir

        return cache_dir() / "pyg_schnet"

    @classmethod
    def weights_path(cls, root: Path) -> Path:
        return root / PYG_SCHNET_FOLDER / PYG_SCHNET_MODEL / "best_model"

    @classmethod
    def unavailable_reason(cls, root: Path | None = None, timeout_s: float = 3.0) -> str | None:
        """None if the weights are cached or can be downloaded, else a one-line reason."""
        root = Path(root) if root is not None else cls.default_root()
        if cls.weights_path(root).is_file():
            return None
        problem = network_problem(PYG_SCHNET_URL, timeout_s)
        if problem is None:
            return None
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
            from torch_geometric.data import download_url, extract_zip

            try:
                archive = download_url(PYG_SCHNET_URL, str(self.root), log=False)
                extract_zip(archive, str(self.root), log=False)
                Path(archive).unlink()
            except Exception as exc:
                raise OracleError(
                    f"cannot download the pyg_schnet weights {PYG_SCHNET_URL} into "
                    f"{self.root}: {type(exc).__name__}: {exc}; offline, use oracle=pretrained"
                ) from exc
        try:
            state = torch.load(
                weights,
                map_location="cpu",
                weights_only=False,
                pickle_module=_schnetpack_free_pickle(),
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
