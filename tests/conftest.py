"""Shared fixtures: every test gets its own working directory and SQLite MLflow store.

`make test` runs the suite on every core (pytest-xdist, ``-n auto``): each test goes to whichever worker
is free, except the groups in ``SHARED_WORKER``, whose tests run one after another on one worker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Tests that must share a worker under pytest-xdist, by node id prefix (a module, or one test).
SHARED_WORKER = {
    # a module-scoped fixture that trains: built once, on the worker that runs the module
    "tests/test_cli_workflow.py": "cli_workflow",
    "tests/test_registry.py": "registry",
    "tests/test_her_lab.py": "her_lab",
    # reproductions add and remove worktrees of this checkout, which the dirty-tree test counts
    "tests/test_reproduce.py": "reproduce",
    "tests/test_mlflow_run.py": "reproduce",
    # Ray clusters (and a PostgreSQL server), one at a time
    "tests/test_stack.py": "ray",
    "tests/test_pipelines.py::test_reach_all_through_ray": "ray",
}


# The longest scopes (a few minutes each on 2 cores), handed out before the rest so that none of them
# is what one worker still runs at the end while the other waits.
LONGEST_FIRST = (
    "ray",
    "tests/test_accounts.py::test_another_accounts_planted_run_is_used_only_when_accepted",
    "tests/test_pipelines.py::test_sigkill_at_any_moment_then_rerun_completes",
    "cli_workflow",
    "tests/test_faults.py::test_sigkill_then_the_same_train_command_resumes_the_same_run_and_ends_as_if_never_killed",
    "reproduce",
    "tests/test_pipelines.py::test_experiment_runs_the_chapters_pipeline_on_any_fetch_task",
    "registry",
)


def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling, with the scopes of SHARED_WORKER, the longest handed out first; every
    other test is a scope of its own. (``--dist loadgroup`` would read xdist_group marks, but xdist 3.8
    cannot tag node ids under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class SharedWorkerScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for prefix, group in SHARED_WORKER.items():
                if nodeid == prefix or nodeid.startswith(prefix + "::"):
                    return group
            return nodeid

        def _assign_work_unit(self, node) -> None:
            for scope in reversed(LONGEST_FIRST):  # the first of them ends up at the head of the queue
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return SharedWorkerScheduling(config, log)


# Tiny budgets: real envs and real training, just short (50 gradient steps after 250 random ones).
TINY = [
    "--preset",
    "fast",
    "--total-steps",
    "300",
    "--learning-starts",
    "250",
    "--eval-freq",
    "150",
    "--eval-episodes",
    "2",
    "--threads",
    "1",
    "--no-progress",
]


def clean_env(store_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = store_uri
    return env


def run_cli(args: list[str], cwd: Path, store_uri: str, timeout: int = 300, check: bool = True):
    """Run `harness <args>` as a user would, in ``cwd`` against ``store_uri``."""
    proc = subprocess.run(
        [sys.executable, "-m", "entry_points.cli", *args],
        cwd=cwd,
        env=clean_env(store_uri),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"harness {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_in_process(
    args: list[str], cwd: Path, store_uri: str, check: bool = True, **extra_env: str
) -> subprocess.CompletedProcess:
    """Run `harness <args>` inside the test process, for set-up whose subject is not the process
    (a fixture's trainings and evaluations, a refusal's one line): it saves the ~5 s of imports a new
    interpreter pays.
    What the command changes in the process is put back: the working directory, the environment,
    MLflow's tracking URI and active experiment, the signal handlers, ``sys.argv`` (the run's command tag)."""
    import contextlib
    import io
    import signal

    import mlflow.tracking.fluent

    from entry_points.cli import cli
    from entry_points._common import run_command
    from harness import tracking

    saved_env, saved_cwd, saved_uri, saved_argv = dict(os.environ), Path.cwd(), mlflow.get_tracking_uri(), sys.argv
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    stdout, stderr = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update({**clean_env(store_uri), **extra_env})
    os.chdir(cwd)
    sys.argv = ["harness", *args]
    mlflow.set_tracking_uri(store_uri)
    mlflow.tracking.fluent._active_experiment_id = None  # a command picks its experiment by name
    tracking.ended_early.clear()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                run_command(cli, args)
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        mlflow.set_tracking_uri(saved_uri)
        mlflow.tracking.fluent._active_experiment_id = None
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
    proc = subprocess.CompletedProcess(["harness", *args], code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        raise AssertionError(f"harness {' '.join(args)} exited {code}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory) -> Path:
    """An empty SQLite store of this MLflow's schema, made once per test process by the harness's own
    :func:`~harness.stores.prepare_sqlite`: copying it takes milliseconds, making a schema seconds."""
    from harness.stores import prepare_sqlite

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    prepare_sqlite(path)
    return path


@pytest.fixture
def store(no_store, empty_store_file, tmp_path):
    """A fresh working directory with an empty store in it (as the first command there would make it); the
    in-process MLflow client points at it too."""
    shutil.copyfile(empty_store_file, tmp_path / "mlflow.db")
    return no_store


@pytest.fixture
def no_store(tmp_path, monkeypatch):
    """A fresh working directory whose store (``mlflow.db``) no command has made yet; the in-process MLflow
    client points at it too."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def all_runs(client=None):
    """Every run of the store the in-process client points at; none where no store file was made (a
    command refused before any store: making the schema here would cost seconds and show nothing)."""
    from harness.stores import prepare_store

    uri = mlflow.get_tracking_uri()
    if client is None and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    prepare_store()  # under the same lock as the CLIs: never race a subprocess creating the schema
    client = client or mlflow.MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A plain MLflow tracking server (no auth: it ignores the credentials) with proxied artifacts."""
    import requests

    from harness import server as harness_server

    port = free_port()
    base = tmp_path / "server"
    base.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{base / 'mlflow.db'}",
            "--artifacts-destination",
            str(base / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=harness_server.server_environment(),  # without MLflow's GenAI job runner, as the harness starts its own
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 120 s")
    yield port, base
    # SIGTERM, then SIGKILL after 2 s: uvicorn would wait for the test's idle keep-alive connections
    harness_server.stop_group(proc.pid, within_s=2)
    proc.wait(timeout=30)
