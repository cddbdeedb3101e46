"""A store made by an older MLflow: every command names it in one line with the command that upgrades it, and
`harness store upgrade` backs it up, migrates it and keeps all of it (runs, params, tags, metric histories,
artifacts, a registered model with its version, tag and alias)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from harness import schema
from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow  # runs the CLI end to end: `make test-quick` leaves it out

DATA = Path(__file__).parent / "data"
FIXTURE_ROOT = "/tmp/harness-old-store-fixture"  # where tests/data/make_old_store.py wrote the artifact paths
STORES = sorted(p.name for p in DATA.glob("mlflow-*-store"))


def revision(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


@pytest.fixture(params=STORES)
def old_store(request, tmp_path) -> Path:
    """A copy of a committed store, its artifact locations pointed at the copy (as where it was made)."""
    copy = tmp_path / "store"
    shutil.copytree(DATA / request.param, copy)
    db = copy / "mlflow.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        new_root = copy.as_uri()
        connection.execute(
            "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (f"file://{FIXTURE_ROOT}", new_root)
        )
        connection.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (f"file://{FIXTURE_ROOT}", new_root))
        connection.commit()
    return db


def one_line(proc) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    return line


def test_an_older_store_is_named_in_one_line_then_upgrades_with_all_of_its_data(old_store, tmp_path):
    uri = f"sqlite:///{old_store}"
    before = revision(old_store)
    if before != schema.expected_revision():
        for args in (["compare", "--env", "FetchReach-v4"], ["train", *TINY]):
            line = one_line(run_cli(args, tmp_path, uri, check=False))
            assert f"tracking store {old_store} has an older MLflow schema ({before}) than MLflow" in line
            assert line.endswith(f"back it up and upgrade it with: harness store upgrade --store sqlite:///{old_store}")
        assert revision(old_store) == before and not (tmp_path / "checkpoints").exists()  # nothing ran, nothing changed

    proc = run_cli(["store", "upgrade", "--store", uri], tmp_path, uri)
    if before == schema.expected_revision():
        assert "nothing to do" in proc.stdout
    else:
        assert f"upgraded {old_store} from schema {before} to {schema.expected_revision()} (" in proc.stdout
        (backup,) = old_store.parent.glob("mlflow.db.backup-*")
        assert f"backup: {backup}" in proc.stdout and revision(backup) == before
        assert f"to roll back: stop every process using the store, then cp {backup} {old_store}" in proc.stdout
        assert "nothing to do" in run_cli(["store", "upgrade", "--store", uri], tmp_path, uri).stdout
    assert revision(old_store) == schema.expected_revision()

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("old-store")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["sac_her_FetchReach-v4_seed0", "sac_her_FetchReach-v4_seed1"]
    for seed, run in enumerate(runs[f"sac_her_FetchReach-v4_seed{s}"] for s in (0, 1)):
        assert run.data.params == {"seed": str(seed), "gamma": "0.95", "net_arch": "[256, 256]"}
        assert run.data.tags["harness.kind"] == "train" and run.data.tags["harness.her"] == "true"
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval/success_rate")]
        assert sorted(history) == [(step, min(1.0, step / 4000 + 0.1 * seed)) for step in range(0, 5000, 1000)]
        text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/checkpoint/notes.txt")
        assert text == f"checkpoint of seed {seed}\n"
    champion = client.get_model_version_by_alias("ch04-sac-her-FetchReach-v4", "champion")
    assert str(champion.version) == "1" and champion.run_id == runs["sac_her_FetchReach-v4_seed1"].info.run_id
    assert champion.tags == {"eval_success_rate": "1.0"}
    assert client.get_registered_model("ch04-sac-her-FetchReach-v4").description == "the old store's champion"


def test_an_upgrade_is_refused_while_another_process_has_the_store_open(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(DATA / STORES[0], store)
    db = store / "mlflow.db"
    if revision(db) == schema.expected_revision():
        pytest.skip(f"{STORES[0]} has the installed MLflow's schema: nothing to upgrade")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1'); time.sleep(60)",
            str(db),
        ]
    )
    try:
        deadline = time.time() + 30
        while not schema.processes_using(db) and time.time() < deadline:
            time.sleep(0.1)
        line = one_line(run_cli(["store", "upgrade", "--store", f"sqlite:///{db}"], tmp_path, f"sqlite:///{db}", check=False))
        assert f"tracking store {db} is open in 1 other process(es): {holder.pid} (" in line
        assert line.endswith("stop them (harness ui, mlflow ui, trainings) and upgrade again")
    finally:
        holder.kill()
        holder.wait()
    assert revision(db) != schema.expected_revision() and not list(store.glob("mlflow.db.backup-*"))


@pytest.mark.parametrize("store", ["sqlite:///:memory:", "postgresql://mlflow@127.0.0.1:5432/mlflow"])
def test_upgrade_names_what_it_accepts(tmp_path, store):
    line = one_line(run_cli(["store", "upgrade", "--store", store], tmp_path, f"sqlite:///{tmp_path / 'm.db'}", check=False))
    assert line == (
        f"harness: error: --store {store} is not a SQLite file; accepted: sqlite:///path/mlflow.db "
        "(the PostgreSQL of harness server: harness server upgrade --dir DIR)"
    )
