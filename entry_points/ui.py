"""`harness ui`: the MLflow UI on the harness's tracking store."""

from __future__ import annotations

import os
import sys

import click

from entry_points._common import run_command


@click.command(name="ui")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to reach it from other machines.")
def ui_command(port, host):
    """Open the MLflow UI on the store the harness logs to (MLFLOW_TRACKING_URI, or ./mlflow.db).

    Training runs: the experiment's Runs tab (filter: tags.harness.kind = 'train'); learning curves:
    a run's Model metrics tab.
    """
    from harness.tracking import prepare_store

    prepare_store()
    import mlflow

    uri = mlflow.get_tracking_uri()
    click.echo(f"MLflow UI on {uri}: http://{host}:{port}", err=True)
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", host, "--port", str(port)])


if __name__ == "__main__":
    run_command(ui_command)
