"""`harness reproduce`: re-make a training run from its MLflow record and compare."""

from __future__ import annotations

import sys

import click

from entry_points._common import echo_ui_link, run_command


@click.command(name="reproduce")
@click.argument("run_id")
@click.option(
    "--steps",
    type=click.IntRange(min=0),
    default=0,
    help="Re-make only the first N env steps and compare the curves up to there [default: 0, the whole run].",
)
@click.option(
    "--apply-diff",
    type=click.BOOL,
    is_flag=False,
    flag_value="true",
    default="false",
    show_default=True,
    help="Run the uncommitted changes the run logged (its git.diff artifact) on top of its commit; bare "
    "--apply-diff means true. Without it a run made from a dirty tree is refused and its diff printed.",
)
@click.option(
    "--any-commit",
    type=click.BOOL,
    is_flag=False,
    flag_value="true",
    default="false",
    show_default=True,
    help="Run the run's commit even when it is on no branch or tag of this checkout (a commit only the "
    "run names); bare --any-commit means true. Without it such a commit is refused and shown (git log --stat).",
)
def reproduce_command(run_id, steps, apply_diff, any_commit):
    """Re-train RUN_ID (a training run) with its logged config, seed, code (a git worktree at its commit,
    plus its logged diff, when this checkout differs) and thread count; evaluate it on the same episodes;
    compare the eval curve, SB3's training metrics and the final evaluation at matching env steps.

    Verdict: identical (bit for bit), equivalent (inside the seed-to-seed spread of that config, or the
    evaluation's 95% Wilson interval) or different, with the first env step where the curves part and
    what differs in the environment. Logged as a run tagged harness.kind=reproduce and
    harness.reproduces=RUN_ID; exit status 0 for identical or equivalent, 3 for different.
    """
    from harness.reproduce import NeedsApproval, reproduce

    try:
        result = reproduce(run_id, steps=steps or None, apply_diff=apply_diff, any_commit=any_commit)
    except NeedsApproval as refused:
        click.echo(refused.shown)  # what --apply-diff or --any-commit would run, for the user to read
        raise
    click.echo(result["markdown"])
    click.echo(f"reproduction run {result['reproduction_run_id']}")
    echo_ui_link(result["reproduction_run_id"])
    if result["verdict"] == "different":
        sys.exit(3)


if __name__ == "__main__":
    run_command(reproduce_command)
