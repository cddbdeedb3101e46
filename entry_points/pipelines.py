"""`harness reach-all`, `push-all` and `ablation`: whole experiments as one parent MLflow run."""

from __future__ import annotations

import click

from entry_points._common import echo_ui_link, parse_int_list, parse_seeds, run_command
from entry_points.options import CONTEXT, config_options, take_config_options
from harness.config import available_presets


# The pipelines set these per training themselves.
PIPELINE_SETS = ("her", "seed")


def pipeline_options(command, leave_out: tuple[str, ...] = PIPELINE_SETS):
    """Options every pipeline shares: each config field not set per training, evaluation, execution."""
    options = [
        click.option(
            "--preset",
            type=click.Choice(available_presets()),
            default="ch04",
            show_default=True,
            help="Hyperparameter preset (harness/presets/<name>.yaml).",
        ),
        click.option(
            "--n-eval-episodes",
            type=click.IntRange(min=1),
            default=100,
            show_default=True,
            help="Deterministic episodes per final evaluation.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=None,
            help="Trainings at once [default: the number of cores]; torch threads per worker = cores / workers.",
        ),
        click.option(
            "--executor",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="local worker processes, or Ray tasks (pip install '.[ray]').",
        ),
        click.option(
            "--ray-address", default=None, help="Ray cluster address (ray://host:10001 or auto) [default: start a local Ray]."
        ),
        click.option("--experiment", default=None, help="MLflow experiment [default: ch04-her-sparse-reach-push]."),
    ]
    for option in reversed(options):
        command = option(command)
    return config_options(leave_out)(command)


def _run(kind, jobs, report, workers, executor, ray_address, experiment):
    from harness.pipelines import run_pipeline

    result = run_pipeline(
        kind, jobs, report, workers=workers, executor=executor, ray_address=ray_address, experiment=experiment, echo=click.echo
    )
    click.echo("")
    click.echo(result.report["table"])
    if result.report.get("details"):
        click.echo("")
        click.echo(result.report["details"])
    click.echo(
        f"\nreport: {result.report['report_file']}; pipeline run {result.parent_run_id}; "
        f"wall-clock {result.wall_time_s / 60:.1f} min"
    )
    echo_ui_link(result.parent_run_id)


def chapter_options(command):
    """What the chapter's pipelines add to the shared options: the seeds."""
    command = pipeline_options(command)
    return click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")(command)


CHAPTER_STEPS = (
    "train no-HER per seed, evaluate each, train HER per seed, evaluate each, compare. One parent MLflow "
    "run with child runs; re-running the same command reuses finished runs, resumes interrupted ones and "
    "runs only what is missing. Writes results/ch04_<env>_report.md, the comparison JSON and PNG."
)


def run_chapter(name, env_id, seeds, preset, n_eval_episodes, workers, executor, ray_address, experiment, **options):
    seed_list = parse_seeds(seeds)
    from harness.envs import validate_env_id

    validate_env_id(env_id, her=True)
    from harness.pipelines import chapter_jobs, chapter_report

    overrides = take_config_options(options, PIPELINE_SETS)
    jobs = chapter_jobs(env_id, seed_list, preset, overrides, n_eval_episodes)
    report = chapter_report(env_id, seed_list, jobs[0].config.algo)
    _run(name, jobs, report, workers, executor, ray_address, experiment)


def chapter_pipeline(name: str, env_id: str):
    @click.command(name=name, context_settings=CONTEXT, help=f"The chapter's pipeline on {env_id}: {CHAPTER_STEPS}")
    @chapter_options
    def command(**options):
        run_chapter(name, env_id, **options)

    return command


reach_all_command = chapter_pipeline("reach-all", "FetchReach-v4")
push_all_command = chapter_pipeline("push-all", "FetchPush-v4")


@click.command(
    name="experiment",
    context_settings=CONTEXT,
    help=f"The chapter's pipeline on any goal-conditioned env (FetchPickAndPlace-v4, FetchSlide-v4, ...): {CHAPTER_STEPS}",
)
@click.option("--env", "env_id", required=True, help="Env id, e.g. FetchPickAndPlace-v4 or FetchSlide-v4.")
@chapter_options
def experiment_command(env_id, **options):
    run_chapter("experiment", env_id, **options)


ABLATION_SETS = (*PIPELINE_SETS, "n_sampled_goal")  # the ablation's values of HER's k: --nsg-values


def ablation_options(command):
    return pipeline_options(command, ABLATION_SETS)


@click.command(name="ablation", context_settings=CONTEXT)
@click.option("--env", "env_id", default="FetchPush-v4", show_default=True, help="Env id.")
@click.option("--nsg-values", default="2,4,8", show_default=True, help="Comma-separated n_sampled_goal values.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="One seed (the chapter's form) [default: 0].")
@click.option("--seeds", default=None, help="Several seeds, comma-separated (mean +/- 95% CI per value).")
@ablation_options
def ablation_command(
    env_id, nsg_values, seed, seeds, preset, n_eval_episodes, workers, executor, ray_address, experiment, **options
):
    """HER runs per n_sampled_goal value, each evaluated, with a table across the values.

    Writes results/ch04_<env>_ablation_nsg.{json,md,png} and logs them to the parent MLflow run.
    """
    if seed is not None and seeds is not None:
        raise click.UsageError("give --seed or --seeds, not both")
    seed_list = parse_seeds(seeds) if seeds is not None else [seed or 0]
    values = parse_int_list(nsg_values, "2,4,8")
    from harness.envs import validate_env_id

    validate_env_id(env_id, her=True)
    from harness.pipelines import ablation_jobs, ablation_report

    overrides = take_config_options(options, ABLATION_SETS)
    jobs = ablation_jobs(env_id, values, seed_list, preset, overrides, n_eval_episodes)
    _run(
        "ablation",
        jobs,
        ablation_report(env_id, values, seed_list, jobs[0].config.algo),
        workers,
        executor,
        ray_address,
        experiment,
    )


if __name__ == "__main__":
    import sys

    commands = {
        "reach-all": reach_all_command,
        "push-all": push_all_command,
        "experiment": experiment_command,
        "ablation": ablation_command,
    }
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in commands:
        sys.exit(f"usage: python -m entry_points.pipelines {{{'|'.join(commands)}}} [OPTIONS]")
    run_command(commands[name], sys.argv[2:])
