"""Training throughput on FetchPush-v4 + HER, in env steps per second, on this machine.

Three configurations, trained in this process with the same torch threads:

  (a) the chapter's configuration in plain Stable-Baselines3: SAC defaults (2x256 networks,
      batch 256, one gradient step per env step), HerReplayBuffer future k=4, one env;
  (b) the harness's training path (``harness.training.train``: MLflow run, params, metrics,
      TensorBoard, checkpoint) at exactly that configuration: the difference is code efficiency;
  (c) the harness's ``fast`` preset for FetchPush-v4.

Each is timed over the whole ``learn``: ``--warmup`` random-action steps (HER needs whole episodes
stored before it samples; they are cheap, keep them few) then ``--steps`` of training.

A VM's speed drifts by tens of percent within minutes, so (a) and (b) are measured in ``--rounds``
interleaved pairs (a, b, a, b, ...), each pair's ratio b/a taken right after each other, and the
figures printed are medians over rounds. The last line is ``equal-config speedup: X.XX``, the median
of the paired ratios (b) / (a).

    python bench/throughput.py                           # ~4-5 minutes on 2 cores
    python bench/throughput.py --steps 5000 --rounds 5   # longer, steadier figures

(b) and (c) are MLflow runs in the experiment ``bench-throughput`` of the working directory's store.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._measure import json_option, machine_line, threads_option, use_threads, write_figures

ENV_ID = "FetchPush-v4"
EXPERIMENT = "bench-throughput"


def chapter_overrides(warmup: int, steps: int) -> dict:
    """ch04 preset at one env: SB3 SAC defaults, one gradient step per env step, no eval/checkpoints."""
    return dict(her=True, n_envs=1, learning_starts=warmup, total_steps=warmup + steps, eval_freq=0, checkpoint_freq=0)


def plain_sb3(warmup: int, steps: int) -> float:
    """(a): what the chapter's script does, with nothing of the harness."""
    from stable_baselines3 import SAC, HerReplayBuffer
    from stable_baselines3.common.env_util import make_vec_env

    from harness.envs import register_fetch_envs

    register_fetch_envs()  # as the chapter's `gym.register_envs(gymnasium_robotics)` does

    env = make_vec_env(ENV_ID, n_envs=1, seed=0)
    model = SAC(
        "MultiInputPolicy",
        env,
        replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs=dict(n_sampled_goal=4, goal_selection_strategy="future"),
        learning_starts=warmup,
        buffer_size=warmup + steps + 1,
        seed=0,
        device="cpu",
        verbose=0,
    )
    started = time.perf_counter()
    model.learn(total_timesteps=warmup + steps)
    elapsed = time.perf_counter() - started
    env.close()
    return (warmup + steps) / elapsed


def harness_path(preset: str, overrides: dict, name: str) -> tuple[float, dict]:
    """(b)/(c): a real harness training run; its own wall clock around learn()."""
    from harness.config import resolve_config
    from harness.training import RunOptions, train

    config = resolve_config(preset, ENV_ID, overrides)
    result = train(config, RunOptions(experiment=EXPERIMENT, variant=name, kind="bench"))
    return result.meta["num_timesteps"] / result.meta["wall_time_s"], {"run_id": result.run_id, **config.to_dict()}


@click.command()
@click.option(
    "--steps",
    type=click.IntRange(min=100),
    default=3000,
    show_default=True,
    help="Training env steps per configuration, after the warm-up.",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Interleaved (a)/(b) pairs; figures are medians over them.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=100),
    default=200,
    show_default=True,
    help="Random-action env steps before learning starts (HER needs whole episodes stored).",
)
@threads_option(default=0)
@json_option
def main(steps, rounds, warmup, threads, json_path):
    """Print env steps/s of (a) plain SB3, (b) the harness at the same config, (c) the fast preset."""
    use_threads(threads)
    click.echo(
        f"{machine_line()}; FetchPush-v4 + HER, {warmup} warm-up + {steps} training steps each, {rounds} interleaved round(s)"
    )
    a_rates, b_rates, b_run_ids = [], [], []
    for round_index in range(rounds):
        a = plain_sb3(warmup, steps)
        b, b_config = harness_path("ch04", chapter_overrides(warmup, steps), "bench-chapter")
        a_rates.append(a)
        b_rates.append(b)
        b_run_ids.append(b_config["run_id"])
        click.echo(f"  round {round_index + 1}: (a) {a:7.1f}  (b) {b:7.1f} env steps/s  ratio {b / a:.2f}")
    speedups = [b / a for a, b in zip(a_rates, b_rates, strict=True)]
    a, b, speedup = statistics.median(a_rates), statistics.median(b_rates), statistics.median(speedups)
    click.echo(f"(a) chapter config, plain SB3 SAC+HER:        {a:7.1f} env steps/s  (median)")
    click.echo(f"(b) chapter config, harness training path:    {b:7.1f} env steps/s  (median; runs {', '.join(b_run_ids)})")
    from harness.config import resolve_config

    # HER samples only finished episodes: the warm-up covers one 50-step episode in each of the preset's envs
    fast_warmup = max(warmup, 50 * resolve_config("fast", ENV_ID, {"her": True}).n_envs)
    fast_overrides = dict(
        her=True, learning_starts=fast_warmup, total_steps=fast_warmup + steps, eval_freq=0, checkpoint_freq=0
    )
    c, c_config = harness_path("fast", fast_overrides, "bench-fast")
    click.echo(
        f"(c) fast preset ({c_config['algo']}, {c_config['n_envs']} envs, batch {c_config['batch_size']}, "
        f"{c_config['gradient_steps']} grad steps / {c_config['train_freq'] * c_config['n_envs']} env steps): "
        f"{c:7.1f} env steps/s  (run {c_config['run_id']})"
    )
    write_figures(
        json_path,
        {
            "steps": steps,
            "warmup": warmup,
            "rounds": rounds,
            "torch_threads": torch.get_num_threads(),
            "a_plain_sb3": a_rates,
            "b_harness_same_config": b_rates,
            "c_fast_preset": c,
            "b_run_ids": b_run_ids,
            "c_run_id": c_config["run_id"],
            "paired_speedups": speedups,
            "equal_config_speedup": speedup,
        },
    )
    click.echo(f"equal-config speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()
