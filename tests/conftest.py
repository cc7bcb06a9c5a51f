"""Shared fixtures: the QM9 data set, a real MLflow tracking server on 127.0.0.1 and a real
PostgreSQL server (from the ``pgserver`` wheel)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (``-n N``) each worker gets an equal share of the cores, and so do the
# subprocesses it starts: more torch threads than free cores make fits many times slower.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    from al.runtime import configure_threads, threads_per_process

    os.environ["OMP_NUM_THREADS"] = str(threads_per_process(_WORKERS))
    configure_threads(processes=_WORKERS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def qm9():
    """The full QM9 data set (parsed once, then from the on-disk cache)."""
    from al.data import load_qm9

    return load_qm9()


@pytest.fixture
def qm9_pool(qm9, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A pool ``qm9x`` of 150 QM9 molecules (every 20th of the first 3,000) made from an
    extended XYZ file of their own coordinates (kept, not re-optimised: quick), in the
    test's own pool folder (``AL_POOL_DIR``, inherited by subprocesses). Its ids are
    ``m<QM9 index>``."""
    from ase import Atoms
    from ase.io import write

    from al.data.pools import create_pool

    monkeypatch.setenv("AL_POOL_DIR", str(tmp_path / "pools"))
    frames = []
    for row in range(0, 3000, 20):
        a, b = int(qm9.ptr[row]), int(qm9.ptr[row + 1])
        mol = Atoms(numbers=qm9.z[a:b].numpy(), positions=qm9.pos[a:b].numpy())
        mol.info["id"] = f"m{int(qm9.qm9_index[row])}"
        frames.append(mol)
    write(tmp_path / "mols.extxyz", frames, format="extxyz")
    create_pool("qm9x", tmp_path / "mols.extxyz", workers=1, show_progress=False)
    return "qm9x"


