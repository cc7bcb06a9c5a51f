"""Oracles: the labellers a campaign buys labels from, and their registry."""

from al.oracles.base import *
from al.oracles.base import (
    ORACLES,
    LabelResult,
    Oracle,
    OracleError,
    build_oracle,
    oracle_choices,
    oracle_spec_problem,
)
