"""The MLflow glue, asked of a real SQLite store."""

import mlflow
import pytest
from stable_baselines3.common.logger import Logger

from harness import tracking
from harness.training import MLflowOutputFormat, thresholds_pending
from tests.conftest import all_runs

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out


def test_a_finished_run_carries_provenance(store):
    with tracking.tracked_run("my-run", {"harness.kind": "train"}, experiment="exp") as run:
        pass
    stored = mlflow.MlflowClient().get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "my-run"
    tags = stored.data.tags
    assert tags["harness.kind"] == "train"
    for key in (
        "harness.git_commit",
        "harness.git_dirty",
        "harness.command",
        "harness.cpu",
        "harness.host",
        "harness.version.python",
        "harness.version.torch",
        "harness.version.stable-baselines3",
        "harness.version.gymnasium-robotics",
        "harness.version.mujoco",
        "harness.version.mlflow",
    ):
        assert tags[key], key
    assert len(tags["harness.git_commit"]) == 40


@pytest.mark.parametrize(
    "error, status",
    [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED"), (tracking.Terminated("signal 15"), "KILLED")],
)
def test_a_run_never_stays_running(store, error, status):
    with pytest.raises(type(error)):
        with tracking.tracked_run("doomed", {}, experiment="exp"):
            raise error
    (run,) = all_runs()
    assert run.info.status == status
    assert mlflow.active_run() is None


def test_params_already_logged_by_mlflow_run_are_left_alone(store):
    with tracking.tracked_run("r", {}, experiment="exp") as run:
        mlflow.log_param("her", "yes")  # as `mlflow run -P her=yes` logs it
        tracking.log_params_once(run.info.run_id, {"her": True, "gamma": 0.95, "net_arch": (64, 64), "normalize_obs": False})
    params = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    assert params == {"her": "yes", "gamma": "0.95", "net_arch": "[64, 64]", "normalize_obs": "false"}


def test_sb3_logger_keys_reach_mlflow_unchanged_at_env_steps(store):
    with tracking.tracked_run("r", {}, experiment="exp") as run:
        writer = MLflowOutputFormat(run.info.run_id)
        logger = Logger(folder=None, output_formats=[writer])
        for step in (100, 200):
            logger.record("rollout/success_rate", step / 1000)
            logger.record("train/actor_loss", -1.5)
            logger.record("time/fps", 123)
            logger.record("eval/skipped_in_mlflow", 1.0, exclude="mlflow")
            logger.record("note", "a string is not a metric")
            logger.dump(step)
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "rollout/success_rate")
    assert [(m.step, m.value) for m in history] == [(100, 0.1), (200, 0.2)]
    metrics = client.get_run(run.info.run_id).data.metrics
    assert set(metrics) == {"rollout/success_rate", "train/actor_loss", "time/fps"}
    assert writer.latest["time/fps"] == 123.0


def test_a_run_started_inside_a_reopened_run_goes_to_its_experiment(store):
    """A continued pipeline reopens its parent run by id; its compare run, started inside, once went to
    MLflow's "Default" experiment."""
    with tracking.tracked_run("pipeline", {"harness.kind": "pipeline"}, "mine") as first:
        parent_id, experiment_id = first.info.run_id, first.info.experiment_id
    mlflow.set_experiment("Default")  # a new process: no experiment chosen yet
    with tracking.tracked_run("pipeline", {"harness.kind": "pipeline"}, "mine", run_id=parent_id):
        with tracking.tracked_run("compare", {"harness.kind": "compare"}) as child:
            pass
    assert child.info.experiment_id == experiment_id != "0"


def test_run_id_lookup(store):
    from harness.checkpoints import looks_like_run_id

    assert looks_like_run_id("0123456789abcdef0123456789abcdef")
    assert not looks_like_run_id("checkpoints/x.zip")
    with pytest.raises(tracking.HarnessError, match="no MLflow run with id 'ffffffffffffffffffffffffffffffff'"):
        tracking.get_run("f" * 32)


def test_training_runs_log_system_metrics_unless_told_not_to(store, tmp_path):
    """CPU and memory next to the learning curves (#17); --no-system-metrics leaves them out."""
    import subprocess
    import sys

    from tests.conftest import TINY, all_runs, clean_env

    env = {**clean_env(store), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}  # a tiny run lasts seconds, not 10
    outputs = [
        subprocess.run(
            [sys.executable, "-m", "entry_points.cli", "train", "--seed", seed, *flags, *TINY],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for seed, flags in (("0", []), ("1", ["--no-system-metrics"]))
    ]
    assert all(proc.returncode == 0 for proc in outputs), [proc.stderr for proc in outputs]
    assert "system_metrics" not in outputs[0].stderr  # MLflow's sampler says nothing on the console
    by_seed = {r.data.tags["harness.seed"]: r for r in all_runs()}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(by_seed["0"].data.metrics)
    assert not [key for key in by_seed["1"].data.metrics if key.startswith("system/")]


def test_searches_and_compare_see_past_mlflows_first_page_of_1000_runs(store, tmp_path):
    """MLflow returns 1,000 runs per request; the harness's one search pages through all of them, so
    `compare` still finds a chapter run that 1,000 newer ablation-variant runs of the same
    (env, algo, HER, seed) push off the first page."""
    from harness import tracking
    from harness.run_schema import RunIdentity
    from tests.conftest import run_cli

    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment(tracking.DEFAULT_EXPERIMENT)

    def finished_run(her: bool, variant: str = "", **metrics):
        identity = RunIdentity("FetchReach-v4", "sac", her, 0, variant)
        run = client.create_run(
            experiment_id, run_name=identity.name, tags={**identity.tags("train"), "harness.evaluated": "true"}
        )
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, f"eval/{key}", value, step=300)
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    scores = {"success_rate": 0.5, "mean_return": -30.0, "final_distance": 0.05}
    chapter = {her: finished_run(her, **scores) for her in (False, True)}
    for _ in range(tracking.SEARCH_PAGE + 5):
        finished_run(True, variant="nsg4")
    her_runs = tracking.search_runs(
        {"harness.kind": "train", **RunIdentity("FetchReach-v4", "sac", True, 0).search_tags()},
        [experiment_id],
        status="FINISHED",
    )
    assert len(her_runs) == tracking.SEARCH_PAGE + 6 and her_runs[-1].info.run_id == chapter[True]
    run_cli(["compare", "--env", "FetchReach-v4", "--seeds", "0"], tmp_path, store)
    import json

    from harness.comparison import comparison_path, condition_key

    report = json.loads((tmp_path / comparison_path("FetchReach-v4")).read_text())
    assert {her: report["conditions"][condition_key(her)]["run_ids"] for her in (False, True)} == {
        False: [chapter[False]],
        True: [chapter[True]],
    }


def test_a_resumed_run_reports_again_the_thresholds_it_reached_after_its_checkpoint():
    logged = {"eval/steps_to_50": 200_000, "eval/steps_to_90": 660_000, "eval/success_rate": 0.9}
    assert thresholds_pending({}, 0) == [0.5, 0.9]
    assert thresholds_pending(logged, 700_000) == []  # both reached before the checkpoint it resumes from
    assert thresholds_pending(logged, 600_000) == [0.9]  # 90% came after it: those steps are done again
