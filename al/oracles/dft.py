"""The ``dft`` oracle: the QM9 ground truth (B3LYP/6-31G(2df,p)) read from the data set."""

from __future__ import annotations

import numpy as np

from al.oracles.base import STATUS_MISSING_TARGET, STATUS_OK, Oracle, register_oracle


@register_oracle("dft")
class DFTOracle(Oracle):
    """The QM9 ground truth (``data.y``, eV). NaN targets give ``"missing_target"``."""

    default_cost = 1.0

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = self.data.y.detach().cpu().numpy().astype(np.float64)[rows]
        status = np.where(np.isfinite(y), STATUS_OK, STATUS_MISSING_TARGET).astype(object)
        return y, status
