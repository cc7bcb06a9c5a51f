"""Datasets logged by campaigns that share an experiment, against a real tracking server."""

from __future__ import annotations

import threading
import uuid

import mlflow
import numpy as np

from al.tracking.datasets import DatasetUse, log_datasets, molecule_set


def _log_at_once(n_runs: int, attempts: int) -> tuple[list[str], list[BaseException]]:
    """``n_runs`` runs of one new experiment log the same new dataset at the same moment."""
    mlflow.set_experiment(f"race-{uuid.uuid4().hex[:8]}")
    name = f"initial-{uuid.uuid4().hex[:8]}"
    index = np.arange(1000)
    barrier = threading.Barrier(n_runs)
    run_ids: list[str] = []
    errors: list[BaseException] = []

    def one() -> None:
        with mlflow.start_run() as run:  # the active run is per thread
            run_ids.append(run.info.run_id)
            use = DatasetUse(molecule_set(name, "qm9", index), "training")
            barrier.wait()
            try:
                log_datasets([use], attempts=attempts)
            except Exception as e:  # collected for the assertion
                errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(n_runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return run_ids, errors


def test_campaigns_logging_the_same_set_at_once_all_record_it(tracking: str) -> None:
    """MLflow's store looks a dataset up, then inserts it: runs that log one new set at the
    same moment collide on its unique key. Every run must still record it as its input."""
    run_ids, errors = [], []
    for _ in range(3):  # with one attempt, 8 runs at once collide in most tries
        ids, errs = _log_at_once(n_runs=8, attempts=3)
        run_ids += ids
        errors += errs
    assert errors == []
    client = mlflow.MlflowClient()
    for run_id in run_ids:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.tags[0].value) for i in inputs] == [
            (inputs[0].dataset.name, "training")
        ]
