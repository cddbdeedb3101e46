"""The chapter's workflow through the real `harness` CLI: train, eval, compare; then ask MLflow what happened."""

import json
from pathlib import Path

import mlflow
import pytest

from tests.conftest import TINY, cli_in_process, run_cli

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out

SEEDS = (0, 1)
ENV = "FetchReach-v4"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """Train no-HER and HER for two seeds, evaluate each checkpoint, compare."""
    cwd = tmp_path_factory.mktemp("workflow")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    out = {"cwd": cwd, "uri": uri, "train": {}, "eval": {}}
    for her in ("false", "true"):
        for seed in SEEDS:
            args = ["train", "--env", ENV, "--her", her, "--seed", str(seed), *TINY]
            out["train"][her, seed] = cli_in_process(args, cwd, uri)
    for her in ("false", "true"):
        for seed in SEEDS:
            name = f"sac{'_her' if her == 'true' else ''}_{ENV}_seed{seed}"
            args = ["eval", "--ckpt", f"checkpoints/{name}.zip", "--n-episodes", "4"]
            out["eval"][her, seed] = cli_in_process(args, cwd, uri)
    out["compare"] = run_cli(["compare", "--env", ENV, "--seeds", "0,1"], cwd, uri)  # what a user's shell shows
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    out["runs"] = client.search_runs(ids)
    out["client"] = client
    yield out
    mlflow.set_tracking_uri(None)


def train_runs(workflow):
    return {r.info.run_name: r for r in workflow["runs"] if r.data.tags.get("harness.kind") == "train"}


def test_one_finished_run_per_training_named_like_the_checkpoint(workflow):
    runs = train_runs(workflow)
    assert sorted(runs) == sorted(f"sac{h}_{ENV}_seed{s}" for h in ("", "_her") for s in SEEDS)
    assert all(r.info.status == "FINISHED" for r in workflow["runs"])
    # 4 trainings + 1 compare + the env's do-nothing floor; eval logs into the training runs
    assert len(workflow["runs"]) == 6


def test_params_are_the_resolved_config_and_tags_identify_the_run(workflow):
    run = train_runs(workflow)[f"sac_her_{ENV}_seed1"]
    params = run.data.params
    assert params["her"] == "true" and params["seed"] == "1" and params["env_id"] == ENV
    assert params["total_steps"] == "300" and params["learning_starts"] == "250"
    # from the fast preset, never typed on the command line:
    assert params["gamma"] == "0.95" and params["tau"] == "0.05" and params["net_arch"] == "[256, 256]"
    assert params["random_action_share"] == "0.0" and params["random_action_repeat"] == "1"
    assert params["critic_layer_norm"] == "false"
    tags = run.data.tags
    assert {
        k: tags[k]
        for k in (
            "harness.env",
            "harness.her",
            "harness.seed",
            "harness.algo",
            "harness.n_sampled_goal",
            "harness.preset",
            "harness.kind",
        )
    } == {
        "harness.env": ENV,
        "harness.her": "true",
        "harness.seed": "1",
        "harness.algo": "sac",
        "harness.n_sampled_goal": "4",
        "harness.preset": "fast",
        "harness.kind": "train",
    }
    assert "train --env FetchReach-v4 --her true --seed 1 --preset fast" in tags["harness.command"]
    assert tags["harness.evaluated"] == "true"
    # what the arithmetic ran on: the fast preset's precision 'auto' resolved for this CPU
    import torch

    from harness.algorithms import native_bf16

    native = native_bf16("cpu")
    assert params["precision"] == "auto"
    assert tags["harness.precision"] == ("bf16" if native else "fp32")
    assert (tags["harness.native_bf16"], tags["harness.cpu_capability"]) == (
        str(native).lower(),
        torch.backends.cpu.get_cpu_capability(),
    )
    assert tags["harness.torch_threads"] == "1" and tags["harness.device"] == "cpu"


