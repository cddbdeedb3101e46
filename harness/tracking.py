"""MLflow glue: runs that always end in a definite status, SB3 metrics into MLflow, run look-ups.

The tracking store is whatever MLflow resolves: ``MLFLOW_TRACKING_URI`` if set, else MLflow 3's
default ``sqlite:///mlflow.db`` in the working directory. Under ``mlflow run`` the variable
``MLFLOW_RUN_ID`` is set and :func:`tracked_run` attaches to that run instead of making another.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Mapping, Sequence

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import schema, views
from harness.credentials import redact
from harness.errors import HarnessError, Terminated, first_line, install_stop_handlers
from harness.identity import EVALUATED_TAG, KIND_TAG, PARENT_RUN_ID_TAG, RUN_NAME_TAG
from harness.provenance import provenance_tags

DEFAULT_EXPERIMENT = "ch04-her-sparse-reach-push"
# Runs whose experiment gets the MLflow UI's "HER vs no-HER" view (harness.views), where the printed links lead.
VIEWED_KINDS = ("train", "compare", "pipeline")


def on_server() -> bool:
    """True when runs go to a tracking server, which workers on other machines may share."""
    return mlflow.get_tracking_uri().startswith(("http://", "https://"))


def absolute_tracking_uri() -> str:
    """The tracking URI for another process that may start in another directory (a pipeline's
    worker, a Ray task, a reproduction in a temporary directory): a relative SQLite path is resolved."""
    uri = mlflow.get_tracking_uri()
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        query = uri.partition("?")[1] + uri.partition("?")[2]
        return "sqlite:///" + str(path.resolve()) + query
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, without its query (``?timeout=30`` is SQLite's
    connection option, not part of the file name); None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].partition("?")[0])


def in_memory(uri: str) -> bool:
    """A SQLite URI whose database lives in the process's memory (``sqlite://``, ``sqlite:///:memory:``,
    ``mode=memory``): everything logged to it vanishes when the process exits."""
    if not uri.startswith("sqlite:"):
        return False
    location, _, query = uri[len("sqlite:") :].partition("?")
    path = location.removeprefix("///") if location.startswith("///") else location.removeprefix("//")
    return path in ("", ":memory:") or path.startswith("file::memory:") or "mode=memory" in query


def credential_variables() -> dict[str, str]:
    """MLflow's credential variables, for a worker on another machine (they are not in the URI:
    see :mod:`harness.credentials`)."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    return {name: os.environ[name] for name in names if name in os.environ}


class MissingStore(HarnessError):
    """A command that reads what was logged found no SQLite store at the path (a typo, another directory)."""


def prepare_store(create: bool = True) -> None:
    """Check that the tracking store can be used, once per store and process, before any work starts:
    a server must answer within seconds; a SQLite store is created or migrated (see
    :func:`prepare_sqlite`). ``create=False``, for commands that read what was logged (compare,
    register, reproduce, loading a run's checkpoint): a missing SQLite file is :class:`MissingStore`,
    never a new empty store and its directories at a mistyped path."""
    uri = mlflow.get_tracking_uri()
    if uri in _ready_stores:
        return
    db_path = sqlite_path(uri)
    if not create and db_path is not None and not db_path.exists():
        raise MissingStore(
            f"tracking store {db_path} does not exist, so nothing is logged there; check MLFLOW_TRACKING_URI "
            f"({uri}) or the directory, or train first"
        )
    if in_memory(uri):
        raise HarnessError(
            f"tracking store {uri} is held in memory and vanishes when this command exits, with every run "
            "logged to it; point MLFLOW_TRACKING_URI at a sqlite:///path/mlflow.db file or a tracking server"
        )
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        check_credentials(uri)
    elif sqlite_path(uri) is not None:
        prepare_sqlite(sqlite_path(uri))
    else:
        check_database(uri)
        try:  # a database server, a file store, or an unknown scheme
            MlflowClient().search_experiments(max_results=1)
        except ImportError as exc:
            raise HarnessError(f"tracking store {uri} needs the Python module '{exc.name}', which is not installed") from None
        except MlflowException as exc:
            raise HarnessError(f"tracking store {uri} cannot be used: {first_line(exc.message)}") from None
        except Exception as exc:
            raise HarnessError(f"tracking store {uri} cannot be used: {first_line(exc) or type(exc).__name__}") from None
    _ready_stores.add(uri)
    if os.environ.get("MLFLOW_RUN_ID") and mlflow.active_run() is None:
        check_attachable(os.environ["MLFLOW_RUN_ID"])  # a leftover: refused before any work or file


def check_store_writable() -> None:
    """A SQLite store that cannot be written (a read-only file or mount), said before minutes of work
    whose results could not be logged; a server's store is known only by writing to it."""
    uri = mlflow.get_tracking_uri()
    db_path = sqlite_path(uri)
    if db_path is None:
        return
    for path in (db_path, db_path.parent):  # SQLite writes a journal next to the database
        if not os.access(path, os.W_OK):
            raise HarnessError(
                f"tracking store {db_path} is read-only ({path} cannot be written): nothing could "
                "be logged to it; make it writable or point MLFLOW_TRACKING_URI at a writable store"
            )


