"""The benchmark scripts run and print their figures (tiny budgets; the figures themselves are in BENCHMARKS.md)."""

import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from harness.config import resolve_config
from tests.conftest import PROJECT_ROOT, TINY, all_runs, clean_env, cli_in_process

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out


def run_bench(script, args, cwd, uri, timeout=600):
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / script), *args],
        cwd=cwd,
        env=clean_env(uri),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()


def test_throughput_prints_the_three_figures_and_the_speedup(store, tmp_path):
    lines = run_bench(
        "throughput.py", ["--steps", "100", "--warmup", "100", "--rounds", "2", "--threads", "1"], tmp_path, store
    )
    assert [line.split(":")[0].strip() for line in lines[1:3]] == ["round 1", "round 2"]
    assert [line[:3] for line in lines[3:6]] == ["(a)", "(b)", "(c)"]
    ratios = sorted(float(line.rsplit("ratio ", 1)[1]) for line in lines[1:3])
    assert lines[-1].startswith("equal-config speedup: ")
    assert abs(float(lines[-1].split(": ")[1]) - sum(ratios) / 2) <= 0.011  # the median of two rounds
    runs = all_runs()
    assert sorted(r.data.tags["harness.variant"] for r in runs) == ["bench-chapter"] * 2 + ["bench-fast"]
    assert {r.info.run_name for r in runs if r.data.tags["harness.variant"] == "bench-chapter"} == {
        "sac_her_bench-chapter_FetchPush-v4_seed0"
    }
    assert all(r.info.status == "FINISHED" for r in runs)
    fast_algo = resolve_config("fast", "FetchPush-v4", {"her": True}).algo
    assert {r.data.tags["harness.algo"] for r in runs if r.data.tags["harness.variant"] == "bench-fast"} == {fast_algo}
    assert {r.data.tags["harness.kind"] for r in runs} == {"bench"}  # compare/register never pick them up


def test_tracking_overhead_prints_the_ratio(store, tmp_path):
    lines = run_bench("tracking_overhead.py", ["--env", "FetchReach-v4", "--steps", "200", "--repeats", "1"], tmp_path, store)
    # the repeat's two times and its tracked run; the ratio is the best tracked over the best untracked
    repeats = [re.fullmatch(r"repeat (\d): untracked ([\d.]+)s, tracked ([\d.]+)s \(run (\w{32})\)", lines[1])]
    assert all(repeats), lines
    plain, logged = [float(m[2]) for m in repeats], [float(m[3]) for m in repeats]
    assert lines[2] == f"best untracked {min(plain):.1f}s, best tracked {min(logged):.1f}s"
    assert lines[-1].startswith("tracking overhead ratio: ")
    ratio = float(lines[-1].split(": ")[1])
    low, high = (min(logged) - 0.05) / (min(plain) + 0.05), (min(logged) + 0.05) / (min(plain) - 0.05)  # 0.1 s rounding
    assert low <= ratio <= high
    runs = all_runs()
    assert sorted(r.info.run_id for r in runs) == sorted(m[4] for m in repeats)
    assert all(r.info.status == "FINISHED" and r.data.params["total_steps"] == "200" for r in runs)


def test_time_to_success_reads_learning_curves_from_mlflow(store, tmp_path):
    cli_in_process(["train", "--env", "FetchReach-v4", "--her", *TINY], tmp_path, store)
    lines = run_bench(
        "time_to_success.py", ["--env", "FetchReach-v4", "--algo", "sac", "--plot", "curve.png"], tmp_path, store
    )
    assert "steps@50%" in lines[0] and "min@90%" in lines[0]
    row = lines[1].split()
    assert row[0] == "sac_her_FetchReach-v4_seed0" and row[2] == "FINISHED" and row[3] == "300"
    (run,) = all_runs()
    curve = MlflowClient().get_metric_history(run.info.run_id, "eval/success_rate")
    assert [m.step for m in sorted(curve, key=lambda m: m.step)] == [150, 300]
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    missing = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "time_to_success.py"), "--env", "FetchSlide-v4"],
        cwd=tmp_path,
        env=clean_env(store),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0 and "no training runs match env=FetchSlide-v4" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_recipes_prints_each_precision_against_the_machines_limit(tmp_path):
    """bench/recipes.py: the CPU as torch sees it, one row per precision this CPU runs natively, and a
    FLOP count that matches the arithmetic of FastSAC's gradient step (twin critics, actor, targets)."""
    import json

    import torch

    lines = run_bench(
        "recipes.py",
        ["--env", "FetchPush-v4", "--steps", "800", "--json", "recipes.json"],
        tmp_path,
        f"sqlite:///{tmp_path / 'unused.db'}",
    )
    from harness.algorithms import native_bf16

    native = native_bf16("cpu")
    assert f"instruction set {torch.backends.cpu.get_cpu_capability()}, native bf16 {'yes' if native else 'no'}" in lines[0]
    rows = json.loads((tmp_path / "recipes.json").read_text())["rows"]
    assert [row["precision"] for row in rows] == (["fp32", "bf16"] if native else ["fp32"])
    assert [line.split(":")[0] for line in lines[1:]] == [f"FetchPush-v4 {row['precision']}" for row in rows]
    push = resolve_config("fast", "FetchPush-v4", {"her": True})
    obs, act, (h1, h2, h3) = 25 + 3 + 3, 4, push.net_arch
    actor = obs * h1 + h1 * h2 + h2 * h3 + 2 * h3 * act  # multiply-adds per sample: mean and log-std heads
    critic = (obs + act) * h1 + h1 * h2 + h2 * h3 + h3
    # forward 2 FLOPs per multiply-add, backward 4: actor 2 forwards + 1 backward, each of the 2 critics
    # 4 forwards (target, current, at the actor's actions) + 2 backwards (one without weight gradients)
    expected = push.batch_size * (8 * actor + 24 * critic) * push.gradient_steps / (push.train_freq * push.n_envs)
    for row in rows:
        assert abs(row["gflop_per_env_step"] * 1e9 / expected - 1) < 0.03, row
        assert row["env_steps"] == 800 and 0 < row["steps_per_s"] and 0 < row["limit_steps_per_s"]
        assert row["grad_ms_per_env_step"] < row["ms_per_env_step"]
