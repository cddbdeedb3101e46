"""`harness lab`: the HER relabeling lab (python -m harness.labs.her_relabeler does the same)."""

from __future__ import annotations

import sys

import click

from entry_points._common import run_command


@click.command(name="lab")
@click.option("--verify", "mode", flag_value="verify", help="Run the sanity checks; exit non-zero on any FAIL.")
@click.option("--demo", "mode", flag_value="demo", help="Tables of success share by strategy, k and her_ratio.")
@click.option("--track", is_flag=True, help="With --demo: log the tables to MLflow as a run (harness.kind=lab).")
@click.option("--episodes", type=click.IntRange(min=1), default=50, show_default=True, help="Random-action episodes per env.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def lab_command(mode, track, episodes, seed):
    """HER relabeling lab: goal sampling and relabeling on random-action Fetch episodes."""
    from harness.labs import her_relabeler

    if mode is None:
        raise click.UsageError("give --verify or --demo")
    if track and mode != "demo":
        raise click.UsageError("--track goes with --demo")
    if mode == "verify":
        if not her_relabeler.verify(n_episodes=episodes, seed=seed):
            sys.exit(1)
    else:
        her_relabeler.demo(n_episodes=episodes, seed=seed, track=track)


if __name__ == "__main__":
    run_command(lab_command)
