"""Acquisition: which molecules to label next (single- and multi-fidelity), and the
strategy presets that pair an uncertainty method with an acquisition function."""

from al.acquisition import batch  # registers lcmd and bait, after the functions module's
from al.acquisition.functions import ACQUISITIONS, Acquisition, Selection, select
from al.acquisition.multifidelity import MF_ACQUISITIONS, PairSelection, select_pairs
from al.acquisition.strategies import STRATEGIES, Strategy, resolve_strategy
