"""A tracking server for runs made on several machines: PostgreSQL plus ``mlflow server``.

Workers on other machines cannot share a SQLite file. :func:`start` makes (once) a PostgreSQL
cluster in ``DIR/postgres``, starts it on ``127.0.0.1`` and an ``mlflow server`` on it whose
artifacts live in ``DIR/artifacts`` and travel over HTTP (``--artifacts-destination``: workers
fetch and send checkpoints through the server and share no filesystem with it). What it started is
recorded in ``DIR/server.json``; :func:`stop` stops both. ``harness server start|stop`` and
``make server`` call these; the multi-node test starts its stack the same way. The cluster itself
(made, started, stopped, queried, upgraded) is :mod:`harness.postgres`.

Every connection to the database needs its password (scram-sha-256, the local socket included): any
user of the machine could otherwise rewrite the store, and with it the checkpoint hashes that guard
evaluations. The password is generated on first start into ``DIR/db-password`` (mode 600) and reaches
the mlflow server through its environment; a cluster made by an older harness (``trust``) gets one at
its next start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import postgres, schema
from harness.errors import HarnessError
from harness.atomic_files import process_alive, write_json_atomically
from harness.stores import ask_health

STATE_FILE = "server.json"
ADMIN_USER = "admin"
ADMIN_PASSWORD_FILE = "admin-password"  # the basic-auth app's admin (harness server start --auth)
START_TIMEOUT_S = 120.0  # mlflow server creates its schema in PostgreSQL on first start (~15 s on 2 cores)


@dataclass
class Stack:
    """What :func:`start` started, as recorded in ``DIR/server.json``."""

    directory: str
    host: str
    port: int
    db_port: int
    server_pid: int
    auth: bool = False  # MLflow's basic-auth app in front of the REST API and the UI, + run stamps (server_auth)
    server_started: int = 0
    """When the server process started (clock ticks since boot, /proc/<pid>/stat): a pid the system has
    since given to another process is never signalled as the server (0: a server.json from before)."""

    @property
    def tracking_uri(self) -> str:
        return f"http://{'127.0.0.1' if self.host == '0.0.0.0' else self.host}:{self.port}"

    @property
    def backend_uri(self) -> str:
        """The database's URI without its password (for messages; the server gets :func:`backend_uri_for`)."""
        return f"postgresql://{postgres.DB_USER}@127.0.0.1:{self.db_port}/{postgres.DB_NAME}"

    def backend_uri_for(self, password: str) -> str:
        return f"postgresql://{postgres.DB_USER}:{password}@127.0.0.1:{self.db_port}/{postgres.DB_NAME}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(**extra: str) -> dict[str, str]:
    """The environment an ``mlflow ui`` or ``mlflow server`` of the harness runs in. MLflow 3 also starts
    a job runner with seven huey consumers (eight more interpreters importing MLflow, ~15 s of CPU at every
    start) for its GenAI jobs, which no harness run uses: off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **extra}


def serve_ui(store_uri: str, host: str, port: int, stop_within_s: float = 15.0) -> int:
    """``mlflow ui`` on ``store_uri`` until it exits or this process is stopped (Ctrl-C, SIGTERM, or
    SIGHUP from a closed terminal); then its whole process group goes, so no uvicorn worker keeps the
    port (uvicorn takes SIGHUP as "reload" and stays). The store's URI travels in the environment,
    not on a command line every local user can read. One uvicorn worker, as for ``harness server``:
    ``mlflow ui``'s default of 4 is four more interpreters importing MLflow for one person's browser."""
    env = server_environment(MLFLOW_BACKEND_STORE_URI=store_uri)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", "1"],
        env=env,
        start_new_session=True,
        preexec_fn=terminated_with_parent(),
    )
    try:
        return proc.wait()
    finally:
        stop_group(proc.pid, stop_within_s)


def terminated_with_parent():
    """A ``preexec_fn`` asking Linux to send the child SIGTERM when this process dies, even by SIGKILL
    (``prctl(PR_SET_PDEATHSIG)``), which ``mlflow ui`` forwards to its uvicorn server: ``kill -9`` of
    ``harness ui`` leaves nothing serving on the port. Elsewhere it does nothing."""
    parent = os.getpid()

    def arrange() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_group(pgid: int, within_s: float) -> None:
    """SIGTERM to a process group, SIGKILL to whatever is left of it after ``within_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + within_s
        while time.time() < deadline:
            try:
                os.waitpid(-pgid, os.WNOHANG)  # reap our child so the group can empty
            except ChildProcessError:
                pass
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise HarnessError(f"port {port} on {host} is taken ({exc.strerror}); choose another --port") from None