def ask_health(uri: str, timeout_s: float) -> int | str:
    """``GET <uri>/health`` of an MLflow server: the HTTP status it answered, or why none came. The one
    health check of a tracking server (:func:`check_server`, and ``harness server start`` waiting for its own)."""
    import requests

    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).status_code
    except requests.Timeout:
        return f"no answer within {timeout_s:g}s"
    except requests.RequestException:
        return "connection failed"


def check_server(uri: str, timeout_s: float = 5.0) -> None:
    """MLflow retries a silent server for minutes before it fails; one request says it at once."""
    answer = ask_health(uri, timeout_s)
    if isinstance(answer, str):
        raise HarnessError(
            f"tracking server {uri} does not answer ({answer}); start it, or point MLFLOW_TRACKING_URI "
            "at a running server or at a sqlite:///path/mlflow.db file"
        )


DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_database(uri: str, timeout_s: float = 5.0) -> None:
    """MLflow retries a database it cannot reach for about two minutes; one connection attempt says
    it at once. URIs without a host (a local Unix socket) are left to MLflow."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    dialect = parts.scheme.split("+")[0]
    if dialect not in DATABASE_PORTS or not parts.hostname:
        return
    import sqlalchemy

    try:  # the driver first (no connection made): without it a running database does not help
        sqlalchemy.create_engine(uri).dispose()
    except ImportError as exc:
        raise HarnessError(
            f"tracking store {redact(uri)} needs the Python module '{exc.name}', which is not installed"
        ) from None
    try:
        port = parts.port or DATABASE_PORTS[dialect]
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        reason = f"no answer within {timeout_s:g}s" if isinstance(exc, TimeoutError) else "connection failed"
        raise HarnessError(
            f"tracking database {redact(uri)} does not answer ({reason}); start it, or point "
            "MLFLOW_TRACKING_URI at a running server or at a sqlite:///path/mlflow.db file"
        ) from None


def check_credentials(uri: str) -> None:
    """A server with MLflow's basic-auth app answers 401 without a user it knows: said at once, in one line."""
    try:
        MlflowClient().search_experiments(max_results=1)
    except MlflowException as exc:
        if "401" in str(exc.message) or getattr(exc, "error_code", "") == "UNAUTHENTICATED":
            given = "the user in MLFLOW_TRACKING_USERNAME" if os.environ.get("MLFLOW_TRACKING_USERNAME") else "no user"
            raise HarnessError(
                f"tracking server {uri} refused {given} (401 Unauthorized); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account on it"
            ) from None
        if "403" in str(exc.message):
            raise HarnessError(
                f"tracking server {uri} does not let user '{os.environ.get('MLFLOW_TRACKING_USERNAME')}' "
                "read its experiments (403 Forbidden); ask its admin for permission"
            ) from None
        raise


def prepare_sqlite(db_path: Path) -> None:
    """Create or migrate a SQLite store under a file lock.

    MLflow builds (or upgrades) the schema on first use; two processes doing that at once on a new
    ``mlflow.db`` fail with "table _alembic_tmp_experiments already exists". A new store is built
    under another name and renamed into place, so an interruption (Ctrl-C) never leaves a
    half-made schema that every later command would trip on.
    """
    where = "point MLFLOW_TRACKING_URI at a usable sqlite:///path/mlflow.db"
    if db_path.is_dir():
        raise HarnessError(f"tracking store {db_path} is a directory, not an SQLite file; {where}")
    exists = db_path.is_file() and db_path.stat().st_size > 0
    if exists:
        try:
            with open(db_path, "rb") as db:
                header = db.read(16)
        except OSError as exc:
            raise HarnessError(f"tracking store {db_path} cannot be read ({exc.strerror}); {where}") from None
        if header != b"SQLite format 3\x00":
            raise HarnessError(f"tracking store {db_path} is not an SQLite database; move it away or {where}")
        check_not_truncated(db_path)
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(db_path.with_name(db_path.name + ".lock"), "w")
    except OSError as exc:
        if not exists:
            raise HarnessError(f"cannot create tracking store {db_path} ({exc.strerror}); {where}") from None
        lock = None  # a read-only directory: an existing store can still be read
    try:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Another process may have built the store while we waited: building it again and renaming
            # it over that one would cut that process off its open database ("readonly database").
            exists = db_path.is_file() and db_path.stat().st_size > 0
        if exists:
            schema.check_revision(str(db_path), schema.sqlite_revision(db_path), upgrade_command(db_path))
            MlflowClient().search_experiments(max_results=1)
        else:
            building = db_path.with_name(f".{db_path.name}.creating")
            building.unlink(missing_ok=True)  # what an interrupted creation left
            MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments(max_results=1)
            put_in_place(building, db_path)
    except MlflowException as exc:
        raise HarnessError(f"tracking store {db_path} cannot be used ({first_line(exc.message)}); {where}") from None
    finally:
        if lock is not None:
            lock.close()  # closing releases the flock


