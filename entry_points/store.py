"""`harness store upgrade`: bring a SQLite tracking store to the schema the installed MLflow uses, with a backup."""

from __future__ import annotations

import click

from entry_points._common import echo_upgraded, run_command


@click.group(name="store")
def store_command():
    """The local SQLite tracking store (for the PostgreSQL of `harness server`, see `harness server upgrade`)."""


@store_command.command(name="upgrade")
@click.option(
    "--store",
    default=None,
    help="sqlite:///path/to/mlflow.db [default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].",
)
def upgrade_command(store):
    """Back up a SQLite store made by an older MLflow and run MLflow's migration on it.

    Refused while any other process has the file open (stop `harness ui`, `mlflow ui` and trainings
    first). The backup is a consistent copy beside the store (mlflow.db.backup-<old schema>-<time>);
    every table keeps its rows or the backup is put back. Prints how to roll back.
    """
    import os

    from harness import schema, stores
    from harness.errors import HarnessError

    uri = store or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    db_path = stores.sqlite_path(uri)
    if db_path is None or stores.in_memory(uri):
        raise HarnessError(
            f"--store {uri} is not a SQLite file; accepted: sqlite:///path/mlflow.db "
            "(the PostgreSQL of harness server: harness server upgrade --dir DIR)"
        )
    upgraded = schema.upgrade_sqlite(db_path)
    if upgraded is None:
        current = f"MLflow {schema.mlflow_version()}'s ({schema.expected_revision()})"
        click.echo(f"{db_path} already has {current} schema; nothing to do")
        return
    echo_upgraded(
        str(db_path),
        upgraded,
        "backup",
        f"stop every process using the store, then cp {upgraded.backup} {db_path} and reinstall the MLflow release "
        "you used before",
    )


if __name__ == "__main__":
    run_command(store_command)
