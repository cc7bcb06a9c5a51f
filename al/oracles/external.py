"""The ``external`` oracle: one's own labeller (a DFT code on a cluster), outside the process.

A campaign cannot call it. When a round asks it for labels, the campaign writes the batch
out (ids, SMILES, one geometry per molecule, the acquisition score, the predicted mean and
std), marks its run as waiting for labels, and stops (:mod:`al.entrypoints.external`). The
answers come back through ``al ingest RUN_ID labels.csv`` (:mod:`al.entrypoints.ingest`),
which records them in the campaign's label journal; ``al al-loop --resume RUN_ID`` goes on.
Cost 1 per label (a DFT calculation), or ``oracle_cost``.
"""

from __future__ import annotations

import numpy as np

from al.oracles.base import Oracle, OracleError, register_oracle


@register_oracle("external")
class ExternalOracle(Oracle):
    """Labels that come from outside the process, later (:attr:`answers_later`)."""

    default_cost = 1.0
    answers_later = True

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise OracleError(
            "the external labeller answers outside the process: a campaign writes its batch "
            "and waits; the labels come in through al ingest RUN_ID labels.csv"
        )
