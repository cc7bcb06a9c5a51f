"""The ``ani1x`` and ``ani1ccx`` oracles: the published ANI-1x and ANI-1ccx ensembles (TorchANI).

Each is an ensemble of 8 networks trained on other data than QM9 (ANI-1x: DFT
ωB97x/6-31G(d) energies of ~5M conformations; ANI-1ccx: fine-tuned on CCSD(T)*/CBS), for
H, C, N and O only. Their total energy (Hartree, the ensemble mean) is put on the DFT
target's scale by the per-element linear reference of the xTB oracle
(:class:`~al.oracles.xtb.XTBReference`, fitted by
:func:`~al.oracles.xtb.fit_xtb_reference` on oracle-split molecules without F;
``benchmarks/ani_labellers.py --write-references`` writes ``al/data/ani1x_reference.json``
and ``ani1ccx_reference.json``). The std of the 8 networks (eV) is kept with each label.
A molecule with another element (F) gets ``unsupported_element``.

The weights come from :mod:`al.oracles.ani_weights` (offline, checked), molecules go
through the networks in padded batches (:func:`ani_energies`).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from al.data.elements import ELEMENTS, HARTREE_TO_EV, SYMBOLS
from al.data.molecules import MolecularData
from al.oracles.ani_weights import ANI_MODELS, ANI_WEIGHTS_SHA256, ani_weights
from al.oracles.base import (
    NETWORK_CHUNK,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_UNSUPPORTED_ELEMENT,
    Oracle,
    OracleError,
    PriorLabels,
    register_oracle,
)
from al.oracles.xtb import XTBReference, load_xtb_reference

#: The elements ANI-1x and ANI-1ccx were trained on (atomic numbers).
ANI_ELEMENTS = frozenset({1, 6, 7, 8})
#: Packaged per-element reference of each model (``al/data/<file>``).
ANI_REFERENCE_FILES = {m: f"{m}_reference.json" for m in ANI_MODELS}
#: Display names, as in the reference files' ``method``.
ANI_METHODS = {"ani1x": "ANI-1x", "ani1ccx": "ANI-1ccx"}
#: Molecules per forward pass (padded to the largest of the batch).
ANI_BATCH_SIZE = 256


def torchani_problem() -> str | None:
    """None when TorchANI can be imported, else the one-line fix."""
    if importlib.util.find_spec("torchani") is None:
        return "the ANI oracles and baselines need torchani: pip install 'al[ani]'"
    return None


@functools.cache
def load_ani(model: str, folder: str) -> tuple[Any, np.ndarray]:
    """The TorchANI ensemble ``model`` (``ani1x``, ``ani1ccx``) from the NeuroChem files in
    ``folder`` (checked by :func:`al.oracles.ani_weights.ani_weights`); built once per process.

    Returns:
        The networks in float32 and eval mode, without their self energies: the forward
        takes ``(species [B, A], coordinates [B, A, 3])`` (atomic numbers, -1 for padding;
        Angstrom) and returns each network's energy minus the atoms' self energies
        (Hartree, ~1 Ha, where float32 keeps ~0.1 µHa). And the self energies by atomic
        number, ``[119]`` float64 (NaN for an element it lacks), added back in float64: a
        total energy of ~400 Ha in float32 would round to ~1 meV. Float32 runs twice as
        fast as float64 on a CPU.
    """
    with warnings.catch_warnings():  # its CUDA extensions are not built: that is fine on CPU
        warnings.simplefilter("ignore")
        from torchani import neurochem
        from torchani.arch import ANI

    root = Path(folder)
    info = neurochem.NeurochemInfo(
        sae=root / "sae_linfit.dat",
        const=root / "rHCNO-5.2R_16-3.5A_a4-8.params",
        ensemble_prefix=root / "train",
        ensemble_size=8,
    )
    aev, networks, self_energies, symbols = neurochem.modules_from_info(info)
    net = ANI(symbols, aev, networks, self_energies, periodic_table_index=True)
    by_z = np.full(119, np.nan)
    by_z[net.atomic_numbers.numpy()] = self_energies.self_energies.double().numpy()
    net.set_enabled("energy_shifter", False)
    return net.float().eval(), by_z


def ani_energies(
    net: tuple[Any, np.ndarray],
    z: np.ndarray,
    pos: np.ndarray,
    ptr: np.ndarray,
    rows: np.ndarray,
    batch_size: int = ANI_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble mean and std (Hartree) of the molecules ``rows`` in padded batches.

    Molecules are sorted by size so that a batch pads little, ``batch_size`` at a time.

    Args:
        net: a model and its self energies, as :func:`load_ani` returns them.
        z: atomic numbers of all molecules, ``[n_atoms]``; ``pos``: Angstrom,
            ``[n_atoms, 3]``; ``ptr``: offsets, ``[n_mol + 1]``.
        rows: the molecules, ``[m]``; each must hold only :data:`ANI_ELEMENTS`.

    Returns:
        ``mean [m]`` and ``std [m]`` (the 8 networks' sample std), float64.
    """
    import torch

    model, self_energy = net
    rows = np.asarray(rows, dtype=np.int64)
    counts = ptr[rows + 1] - ptr[rows]
    order = np.argsort(counts, kind="stable")
    mean, std = np.full(rows.size, np.nan), np.full(rows.size, np.nan)
    for start in range(0, rows.size, max(1, int(batch_size))):
        part = order[start : start + batch_size]
        n = counts[part]
        mol = np.repeat(np.arange(part.size), n)
        slot = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        atom = np.repeat(ptr[rows[part]], n) + slot
        species = torch.full((part.size, int(n.max())), -1, dtype=torch.long)
        coords = torch.zeros((part.size, int(n.max()), 3), dtype=torch.float32)
        species[mol, slot] = torch.as_tensor(z[atom], dtype=torch.long)
        coords[mol, slot] = torch.as_tensor(pos[atom], dtype=torch.float32)
        with torch.inference_mode():
            members = model((species, coords), ensemble_values=True).energies  # [8, b]
        members = members.double().numpy()
        shift = np.bincount(mol, weights=self_energy[z[atom]], minlength=part.size)  # [b]
        mean[part] = members.mean(0) + shift
        std[part] = members.std(0, ddof=1)
    return mean, std


