"""Faults a user meets: interruptions at chosen moments, a dead server, unusable stores and
directories, a full disk, leftovers in the environment, values that pass the CLI's types.

Each ends with one line on stderr naming what went wrong, a non-zero exit, no traceback, no run
left RUNNING and nothing half-written. The read-only and full-disk cases mount a read-only bind or
a tiny tmpfs (root ignores file modes, and this image's Python lives under /root, out of reach of
an unprivileged user); where mounting is not allowed they are skipped with that reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from harness.config import resolve_config
from harness.errors import HarnessError
from tests.conftest import PROJECT_ROOT, TINY, all_runs, clean_env, cli_in_process, run_cli

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out


def harness(args, cwd, store_uri, **extra_env):
    env = {**clean_env(store_uri), "PYTHONPATH": str(PROJECT_ROOT), **extra_env}
    return subprocess.run(
        [sys.executable, "-m", "entry_points.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def one_line_error(proc, expected: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    return lines[0]


def train_tiny(cwd, store, *extra):
    cli_in_process(["train", *TINY, *extra], cwd, store)  # set-up: the faults come after
    (run,) = [r for r in all_runs() if r.data.tags.get("harness.kind") == "train"]
    return run


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"ent_coef": "auto_x"},
            "ent_coef must be a number >= 0, 'auto' or 'auto_<initial value>' such as auto_0.1, got 'auto_x'",
        ),
        ({"ent_coef": "auto_0"}, "got 'auto_0'"),
        ({"ent_coef": -1}, "ent_coef must be a number >= 0, 'auto' or 'auto_<initial value>' such as auto_0.1, got -1.0"),
        ({"learning_rate": float("inf")}, "learning_rate must be a finite number, got inf"),
        ({"action_noise": float("nan")}, "action_noise must be a finite number, got nan"),
        ({"seed": 2**32}, "seed must be in [0, 4294967295] (numpy's seed range), got 4294967296"),
    ],
)
def test_values_that_pass_the_clis_types_are_checked_before_anything_runs(overrides, expected):
    with pytest.raises(HarnessError) as raised:
        resolve_config("fast", "FetchReach-v4", overrides)
    assert str(raised.value) == expected or expected in str(raised.value)
    assert resolve_config("fast", "FetchReach-v4", {"ent_coef": "auto_0.1"}).ent_coef == "auto_0.1"


def test_a_renderer_mujoco_cannot_load_is_one_line_in_train_and_eval(store, tmp_path):
    """MuJoCo reads MUJOCO_GL when it is imported, and an unknown name or a missing library fails there
    with a traceback: the harness names the value and what is accepted, before any run starts."""
    import ctypes.util

    proc = harness(["train", *TINY], tmp_path, store, MUJOCO_GL="nonsense")
    one_line_error(proc, "MUJOCO_GL='nonsense' is not a MuJoCo renderer; accepted: MUJOCO_GL=egl (the harness's")
    assert all_runs() == [] and not (tmp_path / "checkpoints").exists()
    run = train_tiny(tmp_path, store)
    renderer = "osmesa" if ctypes.util.find_library("OSMesa") is None else "nonsense"  # this image has EGL, not OSMesa
    proc = harness(["eval", "--ckpt", run.info.run_id, "--n-episodes", "2"], tmp_path, store, MUJOCO_GL=renderer)
    one_line_error(proc, f"MUJOCO_GL={renderer}" if renderer == "osmesa" else "is not a MuJoCo renderer")
    if renderer == "osmesa":
        assert "needs the OSMesa library, which is not installed here; install it, or unset MUJOCO_GL" in proc.stderr
    assert [r.info.status for r in all_runs()] == ["FINISHED"] and not (tmp_path / "results").exists()


def test_a_dead_tracking_server_is_one_line_and_no_training_starts(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for args in (
        ["train", *TINY],
        ["eval", "--ckpt", "0123456789abcdef0123456789abcdef"],
        ["compare", "--env", "FetchReach-v4"],
    ):
        proc = harness(args, tmp_path, dead)
        one_line_error(proc, f"tracking server {dead} does not answer (connection failed)")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "runs").exists()


def test_stores_that_cannot_be_used_are_named(tmp_path):
    (tmp_path / "dir.db").mkdir()
    (tmp_path / "garbage.db").write_text("not a database")
    compare = ["compare", "--env", "FetchReach-v4"]
    cases = [
        (compare, "dir.db", "is a directory, not an SQLite file"),
        (compare, "garbage.db", "is not an SQLite database; move it away"),
        (["train", *TINY], "garbage.db/sub/mlflow.db", "cannot create tracking store"),  # a command that logs
    ]
    for args, path, expected in cases:
        proc = harness(args, tmp_path, f"sqlite:///{tmp_path / path}")
        one_line_error(proc, expected)
    assert (tmp_path / "garbage.db").read_text() == "not a database"
    for uri, expected in (
        ("bogus://store", "tracking store bogus://store cannot be used: "),
        ("mysql://user@127.0.0.1:1/db", "needs the Python module 'MySQLdb', which is not installed"),
    ):
        one_line_error(harness(["compare", "--env", "FetchReach-v4"], tmp_path, uri), expected)


def test_a_sqlite_uri_with_connection_options_names_the_file_before_the_query(tmp_path):
    uri = f"sqlite:///{tmp_path / 'q.db'}?timeout=30"
    small_store(tmp_path / "q.db")
    one_line_error(harness(["compare", "--env", "FetchReach-v4"], tmp_path, uri), "no finished, evaluated training run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.db", "q.db.lock"]
    from harness.stores import sqlite_path

    assert sqlite_path(uri) == tmp_path / "q.db" and sqlite_path("http://host:5000") is None


def test_commands_that_read_what_was_logged_never_create_a_store_at_a_mistyped_path(tmp_path):
    """compare, register, reproduce and eval of a run id on a path where no store is: one line, and neither
    the file nor its directories are made (train and the pipelines, which log, still create a new store)."""
    typo = tmp_path / "typo" / "dir" / "mlflow.db"
    uri = f"sqlite:///{typo}"
    for args in (["compare", "--env", "FetchReach-v4"], ["register", "--env", "FetchReach-v4"], ["reproduce", "0" * 32]):
        proc = cli_in_process(args, tmp_path, uri, check=False)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
            f"harness: error: tracking store {typo} does not exist, so nothing is logged there; check "
            f"MLFLOW_TRACKING_URI ({uri}) or the directory, or train first"
        ]
    proc = cli_in_process(["eval", "--ckpt", "0" * 32], tmp_path, uri, check=False)
    assert proc.returncode == 1 and f"no MLflow run with id '{'0' * 32}' in tracking store {uri}" in proc.stderr
    assert not (tmp_path / "typo").exists()


def small_store(path: Path) -> None:
    """A real MLflow store with 30 finished runs in it, made by a plain MLflow client."""
    client = mlflow.MlflowClient(f"sqlite:///{path}")
    experiment = client.create_experiment("x")
    for _ in range(30):
        run = client.create_run(experiment)
        client.log_param(run.info.run_id, "p", "v" * 200)
        client.set_terminated(run.info.run_id)


def test_a_damaged_store_is_named_as_damaged_and_no_training_starts_on_it(tmp_path):
    import sqlite3

    small_store(tmp_path / "whole.db")
    whole = (tmp_path / "whole.db").read_bytes()
    (tmp_path / "cut.db").write_bytes(whole[:65536])  # a copy, or a disk, that ran out
    (tmp_path / "bad.db").write_bytes(whole)
    with contextlib.closing(sqlite3.connect(tmp_path / "bad.db")) as db:
        (runs_page,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    with open(tmp_path / "bad.db", "r+b") as db:  # one page of the runs table overwritten
        db.seek((runs_page - 1) * page_size + 8)
        db.write(b"\xff" * 64)
    (tmp_path / "a#b").mkdir()
    (tmp_path / "a#b" / "bad.db").write_bytes((tmp_path / "bad.db").read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    for name, expected in (
        ("cut.db", f"tracking store {tmp_path / 'cut.db'} is damaged: 65536 bytes of the "),
        ("bad.db", f"tracking store {tmp_path / 'bad.db'} is damaged (SQLite: On tree page {runs_page}"),
        # a '#' in the path once ended the file name in SQLite's URI: the check opened (made) another file
        ("a#b/bad.db", f"tracking store {tmp_path / 'a#b' / 'bad.db'} is damaged (SQLite: On tree page {runs_page}"),
    ):
        before = (tmp_path / name).read_bytes()
        line = one_line_error(harness(["train", *TINY], work, f"sqlite:///{tmp_path / name}"), expected)
        assert line.endswith(
            "restore it from a backup, or move it away (sqlite3's .recover may save its runs) and start a new store"
        )
        assert (tmp_path / name).read_bytes() == before and not any(work.iterdir())  # nothing written anywhere
    one_line_error(harness(["compare", "--env", "FetchReach-v4"], work, f"sqlite:///{tmp_path / 'cut.db'}"), "is damaged")


def test_a_store_a_plain_mlflow_client_creates_meanwhile_is_never_replaced(tmp_path, monkeypatch):
    """`mlflow ui` on the same path takes no lock of ours: it can create mlflow.db while the harness
    builds its own under a temporary name. The harness must then use theirs, not rename over it."""
    import harness.stores as stores

    db = tmp_path / "mlflow.db"
    real = stores.put_in_place

    def client_wins_the_race(building, db_path):
        small_store(db_path)  # the other client, between our build and our rename
        real(building, db_path)

    monkeypatch.setattr(stores, "put_in_place", client_wins_the_race)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    try:
        stores.prepare_store()
        stores.check_integrity()  # theirs is whole, and it is the one in place
        client = mlflow.MlflowClient()
        (theirs,) = [e for e in client.search_experiments() if e.name == "x"]
        assert len(client.search_runs([theirs.experiment_id])) == 30
    finally:
        mlflow.set_tracking_uri(None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_ctrl_c_while_a_new_store_is_created_leaves_no_half_made_schema(tmp_path):
    """Ctrl-C lands while MLflow builds a new store's schema: no half-made store is left behind. The
    command is frozen (SIGSTOP) as soon as its temporary store appears, so the Ctrl-C is pending
    while the schema is being made, however busy the machine is; it is delivered on SIGCONT."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**clean_env(store), "PYTHONPATH": str(PROJECT_ROOT)}
    # A shell's background job (a CI runner's, `cmd &` in a script) inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler: Ctrl-C is what a terminal sends, so the test makes one.
    proc = subprocess.Popen(
        [sys.executable, "-m", "entry_points.cli", "train", *TINY],  # a command that logs: it creates the store
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    building = tmp_path / ".mlflow.db.creating"
    deadline = time.time() + 120
    while not building.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGSTOP)
    assert building.exists() and not (tmp_path / "mlflow.db").exists(), "the store was not built under its temporary name"
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr and proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "harness: interrupted; no MLflow run was open"
    assert not (tmp_path / "mlflow.db").exists()  # nothing half-made where a reader looks
    # the next command that logs finds a usable store: a fresh one, built from scratch
    cli_in_process(["train", *TINY], tmp_path, store)
    assert not building.exists() and (tmp_path / "mlflow.db").exists()


