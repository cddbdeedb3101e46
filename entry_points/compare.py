"""`harness compare`: HER vs no-HER over seeds, from MLflow runs."""

from __future__ import annotations

import click

from entry_points._common import accept_runs_from_option, echo_ui_link, parse_seeds, run_command
from harness.config import ALGOS


@click.command(name="compare")
@click.option("--env", "env_id", required=True, help="Env id whose runs to compare, e.g. FetchPush-v4.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option(
    "--algo",
    type=click.Choice((*ALGOS, "auto")),
    default="auto",
    show_default=True,
    help="sac, tqc or ddpg, or auto: the algo of the newest evaluated training run for --env.",
)
@click.option("--experiment", default=None, help="Only runs in this MLflow experiment [default: all].")
@accept_runs_from_option
def compare_command(env_id, seeds, algo, experiment, accept_runs_from):
    """Compare HER and no-HER: the chapter's table (mean +/- 95% CI over seeds, Student's t), then
    per-seed values, IQM with bootstrap CIs, Wilson CIs of pooled episodes, one-sided tests of
    HER > no-HER, the probability of improvement, env steps and minutes to 50%/90%, the env's
    do-nothing floor and the chapter's "clear separation" verdict.

    Reads the newest finished, evaluated training run per (condition, seed) from MLflow by tags,
    measures the floor once per env (a harness.kind=floor run), writes
    results/ch04_<env>_comparison.json (+ .png) and logs a compare run with all of it.
    """
    seed_list = parse_seeds(seeds)
    from harness.accounts import AcceptedAccounts
    from harness.comparison_report import compare

    report = compare(
        env_id,
        seed_list,
        algo=None if algo == "auto" else algo,
        experiment=experiment,
        accepted=AcceptedAccounts.parse(accept_runs_from),
    )
    click.echo(report["table"])
    click.echo("")
    click.echo(report["details"])
    click.echo(f"\nwrote {report['results_file']} and {report['plot_file']}; compare run {report['compare_run_id']}")
    echo_ui_link(report["compare_run_id"])


if __name__ == "__main__":
    run_command(compare_command)
