"""`harness train`: one training run, tracked in MLflow."""

from __future__ import annotations

import os
import sys

import click

from entry_points._common import echo_ui_link, run_command
from entry_points.options import CONTEXT, config_options, take_config_options
from harness.config import available_presets

# More torch threads than any machine here has cores only slows a training down; a typo such as
# 100000 would fail much later in hundreds of MemoryError lines from OpenMP.
MAX_THREADS = 1024


@click.command(name="train", context_settings=CONTEXT)
@click.option(
    "--env",
    "env_id",
    default="FetchReach-v4",
    show_default=True,
    help="Gymnasium id, e.g. FetchReach-v4, FetchPush-v4, FetchPickAndPlace-v4, FetchSlide-v4 (or *Dense-v4).",
)
@click.option("--no-her", is_flag=True, help="Train without HER (the default; same as --her false).")
@config_options()
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A config field as KEY=VALUE (YAML), e.g. --set gamma=0.98 --set net_arch=[256,256,256]; "
    "the same as its option (repeatable).",
)
@click.option(
    "--preset",
    type=click.Choice(available_presets()),
    default="ch04",
    show_default=True,
    help="Named hyperparameter set from harness/presets/<name>.yaml.",
)
@click.option(
    "--experiment", default=None, help="MLflow experiment [default: ch04-her-sparse-reach-push; under mlflow run: its own]."
)
@click.option(
    "--threads",
    type=click.IntRange(min=0, max=MAX_THREADS),
    default=0,
    show_default=True,
    help="Torch threads; 0 keeps torch's default (all cores). Use 1 per process when training side by side.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the networks train; auto picks CUDA when torch sees a GPU. Any checkpoint evaluates on a CPU.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on in a terminal].")
@click.option(
    "--system-metrics/--no-system-metrics",
    default=True,
    show_default=True,
    help="Log MLflow's system metrics (CPU, memory, disk, network) to the run as system/*.",
)
@click.option(
    "--keep-checkpoints",
    default="best:3",
    show_default=True,
    help="Which checkpoints of the periodic evaluations stay as MLflow logged models of the run (models:/m-<id>, "
    "the experiment's Models tab, with their eval/* metrics): all, none, best:K (by eval success) or last:K.",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue this config's run if a crash, a kill or a closed terminal cut it short (its resumable "
    "checkpoint in checkpoints/resume/), instead of starting a new run.",
)
def train_command(
    env_id, no_her, settings, preset, experiment, threads, device, progress, system_metrics, keep_checkpoints, resume, **opts
):
    """Train SAC, TQC or the HER paper's DDPG, with or without HER, as one MLflow run.

    Logs the resolved config as params, SB3's metrics and eval/* learning curves by env step,
    TensorBoard logs under runs/, and the checkpoint to checkpoints/<run name>.zip (+ .meta.json)
    and to the run's artifacts. The run is named like the checkpoint: sac_her_FetchPush-v4_seed0.
    """
    # Cheapest checks first: a bad value is reported before torch and SB3 are even imported.
    from harness.models import KeepCheckpoints
    from harness.config import parse_settings, resolve_config

    keep = KeepCheckpoints.parse(keep_checkpoints)
    overrides = take_config_options(opts)
    if overrides["her"] and no_her:
        raise click.UsageError("--her and --no-her contradict each other; give one")
    if no_her:
        overrides["her"] = False
    overrides.update(parse_settings(settings))
    config = resolve_config(preset, env_id, overrides)
    from harness.envs import validate_env_id

    validate_env_id(env_id, her=config.her)
    from harness.algorithms import resolve_device

    resolve_device(device)  # --device cuda without a GPU: said before any store or run is touched
    from harness.resume import interrupted_run
    from harness.training import RunOptions, train

    show_progress = sys.stderr.isatty() if progress is None else progress
    interrupted = interrupted_run(config, experiment) if resume and not os.environ.get("MLFLOW_RUN_ID") else None
    if interrupted:
        click.echo(
            f"resuming run {interrupted[0]} ({config.run_name}) from its checkpoint at step {interrupted[1]}; "
            "--no-resume starts a new run",
            err=True,
        )
    result = train(
        config,
        RunOptions(
            experiment=experiment,
            progress_bar=show_progress,
            torch_threads=threads,
            resume_run_id=interrupted[0] if interrupted else None,
            system_metrics=system_metrics,
            device=device,
            keep_checkpoints=keep,
        ),
    )
    final = result.meta["final_metrics"]
    click.echo(
        f"run {result.run_id} ({result.run_name}) finished: {result.meta['num_timesteps']} steps "
        f"in {result.meta['wall_time_s']:.0f}s ({result.meta['steps_per_second']} steps/s)"
    )
    if "eval/success_rate" in final:
        click.echo(f"last eval during training: success {100 * final['eval/success_rate']:.1f}%")
    click.echo(f"checkpoint: {result.checkpoint}")
    echo_ui_link(result.run_id)


if __name__ == "__main__":
    run_command(train_command)
