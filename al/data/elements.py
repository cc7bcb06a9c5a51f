"""The elements of QM9 and the target's reference energies: the one element table."""

from __future__ import annotations

import numpy as np

HARTREE_TO_EV = 27.211386
#: Atomic reference enthalpies at 298.15 K in Hartree (B3LYP/6-31G(2df,p), QM9 paper).
ATOM_REF_H298_HA: dict[int, float] = {
    1: -0.497912,
    6: -37.844411,
    7: -54.581501,
    8: -75.062219,
    9: -99.716370,
}
ELEMENTS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
SYMBOLS: dict[int, str] = {v: k for k, v in ELEMENTS.items()}
#: The target: H_298(molecule) - sum of atomic reference enthalpies at 298.15 K.
PROPERTY = "H_atomization_298K_eV"


def atomization_enthalpy_ev(h298_ha: np.ndarray, z: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """H_298(molecule) minus the atomic reference enthalpies, in eV.

    Args:
        h298_ha: molecular enthalpy at 298.15 K in Hartree, ``[n_mol]``.
        z: atomic numbers, ``[n_atoms]``; ptr: offsets, ``[n_mol + 1]``.
    """
    ref = np.zeros(10)
    for el, value in ATOM_REF_H298_HA.items():
        ref[el] = value
    per_atom = ref[z]
    sums = np.add.reduceat(per_atom, ptr[:-1]) if len(per_atom) else np.zeros(0)
    return (h298_ha - sums) * HARTREE_TO_EV
