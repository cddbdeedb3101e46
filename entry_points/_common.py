"""What every command shares: one-line errors, and MLproject-friendly option types."""

from __future__ import annotations

import os
import sys

import click

from harness.credentials import move_to_environment, redact
from harness.errors import HarnessError, Terminated, first_line, warn
from harness.library_logs import quiet_library_logs
from harness.stop_signals import install_stop_handlers, reset_stopping


def run_command(command: click.Command, args: list[str] | None = None) -> None:
    """Run a click command so that every expected failure is one line on stderr and a non-zero exit.

    Bad options (click), bad values found later (HarnessError), Ctrl-C, SIGTERM and SIGHUP, and
    faults of the machine or the store (a full disk, a store that refuses a write) never show a
    traceback; HARNESS_TRACEBACK=1 shows it for the last two. The MLflow run, if one was
    started, has already been ended as FAILED or KILLED.
    """

    name = command.name or "harness"
    # Before MLflow reads the URI: its password goes where MLflow's client takes credentials from,
    # so no link, record or message (MLflow's own included) can show it.
    if move_to_environment(os.environ) and os.environ.get("MLFLOW_RUN_ID"):
        # Too late for `mlflow run` itself, which already printed its "View run" line with them.
        warn(
            "MLFLOW_TRACKING_URI carries a user name and password, which `mlflow run` prints in its own "
            "'View run' lines; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead (docs/mlflow.md)"
        )
    quiet_library_logs()
    # For the whole command, not only while a run is open: an evaluation stopped before it logs
    # anything still cleans up (its downloaded checkpoint) and says so in one line.
    reset_stopping()
    install_stop_handlers()
    try:
        code = command.main(args=args, prog_name=name, standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help and friends
        code = exc.exit_code
    except click.ClickException as exc:
        click.echo(f"{name}: error: {redact(exc.format_message())}", err=True)
        sys.exit(exc.exit_code or 2)
    except HarnessError as exc:
        click.echo(f"{name}: error: {redact(str(exc))}{_ended_runs_note()}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo(f"{name}: interrupted{_ended_runs_note('; no MLflow run was open')}", err=True)
        sys.exit(130)
    except Terminated:
        click.echo(f"{name}: terminated{_ended_runs_note('; no MLflow run was open')}", err=True)
        sys.exit(143)
    except Exception as exc:
        fault = environment_fault(exc)
        if fault is None or os.environ.get("HARNESS_TRACEBACK"):
            raise  # a bug: its traceback is what a report needs
        click.echo(f"{name}: error: {redact(fault)}{_ended_runs_note()}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _ended_runs_note(default: str = "") -> str:
    # harness.tracking is only imported by commands that start runs; never imported, nothing was started.
    tracking = sys.modules.get("harness.tracking")
    ended = tracking.ended_early if tracking is not None else {}
    return "".join(f"; MLflow run {run_id} was marked {status}" for run_id, status in ended.items()) or default


def environment_fault(exc: Exception) -> str | None:
    """One line for a fault of the machine or the tracking store, None for anything else (a bug)."""
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    database = sys.modules.get("sqlalchemy.exc")  # a database server behind the store went away
    if database is not None and isinstance(exc, database.SQLAlchemyError):
        reason = first_line(exc) or type(exc).__name__
        if "malformed" in reason or "not a database" in reason:  # SQLite's words for a damaged file
            return f"the MLflow tracking store is damaged ({reason}); restore it from a backup or move it away"
        return f"the MLflow tracking database failed: {reason}"
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is not None and isinstance(exc, mlflow_exceptions.MlflowException):
        return f"the MLflow tracking store failed: {first_line(exc.message) or type(exc).__name__}"
    return None


def parse_int_list(text: str, example: str = "0,1,2") -> list[int]:
    """'0,1,2' -> [0, 1, 2], or a clear error naming the value and the accepted form."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of integers such as {example}") from None
    if not values or any(v < 0 for v in values):
        raise click.BadParameter(f"'{text}' must list one or more integers >= 0, such as {example}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:  # `compare --seeds 0,0` would count one run twice and report a spread of zero
        raise click.BadParameter(
            f"'{text}' lists {', '.join(map(str, repeated))} more than once; give distinct integers such as {example}"
        )
    return values


def parse_seeds(text: str) -> list[int]:
    return parse_int_list(text, "0,1,2")


def echo_ui_link(run_id: str | None) -> None:
    """Where to look next: the run's experiment in the MLflow UI, on the harness's "HER vs no-HER" view."""
    if not run_id:
        return
    import mlflow

    from harness import ui_views

    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    base = ui_views.ui_base(mlflow.get_tracking_uri())
    served_by = " (served by: harness ui)" if base == ui_views.DEFAULT_UI else ""
    click.echo(f"MLflow UI{served_by}: {ui_views.url(base, experiment_id)}")


def echo_upgraded(store: str, upgraded, backup: str, rollback: str) -> None:
    """What `harness store upgrade` and `harness server upgrade` print after an upgrade."""
    kept = ", ".join(f"{n} {table}" for table, n in upgraded.rows.items() if n)
    click.echo(f"upgraded {store} from schema {upgraded.old} to {upgraded.new} ({kept} kept)")
    click.echo(f"{backup}: {upgraded.backup}")
    click.echo(f"to roll back: {rollback}")


def accept_runs_from_option(command):
    """``--accept-runs-from``: on a tracking server with accounts, whose runs besides one's own to use."""
    return click.option(
        "--accept-runs-from",
        "accept_runs_from",
        default="",
        metavar="ACCOUNTS",
        help="On a tracking server with accounts (harness server start --auth): also use runs made by these "
        "accounts (comma-separated; '*': any account, and runs the server did not stamp). Without it only your "
        "own runs are used, since another account's numbers and checkpoints could be planted.",
    )(command)
