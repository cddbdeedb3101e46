"""The libraries' own log lines (MLflow, Alembic), quieted so that what a harness process prints is its own."""

import logging
import os


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
    # "Experiment with name ... does not exist. Creating a new experiment." on a first training, and the
    # run's link at its end: the harness prints its own link to the UI view.
    logging.getLogger("mlflow.tracking.fluent").setLevel(logging.WARNING)
    # Checkpoints are a few MB; MLflow's per-download progress bars only clutter the pipeline overview.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
