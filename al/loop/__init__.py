"""The active-learning loop: the campaign algorithm (:mod:`~al.loop.campaign`) and the
collaborators it is given: data schemes, single-/multi-fidelity selection, tracking; around
it its ledger and label desk, round records, resume, stopping rules and config."""
