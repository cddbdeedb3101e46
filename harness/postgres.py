"""The PostgreSQL cluster under ``harness server``: made, started and stopped, password-protected, queried,
and its mlflow database upgraded with a backup.

PostgreSQL refuses to run as root: under root its commands run as the ``postgres`` user that Debian's package
creates (or ``nobody``), who must be able to reach ``DIR``. Every connection needs the password (scram-sha-256,
the local socket included), generated on first start into ``DIR/db-password`` (mode 600), passed through the
environment, never a command line.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import schema
from harness.errors import HarnessError, first_line

PASSWORD_FILE = "db-password"
DB_NAME = DB_USER = "mlflow"


def db_password(directory: Path, account: str | None) -> str:
    """The database user's password: generated on first start, kept in ``DIR/db-password`` with mode
    600 (owned by the user PostgreSQL runs as, who reads it at initdb), never printed or logged."""
    return kept_secret(directory / PASSWORD_FILE, account)


def kept_secret(path: Path, account: str | None = None) -> str:
    """A generated secret kept in ``path`` (mode 600), made on first use."""
    if not path.is_file():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        if account:
            shutil.chown(path, account)
    return path.read_text().strip()


def postgres_bin() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``createdb`` (resolved through symlinks: an
    image may link only ``pg_ctl`` onto the PATH), else where Debian installs them."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)]
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "createdb")):
            return candidate
    raise HarnessError(
        "PostgreSQL is not installed (no initdb, pg_ctl and createdb on the PATH or in "
        "/usr/lib/postgresql/*/bin); install Debian's postgresql package (make server does, as root)"
    )


def db_account() -> str | None:
    """The user PostgreSQL runs as when we are root (it refuses root); None: as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise HarnessError("PostgreSQL will not run as root and there is no 'postgres' or 'nobody' user to run it as")


def as_db_account(args: list[str]) -> list[str]:
    account = db_account()
    return ["runuser", "-u", account, "--", *args] if account else args


def run_as_db_account(args: list[str], what: str) -> None:
    proc = subprocess.run(as_db_account(args), capture_output=True, text=True)
    if proc.returncode != 0:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise HarnessError(f"{what} failed: {last}")


def init_cluster(directory: Path, bin_dir: Path) -> None:
    """``initdb`` of ``DIR/postgres`` with password authentication for every connection (``DIR/db-password``)."""
    run_as_db_account(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(directory / "postgres"),
            "-U",
            DB_USER,
            "--auth=scram-sha-256",
            f"--pwfile={directory / PASSWORD_FILE}",
            "-E",
            "UTF8",
        ],
        "initdb (creating the PostgreSQL cluster)",
    )


def create_database(bin_dir: Path, db_port: int, password: str) -> None:
    """The mlflow database, unless it is there already."""
    created = subprocess.run(
        as_db_account([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(db_port), "-U", DB_USER, DB_NAME]),
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
    )
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise HarnessError(f"creating the mlflow database failed: {created.stderr.strip()}")


def start(directory: Path, bin_dir: Path, db_port: int) -> None:
    """Start the cluster in ``DIR/postgres`` on ``127.0.0.1:db_port`` (its sockets in ``DIR/sockets``)."""
    db_log = directory / "postgres.log"
    db_log.touch()
    account = db_account()
    if account:
        shutil.chown(db_log, account)
    try:
        run_as_db_account(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(directory / "postgres"),
                "-l",
                str(db_log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {db_port} -h 127.0.0.1 -k {directory / 'sockets'}",
                "start",
            ],
            f"starting PostgreSQL on port {db_port}",
        )
    except HarnessError as exc:
        raise HarnessError(f"{exc} ({last_line(db_log)})") from None


