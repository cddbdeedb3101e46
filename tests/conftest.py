"""Shared fixtures: every test gets its own working directory and SQLite MLflow store.

`make test` runs the suite on every core (pytest-xdist, ``-n auto --dist loadgroup``): each test goes to
whichever worker is free, except those marked ``xdist_group``, which share one worker: a module whose
module-scoped fixture trains (built once, on that worker), the tests that start Ray clusters (one at a
time), the tests that add worktrees to this checkout (they count them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Tiny budgets: real envs and real training, just short.
TINY = [
    "--preset",
    "fast",
    "--total-steps",
    "300",
    "--learning-starts",
    "100",
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


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh working directory and store; the in-process MLflow client points at it too."""
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
    from harness.tracking import prepare_store

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
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
