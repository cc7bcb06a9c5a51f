"""The ``dft`` oracle: the QM9 ground truth (B3LYP/6-31G(2df,p)) read from the data set."""

from __future__ import annotations

import numpy as np
import torch

from al.oracles.base import STATUS_MISSING_TARGET, STATUS_OK, Oracle, register_oracle


@register_oracle("dft")
class DFTOracle(Oracle):
    """The QM9 ground truth (``data.y``, eV). NaN targets give ``"missing_target"``."""

    default_cost = 1.0
    reads_table = True
    # journal_chunk stays 1: the table stands for a DFT code, which computes one molecule at
    # a time, so each label is journalled (and a kill re-buys) as one would be.

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = self.data.y.detach().cpu()[torch.from_numpy(rows)].numpy().astype(np.float64)
        status = np.where(np.isfinite(y), STATUS_OK, STATUS_MISSING_TARGET).astype(object)
        return y, status
