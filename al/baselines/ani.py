"""The ``ani1x`` and ``ani1ccx`` baselines: a published ANI ensemble's energy on the DFT scale.

As the ``xtb`` baseline (:class:`~al.baselines.base.XTBBaseline`), with the ANI oracles'
weights (:mod:`al.oracles.ani_weights`) and packaged per-element references
(``al/data/ani1x_reference.json``, ``ani1ccx_reference.json``). A molecule with F (ANI
covers H, C, N, O) falls back to the composition prior; a campaign leaves such molecules
out of its pool.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from al.baselines.base import BASELINES, EnergyBaseline
from al.data.molecules import MolecularData
from al.oracles import (
    ANI_ELEMENTS,
    OracleError,
    ani_energies,
    ani_weights,
    load_ani,
    load_xtb_reference,
    supported,
    torchani_problem,
)
from al.oracles.ani import ANI_REFERENCE_FILES

log = logging.getLogger(__name__)

#: Measured ANI / DFT cost ratio on these machines: ~1 ms (one thread, batches of 256)
#: against ~150 s per QM9 molecule (7e-6), rounded up.
ANI_BASELINE_COST = 1e-5


class ANIBaseline(EnergyBaseline):
    """A published ANI ensemble (its mean) on the DFT scale, ``HARTREE_TO_EV * E_ani + sum_atoms
    c[z]``; energies computed in padded batches, kept on disk by QM9 index
    (``<cache>/baselines/<model>-<weights digest>.npz``). Subclasses set ``name``.

    Args:
        cost: cost per molecule (default :data:`ANI_BASELINE_COST`).
        cache: folder of the store (default ``al.data.cache.cache_dir() / "baselines"``).
        root: the weights folder (default :func:`al.oracles.ani_dir`).

    Raises:
        ValueError: one line, without TorchANI, or without the weights when they cannot be
            fetched.
    """

    default_cost = ANI_BASELINE_COST
    requirement = "torchani"
    supported_elements: ClassVar[frozenset[int] | None] = ANI_ELEMENTS
    save_every = 20_000

    def __init__(
        self,
        cost: float | None = None,
        cache: str | Path | None = None,
        root: str | Path | None = None,
    ) -> None:
        problem = torchani_problem()
        if problem:
            raise ValueError(problem)
        try:
            self.folder = ani_weights(self.name, None if root is None else Path(root))
        except OracleError as exc:  # the one line that says how to get them
            raise ValueError(str(exc)) from None
        reference = load_xtb_reference(packaged=ANI_REFERENCE_FILES[self.name])
        digest = str((reference.meta or {}).get("weights_sha256", ""))[:8]
        super().__init__(cost, cache, reference, f"{self.name}-{digest}.npz")

    def _run(
        self,
        data: MolecularData,
        rows: np.ndarray,
        idx: np.ndarray,
        energy: np.ndarray,
        todo: np.ndarray,
        store: dict[int, float] | None,
    ) -> None:
        """Fill ``energy[todo]`` (Hartree; NaN for an unsupported element) in batches of
        ``save_every``, adding them to ``store`` (saved after each)."""
        ptr, z, pos = data.ptr.numpy(), data.z.numpy(), data.pos.numpy()
        net = load_ani(self.name, str(self.folder))
        t0 = time.perf_counter()
        for start in range(0, todo.size, self.save_every):
            part = todo[start : start + self.save_every]
            ok = supported(z, ptr, rows[part])
            if ok.any():
                energy[part[ok]] = ani_energies(net, z, pos, ptr, rows[part[ok]])[0]
            if store is not None:
                store.update(zip(idx[part].tolist(), energy[part].tolist(), strict=True))
                self._save(store)
        log.info(
            "event=ani_baseline_computed baseline=%s n=%d unsupported=%d seconds=%.1f",
            self.name, todo.size, int(np.isnan(energy[todo]).sum()), time.perf_counter() - t0,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "baseline_method": self.reference.method}


@BASELINES.register("ani1x")
class ANI1xBaseline(ANIBaseline):
    """ANI-1x on the DFT scale."""

    name = "ani1x"


@BASELINES.register("ani1ccx")
class ANI1ccxBaseline(ANIBaseline):
    """ANI-1ccx on the DFT scale."""

    name = "ani1ccx"
