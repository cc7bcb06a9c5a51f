"""K copies of a model trained together: one forward pass runs every member."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from al.models.base import AtomisticModel, DenseGeometry


class EnsembleModel(nn.Module):
    """A deep ensemble with stacked weights, run as one module.

    The members are independent networks (own initialisation, own weights). Their weights
    are stacked so that one call (``torch.func.vmap`` on GPU) runs all of them, and the
    batch geometry (pair distances, cutoff, directions) is built once for the ensemble.

    ``energy_and_embedding(z, pos, batch, B) -> ([K, B], [K, B, F])`` (energies
    ``[K, B, D]`` for members with ``D > 1`` outputs).
    """

    def __init__(self, members: list[AtomisticModel]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        params, buffers = stack_module_state(members)
        self.size = len(members)
        self._names = list(params)
        self._buffer_names = list(buffers)
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach()) for n in self._names])
        # Buffers (radial-basis centres, reference energies, scale) are the same for every
        # member, so they are stored once and not batched: geometry-only work then runs
        # once for the whole ensemble instead of once per member.
        for i, n in enumerate(self._buffer_names):
            self.register_buffer(f"buf{i}", buffers[n][0].detach().clone())
        # the template holds no data (meta device) and is not a submodule
        object.__setattr__(self, "_template", copy.deepcopy(members[0]).to("meta"))
        self.cutoff = members[0].cutoff
        #: vmap over members (True), a loop (False), or None: vmap on CUDA, where one
        #: launch for K members is what saves time, a loop on CPU, where vmap's batched
        #: small matrix products were slower than K separate passes.
        self.vectorize: bool | None = None
        self.hidden = members[0].hidden
        self.n_outputs = members[0].n_outputs

    def train(self, mode: bool = True) -> EnsembleModel:
        """Also switch the (unregistered) template, whose mode functional_call uses."""
        super().train(mode)
        self._template.train(mode)
        return self

    @property
    def scale(self) -> Tensor:
        return self._buffers_dict()["scale"]

    def _params_dict(self) -> dict[str, Tensor]:
        return dict(zip(self._names, self.stacked, strict=True))

    def _buffers_dict(self) -> dict[str, Tensor]:
        return {n: getattr(self, f"buf{i}") for i, n in enumerate(self._buffer_names)}

    def energy_and_embedding(
        self, z: Tensor, pos: Tensor, batch: Tensor, num_graphs: int | None = None
    ) -> tuple[Tensor, Tensor]:
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1

        geo = DenseGeometry.build(pos, batch, num_graphs, self.cutoff)
        kwargs = {"embedding": True, "geo": geo}
        params, buffers = self._params_dict(), self._buffers_dict()
        args = (z, pos, batch, num_graphs)
        if self.vectorize if self.vectorize is not None else z.is_cuda:

            def one(p: dict) -> tuple[Tensor, Tensor]:
                return functional_call(self._template, (p, buffers), args, kwargs)

            return vmap(one, randomness="different")(params)
        outs = [
            functional_call(self._template, ({n: t[k] for n, t in params.items()}, buffers),
                            args, kwargs)
            for k in range(self.size)
        ]  # fmt: skip
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    def forward(
        self, z: Tensor, pos: Tensor, batch: Tensor, num_graphs: int | None = None
    ) -> Tensor:
        """Energies of every member, ``[K, B]`` (or ``[K, B, D]``) in eV."""
        return self.energy_and_embedding(z, pos, batch, num_graphs)[0]

    @torch.no_grad()
    def fit_reference(self, composition: Tensor, y: Tensor) -> dict[str, float]:
        """Fit the reference energies once and give every member the same ones."""
        template = copy.deepcopy(self.members()[0])
        info = template.fit_reference(composition, y)
        bufs = self._buffers_dict()
        bufs["atomref"].copy_(template.atomref)
        bufs["scale"].copy_(template.scale)
        return info

    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        groups: dict[str, list[nn.Parameter]] = {}
        for name, p in zip(self._names, self.stacked, strict=True):
            parts = name.split(".")
            key = ".".join(parts[:2]) if parts[0] == "interactions" else parts[0]
            groups.setdefault(key.replace(".", "_"), []).append(p)
        return groups

    def members(self) -> list[AtomisticModel]:
        """The members as ordinary models (copies, on the ensemble's device)."""
        out = []
        params, bufs = self._params_dict(), self._buffers_dict()
        device = self.stacked[0].device
        for k in range(self.size):
            m = copy.deepcopy(self._template).to_empty(device=device)
            state = {n: t[k].detach().clone() for n, t in params.items()}
            state.update({n: t.detach().clone() for n, t in bufs.items()})
            m.load_state_dict(state)
            out.append(m.eval())
        return out

    def hparams(self) -> dict:
        return {**self._template.hparams(), "ensemble_size": self.size}

    def __repr__(self) -> str:
        return f"EnsembleModel(size={self.size}, member={self._template!r})"
