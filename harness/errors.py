"""The one exception type a user is meant to see, and warnings.

Anything raised as :class:`HarnessError` is a problem with the user's input or
environment (a bad value, a missing checkpoint, no matching runs). The CLIs print
its message as a single line and exit non-zero; every other exception is a bug and
keeps its traceback. A warning is one line on stderr for something that runs but is likely a
mistake (HER on a dense reward).
"""

import sys


class HarnessError(Exception):
    """A user-facing error: its message names the bad value and what is accepted."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM or SIGHUP (a closed terminal), so the run can be marked KILLED."""


def warn(message: str) -> None:
    print(f"harness: warning: {message}", file=sys.stderr, flush=True)


def first_line(message: object) -> str:
    """The line of a long library message that says what went wrong. SQLAlchemy's (inside MLflow's)
    open with how the failing query was triggered; the cause comes after."""
    lines = [line for line in str(message).splitlines() if line.strip() and not line.startswith("(raised as a result of")]
    return lines[0].strip() if lines else ""
