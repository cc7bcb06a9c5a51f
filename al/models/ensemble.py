"""K copies of a model trained together: one forward pass runs every member."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from al.models.base import AtomisticModel
from al.models.geometry import BatchGeometry, DenseGeometry


class EnsembleModel(nn.Module):
    """A deep ensemble with stacked weights, run as one module.

    The members are independent networks (own initialisation, own weights). Their weights
    are stacked so that one call (``torch.func.vmap`` on GPU) runs all of them, and the
    batch geometry (pair distances, cutoff, directions) is built once for the ensemble.

    ``energy_and_embedding(z, pos, batch, B) -> ([K, B], [K, B, F])`` (energies
    ``[K, B, D]`` for members with ``D > 1`` outputs) runs every member on one batch (to
    predict); :meth:`forward_members` runs each member on its own batch (to train, so that
    members see the data in independent orders), and :meth:`clip_grad_norms_` clips each
    member's gradient on its own.
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

        geo = BatchGeometry.build(pos, batch, num_graphs, self.cutoff)
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

    def forward_members(
        self, inputs: list[tuple[Tensor, Tensor, Tensor]], num_graphs: int
    ) -> Tensor:
        """Each member on its own batch: energies ``[K, B]`` (or ``[K, B, D]``) in eV.

        Args:
            inputs: one ``(z [N_k], pos [N_k, 3], batch [N_k])`` per member, every batch of
                ``num_graphs`` molecules (atom counts may differ).

        On CPU the members run one after the other, each with its own geometry. Vectorised
        (CUDA), the batches are padded to one atom count with isolated ghost atoms in extra
        molecules whose energies are dropped, so that one ``vmap`` call runs every member.
        """
        if len(inputs) != self.size:
            raise ValueError(f"{len(inputs)} batches for {self.size} members")
        params, buffers = self._params_dict(), self._buffers_dict()
        if self.vectorize if self.vectorize is not None else inputs[0][0].is_cuda:
            z, pos, batch, geo = self._stack_padded(inputs, num_graphs)
            n, graphs = geo.n, geo.num_graphs

            def one(p: dict, z: Tensor, pos: Tensor, batch: Tensor, index: Tensor,
                    dist: Tensor, vec: Tensor, fcut: Tensor) -> Tensor:  # fmt: skip
                g = DenseGeometry(index, n, graphs, dist, vec, fcut)
                return functional_call(self._template, (p, buffers), (z, pos, batch, graphs),
                                       {"geo": g})  # fmt: skip

            out = vmap(one, randomness="different")(
                params, z, pos, batch, geo.index, geo.dist, geo.vec, geo.fcut
            )
            return out[:, :num_graphs]
        outs = []
        for k, (z, pos, batch) in enumerate(inputs):
            geo = BatchGeometry.build(pos, batch, num_graphs, self.cutoff)
            p = {n: t[k] for n, t in params.items()}
            outs.append(functional_call(self._template, (p, buffers), (z, pos, batch, num_graphs),
                                        {"geo": geo}))  # fmt: skip
        return torch.stack(outs)

    def _stack_padded(
        self, inputs: list[tuple[Tensor, Tensor, Tensor]], num_graphs: int
    ) -> tuple[Tensor, Tensor, Tensor, DenseGeometry]:
        """Member batches padded to one shape: ``z [K, N]``, ``pos [K, N, 3]``,
        ``batch [K, N]`` and a geometry whose tensors have a leading ``K``.

        Ghost atoms (z = 0) fill every batch up to the largest atom count; they sit in extra
        molecules after the real ones, at most ``n`` per molecule and ``2 x cutoff`` apart,
        so they interact with nothing and their energies are sliced off.
        """
        sizes = [z.numel() for z, _, _ in inputs]
        total = max(sizes)
        n = max(int(torch.bincount(b, minlength=num_graphs).max()) for _, _, b in inputs)
        n = max(n, 1)
        graphs = num_graphs + -(-(total - min(sizes)) // n)
        zs, ps, bs, geos = [], [], [], []
        for (z, pos, batch), size in zip(inputs, sizes, strict=True):
            ghosts = total - size
            if ghosts:
                k = torch.arange(ghosts, device=z.device)
                ghost_pos = pos.new_zeros(ghosts, 3)
                ghost_pos[:, 0] = (k % n).to(pos.dtype) * (2 * self.cutoff)
                z = torch.cat([z, z.new_zeros(ghosts)])
                pos = torch.cat([pos, ghost_pos])
                batch = torch.cat([batch, num_graphs + k // n])
            zs.append(z)
            ps.append(pos)
            bs.append(batch)
            geos.append(DenseGeometry.build(pos, batch, graphs, self.cutoff, n=n))
        geo = DenseGeometry(
            torch.stack([g.index for g in geos]), n, graphs,
            torch.stack([g.dist for g in geos]), torch.stack([g.vec for g in geos]),
            torch.stack([g.fcut for g in geos]),
        )  # fmt: skip
        return torch.stack(zs), torch.stack(ps), torch.stack(bs), geo

    @torch.no_grad()
    def clip_grad_norms_(self, max_norm: float) -> Tensor:
        """Clip each member's gradient to norm ``max_norm`` on its own (not one global norm).

        Returns the members' gradient norms before clipping, ``[K]``.
        """
        grads = [p.grad for p in self.stacked if p.grad is not None]
        if not grads:
            return torch.zeros(self.size)
        norms = torch.stack([g.flatten(1).float().square().sum(1) for g in grads]).sum(0).sqrt()
        factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # [K]
        for g in grads:
            g.mul_(factor.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
        return norms

    @torch.no_grad()
    def fit_reference(
        self, composition: Tensor, y: Tensor, per_element: bool = True
    ) -> dict[str, float]:
        """Fit the reference energies once and give every member the same ones."""
        template = copy.deepcopy(self.members()[0])
        info = template.fit_reference(composition, y, per_element)
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
