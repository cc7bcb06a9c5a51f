"""The ``model:<MLflow model URI>`` oracle: a logged pyfunc model (``al.pyfunc``) as labeller."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from al.data.molecules import MolecularData, molecules_frame
from al.oracles.base import NETWORK_CHUNK, Oracle, OracleError, PriorLabels, register_oracle

log = logging.getLogger(__name__)


@register_oracle("model")
class ModelOracle(Oracle):
    """A logged pyfunc model (``al.pyfunc``) as the labeller: its ``mean_ev`` is the label.

    The model is loaded by :func:`mlflow.pyfunc.load_model` on the first :meth:`label` call
    (or an explicit :meth:`load`), so building the oracle needs no tracking server. A URI
    that cannot be loaded raises :class:`OracleError` then, naming the URI: that is a broken
    setting, not a failure of one molecule. A prediction call that raises marks every row
    of that request ``"error:<ExceptionName>"``; a non-finite mean marks its row
    ``"non_finite"``.

    Args:
        data: the molecules whose ``z`` and ``pos`` are sent to the model.
        uri: an MLflow model URI (``models:/m-<id>``, ``runs:/<run id>/model``, a path).
        cost: cost per label (default 0.001).
        batch_size: molecules per ``predict`` call.
    """

    journal_chunk = NETWORK_CHUNK  # one forward pass a call

    default_cost = 0.001
    argument = "<MLflow model URI>"

    def __init__(
        self, data: MolecularData, uri: str, *, cost: float | None = None, batch_size: int = 4096
    ) -> None:
        uri = (uri or "").strip()
        if not uri:
            raise ValueError("the model oracle needs a URI: model:<MLflow model URI>")
        super().__init__(data, cost=cost)
        self.uri = uri
        self.name = f"{self.kind()}:{uri}"
        self.batch_size = int(batch_size)
        self._model: Any = None

    def load(self) -> Any:
        """The pyfunc model, loaded once; :class:`OracleError` if the URI cannot be loaded."""
        if self._model is None:
            import mlflow

            t0 = time.perf_counter()
            try:
                self._model = mlflow.pyfunc.load_model(self.uri)
            except Exception as exc:
                raise OracleError(
                    f"cannot load the oracle model {self.uri!r} (tracking URI "
                    f"{mlflow.get_tracking_uri()}): {type(exc).__name__}: {exc}"
                ) from exc
            log.info(
                "event=oracle_model_loaded uri=%s seconds=%.2f", self.uri, time.perf_counter() - t0
            )
        return self._model

    def prepare(self) -> None:
        self.load()

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model = self.load()

        def predict(part: np.ndarray) -> Any:
            frame = molecules_frame([self.molecule(int(r)) for r in part])
            return model.predict(frame)["mean_ev"]

        return self._label_in_batches(rows, predict, self.batch_size)

    def prior_labels(self) -> PriorLabels:
        """The DFT labels the model was trained on, read from its lineage: the run that
        logged it (``train_size``, training + validation, of ``al pretrain``; else
        ``train_size`` of ``al train``). NaN, with a warning, when the lineage cannot be read
        (a model logged elsewhere): its cost is then unknown, not zero."""
        import mlflow
        from mlflow.tracking import MlflowClient

        try:
            run_id = mlflow.models.get_model_info(self.uri).run_id
            params = MlflowClient().get_run(run_id).data.params
            n = float(params["train_size"])
        except Exception as exc:  # any failure: the count is unknown, and said so
            log.warning(
                "event=oracle_lineage_unknown uri=%s message=%r", self.uri, f"{type(exc).__name__}"
            )
            return PriorLabels(math.nan, f"{self.uri}: lineage not readable")
        return PriorLabels(n, f"{self.uri}: run {run_id} train_size")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "uri": self.uri}
