from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from al.cli import main


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
