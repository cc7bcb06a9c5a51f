"""The active-learning loop: the campaign algorithm (:mod:`~al.loop.campaign`) and the
collaborators it is given: data schemes, single-/multi-fidelity selection, tracking; its
ledger, stopping rules and config."""
