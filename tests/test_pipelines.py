"""Pipelines: one parent run with child runs, reuse on re-run, SIGKILL then re-run, and Ray."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import mlflow
import pytest

from tests.conftest import all_runs, clean_env, run_cli

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out

TINY_PIPELINE = [
    "--preset",
    "fast",
    "--total-steps",
    "300",
    "--learning-starts",
    "250",
    "--eval-freq",
    "150",
    "--n-eval-episodes",
    "3",
]


def runs_by_kind(kind):
    return [r for r in all_runs() if r.data.tags.get("harness.kind") == kind]


def planned(parent):
    """What the pipeline run recorded it would do: {action: number of trainings}."""
    return {action: int(parent.data.params[f"planned_{action}"]) for action in ("train", "resume", "evaluate", "reuse")}


def test_reach_all_is_one_parent_run_and_rerunning_reuses_everything(store, tmp_path):
    first = run_cli(["reach-all", "--seeds", "0,1", "--workers", "2", *TINY_PIPELINE], tmp_path, store, timeout=600)
    (parent,) = runs_by_kind("pipeline")
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.pipeline"] == "reach-all"
    assert planned(parent) == {"train": 4, "resume": 0, "evaluate": 0, "reuse": 0}
    assert set(json.loads(parent.data.tags["harness.actions"]).values()) == {"train"}
    assert (parent.data.tags["harness.executor"], parent.data.tags["harness.workers"]) == ("local", "2")
    children = [r for r in all_runs() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    kinds = sorted(r.data.tags["harness.kind"] for r in children)
    assert kinds == ["compare"] + ["eval"] * 4 + ["train"] * 4
    assert all(r.info.status == "FINISHED" for r in children)
    trains = {r.info.run_name: r for r in children if r.data.tags["harness.kind"] == "train"}
    assert sorted(trains) == [
        "sac_FetchReach-v4_seed0",
        "sac_FetchReach-v4_seed1",
        "sac_her_FetchReach-v4_seed0",
        "sac_her_FetchReach-v4_seed1",
    ]
    assert all(r.data.tags["harness.torch_threads"] == "1" for r in trains.values())
    from harness.algorithms import resolve_device

    assert {r.data.tags["harness.device"] for r in trains.values()} == {resolve_device("auto")}  # the CPU here
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)}
    assert {
        "ch04_fetchreach-v4_report.md",
        "ch04_fetchreach-v4_comparison.png",
        "ch04_fetchreach-v4_comparison.json",
    } <= artifacts
    report = (tmp_path / "results" / "ch04_fetchreach-v4_report.md").read_text()
    assert report.startswith("# FetchReach-v4: SAC without and with HER, seeds 0, 1\n\n| Metric | No-HER | HER | Delta |")
    assert "| Success Rate |" in report and "](ch04_fetchreach-v4_comparison.png)\n" in report
    assert report.rstrip().endswith(f"| {trains['sac_her_FetchReach-v4_seed1'].info.run_id} |")  # the runs, last
    # the statistics and the chapter's verdict follow the table, in the report and on the parent run's page
    assert "IQM success [bootstrap 95% CI over seeds]" in report and "**Clear separation: " in report
    assert "**Clear separation: " in parent.data.tags["mlflow.note.content"]
    assert "Do-nothing floor of FetchReach-v4" in first.stdout
    table = first.stdout.split("Metric ", 1)[1].split("report:")[0]

    second = run_cli(["reach-all", "--seeds", "0,1", "--workers", "2", *TINY_PIPELINE], tmp_path, store, timeout=600)
    assert second.stdout.split("Metric ", 1)[1].split("report:")[0] == table
    assert len(runs_by_kind("train")) == 4 and len(runs_by_kind("pipeline")) == 2
    (again,) = [r for r in runs_by_kind("pipeline") if r.info.run_id != parent.info.run_id]
    assert planned(again) == {"train": 0, "resume": 0, "evaluate": 0, "reuse": 4}
    assert json.loads(again.data.tags["harness.actions"]) == {name: "reuse" for name in trains}


def test_ctrl_c_stops_the_pipeline_at_once_and_leaves_nothing_running(store, tmp_path):
    """Ctrl-C in the pipeline's terminal (SIGINT to its whole process group, workers included, which then
    get the pipeline's SIGTERM on top, as from a SIGTERM to the pipeline alone) stops the running
    trainings, marks them KILLED, and starts none of the queued ones. A worker that cannot end its run
    (here: stopped with SIGSTOP) is killed after 30 s and the pipeline marks its run KILLED itself."""
    import psutil

    args = [
        sys.executable,
        "-m",
        "entry_points.cli",
        "reach-all",
        "--seeds",
        "0,1",
        "--workers",
        "2",
        *TINY_PIPELINE,
        "--total-steps",
        "100000",
        "--eval-freq",
        "400",
    ]
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=clean_env(store),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's job: its own process group
        # as from a terminal: a background job inherits SIGINT ignored, and Python then installs no handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while time.time() < deadline and len([r for r in runs_by_kind("train") if r.data.metrics]) < 2:
        time.sleep(0.5)  # both workers are training
    workers = [p for p in psutil.Process(proc.pid).children() if "resource_tracker" not in " ".join(p.cmdline())]
    assert len(workers) == 2, [p.cmdline() for p in workers]
    workers[0].suspend()  # stuck: it will handle no signal
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    runs = all_runs()
    assert sorted(r.info.status for r in runs) == ["KILLED"] * 3, [(r.info.run_name, r.info.status) for r in runs]
    assert len(runs_by_kind("train")) == 2  # the queued two never started


def test_a_second_copy_of_a_running_pipeline_on_the_same_store_is_refused_from_any_directory(store, tmp_path):
    """The pipeline's lock once lived in its working directory: a copy started from another directory on
    the same store took the first one's live trainings for abandoned ones and both trained everything."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    args = ["reach-all", "--seeds", "0", "--workers", "1", *TINY_PIPELINE, "--total-steps", "100000"]
    first = subprocess.Popen(
        [sys.executable, "-m", "entry_points.cli", *args],
        cwd=first_dir,
        env=clean_env(store),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not [r for r in runs_by_kind("train") if r.info.status == "RUNNING"]:
        time.sleep(0.5)  # the first copy is training
    (parent,) = runs_by_kind("pipeline")
    second = run_cli(args, second_dir, store, check=False)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert re.fullmatch(
        re.escape(
            f"harness: error: this reach-all pipeline (key {parent.data.tags['harness.pipeline_key']}) is already "
            f"running on this store: pipeline run {parent.info.run_id}, pid {first.pid} on {socket.gethostname()} in "
            f"{first_dir} (lease renewed "
        )
        + r"\d+ s ago\); wait for it, or stop it",
        line,
    ), line
    (training,) = runs_by_kind("train")
    assert training.info.status == "RUNNING" and len(all_runs()) == 2  # the first copy's, untouched; nothing new
    first.terminate()
    first.communicate(timeout=120)
    assert sorted(r.info.status for r in all_runs()) == ["KILLED", "KILLED"]


def test_sigkill_at_any_moment_then_rerun_completes(store, tmp_path):
    args = [
        sys.executable,
        "-m",
        "entry_points.cli",
        "reach-all",
        "--seeds",
        "0",
        "--workers",
        "2",
        *TINY_PIPELINE,
        "--total-steps",
        "1200",
        "--eval-freq",
        "400",
        "--checkpoint-freq",
        "300",
    ]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=clean_env(store), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    resume_dir = tmp_path / "checkpoints" / "resume"
    deadline = time.time() + 300
    while time.time() < deadline and not any(resume_dir.glob("*/step_*[0-9]")):
        time.sleep(0.2)
    assert any(resume_dir.glob("*/step_*[0-9]")), "no resumable checkpoint was written"
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and its workers, mid-training
    proc.wait(timeout=30)
    assert any(r.info.status == "RUNNING" for r in all_runs())  # what a SIGKILL leaves behind

    rerun = run_cli(args[3:], tmp_path, store, timeout=600)
    assert "continuing pipeline run" in rerun.stdout
    runs = all_runs()
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    finished = [r for r in runs if r.data.tags.get("harness.kind") == "train" and r.info.status == "FINISHED"]
    assert sorted(r.info.run_name for r in finished) == ["sac_FetchReach-v4_seed0", "sac_her_FetchReach-v4_seed0"]
    (parent,) = runs_by_kind("pipeline")  # the same parent run, continued
    assert parent.info.status == "FINISHED"
    assert "resume" in json.loads(parent.data.tags["harness.actions"]).values()
    resumed = [r for r in finished if "harness.resumed_from_step" in r.data.tags]
    assert resumed, "no training was resumed from its checkpoint"
    client = mlflow.MlflowClient()
    for run in resumed:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/success_rate")]
        assert steps[:3] == [400, 800, 1200]  # the learning curve continues at the right steps
    assert (tmp_path / "results" / "ch04_fetchreach-v4_report.md").is_file()


def test_reach_all_through_ray(store, tmp_path):
    pytest.importorskip("ray", reason="Ray is part of the test extra: pip install -e '.[test]'")
    run_cli(["reach-all", "--seeds", "0", "--executor", "ray", "--workers", "2", *TINY_PIPELINE], tmp_path, store, timeout=600)
    (parent,) = runs_by_kind("pipeline")
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.executor"] == "ray"
    assert parent.data.tags["harness.workers"] == "2"
    trains = runs_by_kind("train")
    assert sorted(r.info.run_name for r in trains) == ["sac_FetchReach-v4_seed0", "sac_her_FetchReach-v4_seed0"]
    assert all(
        r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        and r.data.tags["harness.evaluated"] == "true"
        and r.data.tags["harness.torch_threads"] == "1"
        and r.data.tags["harness.niceness"] == "0"  # not Ray's default 15: the trainings are the work
        for r in trains
    )


def test_ablation_table_across_values(store, tmp_path):
    proc = run_cli(
        ["ablation", "--env", "FetchReach-v4", "--nsg-values", "2,4", "--seed", "0", *TINY_PIPELINE],
        tmp_path,
        store,
        timeout=600,
    )
    assert "IQM [bootstrap 95% CI]" in proc.stdout and "Do-nothing floor (zero actions" in proc.stdout
    (parent,) = runs_by_kind("pipeline")
    report = json.loads((tmp_path / "results" / "ch04_fetchreach-v4_ablation_nsg.json").read_text())
    assert sorted(report["rows"]) == ["2", "4"] and report["nsg_values"] == [2, 4]
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "ch04_fetchreach-v4_ablation_nsg.json",
        "ch04_fetchreach-v4_ablation_nsg.md",
        "ch04_fetchreach-v4_ablation_nsg.png",
    }
    markdown = (tmp_path / "results" / "ch04_fetchreach-v4_ablation_nsg.md").read_text()
    assert "](ch04_fetchreach-v4_ablation_nsg.png)" in markdown
    assert "| 2 |" in parent.data.tags["mlflow.note.content"] and "| 4 |" in parent.data.tags["mlflow.note.content"]
    (floor,) = runs_by_kind("floor")
    assert floor.data.tags["harness.env"] == "FetchReach-v4" and floor.info.status == "FINISHED"
    trains = runs_by_kind("train")
    assert sorted(r.info.run_name for r in trains) == ["sac_her_nsg2_FetchReach-v4_seed0", "sac_her_nsg4_FetchReach-v4_seed0"]
    assert sorted(r.data.params["n_sampled_goal"] for r in trains) == ["2", "4"]
    assert sorted(r.data.tags["harness.variant"] for r in trains) == ["nsg2", "nsg4"]
    assert {r.data.tags["mlflow.parentRunId"] for r in trains} == {parent.info.run_id}
    assert (tmp_path / "results" / "ch04_fetchreach-v4_ablation_nsg.png").is_file()
    assert (tmp_path / "results" / "ch04_sac_her_nsg2_fetchreach-v4_seed0_eval.json").is_file()


