"""The multi-machine set-up for real, on this machine: PostgreSQL, `mlflow server` on it with artifacts
served over HTTP, and a Ray cluster of a head and a second node, each working in its own directory
(they share no files with the driver). A tiny push-all runs through it with the second node killed
mid-training: its run continues on the head from the checkpoint it had sent to the server, and the
other run is reproduced from the server's record. What happened is asked of the server's REST API.
Everything binds to 127.0.0.1 and is stopped at the end."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from harness import postgres, server
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

PIPELINE = [
    "push-all",
    "--seeds",
    "0",
    "--preset",
    "fast",
    "--learning-starts",
    "800",
    "--eval-freq",
    "1600",
    "--checkpoint-freq",
    "800",
    "--n-eval-episodes",
    "2",
    "--workers",
    "2",
    "--executor",
    "ray",
]


def python_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@contextlib.contextmanager
def tracking_server(auth: bool = False):
    try:
        postgres.postgres_bin()
    except Exception as exc:
        pytest.skip(f"{exc}")
    base = Path(tempfile.mkdtemp(prefix="harness-stack-"))  # under /tmp: PostgreSQL's own user must reach it
    os.chmod(base, 0o755)
    started = time.perf_counter()
    try:
        stack = server.start(base / "server", port=server.free_port(), auth=auth)
        print(f"tracking server up in {time.perf_counter() - started:.1f} s")
        yield stack, base
    finally:
        server.stop(base / "server")
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def ray_cluster(base: Path, cpus_per_node: int):
    """A head and a second node (``ray start ... --block`` in their own sessions, so each is killed whole)."""
    port = server.free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        "RAY_worker_niceness": "0",  # Ray's default 15 starves the trainings beside the other test worker
    }
    common = [
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        str(cpus_per_node),
        "--object-store-memory",
        "80000000",
        "--disable-usage-stats",
        "--block",
    ]
    nodes = {}
    started = time.perf_counter()
    try:
        for name, args in (
            (
                "head",
                [
                    "--head",
                    "--port",
                    str(port),
                    "--include-dashboard",
                    "false",
                    "--ray-client-server-port",
                    str(server.free_port()),
                    "--temp-dir",
                    str(base / "ray"),
                ],
            ),
            ("node2", ["--address", f"127.0.0.1:{port}"]),
        ):
            workdir = base / name
            workdir.mkdir()
            nodes[name] = subprocess.Popen(
                [
                    python_bin("ray"),
                    "start",
                    *args,
                    *common,
                    "--dashboard-agent-listen-port",
                    str(server.free_port()),
                    "--metrics-export-port",
                    str(server.free_port()),
                ],
                cwd=workdir,
                env=env,
                stdout=open(base / f"{name}.log", "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if name == "head":
                wait_for(lambda: "Ray runtime started" in (base / "head.log").read_text(), 120, "the Ray head to start")
        wait_for(lambda: alive_nodes(env, port) == 2, 120, "two live Ray nodes")
        print(f"Ray cluster of 2 nodes up in {time.perf_counter() - started:.1f} s")
        yield env, f"127.0.0.1:{port}", nodes
    finally:
        # SIGTERM, then SIGKILL after 5 s: a head whose second node died waits 30 s or more on its own
        for proc in nodes.values():
            server.stop_group(proc.pid, within_s=5)
            proc.wait(timeout=30)


def alive_nodes(env: dict, port: int) -> int:
    script = (
        f"import ray; ray.init(address='127.0.0.1:{port}', log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def rest(stack, method: str, endpoint: str, **kwargs):
    response = requests.request(method, f"{stack.tracking_uri}/api/2.0/mlflow/{endpoint}", timeout=30, **kwargs)
    response.raise_for_status()
    return response.json()


def runs_of(stack, experiment_name: str) -> list[dict]:
    experiment = rest(stack, "GET", "experiments/get-by-name", params={"experiment_name": experiment_name})
    found = rest(
        stack, "POST", "runs/search", json={"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 1000}
    )
    return found.get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def trainings(runs: list[dict]) -> list[dict]:
    return [r for r in runs if tags(r).get("harness.kind") == "train"]


def pipeline(stack, ray_env, address, driver: Path, experiment: str, steps: int):
    env = {k: v for k, v in ray_env.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=stack.tracking_uri, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "entry_points.cli",
            *PIPELINE,
            "--ray-address",
            address,
            "--total-steps",
            str(steps),
            "--experiment",
            experiment,
        ],
        cwd=driver,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def shared_server():
    """One PostgreSQL-backed server (no basic auth) for the tests below that do not need their own."""
    with tracking_server() as (stack, base):
        yield stack, base


def test_push_all_on_a_postgres_tracking_server_and_a_two_node_ray_cluster_survives_losing_a_node(shared_server):
    pytest.importorskip("ray", reason="Ray is part of the test extra: pip install -e '.[test]'")
    pytest.importorskip("psycopg", reason="psycopg is part of the test extra: pip install -e '.[test]'")
    stack, base = shared_server
    with ray_cluster(base, cpus_per_node=max(1, (os.cpu_count() or 2) // 2)) as (ray_env, address, nodes):
        driver = base / "driver"
        driver.mkdir()

        # The whole pipeline through the cluster, logged to the server only (one training per node); the
        # second node dies mid-training, after sending a resumable checkpoint to the server. 4000 steps: after
        # its checkpoint at 800, node 2 has 3200 to go (10 s or more), time for the kill to land.
        started = time.perf_counter()
        proc = pipeline(stack, ray_env, address, driver, "stack", 4000)
        try:

            def checkpoint_sent() -> bool:
                for local in (base / "node2" / "checkpoints" / "resume").glob("*/step_*[0-9]"):
                    run_id = local.parent.name
                    listed = requests.get(
                        f"{stack.tracking_uri}/api/2.0/mlflow/artifacts/list",
                        timeout=30,
                        params={"run_id": run_id, "path": "resume"},
                    ).json()
                    if any(f["path"] == "resume/step.json" for f in listed.get("files", [])):
                        return True
                return False

            wait_for(lambda: checkpoint_sent() or proc.poll() is not None, 600, "a checkpoint sent from node 2")
            assert proc.poll() is None, "the pipeline ended before node 2 sent a checkpoint"
            (lost_run_id,) = {p.parent.name for p in (base / "node2" / "checkpoints" / "resume").glob("*/step_*[0-9]")}
            os.killpg(nodes["node2"].pid, signal.SIGKILL)
            killed_at = time.perf_counter()
            out, _ = proc.communicate(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, out
        print(
            f"push-all (2 trainings, 2 evaluations, compare) through Ray in {time.perf_counter() - started:.1f} s, "
            f"{time.perf_counter() - killed_at:.1f} s of it after node 2 was killed"
        )
        runs = runs_of(stack, "stack")
        assert runs and all(r["info"]["status"] == "FINISHED" for r in runs)  # none left RUNNING
        trained = trainings(runs)
        assert sorted((tags(r)["harness.condition"], tags(r)["harness.seed"]) for r in trained) == [
            ("HER", "0"),
            ("no-HER", "0"),
        ]
        assert any(tags(r).get("harness.kind") == "compare" for r in runs)
        # the lost run went on in the head's directory, from the checkpoint it fetched from the server
        (resumed,) = [r for r in trained if r["info"]["run_id"] == lost_run_id]
        assert int(tags(resumed)["harness.resumed_from_step"]) >= 800
        steps = [
            m["step"]
            for m in rest(
                stack, "GET", "metrics/get-history", params={"run_id": lost_run_id, "metric_key": "eval/success_rate"}
            )["metrics"]
        ]
        assert max(steps) >= 4000
        meta = json.loads((base / "head" / "checkpoints" / f"{tags(resumed)['mlflow.runName']}.meta.json").read_text())
        assert meta["run_id"] == lost_run_id
        for run in trained:  # the checkpoint comes back over HTTP, and no resumable one was left behind
            name = tags(run)["mlflow.runName"]
            artifact = requests.get(
                f"{stack.tracking_uri}/get-artifact",
                timeout=30,
                params={"path": f"checkpoint/{name}.zip", "run_uuid": run["info"]["run_id"]},
            )
            assert artifact.status_code == 200 and artifact.content[:2] == b"PK"
            listed = rest(stack, "GET", "artifacts/list", params={"run_id": run["info"]["run_id"]})
            assert "resume" not in {f["path"] for f in listed.get("files", [])}
        # workers wrote in their nodes' directories, never in the driver's: both trainings ended on the head
        assert not list(driver.glob("checkpoints/*.zip")) and not list(base.glob("node2/checkpoints/*.zip"))
        assert len(list(base.glob("head/checkpoints/*.zip"))) == 2
        # the run a Ray worker made without interruption re-makes identically from the server's record
        (uninterrupted,) = [r for r in trained if r["info"]["run_id"] != lost_run_id]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        reproduced = subprocess.run(
            [sys.executable, "-m", "entry_points.cli", "reproduce", uninterrupted["info"]["run_id"]],
            cwd=driver,
            env={**env, "MLFLOW_TRACKING_URI": stack.tracking_uri, "PYTHONPATH": str(PROJECT_ROOT)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert reproduced.returncode == 0, reproduced.stderr
        assert f"# Reproduction of run {uninterrupted['info']['run_id']}: **identical**" in reproduced.stdout


def test_the_database_refuses_a_client_without_its_password_and_the_password_is_never_shown(shared_server):
    import psycopg
    import stat

    stack, base = shared_server
    # the server may already hold the runs of the test above: the password must be in none of their files
    directory = base / "server"
    secret_file = directory / "db-password"
    password = secret_file.read_text().strip()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and len(password) >= 24
    for via in ("127.0.0.1", str(directory / "sockets")):  # TCP and the local socket
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host=via, port=stack.db_port, user="mlflow", dbname="mlflow", connect_timeout=10)
    with psycopg.connect(
        host="127.0.0.1", port=stack.db_port, user="mlflow", dbname="mlflow", password=password, connect_timeout=10
    ) as db:
        assert db.execute("SELECT count(*) FROM experiments").fetchone()[0] >= 1  # mlflow server's schema
    shown = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert password not in shown
    for path in directory.rglob("*"):
        if path.is_file() and path != secret_file and path.stat().st_size < 50_000_000:
            assert password.encode() not in path.read_bytes(), path


def test_server_stop_never_signals_a_process_that_took_a_stale_pid(tmp_path):
    """server.json outlived its server (a reboot, a kill -9) and its pid now names someone else's process
    group: stop leaves it alone and says nothing was running."""
    from tests.conftest import run_cli

    bystander = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        directory = tmp_path / "srv"
        directory.mkdir()
        for started in (0, server.process_start(bystander.pid) + 1):  # a server.json from before the start time, and after
            state = {"directory": str(directory), "host": "127.0.0.1", "port": 5999, "db_port": 5998}
            state.update(server_pid=bystander.pid, server_started=started)
            (directory / "server.json").write_text(json.dumps(state))
            proc = run_cli(["server", "stop", "--dir", str(directory)], tmp_path, "sqlite:///unused.db")
            assert proc.stdout.strip() == f"nothing was running from {directory}"
            assert bystander.poll() is None  # not signalled
    finally:
        bystander.kill()
        bystander.wait()


def test_server_start_on_a_taken_port_is_one_line_and_starts_nothing(tmp_path):
    import socket

    from tests.conftest import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli(["server", "start", "--dir", "srv", "--port", str(port)], tmp_path, "sqlite:///unused.db", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"harness: error: port {port} on 127.0.0.1 is taken (Address already in use); choose another --port"
    ]
    assert not (tmp_path / "srv").exists()
    stopped = run_cli(["server", "stop", "--dir", "srv"], tmp_path, "sqlite:///unused.db")
    assert stopped.stdout.strip() == "nothing was running from srv"


def test_a_server_store_of_an_older_mlflow_is_refused_at_start_and_upgrades_with_a_backup(tmp_path):
    """The database one migration back (as the MLflow release before made it): `harness server start` names
    it in one line and starts nothing; `harness server upgrade` refuses a running server, then backs it up,
    migrates it and keeps its runs."""
    import mlflow
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    from harness import schema
    from tests.conftest import run_cli

    def harness_server(*args):
        return run_cli(["server", *args, "--dir", str(directory)], tmp_path, "sqlite:///unused.db", check=False)

    def one_line(proc) -> str:
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        return line

    with tracking_server() as (stack, base):
        directory = base / "server"
        client = mlflow.MlflowClient(stack.tracking_uri)
        run = client.create_run(client.create_experiment("kept"))
        client.log_metric(run.info.run_id, "eval/success_rate", 0.5, step=7)
        client.set_terminated(run.info.run_id)
        line = one_line(harness_server("upgrade"))
        assert f"the tracking server of {directory} is running (pid {stack.server_pid})" in line

        server.stop(directory)
        head = schema.expected_revision()
        older = ScriptDirectory.from_config(_get_alembic_config(db_url="")).get_revision(head).down_revision
        port, bin_dir = server.free_port(), postgres.postgres_bin()
        postgres.start(directory, bin_dir, port)
        try:
            password = (directory / "db-password").read_text().strip()
            command.downgrade(_get_alembic_config(f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow"), "-1")
        finally:
            postgres.stop(bin_dir, directory / "postgres")

        line = one_line(harness_server("start", "--port", str(server.free_port())))
        assert f"has an older MLflow schema ({older}) than MLflow" in line
        assert line.endswith(f"back it up and upgrade it with: harness server upgrade --dir {directory}")
        assert not (directory / "server.json").exists() and not (directory / "postgres" / "postmaster.pid").exists()

        upgraded = harness_server("upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        assert f"from schema {older} to {head} (" in upgraded.stdout and "1 runs" in upgraded.stdout
        (backup,) = (directory / "backups").glob(f"mlflow-{older}-*.dump")
        assert f"backup (pg_dump custom format): {backup}" in upgraded.stdout and backup.stat().st_size > 0
        assert "nothing to do" in harness_server("upgrade").stdout
        assert not (directory / "postgres" / "postmaster.pid").exists()  # started for the upgrade alone

        restarted = server.start(directory, port=server.free_port())
        history = mlflow.MlflowClient(restarted.tracking_uri).get_metric_history(run.info.run_id, "eval/success_rate")
        assert [(m.step, m.value) for m in history] == [(7, 0.5)]
