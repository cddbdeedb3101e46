"""MLflow glue: runs that always end in a definite status, SB3 metrics into MLflow, run look-ups.

The tracking store is whatever MLflow resolves: ``MLFLOW_TRACKING_URI`` if set, else MLflow 3's
default ``sqlite:///mlflow.db`` in the working directory. Under ``mlflow run`` the variable
``MLFLOW_RUN_ID`` is set and :func:`tracked_run` attaches to that run instead of making another.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from stable_baselines3.common.logger import KVWriter

from harness.errors import HarnessError
from harness.provenance import provenance_tags

DEFAULT_EXPERIMENT = "ch04-her-sparse-reach-push"

# MLflow announces at INFO level that it creates or migrates the SQLite schema, on every new
# store; an error line of ours would drown in it.
for _noisy in ("mlflow.store.db.utils", "alembic"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)
# Checkpoints are a few MB; MLflow's per-download progress bars only clutter the pipeline overview.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
RUN_ID_LENGTH = 32


def prepare_store() -> None:
    """Create or migrate a SQLite store under a file lock, once per process.

    MLflow builds (or upgrades) the SQLite schema on first use; two processes doing that at once
    on a new ``mlflow.db`` fail with "table _alembic_tmp_experiments already exists".
    """
    global _store_ready
    if _store_ready:
        return
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        db_path = Path(uri[len("sqlite:///") :])
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with open(db_path.with_name(db_path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            MlflowClient().search_experiments(max_results=1)
            fcntl.flock(lock, fcntl.LOCK_UN)
    _store_ready = True


_store_ready = False


class Terminated(BaseException):
    """Raised in the main thread when the process gets SIGTERM, so the run can be marked KILLED."""


def _raise_terminated(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated(f"received signal {signum}")


@contextlib.contextmanager
def tracked_run(
    run_name: str, tags: Mapping[str, str], experiment: str | None = None, run_id: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, attach to; or with ``run_id``, reopen) a run and always end
    it with a status.

    Normal exit: FINISHED. Ctrl-C or SIGTERM: KILLED. Any other exception: FAILED. The
    exception is re-raised so the caller decides what the user sees.
    """
    prepare_store()
    # MLflow deletes MLFLOW_RUN_ID once start_run has attached to it, so a run started inside
    # an active one (a pipeline's compare run) is a new nested run, never the parent again.
    nested = mlflow.active_run() is not None
    attached = bool(os.environ.get("MLFLOW_RUN_ID")) or run_id is not None
    if not attached and not nested and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(experiment or DEFAULT_EXPERIMENT)
    run = mlflow.start_run(run_id=run_id, run_name=None if attached else run_name, nested=nested)
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        mlflow.set_tags({"mlflow.runName": run_name, **provenance_tags(), **tags})
        yield run
    except (KeyboardInterrupt, Terminated):
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def log_params_once(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params, leaving alone any key the run already has.

    ``mlflow run`` logs the entry point's parameters as the user spelled them (``her=yes``);
    logging the resolved ``her=True`` on top would fail with "Changing param values is not
    allowed". The resolved values are in the ``config.json`` artifact and ``harness.*`` tags.
    """
    client = MlflowClient()
    existing = client.get_run(run_id).data.params
    fresh = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
    for start in range(0, len(fresh), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=fresh[start : start + 100])


def _param_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # 'true'/'false', as MLproject users spell them
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def log_metrics_at(run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log several metrics at one step with a single write (one SQLite transaction)."""
    timestamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), timestamp, int(step)) for k, v in metrics.items() if _is_loggable(v)]
    if batch:
        with_retry(lambda: MlflowClient().log_batch(run_id, metrics=batch))


def with_retry(write, attempts: int = 8, first_wait: float = 0.2):
    """Run a store write, retrying while SQLite reports "database is locked".

    Pipeline workers share one SQLite file; SQLite lets one writer in at a time and the others
    time out after a few seconds under heavy load. A metric batch is retried with backoff
    instead of failing the training or being dropped.
    """
    for attempt in range(attempts):
        try:
            return write()
        except MlflowException as exc:
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(first_wait * 2**attempt)


def _is_loggable(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return not math.isnan(number) and not isinstance(value, (str, bytes))


class MLflowOutputFormat(KVWriter):
    """An SB3 logger output: every numeric key SB3 dumps (``rollout/success_rate``,
    ``train/actor_loss``, ``time/fps``, ...) becomes an MLflow metric at ``step`` = env steps."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.latest: dict[str, float] = {}

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        metrics = {
            key: value
            for key, value in key_values.items()
            if not (key_excluded.get(key) and "mlflow" in key_excluded[key])
        }
        log_metrics_at(self.run_id, metrics, step)
        self.latest.update({k: float(v) for k, v in metrics.items() if _is_loggable(v)})

    def close(self) -> None:
        pass


def looks_like_run_id(text: str) -> bool:
    return len(text) == RUN_ID_LENGTH and all(c in "0123456789abcdef" for c in text)


def get_run(run_id: str):
    """The run with this id, or a HarnessError naming the store that was searched."""
    prepare_store()
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise HarnessError(f"no MLflow run with id '{run_id}' in tracking store {mlflow.get_tracking_uri()}") from None


def all_experiment_ids() -> list[str]:
    return [e.experiment_id for e in MlflowClient().search_experiments()]


def experiment_ids(experiment: str | None) -> list[str]:
    """The named experiment's id, or every active experiment when none is named."""
    prepare_store()
    if experiment is None:
        return all_experiment_ids()
    found = MlflowClient().get_experiment_by_name(experiment)
    if found is None:
        raise HarnessError(f"no MLflow experiment named '{experiment}' in {mlflow.get_tracking_uri()}")
    return [found.experiment_id]


def tag_filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.\"{k}\" = '{v}'" for k, v in tags.items())
