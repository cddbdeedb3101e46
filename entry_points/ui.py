"""`harness ui`: the MLflow UI on the harness's tracking store."""

from __future__ import annotations

import sys

import click

from entry_points._common import run_command
from harness.run_schema import KIND_TAG


@click.command(name="ui")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to reach it from other machines.")
def ui_command(port, host):
    """Open the MLflow UI on the store the harness logs to (MLFLOW_TRACKING_URI, or ./mlflow.db).

    Prints, per experiment with training runs, the link to its "HER vs no-HER" view: the
    Model-training workspace, training runs grouped by condition with seed, algo, env, env steps
    and eval success as columns, and eval/success_rate against env steps per condition (the view
    is also in the runs page's view picker; add &compareRunsMode=CHART or not for charts or table).
    """
    from harness.server import check_port_free, serve_ui
    from harness.stores import prepare_store

    check_port_free(host, port)  # before any link is printed: they would point at whatever holds the port
    prepare_store()
    import mlflow

    from harness import tracking, ui_views
    from harness.credentials import redact

    uri = mlflow.get_tracking_uri()
    base = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
    click.echo(f"MLflow UI on {redact(uri)}: {base}", err=True)
    client = mlflow.MlflowClient()
    trained = []
    for experiment in client.search_experiments():
        newest = tracking.search_runs({KIND_TAG: "train"}, [experiment.experiment_id], max_results=1)
        if newest:
            ui_views.publish(experiment.experiment_id)
            trained.append((newest[0].info.start_time, experiment))
    for _, experiment in sorted(trained, key=lambda item: -item[0]):  # the newest training's experiment first
        click.echo(f"  {experiment.name}: {ui_views.url(base, experiment.experiment_id)}", err=True)
    sys.exit(serve_ui(uri, host, port))


if __name__ == "__main__":
    run_command(ui_command)
