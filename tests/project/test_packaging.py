"""The package's metadata agrees with itself: pyproject's ranges, the lock file CI installs,
conda.yaml, the extras the code asks for, and the README's test command."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from al.extras import EXTRAS

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LOCK = REPO / "requirements" / "dev.lock"
#: Installed before the lock (its CPU wheel, with pip): the lock leaves it out.
FIRST = "torch"


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_every_extra_the_code_asks_for_is_declared() -> None:
    extras = PROJECT["optional-dependencies"]
    assert set(EXTRAS) <= set(extras), "al.extras names an extra that pyproject lacks"
    assert [Requirement(r).name for r in extras["pyg"]] == ["torch-geometric"]
    assert "torch-geometric" not in {Requirement(r).name for r in PROJECT["dependencies"]}


def test_the_lock_pins_every_dependency_inside_its_range() -> None:
    pins = locked()
    assert FIRST not in pins
    wanted = [Requirement(r) for r in PROJECT["dependencies"]]
    wanted += [Requirement(r) for r in PROJECT["optional-dependencies"]["dev"]]
    for req in wanted:
        name = canonicalize_name(req.name)
        if name == FIRST:
            continue
        assert name in pins, f"{req.name} is not in {LOCK.name}: compile it again (README)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {req.name}=={pins[name]}, outside {req.specifier}"
        )
    assert not any(name.startswith("nvidia-") for name in pins)  # no CUDA build's parts


def test_conda_yaml_lists_the_dependencies_of_pyproject() -> None:
    env = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if p != "-e .") == sorted(PROJECT["dependencies"])
    assert "-e ." in pip and "python=3.11" in env["dependencies"]


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    (command,) = re.findall(r"^ *(pip install torch.*python -m pytest.*)$", readme, re.M)
    ci = (REPO / ".ci" / "run").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in ci.splitlines() if ln.startswith("pip install torch")]
    steps = [" ".join(s.split()) for s in line.split("&&")]
    ci_only = ("ruff ", "mkdocs ")  # lint and the documentation site: CI's own steps
    assert " && ".join(s for s in steps if not s.startswith(ci_only)) == command.strip()
    assert "-r requirements/dev.lock" in command