def test_experiment_runs_the_chapters_pipeline_on_any_fetch_task(store, tmp_path):
    # the fast preset's PickAndPlace section: 16 envs, so HER can sample once 800 steps (one episode per env) are in
    run_cli(
        [
            "experiment",
            "--env",
            "FetchPickAndPlace-v4",
            "--seeds",
            "0",
            "--workers",
            "2",
            *TINY_PIPELINE,
            "--total-steps",
            "1600",
            "--learning-starts",
            "800",
            "--eval-freq",
            "800",
        ],
        tmp_path,
        store,
        timeout=600,
    )
    (parent,) = runs_by_kind("pipeline")
    assert planned(parent)["train"] == 2
    assert parent.info.status == "FINISHED" and parent.data.tags["harness.pipeline"] == "experiment"
    assert parent.info.run_name == "experiment_FetchPickAndPlace-v4"
    trains = sorted(r.info.run_name for r in runs_by_kind("train"))
    assert trains == ["sac_FetchPickAndPlace-v4_seed0", "sac_her_FetchPickAndPlace-v4_seed0"]
    assert {(r.data.params["n_envs"], r.data.params["held_object_start"]) for r in runs_by_kind("train")} == {("16", "0.5")}
    (compare,) = runs_by_kind("compare")
    assert compare.data.tags["harness.env"] == "FetchPickAndPlace-v4"
    report = (tmp_path / "results" / "ch04_fetchpickandplace-v4_report.md").read_text()
    assert report.startswith("# FetchPickAndPlace-v4: SAC without and with HER, seeds 0")


def test_pipeline_bad_input(store, tmp_path):
    for args, expected in (
        (["ablation", "--nsg-values", "2,x"], "'2,x' is not a comma-separated list of integers"),
        (["reach-all", "--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1"),
        (["ablation", "--seed", "0", "--seeds", "1,2"], "give --seed or --seeds, not both"),
        (["experiment", "--env", "Pendulum-v1"], "--her needs a goal-conditioned env"),
        (["experiment", "--seeds", "0"], "Missing option '--env'"),
    ):
        proc = run_cli(args, tmp_path, store, check=False)
        assert (
            proc.returncode != 0
            and "Traceback" not in proc.stderr
            and expected in proc.stderr
            and len(proc.stderr.strip().splitlines()) == 1
        )
