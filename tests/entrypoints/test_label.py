from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from al.cli import main
from al.oracles import DFTOracle


@pytest.mark.slow
def test_label_entry_point(tracking, tmp_path: Path, qm9) -> None:
    src = tmp_path / "in.csv"
    src.write_text("qm9_index,note\n1,methane\n133886,missing\n3,water\n")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        main, ["label", "--input", str(src), "--output", str(out), "--experiment-name", "lab"]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert table["qm9_index"].tolist() == [1, 133886, 3]
    assert table["status"].tolist() == ["ok", "unknown_molecule", "ok"]
    assert table["label"][0] == pytest.approx(-17.3897, abs=1e-4)
    client = MlflowClient()
    exp = client.get_experiment_by_name("lab")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["al.kind"] == "label"
    assert run.data.metrics["n_failed"] == 1 and run.data.metrics["cost_spent"] == 2.0


def test_label_rejects_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("index\n1\n")
    result = CliRunner().invoke(main, ["label", "--input", str(bad)])
    assert result.exit_code != 0 and "no 'qm9_index' column" in result.output
    bad.write_text("qm9_index\n1\nx\n")
    result = CliRunner().invoke(main, ["label", "--input", str(bad)])
    assert result.exit_code != 0 and "bad.csv:3: qm9_index must be an integer" in result.output


class CountingOracle(DFTOracle):
    """The DFT oracle that remembers every molecule row it was asked to label."""

    asked: ClassVar[list[int]] = []

    def _label_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        CountingOracle.asked.extend(rows.tolist())
        return super()._label_rows(rows)


@pytest.fixture
def counting_oracle() -> Iterator[type[CountingOracle]]:
    """:class:`CountingOracle` registered as the oracle ``counting`` while a test runs."""
    from al import oracles

    with oracles.ORACLES.registered("counting", CountingOracle):
        yield CountingOracle


@pytest.mark.slow
@pytest.mark.usefixtures("counting_oracle")
def test_label_pays_each_duplicate_once(tracking, tmp_path: Path, qm9, monkeypatch) -> None:
    monkeypatch.setattr(CountingOracle, "asked", [])
    src = tmp_path / "in.csv"
    src.write_text("qm9_index\n3\n1\n3\n3\n133886\n1\n")
    out = tmp_path / "out.csv"
    args = ["label", "--oracle", "counting", "--input", str(src), "--output", str(out),
            "--experiment-name", "lab-dup"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "3 duplicate row(s) collapsed" in result.output
    assert sorted(CountingOracle.asked) == sorted(qm9.rows_of([1, 3]).tolist())  # once each
    table = pd.read_csv(out)
    assert table["qm9_index"].tolist() == [3, 1, 3, 3, 133886, 1]  # one row per input row
    assert table["status"].tolist() == ["ok"] * 4 + ["unknown_molecule", "ok"]
    assert table.loc[table["qm9_index"] == 3, "label"].nunique() == 1
    assert table["label"][1] == pytest.approx(-17.3897, abs=1e-4)
    assert table["cost"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # paid once
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("lab-dup").experiment_id])
    assert run.data.metrics["cost_spent"] == 2.0 and run.data.metrics["n_duplicates"] == 3