def test_two_commands_that_both_found_no_store_build_it_once(tmp_path):
    """Two trainings started together on a new store both see no mlflow.db and queue on its lock; the
    second must use the store the first built, not build another and rename it over the first one's
    open database (which then fails: "attempt to write a readonly database")."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**clean_env(store), "PYTHONPATH": str(PROJECT_ROOT)}
    lock_path = tmp_path / "mlflow.db.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # hold the store's lock until both are waiting on it
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "entry_points.cli", "train", *TINY, "--seed", str(seed)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (0, 1)
        ]
        inode = f":{os.stat(lock_path).st_ino} "
        deadline = time.time() + 120
        while sum("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines()) < 2:
            assert time.time() < deadline and all(p.poll() is None for p in procs), "both commands should wait on the lock"
            time.sleep(0.05)
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    mlflow.set_tracking_uri(store)
    try:
        runs = all_runs()
    finally:
        mlflow.set_tracking_uri(None)
    assert sorted(r.info.run_name for r in runs) == ["sac_FetchReach-v4_seed0", "sac_FetchReach-v4_seed1"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_leftover_mlflow_run_id_never_writes_into_a_finished_run(store, tmp_path):
    run = train_tiny(tmp_path, store)
    before = mlflow.MlflowClient().get_run(run.info.run_id)
    proc = harness(["train", *TINY, "--seed", "1"], tmp_path, store, MLFLOW_RUN_ID=run.info.run_id)
    one_line_error(
        proc,
        f"MLFLOW_RUN_ID={run.info.run_id} names a FINISHED run, not one being started; "
        "it is how `mlflow run` hands over the run it starts; unset MLFLOW_RUN_ID",
    )
    after = mlflow.MlflowClient().get_run(run.info.run_id)
    assert after.data.params == before.data.params and after.data.tags == before.data.tags
    assert len(all_runs()) == 1


def test_a_leftover_mlflow_run_id_is_refused_before_eval_or_compare_do_anything(store, tmp_path):
    run = train_tiny(tmp_path, store)
    ckpt = "checkpoints/sac_FetchReach-v4_seed0.zip"
    before = mlflow.MlflowClient().get_run(run.info.run_id)
    leftover = f"MLFLOW_RUN_ID={run.info.run_id} names a FINISHED run, not one being started"
    one_line_error(
        harness(["eval", "--ckpt", ckpt, "--n-episodes", "100000"], tmp_path, store, MLFLOW_RUN_ID=run.info.run_id), leftover
    )
    one_line_error(
        harness(["compare", "--env", "FetchReach-v4", "--seeds", "0"], tmp_path, store, MLFLOW_RUN_ID=run.info.run_id),
        leftover,
    )
    assert not (tmp_path / "results").exists()
    after = mlflow.MlflowClient().get_run(run.info.run_id)
    assert after.data.metrics == before.data.metrics and after.data.tags == before.data.tags


def test_inputs_that_used_to_crash_after_the_work_was_done(store, tmp_path):
    run = train_tiny(tmp_path, store)
    ckpt = "checkpoints/sac_FetchReach-v4_seed0.zip"
    meta = tmp_path / "checkpoints" / "sac_FetchReach-v4_seed0.meta.json"
    kept = meta.read_text()
    meta.write_text("[]")
    one_line_error(harness(["eval", "--ckpt", ckpt], tmp_path, store), "is not a harness meta.json")
    meta.write_text(kept)
    one_line_error(harness(["compare", "--env", "Fetch'Reach-v4"], tmp_path, store), "contains a quote")
    client = mlflow.MlflowClient()
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    one_line_error(
        harness(["train", *TINY, "--experiment", "gone"], tmp_path, store),
        f"MLflow experiment 'gone' is deleted in {store}; restore it (mlflow experiments restore --experiment-id {gone})",
    )
    client.delete_run(run.info.run_id)
    # refused before 100,000 episodes (hours), not after them
    one_line_error(
        harness(["eval", "--ckpt", ckpt, "--n-episodes", "100000"], tmp_path, store),
        f"MLflow run '{run.info.run_id}' is deleted in {store}; restore it first",
    )
    assert not (tmp_path / "results").exists()


def test_checkpoint_files_changed_in_the_store_are_refused_before_unpickling(store, tmp_path):
    run = train_tiny(tmp_path, store)
    assert (
        run.data.tags["harness.checkpoint_sha256"]
        == hashlib.sha256((tmp_path / "checkpoints" / "sac_FetchReach-v4_seed0.zip").read_bytes()).hexdigest()
    )
    (artifact,) = Path(run.info.artifact_uri.removeprefix("file://")).glob("checkpoint/*.zip")
    with open(artifact, "ab") as f:  # anyone who can write the artifact store could put code here
        f.write(b"\0")
    one_line_error(
        harness(["eval", "--ckpt", f"runs:/{run.info.run_id}/checkpoint", "--n-episodes", "1"], tmp_path, store),
        f"the checkpoint files of run {run.info.run_id} differ from the sha256 recorded on the run at training",
    )


def test_a_meta_json_never_names_the_results_file_or_the_run_an_evaluation_is_logged_to(store, tmp_path):
    """A meta.json whose run_name climbs out of results/ and whose run_id is another run: from the store it
    is refused (its sha256 is recorded at training) or, on a run from before that tag, its names are
    replaced by the run's own; a local copy naming another run is not logged to that run."""
    import json

    cli_in_process(["train", *TINY, "--seed", "1"], tmp_path, store)
    other = all_runs()[0]
    run = train_tiny_seed(tmp_path, store, 0)
    assert (
        run.data.tags["harness.meta_sha256"]
        == hashlib.sha256((Path(run.info.artifact_uri.removeprefix("file://")) / "meta.json").read_bytes()).hexdigest()
    )
    meta = json.loads((tmp_path / "checkpoints" / "sac_FetchReach-v4_seed0.meta.json").read_text())
    planted = {**meta, "run_name": "x/../../../../elsewhere", "run_id": other.info.run_id}
    client = mlflow.MlflowClient()
    client.log_text(run.info.run_id, json.dumps(planted), "meta.json")
    args = ["eval", "--ckpt", run.info.run_id, "--n-episodes", "1"]
    refused = cli_in_process(args, tmp_path, store, check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"harness: error: the meta.json of run {run.info.run_id} differs from the sha256 recorded on the run at "
        "training (harness.meta_sha256); refusing it (changed after the training)"
    ]
    client.delete_tag(run.info.run_id, "harness.meta_sha256")  # a run from before the tag: read, names ignored
    cli_in_process(args, tmp_path, store)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["ch04_sac_fetchreach-v4_seed0_eval.json"]
    assert not list(tmp_path.parent.glob("elsewhere*")) and not list(tmp_path.glob("elsewhere*"))
    assert client.get_run(run.info.run_id).data.tags.get("harness.evaluated") == "true"
    assert "harness.evaluated" not in client.get_run(other.info.run_id).data.tags
    # a local copy whose meta.json names the other run: evaluated, but never logged to that run
    (tmp_path / "copy.zip").write_bytes((tmp_path / "checkpoints" / "sac_FetchReach-v4_seed0.zip").read_bytes())
    (tmp_path / "copy.meta.json").write_text(json.dumps({**planted, "run_name": "../../escape"}))
    copied = cli_in_process(["eval", "--ckpt", "copy.zip", "--n-episodes", "1"], tmp_path, store)
    assert copied.stderr.strip().splitlines() == [
        f"harness: warning: checkpoint copy.zip names run {other.info.run_id}, whose recorded checkpoint is another "
        "file (its sha256 differs); this evaluation is not logged to that run"
    ]
    assert (tmp_path / "results" / "ch04_.._.._escape_eval.json").is_file()
    assert "harness.evaluated" not in client.get_run(other.info.run_id).data.tags


