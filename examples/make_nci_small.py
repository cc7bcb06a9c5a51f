"""Select the example pool ``nci_small.smi`` from the NCI molecules that RDKit ships.

Source: ``rdkit/Data/NCI/first_5K.smi`` inside the RDKit wheel (the first 5,000 entries of
the NCI open database: one SMILES and the NCI id per line). A molecule is kept when it is

* parsed by RDKit, one fragment, net charge 0, no radical electrons;
* made of H, C, N, O and F only, with at most 12 heavy atoms;
* not in QM9: its canonical SMILES without stereochemistry differs from that of every QM9
  molecule (both canonicalised by RDKit);

and the first :data:`N_KEEP` kept molecules, in the source's order, are written.

Run from the repository root: ``python examples/make_nci_small.py`` (it reads QM9 through
``al.data.load.load_qm9``) and commit the rewritten ``examples/nci_small.smi``.
"""

from __future__ import annotations

from pathlib import Path

import rdkit
from rdkit import Chem, RDLogger

from al.data.elements import ELEMENTS
from al.data.load import load_qm9

SOURCE = Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi"
OUT = Path(__file__).resolve().parent / "nci_small.smi"
MAX_HEAVY = 12
#: Molecules written: the first this many that pass the rule.
N_KEEP = 300
ALLOWED = set(ELEMENTS.values())


def flat_smiles(mol: Chem.Mol) -> str:
    """RDKit's canonical SMILES without stereochemistry."""
    return Chem.MolToSmiles(mol, isomericSmiles=False)


def keep(mol: Chem.Mol | None) -> bool:
    """The selection rule, apart from the comparison with QM9."""
    return (
        mol is not None
        and len(Chem.GetMolFrags(mol)) == 1
        and Chem.GetFormalCharge(mol) == 0
        and all(a.GetNumRadicalElectrons() == 0 for a in mol.GetAtoms())
        and all(a.GetAtomicNum() in ALLOWED for a in mol.GetAtoms())
        and mol.GetNumHeavyAtoms() <= MAX_HEAVY
    )


def main() -> None:
    """Write the selection, one ``SMILES NCI-id`` line per molecule, in the source's order."""
    RDLogger.DisableLog("rdApp.*")
    candidates = []
    for line in SOURCE.read_text().splitlines():
        words = line.split()
        if len(words) != 2:
            continue
        mol = Chem.MolFromSmiles(words[0])
        if keep(mol):
            candidates.append((Chem.MolToSmiles(mol), flat_smiles(mol), words[1]))
    qm9 = set()
    for smiles in load_qm9().smiles:
        mol = Chem.MolFromSmiles(smiles)
        if mol is not None:
            qm9.add(flat_smiles(mol))
    passed = [(smiles, nci) for smiles, flat, nci in candidates if flat not in qm9]
    chosen = passed[:N_KEEP]
    header = "smiles id\n"
    OUT.write_text(header + "".join(f"{s} NCI-{nci}\n" for s, nci in chosen))
    print(
        f"{len(candidates)} candidates, {len(candidates) - len(passed)} of them in QM9, "
        f"{len(passed)} pass, the first {len(chosen)} written to {OUT.name}"
    )


if __name__ == "__main__":
    main()
