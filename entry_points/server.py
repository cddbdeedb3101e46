"""`harness server start|stop|upgrade`: a PostgreSQL-backed MLflow tracking server for runs on several machines."""

from __future__ import annotations

from pathlib import Path

import click

from entry_points._common import echo_upgraded, run_command

DIR_OPTION = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".mlflow-server"),
    show_default=True,
    help="Where the PostgreSQL cluster, the artifacts and the logs live.",
)


@click.group(name="server")
def server_command():
    """A tracking server on PostgreSQL for pipelines whose workers run on several machines.

    Workers cannot share a SQLite file; they log to this server over HTTP and send and fetch
    checkpoints through it (artifacts in DIR/artifacts, served by the server).
    """


@server_command.command(name="start")
@DIR_OPTION
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="0.0.0.0 lets other machines reach it (PostgreSQL itself stays on 127.0.0.1).",
)
@click.option(
    "--auth/--no-auth",
    default=False,
    show_default=True,
    help="MLflow's basic-auth app: every request needs a user and password; the admin's is "
    "generated into DIR/admin-password (mode 600); other users get READ until granted more. The server stamps "
    "each run with the account that made it (harness.created_by), which register, compare and eval check.",
)
def start_command(directory, port, host, auth):
    """Start PostgreSQL (made on first use, password-protected) and `mlflow server` on it; print the URI to export."""
    from harness import server

    stack = server.start(directory, port=port, host=host, auth=auth)
    click.echo(f"tracking server on PostgreSQL (port {stack.db_port}), artifacts in {directory / 'artifacts'}")
    click.echo(f"export MLFLOW_TRACKING_URI={stack.tracking_uri}")
    if auth:
        click.echo(
            f"basic auth on: export MLFLOW_TRACKING_USERNAME={server.ADMIN_USER} "
            f'MLFLOW_TRACKING_PASSWORD="$(cat {directory / server.ADMIN_PASSWORD_FILE})" '
            "(the admin; add users with MLflow's auth API)"
        )
    click.echo(f"stop it with: harness server stop --dir {directory}")


@server_command.command(name="stop")
@DIR_OPTION
def stop_command(directory):
    """Stop the tracking server and PostgreSQL started from DIR."""
    from harness import server

    if server.stop(directory):
        click.echo(f"stopped the tracking server and PostgreSQL of {directory}")
    else:
        click.echo(f"nothing was running from {directory}")


@server_command.command(name="upgrade")
@DIR_OPTION
def upgrade_command(directory):
    """Back up DIR's mlflow database (pg_dump) and migrate it to the installed MLflow's schema.

    For a store made by an older MLflow, which `harness server start` then refuses. The server must be
    stopped (`harness server stop`): refused while it or PostgreSQL runs, or while any other client is
    connected. PostgreSQL is started for the upgrade alone and stopped after. Prints how to roll back.
    """
    from harness import schema, server

    upgraded = server.upgrade(directory)
    if upgraded is None:
        click.echo(f"the mlflow database of {directory} already has MLflow {schema.mlflow_version()}'s schema; nothing to do")
        return
    echo_upgraded(
        f"the mlflow database of {directory}",
        upgraded,
        "backup (pg_dump custom format)",
        "reinstall the MLflow release you used before and restore the backup into the stopped server's database "
        "(docs/pipelines.md, 'Upgrading a store')",
    )


if __name__ == "__main__":
    run_command(server_command)