def test_metrics_are_logged_by_env_step(workflow):
    client = workflow["client"]
    run = train_runs(workflow)[f"sac_her_{ENV}_seed0"]
    for key in (
        "rollout/success_rate",
        "rollout/ep_rew_mean",
        "train/ent_coef",
        "train/actor_loss",
        "train/critic_loss",
        "time/fps",
        "eval/success_rate",
        "eval/mean_return",
        "eval/final_distance",
    ):
        assert key in run.data.metrics, key
    curve = client.get_metric_history(run.info.run_id, "eval/success_rate")
    steps = [m.step for m in curve]
    assert steps[:2] == [150, 300]  # periodic evaluation during training
    assert steps[-1] == 300 and len(steps) == 3  # harness eval adds the 4-episode score at the final step
    rollout_steps = [m.step for m in client.get_metric_history(run.info.run_id, "rollout/success_rate")]
    assert rollout_steps == sorted(rollout_steps) and rollout_steps[-1] <= 300 and rollout_steps[0] > 0


def test_artifacts_and_the_chapter_file_layout(workflow):
    client, cwd = workflow["client"], workflow["cwd"]
    run = train_runs(workflow)[f"sac_her_{ENV}_seed0"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "meta.json", "config.json", "eval"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == [f"checkpoint/sac_her_{ENV}_seed0.zip"]
    meta = json.loads((cwd / "checkpoints" / f"sac_her_{ENV}_seed0.meta.json").read_text())
    assert meta["run_id"] == run.info.run_id and meta["num_timesteps"] == 300
    assert meta["config"]["her"] is True and meta["versions"]["mujoco"] == "3.11.0"
    assert meta["wall_time_s"] > 0 and "eval/success_rate" in meta["final_metrics"]
    assert (cwd / "runs" / "sac_her_nsg4" / ENV / "seed0").is_dir()
    assert (cwd / "runs" / "sac_noher" / ENV / "seed1").is_dir()


def test_eval_writes_the_chapter_result_file_and_logs_to_the_training_run(workflow):
    cwd = workflow["cwd"]
    result = json.loads((cwd / "results" / "ch04_sac_her_fetchreach-v4_seed1_eval.json").read_text())
    assert result["n_episodes"] == 4 and result["deterministic"] is True
    for key in ("success_rate", "success_rate_std", "mean_return", "mean_return_std", "final_distance", "final_distance_std"):
        assert isinstance(result[key], float)
    run = train_runs(workflow)[f"sac_her_{ENV}_seed1"]
    assert result["run_id"] == run.info.run_id
    assert run.data.metrics["eval/success_rate"] == result["success_rate"]
    assert run.data.metrics["eval/n_episodes"] == 4
    assert (cwd / "results" / "ch04_sac_fetchreach-v4_seed0_eval.json").is_file()
    assert "wrote results/ch04_sac_her_fetchreach-v4_seed1_eval.json" in workflow["eval"]["true", 1].stdout


def test_compare_prints_the_chapter_table_from_mlflow(workflow):
    stdout = workflow["compare"].stdout
    lines = stdout.splitlines()
    assert lines[0] == "Metric                    |               No-HER |                  HER |        Delta"
    assert lines[1] == "-" * len(lines[0])
    assert [line.split("|")[0].strip() for line in lines[2:5]] == ["Success Rate", "Return (mean)", "Final Distance"]
    report = json.loads((workflow["cwd"] / "results" / "ch04_fetchreach-v4_comparison.json").read_text())
    runs = train_runs(workflow)
    her_ids = [runs[f"sac_her_{ENV}_seed{s}"].info.run_id for s in SEEDS]
    assert report["conditions"]["her"]["run_ids"] == her_ids
    values = [runs[f"sac_her_{ENV}_seed{s}"].data.metrics["eval/success_rate"] for s in SEEDS]
    assert report["conditions"]["her"]["summary"]["eval/success_rate"]["mean"] == pytest.approx(sum(values) / 2)
    assert report["conditions"]["her"]["summary"]["eval/success_rate"]["n"] == 2
    # what a reader needs to say which code, budget and CPU each figure is for, and BENCHMARKS.md's row of it
    made = report["conditions"]["her"]["runs"][0]
    tags = runs[f"sac_her_{ENV}_seed{SEEDS[0]}"].data.tags
    assert (
        made["run_id"] == her_ids[0] and made["seed"] == SEEDS[0] and made["total_steps"] == int(tags["harness.total_steps"])
    )
    assert (made["cpu"], made["precision"], made["code_version"]) == (
        tags["harness.cpu"],
        tags["harness.precision"],
        tags["harness.code_version"],
    )
    assert made["minutes"] is not None and made["preset"] == "fast"
    from bench.results import row

    rendered = row(report).split(" | ")
    assert rendered[0] == f"| {ENV}" and rendered[2] == ", ".join(f"{100 * v:.0f}%" for v in values)
    (compare_run,) = [r for r in workflow["runs"] if r.data.tags.get("harness.kind") == "compare"]
    artifacts = {a.path for a in workflow["client"].list_artifacts(compare_run.info.run_id)}
    assert artifacts == {f"ch04_fetchreach-v4_comparison.{suffix}" for suffix in ("md", "json", "png")}
    logged = mlflow.artifacts.load_dict(f"runs:/{compare_run.info.run_id}/ch04_fetchreach-v4_comparison.json")
    assert logged["compare_run_id"] == compare_run.info.run_id and logged["table"] == "\n".join(lines[:5])
    note = compare_run.data.tags["mlflow.note.content"]
    assert note.startswith(f"# {ENV}: SAC without and with HER\n\n| Metric | No-HER | HER | Delta |")
    assert "**Clear separation: " in note
    assert "delta/success_rate" in compare_run.data.metrics


def test_eval_accepts_a_run_id_and_a_runs_uri(workflow):
    run = train_runs(workflow)[f"sac_her_{ENV}_seed0"]
    for ckpt in (run.info.run_id, f"runs:/{run.info.run_id}/checkpoint"):
        proc = cli_in_process(["eval", "--ckpt", ckpt, "--n-episodes", "2"], workflow["cwd"], workflow["uri"])
        assert f"logged eval/* to training run {run.info.run_id}" in proc.stdout


def test_compare_names_exactly_what_is_missing(workflow):
    proc = run_cli(["compare", "--env", ENV, "--seeds", "0,1,7"], workflow["cwd"], workflow["uri"], check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "(env=FetchReach-v4, her=false, seed=7), (env=FetchReach-v4, her=true, seed=7)" in proc.stderr


def test_eval_renders_videos_and_logs_them(workflow):
    import imageio.v2 as imageio

    run = train_runs(workflow)[f"sac_{ENV}_seed1"]
    proc = run_cli(["eval", "--ckpt", run.info.run_id, "--n-episodes", "2", "--video", "1"], workflow["cwd"], workflow["uri"])
    video = workflow["cwd"] / "results" / "videos" / "ch04_sac_fetchreach-v4_seed1_ep0.mp4"
    assert f"wrote {video.relative_to(workflow['cwd'])}" in proc.stdout
    frames = imageio.mimread(video)
    assert len(frames) == 51 and frames[0].shape == (480, 480, 3)  # the reset frame + 50 steps
    assert 20 < frames[25].mean() < 235  # a rendered scene, not a blank frame
    artifacts = [a.path for a in workflow["client"].list_artifacts(run.info.run_id, "videos")]
    assert artifacts == ["videos/ch04_sac_fetchreach-v4_seed1_ep0.mp4"]
    bad = run_cli(
        ["eval", "--ckpt", run.info.run_id, "--n-episodes", "2", "--video", "3"], workflow["cwd"], workflow["uri"], check=False
    )
    assert bad.returncode == 1 and "--video must be between 0 and --n-episodes (2), got 3" in bad.stderr


def chromium(url: str, profile, screenshot=None, width: int = 1600) -> str:
    """The page as headless chromium renders it after its JavaScript ran (flags: the env notes'); with
    ``screenshot``, a PNG of it instead (what a person sees). Tables render only the columns the window's
    ``width`` shows."""
    import shutil
    import subprocess

    args = [
        shutil.which("chromium"),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},1000",
        "--virtual-time-budget=40000",
    ]
    args += [f"--screenshot={screenshot}", url] if screenshot else ["--dump-dom", url]
    return subprocess.run(args, capture_output=True, text=True, timeout=180).stdout


def visible_text(dom: str) -> str:
    import re

    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.browser
def test_mlflow_ui_lands_on_her_vs_no_her(workflow, tmp_path):
    """`harness ui` prints the view's link; the page shows the runs grouped HER / no-HER with the chapter's
    columns, and the chart of eval/success_rate per condition; the compare run's page shows the verdict."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import clean_env

    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (make browser installs it as root)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "ui.log"
    with open(log, "w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "entry_points.cli", "ui", "--port", str(port)],
            cwd=workflow["cwd"],
            env=clean_env(workflow["uri"]),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        runs = train_runs(workflow)
        run = runs[f"sac_her_{ENV}_seed0"]
        experiment = run.info.experiment_id
        chart_url = (
            f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning"
            "&viewStateShareKey=her-vs-no-her&compareRunsMode=CHART"
        )
        assert f"ch04-her-sparse-reach-push: {chart_url}" in log.read_text()  # the link `harness ui` prints
        for stdout in (workflow["train"]["true", 0].stdout, workflow["compare"].stdout):
            assert f"MLflow UI (served by: harness ui): {chart_url.replace(base, 'http://127.0.0.1:5000')}" in stdout

        table = visible_text(chromium(chart_url.replace("&compareRunsMode=CHART", ""), tmp_path / "p1"))
        assert "Group: HER 2" in table and "Group: no-HER 2" in table, "training runs grouped by condition"
        for column in ("eval/success_rate", "harness.condition", "harness.seed", "harness.algo", "harness.env", "total_steps"):
            assert column in table, column
        assert all(name in table for name in runs) and "4 matching runs" in table  # training runs only
        assert "HER vs no-HER" in table  # the view, named in the page's view picker

        chart = visible_text(chromium(chart_url, tmp_path / "p2"))
        # one averaged eval/success_rate curve per condition, against env steps
        assert "HER (eval/success_rate)" in chart and "no-HER (eval/success_rate)" in chart and "Step" in chart

        (compare_run,) = [r for r in workflow["runs"] if r.data.tags.get("harness.kind") == "compare"]
        page = visible_text(
            chromium(
                f"{base}/#/experiments/{compare_run.info.experiment_id}/runs/"
                f"{compare_run.info.run_id}?workflowType=machine_learning",
                tmp_path / "p3",
            )
        )
        assert "Clear separation:" in page and "Success Rate" in page, "the compare run's description"
        overview = visible_text(chromium(f"{base}/#/experiments/{experiment}/runs/{run.info.run_id}", tmp_path / "p4"))
        assert "harness.env" in overview and "harness.her" in overview and "harness.git_commit" in overview
        charts = visible_text(
            chromium(f"{base}/#/experiments/{experiment}/runs/{run.info.run_id}/model-metrics", tmp_path / "p5")
        )
        # The metric chart sections, named by prefix with their chart counts (eval/* holds 7 charts).
        assert "eval (7)" in charts and "rollout (" in charts and "train (" in charts
        # The Models tab: every training's evaluated checkpoints as logged models, with their eval metrics.
        models_url = f"{base}/#/experiments/{experiment}/models?workflowType=machine_learning"
        models = visible_text(chromium(models_url, tmp_path / "p8", width=4000))
        assert all(f"{name}-step{step}" in models for name in runs for step in (150, 300)), models
        assert "eval/success_rate" in models and "eval/mean_return" in models
        if os.environ.get("HARNESS_UI_SCREENSHOTS"):  # refresh docs/'s screenshots: a folder to write them to
            out = Path(os.environ["HARNESS_UI_SCREENSHOTS"])
            chromium(chart_url, tmp_path / "p6", screenshot=out / "ui-her-vs-no-her.png")
            chromium(chart_url.replace("&compareRunsMode=CHART", ""), tmp_path / "p7", screenshot=out / "ui-runs.png")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_compare_and_register_default_to_the_algo_that_was_trained(store, tmp_path):
    """The fast preset trains Push with ddpg: compare/register find those runs without --algo."""
    for her in ("false", "true"):
        cli_in_process(["train", "--env", ENV, "--her", her, "--algo", "ddpg", *TINY], tmp_path, store)
        name = f"ddpg{'_her' if her == 'true' else ''}_{ENV}_seed0"
        cli_in_process(["eval", "--ckpt", f"checkpoints/{name}.zip", "--n-episodes", "2"], tmp_path, store)
    run_cli(["compare", "--env", ENV, "--seeds", "0"], tmp_path, store)
    report = json.loads((tmp_path / "results" / "ch04_fetchreach-v4_comparison.json").read_text())
    assert report["algo"] == "ddpg" and report["conditions"]["her"]["summary"]["eval/success_rate"]["n"] == 1
    sac = run_cli(["compare", "--env", ENV, "--seeds", "0", "--algo", "sac"], tmp_path, store, check=False)
    assert (
        sac.returncode == 1
        and "no finished, evaluated sac training run for (env=FetchReach-v4, her=false, seed=0)" in sac.stderr
    )
    registered = run_cli(["register", "--env", ENV], tmp_path, store)
    assert "registered ch04-ddpg-her-FetchReach-v4 version 1" in registered.stdout


def test_compare_adds_the_statistics_the_floor_and_the_verdict(workflow):
    stdout = workflow["compare"].stdout
    table_end = stdout.index("Final Distance")
    assert stdout.index("Per seed") > table_end  # the chapter's table comes first, unchanged
    for text in (
        "IQM success [bootstrap 95% CI over seeds]",
        "Pooled episodes [Wilson 95% CI]",
        "Env steps to 90%",
        "Do-nothing floor of FetchReach-v4",
        "Probability of improvement",
        "Mann-Whitney U",
    ):
        assert text in stdout, text
    report = json.loads((workflow["cwd"] / "results" / "ch04_fetchreach-v4_comparison.json").read_text())
    verdict = report["statistics"]["separation"]
    assert ("**Clear separation: yes**" if verdict["clear_separation"] else "**Clear separation: no**") in stdout
    runs = train_runs(workflow)
    her = report["statistics"]["conditions"]["her"]
    assert her["success"] == [runs[f"sac_her_{ENV}_seed{s}"].data.metrics["eval/success_rate"] for s in SEEDS]
    assert her["episodes"] == [4, 4] and her["pooled_episodes"] == 8
    assert verdict["difference_points"] == pytest.approx(100 * report["delta"]["eval/success_rate"])

    (compare_run,) = [r for r in workflow["runs"] if r.data.tags.get("harness.kind") == "compare"]
    tags, metrics = compare_run.data.tags, compare_run.data.metrics
    assert tags["harness.clear_separation"] == ("yes" if verdict["clear_separation"] else "no")
    assert tags["harness.separation_consistent"] == ("yes" if verdict["consistent"] else "no")
    assert "Clear separation" in tags["mlflow.note.content"]  # the run's description in the UI
    assert metrics["separation/difference_points"] == pytest.approx(verdict["difference_points"])
    assert metrics["separation/clear"] == float(verdict["clear_separation"])
    assert metrics["test/p_value"] == pytest.approx(report["statistics"]["tests"]["p_value"])
    assert metrics["her/success_iqm"] == pytest.approx(her["iqm"])

    (floor,) = [r for r in workflow["runs"] if r.data.tags.get("harness.kind") == "floor"]
    assert floor.info.status == "FINISHED" and floor.data.tags["harness.env"] == ENV
    assert floor.data.tags["harness.eval_episodes"] == "4"
    assert metrics["floor/success_rate"] == floor.data.metrics["eval/success_rate"]
    assert report["statistics"]["floor"]["run_id"] == floor.info.run_id


def test_the_floor_is_measured_once_and_reused(workflow):
    again = run_cli(["compare", "--env", ENV, "--seeds", "0,1"], workflow["cwd"], workflow["uri"])
    client = workflow["client"]
    ids = [e.experiment_id for e in client.search_experiments()]
    floors = client.search_runs(ids, filter_string="tags.\"harness.kind\" = 'floor'")
    assert len(floors) == 1
    report = json.loads((workflow["cwd"] / "results" / "ch04_fetchreach-v4_comparison.json").read_text())
    assert report["statistics"]["floor"]["run_id"] == floors[0].info.run_id
    assert report["statistics"]["floor"]["measured"] is False
    assert floors[0].info.run_id in again.stdout


def test_training_logs_when_eval_success_first_reached_50_and_90_percent(store, tmp_path):
    # The fast preset's DDPG + HER reaches 95% on FetchReach-v4 within 3,000 steps (seeds 0-2).
    cli_in_process(
        [
            "train",
            "--env",
            ENV,
            "--her",
            "--preset",
            "fast",
            "--algo",
            "ddpg",
            "--total-steps",
            "3000",
            "--eval-freq",
            "500",
            "--eval-episodes",
            "10",
            "--threads",
            "1",
            "--no-progress",
        ],
        tmp_path,
        store,
    )
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    curve = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/success_rate"))
    for percent in (50, 90):
        first = next(step for step, value in curve if value >= percent / 100)
        assert run.data.metrics[f"eval/steps_to_{percent}"] == first
        (logged,) = client.get_metric_history(run.info.run_id, f"eval/steps_to_{percent}")  # once, not every eval
        assert logged.step == first
        minutes = run.data.metrics[f"eval/minutes_to_{percent}"]
        assert 0 < minutes <= (run.info.end_time - run.info.start_time) / 60_000
    # A DDPG zip on its own (no meta.json): the zip's TD3 policy says it is the HER paper's DDPG, not SAC
    import shutil

    shutil.copy(tmp_path / "checkpoints" / f"ddpg_her_{ENV}_seed0.zip", tmp_path / "bare.zip")
    bare = run_cli(["eval", "--ckpt", "bare.zip", "--env", ENV, "--n-episodes", "2"], tmp_path, store)
    assert "Traceback" not in bare.stderr
    report = json.loads((tmp_path / "results" / f"ch04_ddpg_her_{ENV.lower()}_seed0_eval.json").read_text())
    assert report["n_episodes"] == 2 and report["algo"] == "ddpg"


def test_her_on_a_dense_env_warns_that_it_needs_the_sparse_reward(store, tmp_path):
    proc = cli_in_process(["train", "--env", "FetchReachDense-v4", "--her", *TINY], tmp_path, store)
    assert "harness: warning: --her on FetchReachDense-v4: HER needs the sparse reward" in proc.stderr
    assert "FetchReach-v4" in proc.stderr
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "HER needs the sparse reward" in run.data.tags["harness.warnings"]
    sparse = cli_in_process(["train", "--env", ENV, "--her", *TINY], tmp_path, store)
    assert "warning" not in sparse.stderr


def test_eval_on_another_env_never_replaces_the_runs_evaluation(workflow):
    cwd, client = workflow["cwd"], workflow["client"]
    run = train_runs(workflow)[f"sac_her_{ENV}_seed0"]

    def history():
        return [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, "eval/success_rate")]

    before = history()
    own_result = (cwd / "results" / "ch04_sac_her_fetchreach-v4_seed0_eval.json").read_text()
    proc = run_cli(
        ["eval", "--ckpt", f"checkpoints/sac_her_{ENV}_seed0.zip", "--env", "FetchReachDense-v4", "--n-episodes", "2"],
        cwd,
        workflow["uri"],
    )
    assert "trained on FetchReach-v4, scored on FetchReachDense-v4: not logged" in proc.stdout
    assert history() == before
    assert (cwd / "results" / "ch04_sac_her_fetchreach-v4_seed0_eval.json").read_text() == own_result
    other = json.loads((cwd / "results" / "ch04_sac_her_fetchreach-v4_seed0_on_fetchreachdense-v4_eval.json").read_text())
    assert other["env_id"] == "FetchReachDense-v4" and other["trained_on"] == ENV and other["n_episodes"] == 2
