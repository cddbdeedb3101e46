"""The one exception type a user is meant to see, and warnings.

Anything raised as :class:`HarnessError` is a problem with the user's input or
environment (a bad value, a missing checkpoint, no matching runs). The CLIs print
its message as a single line and exit non-zero; every other exception is a bug and
keeps its traceback. A warning is one line on stderr for something that runs but is likely a
mistake (HER on a dense reward).
"""

import logging
import os
import sys


class HarnessError(Exception):
    """A user-facing error: its message names the bad value and what is accepted."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM or SIGHUP (a closed terminal), so the run can be marked KILLED."""


# Set by the first stop signal: the clean-up it starts (ending the MLflow run KILLED) must not be cut short
# by the next one. Ctrl-C reaches a pipeline's workers and then the pipeline's own SIGTERM does, often
# both before Python runs either handler; the second used to abort the first's clean-up, leaving RUNNING.
_stopping = False


def raise_terminated(signum, frame):
    """SIGTERM or SIGHUP: :class:`Terminated`, once; later stop signals are ignored."""
    global _stopping
    if not _stopping:
        _stopping = True
        raise Terminated(f"received signal {signum}")


def raise_interrupted(signum, frame):
    """Ctrl-C: KeyboardInterrupt, once; later stop signals are ignored."""
    global _stopping
    if not _stopping:
        _stopping = True
        raise KeyboardInterrupt


def stop_signals() -> list:
    """SIGTERM, and SIGHUP (the terminal was closed) unless the user ran us under nohup."""
    import signal

    return [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else [])


def install_stop_handlers() -> dict:
    """Handle every stop signal with :func:`raise_terminated` / :func:`raise_interrupted` (SIGINT
    unless it is ignored, as in a shell's background job); returns the handlers they replace."""
    import signal

    handlers = {sig: raise_terminated for sig in stop_signals()}
    if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None):
        handlers[signal.SIGINT] = raise_interrupted
    return {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}


def reset_stopping() -> None:
    """A new command in this process (tests run several): no stop signal seen yet."""
    global _stopping
    _stopping = False


def warn(message: str) -> None:
    print(f"harness: warning: {message}", file=sys.stderr, flush=True)


def first_line(message: object) -> str:
    """The line of a long library message that says what went wrong. SQLAlchemy's (inside MLflow's)
    open with how the failing query was triggered; the cause comes after."""
    lines = [line for line in str(message).splitlines() if line.strip() and not line.startswith("(raised as a result of")]
    return lines[0].strip() if lines else ""


def quiet_library_logs() -> None:
    """What a harness process (a command, a pipeline's worker) prints is the harness's own lines.
    Called by the CLI and the workers, not at import: importing the harness changes no process state."""
    # MLflow announces at INFO level that it creates or migrates the SQLite schema, on every new
    # store, and logs a full traceback at ERROR level for every refused write (a read-only store, or a
    # "database is locked" that tracking.with_retry retries); the one line the CLI prints says what went wrong.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # Four INFO lines per run (no GPU found, started, stopping, terminated) about the system metrics sampler.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    # Checkpoints are a few MB; MLflow's per-download progress bars only clutter the pipeline overview.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
