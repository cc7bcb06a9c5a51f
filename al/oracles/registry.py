"""The oracle registry: spec name -> class, the spec check and the factory.

CLI choices, the config's one-line errors (:func:`oracle_spec_problem`), the factory
(:func:`build_oracle`) and the tests read :data:`ORACLES`.
"""

from __future__ import annotations

from al.data.molecules import MolecularData
from al.oracles.ani import ANI1ccxOracle, ANI1xOracle
from al.oracles.base import ORACLES, Oracle
from al.oracles.dft import DFTOracle
from al.oracles.model import ModelOracle
from al.oracles.pretrained import PretrainedOracle
from al.oracles.pyg_schnet import PyGSchNetOracle
from al.oracles.xtb import XTBOracle

# The one list of oracles. ORACLES is the dict object of al.oracles.base, filled here.
ORACLES.update(
    {
        "dft": DFTOracle,
        "xtb": XTBOracle,
        "model": ModelOracle,
        "pretrained": PretrainedOracle,
        "pyg_schnet": PyGSchNetOracle,
        "ani1x": ANI1xOracle,
        "ani1ccx": ANI1ccxOracle,
    }
)

__all__ = ["ORACLES", "build_oracle", "oracle_choices", "oracle_spec_problem"]


def oracle_choices() -> list[str]:
    """Valid specs as shown to users: ``["dft", "xtb", "model:<MLflow model URI>"]``."""
    return [f"{k}:{c.argument}" if c.argument else k for k, c in ORACLES.items()]


def oracle_spec_problem(spec: str) -> str | None:
    """What is wrong with an oracle spec (one line), or None when it names an oracle."""
    name, sep, arg = str(spec).strip().partition(":")
    cls = ORACLES.get(name.strip().lower())
    if cls is None:
        return f"unknown oracle {spec!r}; expected one of: {', '.join(oracle_choices())}"
    if cls.argument is None and sep:
        return f"oracle {name!r} takes no argument, got {spec!r}"
    if cls.argument is not None and not arg.strip():
        return f"oracle {name!r} needs an argument: {name}:{cls.argument}"
    return None


def build_oracle(spec: str | Oracle, *, data: MolecularData, cost: float | None = None) -> Oracle:
    """An oracle from a spec (``dft``, ``xtb``, ``model:<uri>``) or an instance as it is.

    Args:
        spec: a registry name, optionally ``name:argument``; or an :class:`Oracle`.
        data: the molecules the oracle labels by QM9 index.
        cost: cost per label; None keeps the oracle's default. Not accepted with an
            instance (set its ``cost_per_label`` instead).

    Raises:
        ValueError: an unknown name (the message lists the valid choices), a missing or
            unexpected argument, or a cost given with an instance.
    """
    if isinstance(spec, Oracle):
        if cost is not None:
            raise ValueError(
                f"cost={cost} given with an oracle instance; set its cost_per_label instead"
            )
        return spec
    problem = oracle_spec_problem(spec)
    if problem:
        raise ValueError(problem)
    name, _, arg = str(spec).strip().partition(":")
    cls = ORACLES[name.strip().lower()]
    if cls.argument is None:
        return cls(data, cost=cost)
    return cls(data, arg.strip(), cost=cost)
