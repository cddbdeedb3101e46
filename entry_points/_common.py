"""What every command shares: one-line errors, and MLproject-friendly option types."""

from __future__ import annotations

import sys

import click

from harness.errors import HarnessError


def run_command(command: click.Command, args: list[str] | None = None) -> None:
    """Run a click command so that every expected failure is one line on stderr and a non-zero exit.

    Bad options (click), bad values found later (HarnessError), Ctrl-C and SIGTERM never show a
    traceback. The MLflow run, if one was started, has already been ended as FAILED or KILLED.
    """
    from harness.tracking import Terminated

    name = command.name or "harness"
    try:
        code = command.main(args=args, prog_name=name, standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help and friends
        code = exc.exit_code
    except click.ClickException as exc:
        click.echo(f"{name}: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code or 2)
    except HarnessError as exc:
        click.echo(f"{name}: error: {exc}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo(f"{name}: interrupted; the MLflow run was marked KILLED", err=True)
        sys.exit(130)
    except Terminated:
        click.echo(f"{name}: terminated; the MLflow run was marked KILLED", err=True)
        sys.exit(143)
    sys.exit(code if isinstance(code, int) else 0)


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
        raise click.BadParameter(f"'{text}' lists {', '.join(map(str, repeated))} more than once; "
                                 f"give distinct integers such as {example}")
    return values


def parse_seeds(text: str) -> list[int]:
    return parse_int_list(text, "0,1,2")
