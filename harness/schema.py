"""A store's database schema: which MLflow schema it has, and upgrading it safely.

Each MLflow release that adds a database migration refuses a store made by an older release ("out-of-date
database schema ... run mlflow db upgrade"), and MLflow's upgrade must run with every writer stopped and has
no way back without a backup. ``harness store upgrade`` (a SQLite file) and ``harness server upgrade`` (the
PostgreSQL behind ``harness server``) do it in that order: refuse while any other client has the database
open, take a backup (a copy made through SQLite's backup API, or ``pg_dump``), run MLflow's own migration
(``mlflow db upgrade``), check that every table holds as many rows as before, and say how to roll back. A
failed migration of a SQLite file puts the backup back in place.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError, first_line

# Tables whose rows an upgrade must keep (MLflow's migrations add tables and columns, never drop rows).
KEPT_TABLES = ("experiments", "runs", "metrics", "latest_metrics", "params", "tags", "registered_models", "model_versions")


def expected_revision() -> str:
    """The schema revision the installed MLflow works with."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def read_only(db_path: Path) -> sqlite3.Connection:
    """A read-only connection to the SQLite file at ``db_path``, whatever its name holds: the path goes
    into SQLite's URI percent-encoded, since a '#' or '?' in it would end the file name there (and open,
    or create, another file)."""
    return sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)


def sqlite_revision(db_path: Path) -> str | None:
    """The schema revision of a SQLite store (None: no MLflow schema in it yet)."""
    try:
        with contextlib.closing(read_only(db_path)) as db:
            rows = db.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.OperationalError:  # no such table: an empty or foreign database
        return None
    return rows[0][0] if rows else None


def known_revision(revision: str) -> bool:
    """Whether the installed MLflow's migrations know ``revision`` (False: a newer MLflow made it)."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    try:
        return ScriptDirectory.from_config(_get_alembic_config(db_url="")).get_revision(revision) is not None
    except Exception:  # alembic's errors for an unknown revision differ between versions
        return False


def check_revision(store: str, revision: str | None, upgrade_command: str) -> None:
    """One line for a store whose schema the installed MLflow cannot use: older (say how to upgrade it)
    or newer (made by a later MLflow). None (an empty database) and the expected revision pass."""
    if revision is None or revision == expected_revision():
        return
    if known_revision(revision):
        raise HarnessError(
            f"tracking store {store} has an older MLflow schema ({revision}) than MLflow {mlflow_version()} uses; "
            f"stop every process using it, then back it up and upgrade it with: {upgrade_command}"
        )
    raise HarnessError(
        f"tracking store {store} has MLflow schema {revision}, unknown to the installed MLflow {mlflow_version()} "
        "(a newer MLflow made it); install that MLflow release to use it"
    )


def mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


def processes_using(path: Path) -> list[str]:
    """Other processes with ``path`` (or its -wal/-journal files) open, as 'pid (command)'; Linux's /proc."""
    targets = {str(path.resolve()), *(str(path.resolve()) + suffix for suffix in ("-wal", "-journal", "-shm"))}
    found = []
    for proc in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) in targets for fd in (proc / "fd").iterdir()):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append(f"{proc.name} ({command[:80]})")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@dataclass
class Upgraded:
    store: str
    old: str | None
    new: str
    backup: Path
    rows: dict[str, int]


def table_rows(db: sqlite3.Connection) -> dict[str, int]:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return {table: db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in KEPT_TABLES if table in tables}


def upgrade_sqlite(db_path: Path) -> Upgraded | None:
    """Back up and upgrade a SQLite store; None when it already has the schema MLflow expects."""
    if not db_path.is_file():
        raise HarnessError(f"tracking store {db_path} does not exist; nothing to upgrade")
    with open(db_path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise HarnessError(f"tracking store {db_path} is not an SQLite database; nothing to upgrade")
    old, new = sqlite_revision(db_path), expected_revision()
    if old is None:
        raise HarnessError(f"tracking store {db_path} holds no MLflow schema (no alembic_version table); nothing to upgrade")
    if old == new:
        return None
    users = processes_using(db_path)
    if users:
        raise HarnessError(
            f"tracking store {db_path} is open in {len(users)} other process(es): {', '.join(users[:3])}; "
            "stop them (harness ui, mlflow ui, trainings) and upgrade again"
        )
    backup = db_path.with_name(f"{db_path.name}.backup-{old}-{time.strftime('%Y%m%d-%H%M%S')}")
    with contextlib.closing(sqlite3.connect(db_path, timeout=0.1)) as db:
        try:
            db.execute("BEGIN EXCLUSIVE")  # no other connection may be writing while the copy is made
        except sqlite3.OperationalError:
            raise HarnessError(f"tracking store {db_path} is locked by another client; stop it and upgrade again") from None
        rows = table_rows(db)
        db.rollback()
        with contextlib.closing(sqlite3.connect(backup)) as copy:
            db.backup(copy)
    migrated = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{db_path.resolve()}"],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db_path.resolve()}"},
    )
    after = sqlite_revision(db_path)
    if migrated.returncode != 0 or after != new:
        restore_sqlite(backup, db_path)
        why = first_line(migrated.stderr.strip().splitlines()[-1] if migrated.stderr.strip() else f"schema {after}")
        raise HarnessError(f"mlflow db upgrade failed on {db_path} ({why}); the backup was put back, the store is as it was")
    with contextlib.closing(read_only(db_path)) as db:
        lost = {table: (count, n) for table, count in rows.items() if (n := table_rows(db)[table]) < count}
    if lost:
        restore_sqlite(backup, db_path)
        raise HarnessError(f"the upgrade of {db_path} lost rows ({lost}); the backup was put back, the store is as it was")
    return Upgraded(str(db_path), old, new, backup, rows)


def restore_sqlite(backup: Path, db_path: Path) -> None:
    for suffix in ("-wal", "-journal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(backup)) as source, contextlib.closing(sqlite3.connect(db_path)) as target:
        source.backup(target)