def train_tiny_seed(cwd, store, seed: int):
    cli_in_process(["train", *TINY, "--seed", str(seed)], cwd, store)
    return next(
        r for r in all_runs() if r.data.tags.get("harness.kind") == "train" and r.data.tags["harness.seed"] == str(seed)
    )


class _CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # what an attacker's pickle does: call something of its choice
        return open, (self.path, "w")


@pytest.mark.parametrize(
    "planted_name, expected",
    [
        ("sac_FetchReach-v4_seed0.vecnormalize.pkl", "keeps its normalization statistics as a pickle"),
        ("sac_FetchReach-v4_seed0.normalization.json", "records no sha256 for its artifact checkpoint/"),
    ],
)
def test_statistics_logged_to_a_run_after_its_training_are_refused_unopened(store, tmp_path, planted_name, expected):
    import pickle

    run = train_tiny(tmp_path, store)  # trained without normalize_obs: no statistics file, no hash for one
    marker = tmp_path / "code-ran"
    planted = tmp_path / "planted" / planted_name
    planted.parent.mkdir()
    planted.write_bytes(pickle.dumps(_CreatesFileWhenUnpickled(marker)))
    mlflow.MlflowClient().log_artifact(run.info.run_id, str(planted), "checkpoint")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    line = one_line_error(
        harness(
            ["eval", "--ckpt", f"runs:/{run.info.run_id}/checkpoint", "--n-episodes", "1"],
            tmp_path,
            store,
            TMPDIR=str(scratch),
        ),
        f"run {run.info.run_id} {expected}",
    )
    assert planted_name in line and not marker.exists() and not any(scratch.iterdir())
    # the local files, which the user chose to trust, still load
    assert (
        harness(["eval", "--ckpt", "checkpoints/sac_FetchReach-v4_seed0.zip", "--n-episodes", "1"], tmp_path, store).returncode
        == 0
    )


