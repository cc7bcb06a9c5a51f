"""Optional dependencies: the package works without them, and the features that need one
stop with one line naming the extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, one_line_error

from al.cli import main
from al.data.pyg_source import load_pyg_qm9
from al.extras import MissingExtraError, require
from al.oracles import build_oracle
from al.oracles.pyg_schnet import PyGSchNetOracle


@pytest.fixture
def without_pyg(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch Geometric as if it were not installed (an import of it fails)."""
    for name in [
        m for m in sys.modules if m == "torch_geometric" or m.startswith("torch_geometric.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch_geometric", None)


def test_require_names_the_extra(without_pyg: None) -> None:
    with pytest.raises(MissingExtraError) as err:
        require("pyg", "this feature")
    assert str(err.value) == (
        "this feature needs PyTorch Geometric, which is not installed: pip install al[pyg]"
    )


def test_require_returns_the_module() -> None:
    pytest.importorskip("torch_geometric")
    assert require("pyg", "this feature").__name__ == "torch_geometric"


def test_the_pyg_source_without_pyg_is_one_line(without_pyg: None, tmp_path: Path) -> None:
    with pytest.raises(MissingExtraError, match=r"the data source 'pyg' needs .*al\[pyg\]"):
        load_pyg_qm9(tmp_path)
    result = CliRunner().invoke(main, ["data", "info", "--source", "pyg", "--root", str(tmp_path)])
    assert "pip install al[pyg]" in one_line_error(result)


def test_the_pyg_schnet_oracle_without_pyg_is_one_line(without_pyg: None, qm9) -> None:
    reason = PyGSchNetOracle.unavailable_reason()
    assert reason == (
        "the pyg_schnet oracle needs PyTorch Geometric, which is not installed: pip install al[pyg]"
    )
    with pytest.raises(RuntimeError, match=r"^the pyg_schnet oracle needs .*al\[pyg\]$"):
        build_oracle("pyg_schnet", data=qm9)


@pytest.mark.slow
def test_no_module_imports_pyg_when_imported() -> None:
    """Every module of ``al`` and ``hpo`` imports without PyTorch Geometric (its imports
    are inside the functions that need it)."""
    code = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['torch_geometric'] = None\n"
        "import al, hpo\n"
        "for pkg in (al, hpo):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
