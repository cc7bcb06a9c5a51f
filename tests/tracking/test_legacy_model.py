"""Models logged before the package had one folder per role still load and predict.

``tests/fixtures/legacy_model`` is an MLflow model as `al` logged it at commit 49d60ed (flat
layout): its ``mlflow_model.py`` imports ``al.pyfunc``. The copy of the package that MLflow
stores beside a model (``code/al``) is cut to ``__init__.py`` here, so the model runs on the
installed package, through the import shims ``al.pyfunc`` and ``al.mlflow_model``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parents[1] / "fixtures" / "legacy_model"


def test_the_logged_entry_still_names_the_shim() -> None:
    entry = (FIXTURE / "mlflow_model.py").read_text()
    assert "from al.pyfunc import MoleculeEnergyModel" in entry


@pytest.mark.slow
def test_a_model_logged_by_the_flat_layout_loads_and_predicts(tmp_path: Path) -> None:
    # a fresh process, as `al predict` or a ModelOracle would load it; the installed `al` is
    # imported first, as it is in those processes
    model_dir = tmp_path / "model"
    shutil.copytree(FIXTURE, model_dir)
    script = f"""
import json, sys
import al.cli  # noqa: F401 - the installed package, as in `al predict`
import mlflow
import pandas as pd
model = mlflow.pyfunc.load_model({str(model_dir)!r})
frame = pd.read_json({str(model_dir / "input_example.json")!r}, orient="split")
out = model.predict(frame)
print(json.dumps({{"mean_ev": float(out["mean_ev"][0]), "std_ev": float(out["std_ev"][0]),
                  "pyfunc": sys.modules["al.pyfunc"].__file__}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    expected = json.loads((FIXTURE / "expected.json").read_text())
    assert got["mean_ev"] == pytest.approx(expected["mean_ev"], abs=1e-5)
    assert got["std_ev"] == pytest.approx(expected["std_ev"], abs=1e-5)
    # the shim of the installed package answered, not a copy stored with the model
    assert Path(got["pyfunc"]).parent != model_dir / "code" / "al"
