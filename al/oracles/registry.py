"""The oracle registry's face: every oracle module imported, the spec check and the factory.

Each oracle registers itself in :data:`~al.oracles.base.ORACLES` where it is defined
(:func:`~al.oracles.base.register_oracle`); this module imports them all, in the order the
names are listed. CLI choices, the config's one-line errors (:func:`oracle_spec_problem`),
the factory (:func:`build_oracle`) and the tests read :data:`ORACLES`.
"""

from __future__ import annotations

# isort: off
from al.oracles import dft, xtb  # noqa: F401 - the ground truth first, then by cost
from al.oracles import model, pretrained, pyg_schnet  # noqa: F401
from al.oracles import ani  # noqa: F401
from al.oracles import pyscf  # noqa: F401 - DFT computed live, the dearest
from al.oracles import external  # noqa: F401 - one's own labeller, answering later

# isort: on
from al.data.molecules import MolecularData
from al.oracles.base import ORACLES, Oracle

__all__ = ["ORACLES", "build_oracle", "oracle_choices", "oracle_spec_problem"]


def oracle_choices() -> list[str]:
    """Valid specs as shown to users: ``["dft", "xtb", "model:<MLflow model URI>", ...]``."""
    return list(ORACLES.choices())


def oracle_spec_problem(spec: str) -> str | None:
    """What is wrong with an oracle spec (one line), or None when it names an oracle."""
    return ORACLES.problem(spec)


def build_oracle(
    spec: str | Oracle, *, data: MolecularData, cost: float | None = None,
    timeout_s: float | None = None,
) -> Oracle:  # fmt: skip
    """An oracle from a spec (``dft``, ``xtb``, ``model:<uri>``, ``pyscf:b3lyp/sto-3g``) or
    an instance as it is.

    Args:
        spec: a registry name, optionally ``name:argument``; or an :class:`Oracle`.
        data: the molecules the oracle labels by QM9 index.
        cost: cost per label; None keeps the oracle's default. Not accepted with an
            instance (set its ``cost_per_label`` instead).
        timeout_s: wall-clock limit in seconds of one label, for an oracle that computes
            labels live under one (``pyscf``); ignored by the others. None keeps its default.

    Raises:
        ValueError: an unknown name (the message lists the valid choices), a missing,
            unexpected or malformed argument, or a cost given with an instance.
    """
    if isinstance(spec, Oracle):
        if cost is not None:
            raise ValueError(
                f"cost={cost} given with an oracle instance; set its cost_per_label instead"
            )
        return spec
    parsed = ORACLES.parse(spec)
    limit = {"timeout_s": timeout_s} if timeout_s is not None and _has_timeout(parsed.obj) else {}
    if parsed.obj.argument is None or not parsed.argument:  # none, or an optional one left out
        return parsed.obj(data, cost=cost, **limit)
    return parsed.obj(data, parsed.argument, cost=cost, **limit)


def _has_timeout(cls: type) -> bool:
    """Whether oracles of ``cls`` run each label under a wall-clock limit (``timeout_s``)."""
    return hasattr(cls, "default_timeout_s")
