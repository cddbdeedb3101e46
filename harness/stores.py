"""The tracking store: which one MLflow resolves, and whether it can be used, checked before any work.

The store is whatever MLflow resolves: ``MLFLOW_TRACKING_URI`` if set, else MLflow 3's default
``sqlite:///mlflow.db`` in the working directory. :func:`prepare_store` checks it once per process: a
server must answer within seconds (and take the credentials), a database must be reachable, a SQLite
file is created (under a lock and a temporary name) or checked (its header, its length, its schema's
revision); commands that only read never create one. :func:`check_integrity` runs SQLite's quick_check
before a training. A leftover ``MLFLOW_RUN_ID`` is refused here too, before any work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import schema
from harness.credentials import redact
from harness.errors import HarnessError, first_line


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
    if in_memory(uri):
        raise HarnessError(
            f"tracking store {uri} is held in memory and vanishes when this command exits, with every run "
            "logged to it; point MLFLOW_TRACKING_URI at a sqlite:///path/mlflow.db file or a tracking server"
        )
    db_path = sqlite_path(uri)
    if not create and db_path is not None and not db_path.exists():
        raise MissingStore(
            f"tracking store {db_path} does not exist, so nothing is logged there; check MLFLOW_TRACKING_URI "
            f"({uri}) or the directory, or train first"
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


def check_attachable(run_id: str) -> None:
    """``MLFLOW_RUN_ID`` is how ``mlflow run`` hands its entry point the run it started (RUNNING).
    One left over in a shell would make a new training write into an old, finished run."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        run = None
    leftover = "it is how `mlflow run` hands over the run it starts; unset MLFLOW_RUN_ID to start a new run"
    if run is None:
        raise HarnessError(f"MLFLOW_RUN_ID={run_id} names no run in {mlflow.get_tracking_uri()}; {leftover}")
    if run.info.status != "RUNNING":
        raise HarnessError(f"MLFLOW_RUN_ID={run_id} names a {run.info.status} run, not one being started; {leftover}")
