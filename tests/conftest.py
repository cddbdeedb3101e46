"""Shared fixtures: every test gets its own working directory and SQLite MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
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
    import harness.tracking

    monkeypatch.setattr(harness.tracking, "_store_ready", False)
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
