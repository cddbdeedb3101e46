"""The `harness` console script: one group, one subcommand per stage."""

from __future__ import annotations

import click

from entry_points._common import run_command
from entry_points.compare import compare_command
from entry_points.eval import eval_command
from entry_points.lab import lab_command
from entry_points.register import register_command
from entry_points.reproduce import reproduce_command
from entry_points.server import server_command
from entry_points.store import store_command
from entry_points.ui import ui_command
from entry_points.pipelines import ablation_command, experiment_command, push_all_command, reach_all_command
from entry_points.train import train_command


@click.group(name="harness")
def cli():
    """MLflow-tracked HER vs no-HER experiments on sparse Fetch tasks (chapter 4).

    Runs go to MLFLOW_TRACKING_URI, or to ./mlflow.db by default.
    """


cli.add_command(train_command)
cli.add_command(eval_command)
cli.add_command(compare_command)
cli.add_command(lab_command)
cli.add_command(reach_all_command)
cli.add_command(push_all_command)
cli.add_command(experiment_command)
cli.add_command(ablation_command)
cli.add_command(register_command)
cli.add_command(reproduce_command)
cli.add_command(ui_command)
cli.add_command(server_command)
cli.add_command(store_command)


def main() -> None:
    run_command(cli)


if __name__ == "__main__":
    main()
