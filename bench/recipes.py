"""Each `fast` recipe's training speed on this machine, and how close it comes to the machine's limit.

For FetchPush-v4, FetchPickAndPlace-v4 and FetchSlide-v4 with HER and the `fast` preset, in fp32 and,
where this CPU runs bfloat16 natively, in bf16:

- **measured**: env steps/s of SB3's ``learn`` after the first gradient step (the recipe's own model,
  envs, VecNormalize and HER buffer; no evaluation, no checkpoints, no MLflow: those are the harness's
  and cost ~3% over a whole training, BENCHMARKS.md);
- **limit**: what the machine could do if nothing but the unavoidable work took time,
  ``1 / (env step + gradient FLOPs per env step / matmul rate)``: the env step is the recipe's vectorized
  envs stepping random actions, the FLOPs are counted by torch (``FlopCounterMode``) over one real
  gradient step, and the matmul rate is a (batch x 256) @ (256 x 256) matrix multiply's on this core;
- the breakdown of the measured time per env step: env, gradient steps, the rest (acting, HER sampling,
  replay storage, normalization, SB3's loop).

The CPU is named as torch sees it (instruction set, native bf16). To approximate a CPU without
AVX-512 on a newer one, limit the libraries' instruction sets and check the first line::

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/recipes.py

    python bench/recipes.py                       # ~5 minutes on one core
    python bench/recipes.py --env FetchPush-v4 --steps 8000 --threads 1
    python bench/recipes.py --env FetchPush-v4 --set batch_size=2048   # a variant of the recipe
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._measure import json_option, machine_line, threads_option, use_threads, write_figures

RECIPE_ENVS = ("FetchPush-v4", "FetchPickAndPlace-v4", "FetchSlide-v4")


def matmul_gflops(batch: int, width: int, precision: str, seconds: float = 1.0) -> float:
    """FLOP rate of a (batch x width) @ (width x width) matrix multiply, the bulk of a gradient step."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(batch, width, dtype=dtype), torch.randn(width, width, dtype=dtype)
    for _ in range(5):
        a @ b
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        n += 1
    return 2 * batch * width * width * n / (time.perf_counter() - started) / 1e9


def recipe_config(env_id: str, precision: str, steps: int, overrides: dict | None = None):
    from harness.config import resolve_config

    given = {**(overrides or {}), "her": True, "precision": precision}
    config = resolve_config("fast", env_id, given)
    warmup = config.learning_starts + config.train_freq * config.n_envs  # past the first training round
    return resolve_config(
        "fast", env_id, {**given, "total_steps": warmup + steps, "eval_freq": 0, "checkpoint_freq": 0}
    ), warmup


def env_step_ms(config, steps: int) -> float:
    """Milliseconds per env step of the recipe's vectorized envs under random actions."""
    import numpy as np

    from harness.training import build_env

    env, _ = build_env(config)
    env.reset()
    rounds = max(steps // config.n_envs, 20)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(rounds, config.n_envs, env.action_space.shape[0]))
    started = time.perf_counter()
    for action in actions:
        env.step(action)
    elapsed = time.perf_counter() - started
    env.close()
    return elapsed / (rounds * config.n_envs) * 1000


def measure(config, warmup: int, steps: int) -> dict:
    """One recipe at one precision: steady-state env steps/s, gradient FLOPs and time per env step."""
    from stable_baselines3.common.logger import Logger
    from torch.utils.flop_counter import FlopCounterMode

    from harness.training import build_env, build_model

    env, _ = build_env(config)
    model = build_model(config, env, Logger(folder=None, output_formats=[]), "cpu")
    model.learn(total_timesteps=warmup)  # random actions, then the first round of gradient steps

    train, grad_seconds = model.train, [0.0]

    def timed_train(gradient_steps, batch_size):
        started = time.perf_counter()
        train(gradient_steps, batch_size)
        grad_seconds[0] += time.perf_counter() - started

    model.train = timed_train
    first, started = model.num_timesteps, time.perf_counter()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)  # whole rounds: a multiple of 800 env steps
    elapsed = time.perf_counter() - started
    done = model.num_timesteps - first
    with FlopCounterMode(display=False) as counter:
        train(1, config.batch_size)
    env.close()
    rounds_per_env_step = config.gradient_steps / (config.train_freq * config.n_envs)
    return {
        "env": config.env_id,
        "precision": config.precision,
        "batch_size": config.batch_size,
        "gradient_steps": config.gradient_steps,
        "env_steps_per_round": config.train_freq * config.n_envs,
        "net_arch": list(config.net_arch),
        "n_envs": config.n_envs,
        "env_steps": done,
        "steps_per_s": done / elapsed,
        "ms_per_env_step": elapsed / done * 1000,
        "grad_ms_per_env_step": grad_seconds[0] / done * 1000,
        "gflop_per_gradient_step": counter.get_total_flops() / 1e9,
        "gflop_per_env_step": counter.get_total_flops() / 1e9 * rounds_per_env_step,
    }


@click.command()
@click.option(
    "--env",
    "envs",
    multiple=True,
    type=click.Choice(RECIPE_ENVS),
    default=RECIPE_ENVS,
    show_default=True,
    help="Recipes to measure (repeatable).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=800),
    default=4800,
    show_default=True,
    help="Env steps measured per recipe and precision, after the first training round.",
)
@threads_option()
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Measure a variant of the recipes, e.g. --set batch_size=2048 (repeatable).",
)
@json_option
def main(envs, steps, threads, settings, json_path):
    """Print each fast recipe's env steps/s here, in fp32 and (where native) bf16, against the machine's limit."""

    from harness.algorithms import native_bf16
    from harness.config import parse_settings

    from harness.errors import HarnessError

    try:
        overrides = parse_settings(settings)
    except HarnessError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None
    use_threads(threads)
    click.echo(machine_line())
    precisions = ["fp32"] + (["bf16"] if native_bf16("cpu") else [])
    rows = []
    for env_id in envs:
        for precision in precisions:
            config, warmup = recipe_config(env_id, precision, steps, overrides)
            row = measure(config, warmup, steps)
            row["env_ms"] = env_step_ms(config, steps)
            row["matmul_gflops"] = matmul_gflops(config.batch_size, max(config.net_arch), precision)
            row["limit_steps_per_s"] = 1000 / (row["env_ms"] + row["gflop_per_env_step"] / row["matmul_gflops"] * 1000)
            other = row["ms_per_env_step"] - row["env_ms"] - row["grad_ms_per_env_step"]
            rows.append(row)
            click.echo(
                f"{env_id} {precision}: {row['steps_per_s']:6.1f} env steps/s, limit {row['limit_steps_per_s']:6.1f} "
                f"({row['steps_per_s'] / row['limit_steps_per_s']:.0%}) | batch {row['batch_size']}, "
                f"{row['gradient_steps']} grad steps / {row['env_steps_per_round']} env steps, "
                f"{row['gflop_per_env_step']:.3f} GFLOP/env step, matmul {row['matmul_gflops']:.0f} GFLOP/s | per env "
                f"step: env {row['env_ms']:.2f} ms, gradients {row['grad_ms_per_env_step']:.2f} ms, other {other:.2f} ms"
            )
    write_figures(json_path, {"rows": rows})


if __name__ == "__main__":
    main()