def supported(z: np.ndarray, ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which molecules ``rows`` (``[m]``) hold only :data:`ANI_ELEMENTS`, ``[m]`` bool."""
    ok_atom = np.isin(z, sorted(ANI_ELEMENTS))
    bad = np.concatenate([[0], np.cumsum(~ok_atom)])  # [n_atoms + 1]: unsupported atoms so far
    return (bad[ptr[rows + 1]] - bad[ptr[rows]]) == 0


class ANIOracle(Oracle):
    """A published ANI ensemble on the DFT target's scale (see the module docstring).

    ``label = HARTREE_TO_EV * E_mean + sum_atoms c[z]``; the label's std is
    ``HARTREE_TO_EV * std(E_1..E_8)``. Subclasses name the ``model``.

    Args:
        data: the molecules (their geometries are used as they are).
        cost: cost per label (default 0.001, as for the other model oracles).
        reference: an :class:`~al.oracles.xtb.XTBReference`, a path to its JSON, or None
            for the packaged one of the model.
        root: the weights folder (default :func:`al.oracles.ani_weights.ani_dir`).
        batch_size: molecules per forward pass.

    Raises:
        OracleError: one line, without TorchANI, or without the weights when they cannot
            be fetched.
    """

    journal_chunk = NETWORK_CHUNK  # one forward pass a call

    default_cost = 0.001
    model: ClassVar[str] = ""
    supported_elements: ClassVar[frozenset[int] | None] = ANI_ELEMENTS

    def __init__(
        self,
        data: MolecularData,
        *,
        cost: float | None = None,
        reference: XTBReference | str | Path | None = None,
        root: str | Path | None = None,
        batch_size: int = ANI_BATCH_SIZE,
    ) -> None:
        problem = torchani_problem()
        if problem:
            raise OracleError(problem)
        self.folder = ani_weights(self.model, None if root is None else Path(root))
        super().__init__(data, cost=cost)
        self.reference = (
            reference
            if isinstance(reference, XTBReference)
            else load_xtb_reference(reference, packaged=ANI_REFERENCE_FILES[self.model])
        )
        self.batch_size = int(batch_size)
        self._coef = np.zeros(len(ELEMENTS))  # [5] eV per atom, H C N O F
        for k, z in enumerate(ELEMENTS.values()):
            self._coef[k] = self.reference.coefficients_ev.get(z, math.nan)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the oracle cannot be built here (no TorchANI; no weights, and they cannot be
        fetched), or None. Fetches the weights when they are absent and may be fetched."""
        problem = torchani_problem()
        if problem:
            return problem
        try:
            ani_weights(cls.model)
        except OracleError as exc:
            return str(exc)
        return None

    def prior_labels(self) -> PriorLabels:
        """The DFT labels its per-element reference was fitted and checked on."""
        return self.reference.prior_labels()

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        value, std = np.full(rows.size, np.nan), np.full(rows.size, np.nan)
        ok = supported(self._z, self._ptr, rows)
        status = np.where(ok, STATUS_OK, STATUS_UNSUPPORTED_ELEMENT).astype(object)
        if ok.any():
            net = load_ani(self.model, str(self.folder))
            mean_ha, std_ha = ani_energies(
                net, self._z, self._pos, self._ptr, rows[ok], self.batch_size
            )
            comp = self.data.composition(torch.as_tensor(rows[ok])).numpy()  # [m, 5]
            offset = np.where(comp > 0, comp * self._coef, 0.0).sum(1)
            value[ok] = HARTREE_TO_EV * mean_ha + offset
            std[ok] = HARTREE_TO_EV * std_ha
            status[ok] = np.where(np.isfinite(value[ok]), STATUS_OK, STATUS_NON_FINITE)
        return value, status, std

    def describe(self) -> dict[str, Any]:
        meta = self.reference.meta or {}
        return {
            **super().describe(),
            "method": self.reference.method,
            "weights_sha256": ANI_WEIGHTS_SHA256[self.model],
            "weights_folder": str(self.folder),
            "batch_size": self.batch_size,
            "reference_split_digest": meta.get("split_digest"),
            "reference_heldout_mae_ev": meta.get("heldout_mae_ev"),
            **{
                f"reference_c_{SYMBOLS[z]}_ev": c
                for z, c in sorted(self.reference.coefficients_ev.items())
            },
        }


@register_oracle("ani1x")
class ANI1xOracle(ANIOracle):
    """ANI-1x (DFT ωB97x/6-31G(d) training data), 8 networks."""

    model = "ani1x"


@register_oracle("ani1ccx")
class ANI1ccxOracle(ANIOracle):
    """ANI-1ccx (ANI-1x fine-tuned on CCSD(T)*/CBS energies), 8 networks."""

    model = "ani1ccx"