def read_state(directory: Path) -> Stack | None:
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    return Stack(**json.loads(path.read_text()))


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22; the command name before ')' may hold spaces


def server_running(stack: Stack) -> bool:
    """Whether the process ``server.json`` names is still the tracking server started from there: alive,
    started when recorded, and running ``mlflow server`` (a stale pid may now be anyone's)."""
    if not stack.server_pid or not process_alive(stack.server_pid):
        return False
    if stack.server_started and process_start(stack.server_pid) != stack.server_started:
        return False
    try:
        command = Path(f"/proc/{stack.server_pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"mlflow" in command and b"server" in command


def start(directory: Path, port: int = 5000, host: str = "127.0.0.1", db_port: int | None = None, auth: bool = False) -> Stack:
    """Start PostgreSQL and the tracking server in ``directory`` (made on first use); returns what runs.
    ``auth``: MLflow's basic-auth app (:func:`auth_environment`) with the stamp of who made each run
    (:mod:`harness.server_auth`)."""
    directory = directory.resolve()
    running = read_state(directory)
    if running is not None and server_running(running):
        raise HarnessError(
            f"a tracking server from {directory} is already running at {running.tracking_uri} "
            f"(pid {running.server_pid}); `harness server stop --dir {directory}` stops it"
        )
    check_port_free(host, port)
    bin_dir = postgres.postgres_bin()
    data = directory / "postgres"
    sockets = directory / "sockets"
    account = postgres.db_account()
    directory.mkdir(parents=True, exist_ok=True)
    for path in (data, sockets):
        path.mkdir(exist_ok=True)
        if account:
            shutil.chown(path, account)
    if account and subprocess.run(["runuser", "-u", account, "--", "test", "-w", str(data)]).returncode != 0:
        raise HarnessError(
            f"PostgreSQL runs as user '{account}' (not as root), who cannot reach {data}; "
            "choose a --dir that user can enter (not under /root)"
        )
    if account:
        os.chmod(data, 0o700)
    fresh = not (data / "PG_VERSION").is_file()
    password = postgres.db_password(directory, account)
    if fresh:  # password authentication for every connection, local socket included
        postgres.init_cluster(directory, bin_dir)
    db_port = db_port or free_port()
    postgres.start(directory, bin_dir, db_port)
    try:
        if postgres.trusts_everyone(data):  # a cluster made by an older harness: give it the password, then require it
            postgres.require_password(bin_dir, data, db_port, password)
        postgres.create_database(bin_dir, db_port, password)
        stack = Stack(str(directory), host, port, db_port, 0, auth)
        # An older MLflow's schema: mlflow server would refuse it after seconds of start-up, in its log.
        revision = postgres.database_revision(bin_dir, db_port, password)
        schema.check_revision(f"{stack.backend_uri} (of {directory})", revision, postgres.upgrade_command(directory))
        log = open(directory / "mlflow-server.log", "ab")
        # The password reaches the server through its environment, not a command line `ps` shows.
        env = server_environment(
            MLFLOW_BACKEND_STORE_URI=stack.backend_uri_for(password), **(auth_environment(directory) if auth else {})
        )
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                *(["--app-name", "harness-auth"] if auth else []),  # harness.server_auth
                "--artifacts-destination",
                str(directory / "artifacts"),
                "--host",
                host,
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            umask=0o077,  # what the server writes (its users' database and journals included) is the owner's only
        )
        stack.server_pid = server.pid
        stack.server_started = process_start(server.pid) or 0
        write_json_atomically(directory / STATE_FILE, asdict(stack))
        deadline = time.time() + START_TIMEOUT_S
        while ask_health(stack.tracking_uri, timeout_s=2) != 200:
            if server.poll() is not None or time.time() > deadline:
                last = postgres.last_line(directory / "mlflow-server.log")
                why = f"exited ({last})" if server.poll() is not None else f"did not answer within {START_TIMEOUT_S:.0f} s"
                raise HarnessError(f"mlflow server on port {port} {why}; log: {directory / 'mlflow-server.log'}")
            time.sleep(0.5)
    except BaseException:
        stop(directory)
        raise
    return stack


