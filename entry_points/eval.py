"""`harness eval`: score a checkpoint with deterministic episodes."""

from __future__ import annotations

import click

from entry_points._common import accept_runs_from_option, echo_ui_link, run_command


@click.command(name="eval")
@click.option(
    "--ckpt",
    required=True,
    help="Checkpoint: a .zip path (checkpoints/sac_her_FetchPush-v4_seed0.zip), an MLflow run id, "
    "runs:/<run id>, a registered model models:/ch04-sac-her-FetchPush-v4@champion, or a checkpoint a "
    "periodic evaluation logged as a model, models:/m-<id> (the experiment's Models tab).",
)
@click.option("--n-episodes", type=click.IntRange(min=1), default=100, show_default=True, help="Deterministic episodes.")
@click.option("--env", "env_id", default=None, help="Env id, only needed for a zip without its .meta.json.")
@click.option(
    "--video",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Render the first N evaluation episodes to MP4 (results/videos/, and run artifacts videos/).",
)
@accept_runs_from_option
def eval_command(ckpt, n_episodes, env_id, video, accept_runs_from):
    """Evaluate a checkpoint: success rate, mean return and final distance (each with std).

    Writes results/ch04_<algo>[_her]_<env>_seed<k>_eval.json and logs the eval/* metrics and that
    JSON to the training run the checkpoint came from (which makes it visible to `compare`); a
    checkpoint of a periodic evaluation (models:/m-<id>) is scored as a result of its own.
    Nothing in a checkpoint is unpickled: the policy is rebuilt from its tensors.
    """
    from harness.accounts import AcceptedAccounts
    from harness.evaluation import evaluate_checkpoint

    report = evaluate_checkpoint(
        ckpt, n_episodes=n_episodes, env_id=env_id, video=video, accepted=AcceptedAccounts.parse(accept_runs_from)
    )
    click.echo(
        f"{report['env_id']} {report['algo']}{' + HER' if report['her'] else ''} seed {report['seed']}, "
        f"{n_episodes} episodes: success {100 * report['success_rate']:.1f}% "
        f"(std {100 * report['success_rate_std']:.1f}%), return {report['mean_return']:.2f} "
        f"(std {report['mean_return_std']:.2f}), final distance {report['final_distance']:.4f} "
        f"(std {report['final_distance_std']:.4f})"
    )
    click.echo(f"wrote {report['results_file']}")
    for path in report["videos"]:
        click.echo(f"wrote {path}")
    if report["logged_to_run"]:
        click.echo(f"logged eval/* to training run {report['logged_to_run']}")
        echo_ui_link(report["logged_to_run"])
    elif report.get("logged_model_id"):
        click.echo(
            f"note: logged model {report['logged_model_id']} (the checkpoint of step {report['num_timesteps']}) is scored "
            "as a result of its own, not logged as the training run's evaluation (compare and register read that)"
        )
    elif report["trained_on"] not in (None, report["env_id"]):
        click.echo(
            f"note: trained on {report['trained_on']}, scored on {report['env_id']}: not logged as the "
            "training run's evaluation (compare and register read that)"
        )
    else:
        click.echo("note: the training run is not in this tracking store; nothing was logged to MLflow")


if __name__ == "__main__":
    run_command(eval_command)
