"""The active-learning loop: the campaign algorithm, its ledger, stopping rules, config."""
