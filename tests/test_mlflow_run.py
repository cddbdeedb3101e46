"""`mlflow run . -e train|eval --env-manager local`: the script attaches to the run mlflow created."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import PROJECT_ROOT, all_runs, clean_env

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out

TINY_PARAMS = [
    "-P",
    "total_steps=300",
    "-P",
    "learning_starts=250",
    "-P",
    "eval_freq=150",
    "-P",
    "eval_episodes=2",
    "-P",
    "preset=fast",
    "-P",
    "threads=1",
]


def mlflow_run(project: Path, store: str, *args: str):
    env = clean_env(store)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this venv's
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def copy_project(tmp_path: Path) -> Path:
    """mlflow run works in the project directory; a clone keeps checkpoints/ out of the repo. The
    working tree's code is copied over it: the tests run the code under test (from a clean checkout,
    the clone's own), and a run made from a dirty clone logs its diff."""
    project = tmp_path / "project"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(project)], check=True)
    for name in ("MLproject", "conda.yaml"):
        shutil.copy(PROJECT_ROOT / name, project)
    for name in ("harness", "entry_points"):
        shutil.rmtree(project / name)
        shutil.copytree(PROJECT_ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    return project


def test_mlflow_run_train_then_eval(store, tmp_path):
    project = copy_project(tmp_path)
    mlflow_run(project, store, "-e", "train", "-P", "her=yes", "-P", "seed=3", *TINY_PARAMS)
    (train_run,) = all_runs()
    assert train_run.info.status == "FINISHED"
    assert train_run.info.run_name == "sac_her_FetchReach-v4_seed3"
    params, tags = train_run.data.params, train_run.data.tags
    assert params["her"] == "yes"  # as mlflow run logged it; no "Changing param values" clash
    assert params["gamma"] == "0.95" and params["env_id"] == "FetchReach-v4"  # the resolved config fills the rest
    assert tags["harness.her"] == "true" and tags["harness.kind"] == "train"
    assert tags["mlflow.project.entryPoint"] == "train"
    history = mlflow.MlflowClient().get_metric_history(train_run.info.run_id, "eval/success_rate")
    assert [m.step for m in history] == [150, 300]
    assert (project / "checkpoints" / "sac_her_FetchReach-v4_seed3.zip").is_file()

    mlflow_run(project, store, "-e", "eval", "-P", f"ckpt={train_run.info.run_id}", "-P", "n_episodes=3")
    runs = {r.data.tags.get("harness.kind"): r for r in all_runs()}
    assert set(runs) == {"train", "eval"}
    eval_run = runs["eval"]
    assert eval_run.info.status == "FINISHED"
    assert eval_run.data.tags["harness.source_run_id"] == train_run.info.run_id
    assert eval_run.data.metrics["eval/n_episodes"] == 3
    assert runs["train"].data.tags["harness.evaluated"] == "true"
    assert runs["train"].data.metrics["eval/n_episodes"] == 3

    # the run mlflow run made re-makes identically
    from tests.conftest import run_cli

    proc = run_cli(["reproduce", train_run.info.run_id], tmp_path, store, timeout=600)
    assert f"# Reproduction of run {train_run.info.run_id}: **identical**" in proc.stdout