def plant_in_checkpoint(run, entry: str, change) -> None:
    """Change one entry of a run's checkpoint zip in its artifact store, and its sha256 tag to match,
    as a second account of a shared server can (it can log runs, artifacts and tags)."""
    import zipfile

    (artifact,) = Path(run.info.artifact_uri.removeprefix("file://")).glob("checkpoint/*.zip")
    with zipfile.ZipFile(artifact) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries[entry] = change(entries[entry])
    with zipfile.ZipFile(artifact, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
    mlflow.MlflowClient().set_tag(run.info.run_id, "harness.checkpoint_sha256", digest)


def plant_code_in_every_serialized_entry(run, marker: Path) -> None:
    """Every ``:serialized:`` entry of the run's checkpoint ``data`` becomes a pickle that creates ``marker``."""
    import base64
    import json
    import pickle

    planted = base64.b64encode(pickle.dumps(_CreatesFileWhenUnpickled(marker))).decode()

    def every_serialized_entry(raw: bytes) -> bytes:
        data = json.loads(raw)
        for value in data.values():
            if isinstance(value, dict) and ":serialized:" in value:
                value[":serialized:"] = planted
        return json.dumps(data).encode()

    plant_in_checkpoint(run, "data", every_serialized_entry)


def test_a_planted_run_whose_checkpoint_would_run_code_runs_none_in_eval_register_or_load_policy(store, tmp_path):
    """A FINISHED, evaluated HER run with matching hash tags whose every pickled zip entry creates a marker."""
    from harness import load_policy

    run = train_tiny(tmp_path, store, "--her", "true")
    cli_in_process(["eval", "--ckpt", f"runs:/{run.info.run_id}/checkpoint", "--n-episodes", "2"], tmp_path, store)
    marker = tmp_path / "code-ran"
    plant_code_in_every_serialized_entry(run, marker)
    uri = f"runs:/{run.info.run_id}/checkpoint"
    assert harness(["eval", "--ckpt", uri, "--n-episodes", "1"], tmp_path, store).returncode == 0
    registered = harness(["register", "--env", "FetchReach-v4"], tmp_path, store)
    assert registered.returncode == 0 and run.info.run_id in registered.stdout, registered.stderr
    assert load_policy(run.info.run_id).num_timesteps == 300
    compared = harness(["compare", "--env", "FetchReach-v4", "--seeds", "0"], tmp_path, store)  # reads no checkpoint
    assert "no finished, evaluated sac training run for (env=FetchReach-v4, her=false, seed=0)" in compared.stderr
    assert not marker.exists()

    def pickled_weights(raw: bytes) -> bytes:
        import io

        import torch

        buffer = io.BytesIO()
        torch.save({"actor.mu.weight": _CreatesFileWhenUnpickled(marker)}, buffer)
        return buffer.getvalue()

    plant_in_checkpoint(run, "policy.pth", pickled_weights)
    for command in (["eval", "--ckpt", uri, "--n-episodes", "1"], ["register", "--env", "FetchReach-v4"]):
        one_line_error(
            harness(command, tmp_path, store),
            "is not a readable SB3 checkpoint (policy.pth: not plain tensors: Unsupported global: GLOBAL io.open)",
        )
    with pytest.raises(HarnessError, match=r"policy\.pth: not plain tensors: Unsupported global: GLOBAL io\.open"):
        load_policy(uri)
    assert not marker.exists()


def metric_histories(run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every learning metric of a run by step; wall-clock ones (time/, system/, minutes_to) left out."""
    client = mlflow.MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in sorted(keys)
        if not key.startswith(("time/", "system/")) and "minutes_to" not in key
    }


def test_sigkill_then_the_same_train_command_resumes_the_same_run_and_ends_as_if_never_killed(store, tmp_path):
    # A checkpoint every 320 steps falls 20 steps into a 50-step episode: the resume continues mid-episode.
    args = ["train", *TINY, "--her", "--total-steps", "1000", "--eval-freq", "500", "--checkpoint-freq", "320"]
    env = {**clean_env(store), "PYTHONPATH": str(PROJECT_ROOT)}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "entry_points.cli", *args], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
        resume_dir = tmp_path / "checkpoints" / "resume"
        deadline = time.time() + 300
        while time.time() < deadline and not any(resume_dir.glob("*/step_*[0-9]")) and proc.poll() is None:
            time.sleep(0.1)
        proc.kill()
        proc.wait(timeout=30)
    (killed,) = all_runs()
    assert killed.info.status == "RUNNING"  # what a SIGKILL leaves behind
    # A first training on a new store prints the harness's lines only (not MLflow's "Creating a new experiment").
    assert "INFO" not in (tmp_path / "first.log").read_text()
    (checkpoint,) = resume_dir.glob("*/step_*[0-9]")
    trained_before = json.loads((checkpoint / "state.json").read_text())["trained_seconds"]
    assert trained_before > 0  # the seconds its training took up to the checkpoint
    proc = run_cli(args, tmp_path, store)
    assert f"resuming run {killed.info.run_id} (sac_her_FetchReach-v4_seed0) from its checkpoint at step" in proc.stderr
    (run,) = all_runs()  # the same run, finished; no second one
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    # Its training time counts the seconds before the checkpoint, and the train line's rate is over all of them.
    assert run.data.metrics["time/wall_time_s"] > trained_before
    finished = next(line for line in proc.stdout.splitlines() if " finished: " in line)
    steps, rate = re.search(r"(\d+) steps in \d+s \(([\d.]+) steps/s\)", finished).groups()
    assert abs(float(rate) - int(steps) / run.data.metrics["time/wall_time_s"]) < 1
    assert int(run.data.tags["harness.resumed_from_step"]) >= 320
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval/success_rate")]
    assert steps == sorted(set(steps)) and max(steps) >= 1000
    assert not any(resume_dir.iterdir())  # no checkpoints pile up
    # --no-resume, and a run that finished, start anew: the same training, never interrupted
    run_cli([*args, "--no-resume"], tmp_path, store)
    (uninterrupted,) = [r for r in all_runs() if r.info.run_id != run.info.run_id]
    resumed, whole = metric_histories(run.info.run_id), metric_histories(uninterrupted.info.run_id)
    assert {"train/actor_loss", "rollout/ep_rew_mean", "eval/final_distance"} <= set(whole)
    assert resumed == whole  # bit for bit, at every step


def kill_after_a_checkpoint(args, cwd, store, checkpointed=None) -> mlflow.entities.Run:
    """Start `harness train`, SIGKILL it once a resumable checkpoint exists (here, or as ``checkpointed()``
    says); the run it leaves RUNNING."""
    env = {**clean_env(store), "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "entry_points.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resume_dir = cwd / "checkpoints" / "resume"
    checkpointed = checkpointed or (lambda: any(resume_dir.glob("*/step_*[0-9]")))
    deadline = time.time() + 300
    while time.time() < deadline and not checkpointed() and proc.poll() is None:
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    (killed,) = [r for r in all_runs() if r.info.status == "RUNNING"]
    return killed


RESUMABLE = ["train", *TINY, "--total-steps", "1000", "--checkpoint-freq", "320"]  # killed after its first checkpoint


@pytest.mark.parametrize("damaged_file, with_manifest", [("state.npz", True), ("model.zip", False)])
def test_a_damaged_resumable_checkpoint_is_set_aside_and_the_training_starts_anew(
    store, tmp_path, damaged_file, with_manifest
):
    killed = kill_after_a_checkpoint(RESUMABLE, tmp_path, store)
    (saved,) = (tmp_path / "checkpoints" / "resume" / killed.info.run_id).glob("step_*[0-9]")
    target = saved / damaged_file
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # cut short
    if not with_manifest:  # a checkpoint from before manifests: found out when loading it
        (saved / "step.json").unlink()
        failed = harness(RESUMABLE, tmp_path, store)
        assert failed.returncode == 1 and "Traceback" not in failed.stderr
        *said, line = failed.stderr.strip().splitlines()  # after the "resuming run ..." line
        assert [s for s in said if "error" in s] == [] and line.startswith(
            f"harness: error: the resumable checkpoint of run {killed.info.run_id} at {saved.name} cannot be loaded"
        )
        assert line.endswith(
            f"set aside as checkpoints/resume/{killed.info.run_id}/{saved.name}.damaged; the same "
            f"command again starts the training anew; MLflow run {killed.info.run_id} was marked FAILED"
        )
    proc = run_cli(RESUMABLE, tmp_path, store)
    if with_manifest:
        assert (
            proc.stderr.count("harness: warning:") == 1
            and (
                f"harness: warning: the resumable checkpoint of run {killed.info.run_id} at {saved.name} is damaged "
                f"({damaged_file} differs from the sha256 recorded when it was written (cut short or changed)); set aside "
                f"as checkpoints/resume/{killed.info.run_id}/{saved.name}.damaged; the run is marked FAILED"
            )
            in proc.stderr
        )
    runs = {r.info.run_id: r for r in all_runs()}
    assert runs.pop(killed.info.run_id).info.status == "FAILED"
    (anew,) = runs.values()
    assert anew.info.status == "FINISHED" and "harness.resumed_from_step" not in anew.data.tags
    kept = saved.with_name(saved.name + ".damaged")
    assert kept.is_dir() and (kept / damaged_file).is_file()  # kept for inspection


@contextlib.contextmanager
def on_the_server(mlflow_server, monkeypatch):
    """This process and the commands it starts log to the test's plain MLflow server; yields its URI."""
    port, _ = mlflow_server
    uri = f"http://127.0.0.1:{port}"
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)


def killed_after_an_upload(cwd, uri) -> mlflow.entities.Run:
    """A training SIGKILLed once its resumable checkpoint reached the server's artifacts (resume/)."""
    from harness import resume

    def uploaded() -> bool:  # the worker's checkpoint is on the server, not only on its disk
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
        return bool(runs) and resume.remote_step(runs[0].info.run_id) is not None

    return kill_after_a_checkpoint(RESUMABLE, cwd, uri, checkpointed=uploaded)


def test_a_resumable_checkpoint_planted_in_a_servers_artifacts_runs_no_code(mlflow_server, tmp_path, monkeypatch, capsys):
    """On a tracking server a worker may continue a run from the checkpoint in its artifacts (resume/); whoever
    can write artifacts and tags could put anything there, with a manifest and a tag that vouch for it. The
    checkpoint is JSON, arrays and tensors (harness.plain_state): a planted pickle inside the arrays is
    refused by numpy unopened, and an older harness's pickled checkpoint is never loaded from a store."""
    import json
    import pickle

    from harness import resume
    from harness.config import config_from_dict
    from harness.training import RunOptions, train

    with on_the_server(mlflow_server, monkeypatch) as uri:
        run_id = killed_after_an_upload(tmp_path, uri).info.run_id
        assert resume.remote_step(run_id) is not None, "no resumable checkpoint reached the server"
        elsewhere = tmp_path / "another-worker"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        assert resume.fetch(run_id) is not None  # as uploaded, it is taken
        resume.discard(run_id)
        client = mlflow.MlflowClient()
        marker = tmp_path / "code-ran"
        planted = tmp_path / "planted"
        planted.mkdir()

        def plant(name: str, content: bytes) -> None:
            """The attacker: a file of their own, a manifest whose sha256 are right for it, and the run's tag."""
            (planted / name).write_bytes(content)
            manifest = mlflow.artifacts.load_dict(f"runs:/{run_id}/resume/step.json")
            manifest["sha256"][name] = hashlib.sha256(content).hexdigest()
            (planted / "step.json").write_text(json.dumps(manifest))
            client.log_artifact(run_id, str(planted / name), "resume")
            client.log_artifact(run_id, str(planted / "step.json"), "resume")
            client.set_tag(run_id, "harness.resume_sha256", hashlib.sha256((planted / "step.json").read_bytes()).hexdigest())

        arrays = io.BytesIO()
        np.savez(arrays, a0=np.array([_CreatesFileWhenUnpickled(marker)], dtype=object))
        plant("state.npz", arrays.getvalue())
        config = config_from_dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json"))
        with pytest.raises(HarnessError) as refused:
            train(config, RunOptions(resume_run_id=run_id, progress_bar=False))
        assert "\n" not in str(refused.value) and "Object arrays cannot be loaded when allow_pickle=False" in str(
            refused.value
        )
        assert str(refused.value).startswith(f"the resumable checkpoint of run {run_id} at step_")
        assert not marker.exists()

        resume.discard(run_id)
        client.set_terminated(run_id, "KILLED")  # as the failed attempt left it, continued again below
        plant("training_state.pkl", pickle.dumps(_CreatesFileWhenUnpickled(marker)))
        with pytest.raises(resume.DamagedCheckpoint, match=r"written by an older harness as pickles \(training_state.pkl\)"):
            resume.fetch(run_id)
        assert not marker.exists() and resume.latest(run_id) is None


def test_a_damaged_checkpoint_in_a_servers_artifacts_starts_a_new_run_never_a_second_history(
    mlflow_server, tmp_path, monkeypatch, capsys
):
    """A worker continuing a run from the checkpoint in its artifacts finds a file that does not match the
    manifest (which is intact): one warning, the run marked FAILED with its history as it was, and the
    training anew in a new run (it once restarted from step 0 inside the old run: two values per step)."""
    from harness.config import config_from_dict
    from harness.training import RunOptions, train

    with on_the_server(mlflow_server, monkeypatch) as uri:
        killed = killed_after_an_upload(tmp_path, uri)
        run_id = killed.info.run_id
        before = metric_histories(run_id)
        elsewhere = tmp_path / "another-worker"
        (elsewhere / "damaged").mkdir(parents=True)
        monkeypatch.chdir(elsewhere)
        (elsewhere / "damaged" / "state.npz").write_bytes(b"cut short")  # the manifest still names the old
        mlflow.MlflowClient().log_artifact(run_id, str(elsewhere / "damaged" / "state.npz"), "resume")
        config = config_from_dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json"))
        capsys.readouterr()
        result = train(config, RunOptions(resume_run_id=run_id, progress_bar=False))
        warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("harness: warning")]
        assert warnings == [
            f"harness: warning: run {run_id} cannot be continued: the resumable checkpoint in the artifacts of run "
            f"{run_id} is damaged (resume/state.npz does not match its manifest); it is marked FAILED and "
            "the training starts anew as a new run"
        ]
        assert result.run_id != run_id
        old = mlflow.MlflowClient().get_run(run_id)
        assert old.info.status == "FAILED" and metric_histories(run_id) == before
        assert "state.npz does not match its manifest" in old.data.tags["harness.damaged_checkpoint"]
        new = mlflow.MlflowClient().get_run(result.run_id)
        assert new.info.status == "FINISHED" and "harness.resumed_from_step" not in new.data.tags


