"""MLflow runs: runs that always end in a definite status, metrics and params logged, run look-ups.

The store they go to is prepared by :mod:`harness.stores`. Under ``mlflow run`` the variable
``MLFLOW_RUN_ID`` is set and :func:`tracked_run` attaches to that run instead of making another.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from typing import Any
from collections.abc import Iterator, Mapping, Sequence

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import stores, ui_views
from harness.errors import HarnessError, Terminated
from harness.stop_signals import install_stop_handlers
from harness.run_schema import KIND_TAG, PARENT_RUN_ID_TAG, RUN_NAME_TAG
from harness.provenance import provenance_tags

DEFAULT_EXPERIMENT = "ch04-her-sparse-reach-push"
# Runs whose experiment gets the MLflow UI's "HER vs no-HER" view (harness.ui_views), where the printed links lead.
VIEWED_KINDS = ("train", "compare", "pipeline")


def use_experiment(name: str) -> None:
    """Make ``name`` the active experiment, creating it if needed; a deleted one is refused with
    how to restore it (MLflow keeps its name reserved until it is purged)."""
    found = MlflowClient().get_experiment_by_name(name)
    if found is not None and found.lifecycle_stage == "deleted":
        raise HarnessError(
            f"MLflow experiment '{name}' is deleted in {mlflow.get_tracking_uri()}; restore it "
            f"(mlflow experiments restore --experiment-id {found.experiment_id}) or pick another name"
        )
    mlflow.set_experiment(name)


# Runs this process ended as KILLED or FAILED (run id -> status), so that the one line the CLI prints
# for an interruption or a fault says which run it affected.
ended_early: dict[str, str] = {}


@contextlib.contextmanager
def tracked_run(
    run_name: str,
    tags: Mapping[str, str],
    experiment: str | None = None,
    run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or, under ``mlflow run``, attach to; or with ``run_id``, reopen) a run and always end
    it with a status. ``system_metrics``: MLflow samples CPU, memory, disk and network into
    ``system/*`` metrics while the run is open (every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
    seconds, 10 by default).

    Normal exit: FINISHED. Ctrl-C, SIGTERM or SIGHUP: KILLED. Any other exception: FAILED. The
    exception is re-raised so the caller decides what the user sees.
    """
    stores.prepare_store()
    # MLflow deletes MLFLOW_RUN_ID once start_run has attached to it, so a run started inside
    # an active one (a pipeline's compare run) is a new nested run, never the parent again.
    nested = mlflow.active_run() is not None
    if os.environ.get("MLFLOW_RUN_ID") and not nested:
        stores.check_attachable(os.environ["MLFLOW_RUN_ID"])
    attached = bool(os.environ.get("MLFLOW_RUN_ID")) or run_id is not None
    if not attached and not nested and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        use_experiment(experiment or DEFAULT_EXPERIMENT)
    elif run_id is not None and not nested:
        # A reopened run (a continued pipeline): runs started inside it (its compare run) go to its
        # experiment, not to whichever one is active (MLflow's "Default").
        mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)
    run = mlflow.start_run(
        run_id=run_id, run_name=None if attached else run_name, nested=nested, log_system_metrics=system_metrics
    )
    previous_handlers = install_stop_handlers()
    try:
        mlflow.set_tags({RUN_NAME_TAG: run_name, **provenance_tags(), **tags})
        if tags.get(KIND_TAG) in VIEWED_KINDS:
            ui_views.publish(run.info.experiment_id)
        yield run
    except (KeyboardInterrupt, Terminated):
        mlflow.end_run("KILLED")  # a second stop signal is ignored meanwhile (harness.stop_signals.raise_terminated)
        ended_early[run.info.run_id] = "KILLED"
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        ended_early[run.info.run_id] = "FAILED"
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


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


def log_metrics_at(run_id: str, metrics: Mapping[str, float], step: int, model_id: str | None = None) -> None:
    """Log several metrics at one step with a single write (one SQLite transaction); with ``model_id``
    they are also the metrics of that logged model (MLflow 3's Models tab lists them)."""
    timestamp = int(time.time() * 1000)
    batch = [Metric(k, float(v), timestamp, int(step), model_id=model_id) for k, v in metrics.items() if is_loggable(v)]
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


