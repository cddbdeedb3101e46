"""Stop signals (Ctrl-C, SIGTERM, SIGHUP): each ends the command once, with its run marked KILLED.

The first stop signal raises in the main thread (:class:`harness.errors.Terminated`, or KeyboardInterrupt
for Ctrl-C) so that the run being tracked ends KILLED; later ones are ignored while that clean-up runs.
"""

from harness.errors import Terminated

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