def upgrade(directory: Path) -> schema.Upgraded | None:
    """Back up (``pg_dump``) and upgrade the mlflow database of a stopped ``harness server`` in ``directory``;
    None when it already has the schema the installed MLflow uses. Starts PostgreSQL for the upgrade only
    and stops it after; refuses while its tracking server or PostgreSQL runs (they may have clients)."""
    directory = directory.resolve()
    running = read_state(directory)
    if running is not None and server_running(running):
        raise HarnessError(
            f"the tracking server of {directory} is running (pid {running.server_pid}) and its clients may be "
            f"writing; stop it first (harness server stop --dir {directory}), then upgrade"
        )
    data = directory / "postgres"
    if not (data / "PG_VERSION").is_file():
        raise HarnessError(f"{directory} has no PostgreSQL cluster of harness server ({data} is empty); nothing to upgrade")
    if (data / "postmaster.pid").is_file():
        raise HarnessError(
            f"PostgreSQL in {data} is running (another client may be using it); stop it first "
            f"(harness server stop --dir {directory}), then upgrade"
        )
    bin_dir, account = postgres.postgres_bin(), postgres.db_account()
    password = postgres.db_password(directory, account)
    db_port = free_port()
    postgres.start(directory, bin_dir, db_port)
    try:
        return postgres.upgrade_database(directory, bin_dir, db_port, password, account)
    finally:
        postgres.stop(bin_dir, data)


def auth_environment(directory: Path) -> dict[str, str]:
    """MLflow's basic-auth app: users in ``DIR/basic_auth.db`` (mode 600), an admin ``admin`` whose generated
    password is kept in ``DIR/admin-password`` (mode 600), READ for users the admin has not granted
    more, and the Flask secret its CSRF tokens need (kept too, so a restart keeps sessions valid)."""
    config = directory / "basic_auth.ini"
    users = directory / "basic_auth.db"  # password hashes: made here, mode 600, before MLflow fills it
    if not users.exists():
        os.close(os.open(users, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.chmod(users, 0o600)  # also one an older harness left at the umask's mode
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{users}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": postgres.kept_secret(directory / ADMIN_PASSWORD_FILE),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": postgres.kept_secret(directory / "flask-secret"),
    }


def stop(directory: Path) -> bool:
    """Stop the tracking server and PostgreSQL started from ``directory``; False if nothing ran."""
    directory = directory.resolve()
    stopped = False
    stack = read_state(directory)
    if stack is not None and server_running(stack):
        try:
            os.killpg(stack.server_pid, signal.SIGTERM)  # the server and its uvicorn worker
        except ProcessLookupError:
            pass
        deadline = time.time() + 20
        while process_alive(stack.server_pid) and time.time() < deadline:
            time.sleep(0.2)
        if process_alive(stack.server_pid):
            os.killpg(stack.server_pid, signal.SIGKILL)
        stopped = True
    (directory / STATE_FILE).unlink(missing_ok=True)
    data = directory / "postgres"
    if (data / "postmaster.pid").is_file():
        postgres.stop(postgres.postgres_bin(), data)
        stopped = True
    return stopped