def upgrade_command(db_path: Path) -> str:
    return f"harness store upgrade --store sqlite:///{db_path}"


def put_in_place(building: Path, db_path: Path) -> None:
    """Give the new store its name unless something made one meanwhile. A plain MLflow client (``mlflow
    ui``) does not take our lock: renaming over the store it just opened would corrupt it for good."""
    try:
        os.link(building, db_path)  # fails if the name exists: never replaces a store
    except FileExistsError:
        pass  # theirs stays; ours is thrown away and theirs is used (and migrated) from here on
    except OSError:  # a filesystem without hard links
        if db_path.exists():
            building.unlink(missing_ok=True)
            return
        os.replace(building, db_path)
        return
    building.unlink(missing_ok=True)
    if db_path.stat().st_size > 0:
        MlflowClient().search_experiments(max_results=1)


def check_not_truncated(db_path: Path) -> None:
    """A store cut short (a copy or disk that ran out) is named as damaged at once: SQLite's header
    says how many pages the file has; a shorter file lost the rest."""
    with open(db_path, "rb") as db:
        header = db.read(100)
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # the header's page count is valid only when its change counter matches (bytes 24 and 92)
    if len(header) == 100 and header[24:28] == header[92:96] and pages and db_path.stat().st_size < pages * page_size:
        raise HarnessError(
            f"tracking store {db_path} is damaged: {db_path.stat().st_size} bytes of the "
            f"{pages * page_size} its header records (cut short); {DAMAGED_HINT}"
        )


DAMAGED_HINT = "restore it from a backup, or move it away (sqlite3's .recover may save its runs) and start a new store"


def check_integrity() -> None:
    """SQLite's quick_check on a SQLite store, before a training spends minutes on it (about a
    second per 30 MB; other commands rely on SQLite's own errors)."""
    import sqlite3

    uri = mlflow.get_tracking_uri()
    db_path = sqlite_path(uri)
    if db_path is None:
        return
    try:
        with contextlib.closing(schema.read_only(db_path)) as db:
            problems = [line.strip() for row in db.execute("PRAGMA quick_check(3)") for line in row[0].splitlines()]
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    problems = [line for line in problems if line and not line.startswith("***")]
    if problems != ["ok"]:
        raise HarnessError(f"tracking store {db_path} is damaged (SQLite: {'; '.join(problems[:2])}); {DAMAGED_HINT}")


# The stores this process has checked (prepare_store): each is checked once, the first time it is used.
_ready_stores: set[str] = set()


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


def check_attachable(run_id: str) -> None:
    """``MLFLOW_RUN_ID`` is how ``mlflow run`` hands its entry point the run it started (RUNNING).
    One left over in a shell would make a new training write into an old, finished run."""
    run = find_run(run_id)
    leftover = "it is how `mlflow run` hands over the run it starts; unset MLFLOW_RUN_ID to start a new run"
    if run is None:
        raise HarnessError(f"MLFLOW_RUN_ID={run_id} names no run in {mlflow.get_tracking_uri()}; {leftover}")
    if run.info.status != "RUNNING":
        raise HarnessError(f"MLFLOW_RUN_ID={run_id} names a {run.info.status} run, not one being started; {leftover}")


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
    prepare_store()
    # MLflow deletes MLFLOW_RUN_ID once start_run has attached to it, so a run started inside
    # an active one (a pipeline's compare run) is a new nested run, never the parent again.
    nested = mlflow.active_run() is not None
    if os.environ.get("MLFLOW_RUN_ID") and not nested:
        check_attachable(os.environ["MLFLOW_RUN_ID"])
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
            views.publish(run.info.experiment_id)
        yield run
    except (KeyboardInterrupt, Terminated):
        mlflow.end_run("KILLED")  # a second stop signal is ignored meanwhile (harness.errors.raise_terminated)
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
        prepare_store(create=False)
    except MissingStore:
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
    prepare_store()
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


def newest_evaluated_run(tags: Mapping[str, str], experiment_ids: Sequence[str]):
    """The newest FINISHED training run that ``harness eval`` scored and that has ``tags`` (None: none)."""
    runs = search_runs({KIND_TAG: "train", EVALUATED_TAG: "true", **tags}, experiment_ids, status="FINISHED", max_results=1)
    return runs[0] if runs else None


def child_runs(parent_run_id: str, experiment_ids: Sequence[str], kind: str | None = None, status: str | None = None) -> list:
    """A pipeline's child runs (of one ``harness.kind``, in one status), oldest first."""
    tags = {PARENT_RUN_ID_TAG: parent_run_id, **({KIND_TAG: kind} if kind else {})}
    return search_runs(tags, experiment_ids, status=status, order_by=("attributes.start_time ASC",))