def stop(bin_dir: Path, data: Path) -> None:
    subprocess.run(as_db_account([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)


def upgrade_command(directory: Path) -> str:
    return f"harness server upgrade --dir {directory}"


def psql(bin_dir: Path, db_port: int, password: str, sql: str, database: str = DB_NAME) -> subprocess.CompletedProcess:
    """One SQL statement as the database user; unaligned, tuples only. The password goes through the
    environment, never a command line."""
    return subprocess.run(
        as_db_account(
            [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(db_port), "-U", DB_USER, "-d", database, "-tAX", "-c", sql]
        ),
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
    )


def query(bin_dir: Path, db_port: int, password: str, sql: str, database: str = DB_NAME) -> str:
    done = psql(bin_dir, db_port, password, sql, database)
    if done.returncode != 0:
        raise HarnessError(f"PostgreSQL query failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout.strip()


def database_revision(bin_dir: Path, db_port: int, password: str) -> str | None:
    """The MLflow schema revision of the mlflow database (None: no schema yet)."""
    done = psql(bin_dir, db_port, password, "SELECT version_num FROM alembic_version")
    if done.returncode != 0:
        if "does not exist" in done.stderr:
            return None
        raise HarnessError(f"reading the schema version failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout.strip() or None


def upgrade_database(
    directory: Path, bin_dir: Path, db_port: int, password: str, account: str | None
) -> schema.Upgraded | None:
    store = f"postgresql://{DB_USER}@127.0.0.1:{db_port}/{DB_NAME} (of {directory})"
    old, new = database_revision(bin_dir, db_port, password), schema.expected_revision()
    if old is None:
        raise HarnessError(f"the mlflow database of {directory} holds no MLflow schema yet; nothing to upgrade")
    if old == new:
        return None
    if not schema.known_revision(old):
        schema.check_revision(store, old, upgrade_command(directory))  # a newer MLflow's: one line, no change
    connected = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{DB_NAME}' AND pid <> pg_backend_pid()"
    others = query(bin_dir, db_port, password, connected)
    if others != "0":
        raise HarnessError(f"{others} other client(s) are connected to the mlflow database of {directory}; stop them first")
    tables = set(query(bin_dir, db_port, password, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split())

    def row_counts() -> dict[str, int]:
        kept = [t for t in schema.KEPT_TABLES if t in tables]
        return {t: int(query(bin_dir, db_port, password, f'SELECT count(*) FROM "{t}"')) for t in kept}

    rows = row_counts()
    backups = directory / "backups"
    backups.mkdir(exist_ok=True)
    if account:
        shutil.chown(backups, account)
    backup = backups / f"mlflow-{old}-{time.strftime('%Y%m%d-%H%M%S')}.dump"
    dumped = subprocess.run(
        as_db_account(
            [str(bin_dir / "pg_dump"), "-h", "127.0.0.1", "-p", str(db_port), "-U", DB_USER, "-Fc", "-f", str(backup), DB_NAME]
        ),
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
    )
    if dumped.returncode != 0:
        raise HarnessError(f"pg_dump failed ({(dumped.stderr.strip().splitlines() or ['?'])[-1]}); nothing was upgraded")
    migrated = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", f"postgresql://{DB_USER}@127.0.0.1:{db_port}/{DB_NAME}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PGPASSWORD": password},
    )
    after = database_revision(bin_dir, db_port, password)
    if migrated.returncode != 0 or after != new:
        why = first_line(migrated.stderr.strip().splitlines()[-1] if migrated.stderr.strip() else f"schema {after}")
        state = "PostgreSQL rolled it back, the store is as it was" if after == old else f"the store is at schema {after}"
        raise HarnessError(f"mlflow db upgrade failed on {store} ({why}); {state}; backup: {backup}")
    lost = {t: (n, m) for t, n in rows.items() if (m := row_counts()[t]) < n}
    if lost:
        raise HarnessError(f"the upgrade of {store} lost rows {lost}; restore the backup {backup} (docs/pipelines.md)")
    return schema.Upgraded(store, old, new, backup, rows)


def trusts_everyone(data: Path) -> bool:
    hba = data / "pg_hba.conf"
    return any(
        line.split()[-1:] == ["trust"]
        for line in hba.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )


def require_password(bin_dir: Path, data: Path, db_port: int, password: str) -> None:
    """Set the password (still over trust, the SQL on stdin, not a command line), then switch every
    pg_hba.conf rule to scram-sha-256 and reload."""
    sql = f"SET password_encryption = 'scram-sha-256'; ALTER USER {DB_USER} WITH PASSWORD '{password}';"
    proc = subprocess.run(
        as_db_account(
            [
                str(bin_dir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(db_port),
                "-U",
                DB_USER,
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-f",
                "-",
            ]
        ),
        input=sql,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise HarnessError(f"setting the database password failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    hba = data / "pg_hba.conf"
    lines = [
        line.rsplit(None, 1)[0] + " scram-sha-256"
        if line.split()[-1:] == ["trust"] and not line.lstrip().startswith("#")
        else line
        for line in hba.read_text().splitlines()
    ]
    hba.write_text("\n".join(lines) + "\n")
    run_as_db_account([str(bin_dir / "pg_ctl"), "-D", str(data), "reload"], "reloading PostgreSQL's authentication rules")


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "no output"