def test_a_killed_run_is_not_left_running_when_the_next_command_trains_another_config(store, tmp_path):
    killed = kill_after_a_checkpoint(RESUMABLE, tmp_path, store)
    shorter = [*RESUMABLE[:-4], "--total-steps", "600", "--checkpoint-freq", "320"]
    run_cli(shorter, tmp_path, store)
    runs = {r.info.run_id: r for r in all_runs()}
    assert runs.pop(killed.info.run_id).info.status == "KILLED"
    (other,) = runs.values()
    assert other.info.status == "FINISHED"
    # and its own command still resumes it from its checkpoint
    resumed = run_cli(RESUMABLE, tmp_path, store)
    assert f"resuming run {killed.info.run_id}" in resumed.stderr
    assert mlflow.MlflowClient().get_run(killed.info.run_id).info.status == "FINISHED"


@contextlib.contextmanager
def mounted(*command_sets):
    """Run mount commands as root, undo them afterwards; skip the test where mounting is not allowed."""
    mounted_at = []
    try:
        for command in command_sets:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot mount here ({done.stderr.strip() or done.returncode}): {' '.join(command)}")
            mounted_at.append(command[-1])
        yield
    finally:
        for target in reversed(mounted_at):
            subprocess.run(["umount", target], capture_output=True)


