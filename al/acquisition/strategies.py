"""Strategy presets: a named pair of an uncertainty method and an acquisition function."""

from __future__ import annotations

from dataclasses import dataclass

from al.registry import Registry


@dataclass(frozen=True)
class Strategy:
    """``scheme``: ``pool`` scores the whole (subsampled) pool each round and retrains every
    round; ``stream`` sees the pool arrive in random chunks and retrains only when the
    labelled set has grown enough (the online data scheme)."""

    uncertainty: str
    acquisition: str
    description: str
    scheme: str = "pool"


#: The registry of presets (``-P strategy=...``); ``uncertainty``/``acquisition`` override parts.
STRATEGIES: Registry[Strategy] = Registry("strategy")


def _preset(name: str, strategy: Strategy) -> None:
    STRATEGIES.register(name, strategy, description=strategy.description)


# ``random`` keeps the ensemble surrogate so that it differs from the others only in what
# it selects, and its uncertainty quality is measured the same way.
_preset("random", Strategy("ensemble", "random", "random batches (the baseline)"))
_preset("ensemble", Strategy("ensemble", "max_std", "deep ensemble, highest std first"))
_preset("mc_dropout", Strategy("mc_dropout", "max_std", "MC dropout, highest std first"))
_preset(
    "shallow",
    Strategy(
        "shallow", "max_std", "shallow ensemble (K NLL-trained heads, one trunk), highest std"
    ),
)
_preset("coreset", Strategy("ensemble", "coreset", "k-center greedy on embeddings"))
_preset("diverse", Strategy("ensemble", "diverse", "high std, spread out in embedding space"))
# The batch methods of Holzmüller et al. (JMLR 2023) need only features; the shallow
# ensemble's embedding is exactly the last-layer features its energies are linear in.
_preset("lcmd", Strategy("shallow", "lcmd", "LCMD batches on last-layer features (shallow)"))
_preset(
    "bait", Strategy("shallow", "bait", "BAIT forward-backward on last-layer features (shallow)")
)
_preset(
    "stream",
    Strategy("ensemble", "max_std", "online: chunks arrive, retrain on enough new data", "stream"),
)


def resolve_strategy(name: str, uncertainty: str = "", acquisition: str = "") -> Strategy:
    """The preset ``name`` with optional overrides; unknown names list the valid ones."""
    base = STRATEGIES.get(name)
    return Strategy(
        uncertainty or base.uncertainty,
        acquisition or base.acquisition,
        base.description,
        base.scheme,
    )