#: MLflow's server-side job runner (a pool of huey workers for its GenAI jobs, which `al`
#: does not use) takes ~29 s of CPU to start and then about one core while idle on these
#: two-core machines; the tests' servers run without it.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test's duration (tests run two at a time)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start_mlflow_server(
    root: Path,
    port: int | None = None,
    backend_store_uri: str | None = None,
    app_name: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` on 127.0.0.1 (backend ``backend_store_uri``, by default SQLite
    ``root/mlflow.db``; served artifacts below ``root``; ``app_name``, e.g. ``basic-auth``,
    with ``env`` for its settings) in its own process group; wait until it answers
    ``/health``.

    Returns the process and the URI. Started again on the same ``root`` and ``port`` it
    serves the same runs (a server restarted after an outage).
    """
    port = port or _free_port()
    log = open(root / "server.log", "a")  # noqa: SIM115 - the server process owns it
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [
            mlflow_bin, "server",
            "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            *(["--app-name", app_name] if app_name else []),
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
        env={**os.environ, **SERVER_ENV, **(env or {})},
    )  # fmt: skip
    log.close()
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop_mlflow_server(proc)
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)


def stop_mlflow_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a server of :func:`start_mlflow_server` and its workers (its process group).

    After SIGTERM uvicorn waits for open keep-alive connections (this process's MLflow
    client keeps some) before it exits; 3 s later the group gets SIGKILL.
    """
    try:
        os.killpg(proc.pid, sig)
        proc.wait(3)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (SQLite backend, served artifacts); yields its URI.

    Started once per test session: it takes ~20 s to answer on two cores.
    """
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield uri
    stop_mlflow_server(proc)


#: MLflow's variables that a test (or MLflow on its behalf) may set
MLFLOW_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                    "MLFLOW_RUN_ID")  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_mlflow_state() -> Iterator[None]:
    """Each test starts with the MLflow state the test run had: ``mlflow.set_tracking_uri``
    and ``mlflow.set_experiment`` keep their values in module globals, which outrank the
    environment, and copy them into the environment for subprocesses, so one test's server
    or experiment would otherwise become the next test's on the same worker."""
    before = {var: os.environ.get(var) for var in MLFLOW_VARIABLES}
    yield
    if "mlflow" in sys.modules:
        import mlflow
        import mlflow.tracking.fluent as fluent

        while mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        fluent._active_experiment_id = None  # no public reset; set_experiment's global
    for var, value in before.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


def _point_tracking_at(uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def tracking(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point this test (and subprocesses it starts) at the session's tracking server."""
    yield from _point_tracking_at(mlflow_server, monkeypatch)


# --- PostgreSQL: the team set-up's database --------------------------------------------------
#: The variable that holds the password of the PostgreSQL role ``al`` (URLs name it, as a
#: team's configs do, so that the password is never logged).
PG_PASSWORD_VAR = "AL_TEST_PG_PASSWORD"


class Postgres:
    """A running PostgreSQL server reached on its Unix socket, with a role ``al`` that must
    give its password."""

    def __init__(self, server, password: str) -> None:
        self.server = server
        self.socket_dir = server.get_postmaster_info().socket_dir
        self.password = password

    def database(self, name: str) -> str:
        """Create the database ``name`` owned by ``al``; its SQLAlchemy URL, with
        ``${AL_TEST_PG_PASSWORD}`` for the password (:meth:`resolve` fills it in)."""
        self.server.psql(f"CREATE DATABASE {name} OWNER al;")
        return f"postgresql+psycopg2://al:${{{PG_PASSWORD_VAR}}}@/{name}?host={self.socket_dir}"

    def resolve(self, url: str) -> str:
        return url.replace(f"${{{PG_PASSWORD_VAR}}}", self.password)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server from the ``pgserver`` wheel (binaries inside it: no
    system install), started once per test run (~2-4 s).

    Run as root, pgserver runs the server as a system user ``pgserver``, which it creates
    (``useradd``) if missing: PostgreSQL refuses to run as root. Its folder is a fresh
    ``mkdtemp`` so that the permissions pgserver opens on the way to it are only that one's.
    Connections that do not name ``al`` are trusted (pgserver's set-up, for the fixture's
    ``CREATE DATABASE``); ``al`` logs in with a password (scram-sha-256), as a team's would.
    """
    with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR, /tmp is used
        warnings.simplefilter("ignore")
        import pgserver

    root = Path(tempfile.mkdtemp(prefix="al-pg-"))
    try:
        server = pgserver.get_server(root / "data", cleanup_mode="delete")
    except subprocess.CalledProcessError:  # another test process ran `useradd` at the same time
        server = pgserver.get_server(root / "data", cleanup_mode="delete")
    password = secrets.token_hex(12)
    hba = root / "data" / "pg_hba.conf"
    hba.write_text("local all al scram-sha-256\n" + hba.read_text())
    server.psql(f"CREATE ROLE al LOGIN PASSWORD '{password}'; SELECT pg_reload_conf();")
    os.environ[PG_PASSWORD_VAR] = password  # subprocesses (HPO workers) read it too
    yield Postgres(server, password)
    os.environ.pop(PG_PASSWORD_VAR, None)
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_mlflow_server(
    postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real ``mlflow server`` whose backend store is PostgreSQL; yields its URI."""
    url = postgres.resolve(postgres.database("mlflow"))
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-pg"), backend_store_uri=url)
    yield uri
    stop_mlflow_server(proc)


@pytest.fixture
def postgres_tracking(
    postgres_mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Point this test (and subprocesses it starts) at the PostgreSQL-backed server."""
    yield from _point_tracking_at(postgres_mlflow_server, monkeypatch)


@pytest.fixture
def subprocess_env(tracking: str) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def al_loop_until(env: dict, args: list[str], marker: str | None, timeout: float = 300) -> str:
    """Run ``al al-loop ARGS`` in a process; SIGKILL it as soon as ``marker`` appears in its
    log. Returns the output seen. With ``marker=None`` the run must finish by itself, with
    exit status 0."""
    cmd = [sys.executable, "-m", "al.cli", "al-loop", *args]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: list[str] = []
    deadline = time.time() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker is not None and marker in line:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return "".join(seen)
        if time.time() > deadline:
            proc.kill()
            pytest.fail("campaign did not reach " + str(marker) + "\n" + "".join(seen[-40:]))
    proc.wait(30)
    out = "".join(seen)
    if marker is not None:
        pytest.fail(f"campaign ended before {marker!r}:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def one_line_error(result: Result) -> str:
    """The single ``Error: ...`` line of a failed command (asserts there is nothing else)."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]
