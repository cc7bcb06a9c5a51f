"""One PySCF single point, run as a process of its own by the ``pyscf`` oracle.

The oracle (:mod:`al.oracles.pyscf`) starts ``python -P pyscf_job.py JOB RESULT``: this file
runs as a script, with only the standard library, NumPy and PySCF imported (not ``al``,
whose import would cost seconds of every molecule's time), on one thread. ``JOB`` is a JSON
file::

    {"atoms": [["C", [x, y, z]], ...],   # Angstrom
     "charge": 0, "spin": 0,             # spin: unpaired electrons (2S)
     "xc": "b3lyp", "basis": "6-31g(2df,p)",
     "max_cycle": 50, "conv_tol": 1e-9, "grids_level": 3}

Restricted Kohn-Sham (RKS) for ``spin == 0``, unrestricted (UKS) otherwise (the free atoms).
``RESULT`` is written (atomically: a temporary file, then a rename) as::

    {"status": "ok" | "scf_not_converged" | "error:<ExceptionType>",
     "energy_ha": <total energy in Hartree, or null>, "message": "...",
     "cpu_s": <CPU seconds of the SCF>, "pyscf": "<version>"}

Any exception is written as its status; the process exits 0 whenever it wrote a result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

#: Thread counts read once, when NumPy and PySCF start their pools: one thread each.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def single_point(job: dict[str, Any]) -> dict[str, Any]:
    """The total energy of one system at the job's level (see the module docstring).

    Returns ``status``, ``energy_ha`` (None unless the SCF converged), ``message`` and
    ``cpu_s``; raises whatever PySCF raises (an unknown basis, an odd electron count).
    """
    import pyscf
    from pyscf import dft, gto, lib

    lib.num_threads(1)
    t0 = time.process_time()
    mol = gto.M(
        atom=[(sym, tuple(xyz)) for sym, xyz in job["atoms"]],
        unit="Angstrom",
        basis=job["basis"],
        charge=int(job.get("charge", 0)),
        spin=int(job.get("spin", 0)),
        verbose=0,
    )
    mf = dft.RKS(mol) if mol.spin == 0 else dft.UKS(mol)
    mf.xc = job["xc"]
    mf.max_cycle = int(job.get("max_cycle", 50))
    mf.conv_tol = float(job.get("conv_tol", 1e-9))
    mf.grids.level = int(job.get("grids_level", 3))
    energy = float(mf.kernel())
    out = {"cpu_s": time.process_time() - t0, "pyscf": pyscf.__version__, "message": ""}
    if not mf.converged:
        return {**out, "status": "scf_not_converged", "energy_ha": None,
                "message": f"SCF not converged in {mf.max_cycle} cycles"}  # fmt: skip
    return {**out, "status": "ok", "energy_ha": energy}


def main(argv: list[str]) -> int:
    """Run the job of ``argv[1]`` and write its result to ``argv[2]``."""
    job_path, result_path = argv[1], argv[2]
    with open(job_path, encoding="utf-8") as fh:
        job = json.load(fh)
    try:
        result = single_point(job)
    except Exception as exc:  # the oracle records it as this molecule's status
        result = {"status": f"error:{type(exc).__name__}", "energy_ha": None,
                  "message": str(exc).strip()[:500]}  # fmt: skip
    tmp = f"{result_path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    os.environ.update(ONE_THREAD)  # before anything imports NumPy
    sys.exit(main(sys.argv))