def is_loggable(value: Any) -> bool:
    """A number MLflow can store as a metric (not NaN, not a string that parses as one)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return not math.isnan(number) and not isinstance(value, (str, bytes))


def get_run(run_id: str):
    """The run with this id, or a HarnessError naming the store that was searched."""
    run = find_run(run_id)
    if run is None:
        raise HarnessError(f"no MLflow run with id '{run_id}' in tracking store {mlflow.get_tracking_uri()}")
    return run


def find_run(run_id: str):
    """The run with this id, None when the store has no such run, or a HarnessError when it is
    deleted (nothing can be logged to it, and its artifacts may be gone)."""
    try:
        stores.prepare_store(create=False)
    except stores.MissingStore:
        return None  # no store, no run: looking it up never makes one
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage == "deleted":
        raise HarnessError(
            f"MLflow run '{run_id}' is deleted in {mlflow.get_tracking_uri()}; restore it first "
            f"(mlflow runs restore --run-id {run_id})"
        )
    return run


def all_experiment_ids() -> list[str]:
    return [e.experiment_id for e in MlflowClient().search_experiments()]


def experiment_ids(experiment: str | None) -> list[str]:
    """The named experiment's id, or every active experiment when none is named."""
    stores.prepare_store()
    if experiment is None:
        return all_experiment_ids()
    found = MlflowClient().get_experiment_by_name(experiment)
    if found is None:
        raise HarnessError(f"no MLflow experiment named '{experiment}' in {mlflow.get_tracking_uri()}")
    return [found.experiment_id]


def tag_filter(tags: Mapping[str, str]) -> str:
    """An MLflow search filter matching runs with all these tags. A quote cannot be escaped in
    MLflow's filter grammar, and no harness tag holds one, so a value with one is refused."""
    for key, value in tags.items():
        if "'" in value or '"' in value:
            raise HarnessError(f"{key.removeprefix('harness.')} {value!r} contains a quote; no harness run has one")
    return " and ".join(f"tags.\"{k}\" = '{v}'" for k, v in tags.items())


# ---------------------------------------------------------------- finding runs: the one way

NEWEST_FIRST = ("attributes.start_time DESC",)
SEARCH_PAGE = 1000  # runs per request (MLflow's default page)


def search_runs(
    tags: Mapping[str, str],
    experiment_ids: Sequence[str],
    *,
    status: str | None = None,
    unfinished: bool = False,
    order_by: Sequence[str] = NEWEST_FIRST,
    max_results: int | None = None,
) -> list:
    """Runs with all these tags (a :meth:`RunIdentity.tags` dict, ``harness.kind``, ``mlflow.parentRunId``,
    ...), in ``status`` or (``unfinished``) in any status but FINISHED; newest first unless ``order_by``
    says otherwise; all of them (page after page) unless ``max_results`` caps them. Every search the
    harness makes goes through here."""
    clauses = [tag_filter(tags)] if tags else []
    if status is not None:
        clauses.append(f"attributes.status = '{status}'")
    if unfinished:
        clauses.append("attributes.status != 'FINISHED'")
    client, query = MlflowClient(), " and ".join(clauses)
    if max_results is not None:
        return list(client.search_runs(list(experiment_ids), query, order_by=list(order_by), max_results=max_results))
    # MLflow returns one page (1,000 runs by default): a big store would hide the older runs silently.
    runs, token = [], None
    while True:
        page = client.search_runs(
            list(experiment_ids), query, order_by=list(order_by), max_results=SEARCH_PAGE, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_runs(parent_run_id: str, experiment_ids: Sequence[str], kind: str | None = None, status: str | None = None) -> list:
    """A pipeline's child runs (of one ``harness.kind``, in one status), oldest first."""
    tags = {PARENT_RUN_ID_TAG: parent_run_id, **({KIND_TAG: kind} if kind else {})}
    return search_runs(tags, experiment_ids, status=status, order_by=("attributes.start_time ASC",))
