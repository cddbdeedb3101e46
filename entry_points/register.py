"""`harness register`: the best evaluated HER policy into the MLflow Model Registry."""

from __future__ import annotations

import click

from entry_points._common import accept_runs_from_option, run_command
from harness.config import ALGOS


@click.command(name="register")
@click.option("--env", "env_id", default=None, help="Env whose best evaluated HER run to register, e.g. FetchPush-v4.")
@click.option(
    "--algo",
    type=click.Choice((*ALGOS, "auto")),
    default="auto",
    show_default=True,
    help="sac, tqc or ddpg, or auto: the best evaluated HER run of any algo.",
)
@click.option("--run-id", default=None, help="Register this evaluated HER training run instead of the best one.")
@click.option(
    "--best-checkpoint",
    is_flag=True,
    help="With --env: register the best checkpoint logged model (eval/success_rate of the periodic evaluations, "
    "ties: eval/mean_return) across the finished HER runs and their steps, not the final model of the best run.",
)
@accept_runs_from_option
def register_command(env_id, algo, run_id, best_checkpoint, accept_runs_from):
    """Register a HER policy as ch04-<algo>-her-<env> and move the alias 'champion' if it is better.

    The best run is the finished, evaluated HER training run with the highest eval/success_rate
    (ties: eval/mean_return). The version is an mlflow.pyfunc model holding the policy as plain weights
    (no pickle); its tags hold the source run id, the eval metrics, the resolved config and file hashes.
    """
    if (env_id is None) == (run_id is None):
        raise click.UsageError("give --env (register its best HER run) or --run-id (register that run)")
    if best_checkpoint and env_id is None:
        raise click.UsageError("--best-checkpoint picks across the runs of one env: give --env, not --run-id")
    from harness.accounts import AcceptedAccounts
    from harness.registry import register

    result = register(
        env_id=env_id,
        algo=None if algo == "auto" else algo,
        run_id=run_id,
        best_checkpoint=best_checkpoint,
        accepted=AcceptedAccounts.parse(accept_runs_from),
    )
    metrics = result["metrics"]
    source = f"run {result['source_run_id']}"
    if result["source_created_by"]:
        source += f" (made by {result['source_created_by']})"
    if result["source_model_id"]:
        source = f"checkpoint {result['source_model_id']} (step {result['source_step']}) of {source}"
    click.echo(
        f"registered {result['name']} version {result['version']} from {source} "
        f"(eval success {100 * metrics['eval/success_rate']:.1f}%, return {metrics['eval/mean_return']:.2f})"
    )
    if result["champion_moved"]:
        click.echo(f"alias champion -> version {result['version']}: {result['uri']}")
    else:
        click.echo(f"alias champion stays on version {result['previous_champion']} (as good or better)")


if __name__ == "__main__":
    run_command(register_command)
