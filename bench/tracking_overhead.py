"""MLflow tracking overhead: the same training with and without the harness's tracking.

  tracked:   ``harness.training.train`` - an MLflow run with tags and params, SB3's metrics
             logged to MLflow and TensorBoard, the checkpoint saved locally and as artifacts;
  untracked: the same env and model (same builders, seed and config) trained with SB3's
             logger writing nowhere, the checkpoint saved locally only.

Both are timed end to end (set-up, learn, save), ``--repeats`` times alternately; the best of
each is compared, and the last line is ``tracking overhead ratio: X.XXX`` (tracked / untracked).
Periodic evaluation and resumable checkpoints are off in both: they are not tracking.

    python bench/tracking_overhead.py                     # fast preset, FetchPush-v4, ~3 minutes
    python bench/tracking_overhead.py --env FetchReach-v4 --steps 5000
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._measure import machine_line, threads_option, use_threads
from harness.config import resolve_config
from harness.seeding import seed_everything
from harness.training import RunOptions, build_env, build_model, train

EXPERIMENT = "bench-tracking-overhead"


def untracked(config) -> float:
    from stable_baselines3.common.logger import Logger

    started = time.perf_counter()
    seed_everything(config.seed)
    env, _ = build_env(config)
    model = build_model(config, env, Logger(folder=None, output_formats=[]))
    model.learn(total_timesteps=config.total_steps)
    env.close()
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "model.zip")
    return time.perf_counter() - started


def tracked(config) -> tuple[float, str]:
    started = time.perf_counter()
    result = train(config, RunOptions(experiment=EXPERIMENT, variant="bench-tracking", kind="bench"))
    return time.perf_counter() - started, result.run_id


@click.command()
@click.option("--env", "env_id", default="FetchPush-v4", show_default=True)
@click.option("--preset", default="fast", show_default=True)
@click.option("--steps", type=click.IntRange(min=200), default=4000, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True)
@threads_option()
def main(env_id, preset, steps, repeats, threads):
    """Print the wall-clock of a tracked and an untracked training, and their ratio."""
    use_threads(threads)
    config = resolve_config(
        preset,
        env_id,
        dict(her=True, total_steps=steps, learning_starts=min(1000, steps // 2), eval_freq=0, checkpoint_freq=0),
    )
    click.echo(f"{machine_line()}; {env_id}, preset {preset} ({config.algo}), {steps} env steps")
    plain, logged, run_ids = [], [], []
    for repeat in range(repeats):
        plain.append(untracked(config))
        seconds, run_id = tracked(config)
        logged.append(seconds)
        run_ids.append(run_id)
        click.echo(f"repeat {repeat + 1}: untracked {plain[-1]:.1f}s, tracked {logged[-1]:.1f}s (run {run_id})")
    click.echo(f"best untracked {min(plain):.1f}s, best tracked {min(logged):.1f}s")
    click.echo(f"tracking overhead ratio: {min(logged) / min(plain):.3f}")


if __name__ == "__main__":
    main()