def read_only(directory: Path):
    return mounted(["mount", "--bind", str(directory), str(directory)], ["mount", "-o", "remount,bind,ro", str(directory)])


def test_read_only_store_and_directory(store, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    train_tiny(work, store)
    ckpt = "checkpoints/sac_FetchReach-v4_seed0.zip"
    cli_in_process(["eval", "--ckpt", ckpt, "--n-episodes", "2"], work, store)
    results = work / "results" / "ch04_sac_fetchreach-v4_seed0_eval.json"
    evaluated = results.read_bytes()
    db = tmp_path / "mlflow.db"
    before = db.read_bytes()
    with read_only(db):
        # reading needs no lock file
        one_line_error(
            harness(["compare", "--env", "FetchReach-v4", "--seeds", "0"], work, store),
            "no finished, evaluated sac training run for (env=FetchReach-v4, her=true, seed=0)",
        )
        for command in (["train", *TINY, "--seed", "1"], ["eval", "--ckpt", ckpt, "--n-episodes", "100000"]):
            one_line_error(
                harness(command, work, store),  # refused before the training or the episodes
                f"tracking store {db} is read-only ({db} cannot be written): nothing could be logged to it",
            )
    assert db.read_bytes() == before and results.read_bytes() == evaluated
    with read_only(work):  # nowhere to write results or checkpoints: refused before the episodes run
        one_line_error(
            harness(["eval", "--ckpt", "checkpoints/sac_FetchReach-v4_seed0.zip", "--n-episodes", "100000"], work, store),
            "cannot write to results/ (Read-only file system)",
        )
        one_line_error(
            harness(["train", *TINY, "--seed", "1"], work, store), "cannot write to checkpoints/ (Read-only file system)"
        )
    assert [r.info.status for r in all_runs()] == ["FINISHED"]


def test_a_full_disk_fails_the_run_with_one_line_and_leaves_no_partial_file(store, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mlflow.MlflowClient().create_experiment("ch04-her-sparse-reach-push")  # MLflow would say it creates it
    with mounted(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)]):
        proc = harness(["train", *TINY, "--eval-freq", "0", "--checkpoint-freq", "0"], disk, store)
        line = one_line_error(proc, "No space left on device")
        (run,) = all_runs()
        assert line.endswith(f"; MLflow run {run.info.run_id} was marked FAILED")
        assert run.info.status == "FAILED"
        assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
