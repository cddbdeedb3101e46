"""A password in the tracking URI appears nowhere: not in output, error lines, tags, params, meta.json,
artifacts or the store. Against a real `mlflow server` that accepts any credentials."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from harness.credentials import move_to_environment, redact
from tests.conftest import PROJECT_ROOT, TINY, free_port

SECRET = "s3cret-" + secrets.token_hex(8)  # made at run time: a dirty tree's logged git.diff holds this file


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://alice:s3cret@host:5000", "http://alice:***@host:5000"),
        ("postgresql://mlflow:p%40ss@127.0.0.1:5432/mlflow", "postgresql://mlflow:***@127.0.0.1:5432/mlflow"),
        ("postgresql+psycopg2://u:pw@db/x?sslmode=require", "postgresql+psycopg2://u:***@db/x?sslmode=require"),
        ("postgresql://db/x?user=u&password=pw", "postgresql://db/x?user=u&password=***"),
        ("tracking server http://a:b@h:1 does not answer", "tracking server http://a:***@h:1 does not answer"),
        ("http://host:5000/#/experiments/1", "http://host:5000/#/experiments/1"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_redact_masks_every_uri_password(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize("password", ["pa'ss", 'pa"ss', "pa ss", "p' w\"d :x"])
def test_a_database_password_with_quotes_or_spaces_is_masked_in_records_and_errors(tmp_path, monkeypatch, password):
    """SQLAlchemy reads a database URL's password up to the first '@', so it may hold what no pattern can tell
    from the text around it: the password of the URI the harness was given is masked as written."""
    from tests.conftest import cli_in_process

    nobody = free_port()
    uri = f"postgresql://mlflow:{password}@127.0.0.1:{nobody}/x"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert redact(f"tracking_uri: {uri}") == f"tracking_uri: postgresql://mlflow:***@127.0.0.1:{nobody}/x"
    assert redact(f'{{"tracking_uri": "{uri}"}}') == f'{{"tracking_uri": "postgresql://mlflow:***@127.0.0.1:{nobody}/x"}}'
    failed = cli_in_process(["compare", "--env", "FetchReach-v4"], tmp_path, uri, check=False)
    assert failed.returncode == 1 and failed.stderr.strip() == (
        f"harness: error: tracking database postgresql://mlflow:***@127.0.0.1:{nobody}/x does not answer (connection "
        "failed); start it, or point MLFLOW_TRACKING_URI at a running server or at a sqlite:///path/mlflow.db file"
    )


def test_under_mlflow_run_a_uri_with_credentials_gets_one_warning_and_the_password_stays_hidden(tmp_path):
    """`mlflow run` prints its URI in its "View run" lines before the harness starts: the harness can only
    say so (once) and keep the password out of everything it prints itself."""
    from tests.conftest import cli_in_process

    nobody = free_port()
    uri = f"http://alice:{SECRET}@127.0.0.1:{nobody}"
    proc = cli_in_process(["compare", "--env", "FetchReach-v4"], tmp_path, uri, check=False, MLFLOW_RUN_ID="0" * 32)
    warning, error = proc.stderr.strip().splitlines()
    assert warning == (
        "harness: warning: MLFLOW_TRACKING_URI carries a user name and password, which `mlflow run` prints in its own "
        "'View run' lines; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead (docs/mlflow.md)"
    )
    assert proc.returncode == 1 and f"127.0.0.1:{nobody} does not answer" in error
    plain = cli_in_process(["compare", "--env", "FetchReach-v4"], tmp_path, uri, check=False)
    assert "warning" not in plain.stderr and SECRET not in plain.stderr + proc.stderr


def test_an_http_uris_credentials_move_to_mlflows_variables():
    environ = {"MLFLOW_TRACKING_URI": "https://alice:p%3Ass@host:5000/"}
    assert move_to_environment(environ)
    assert environ == {
        "MLFLOW_TRACKING_URI": "https://host:5000/",
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": "p:ss",
    }
    kept = {"MLFLOW_TRACKING_URI": "postgresql://u:pw@db/x"}  # SQLAlchemy needs it there; masked when shown
    assert not move_to_environment(kept) and kept == {"MLFLOW_TRACKING_URI": "postgresql://u:pw@db/x"}


def harness(args, cwd, uri):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "entry_points.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_is_never_shown_logged_or_stored(mlflow_server, tmp_path):
    port, base = mlflow_server
    work = tmp_path / "work"
    work.mkdir()
    uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
    trained = harness(["train", *TINY, "--her"], work, uri)
    assert trained.returncode == 0, trained.stderr
    assert f"MLflow UI: http://127.0.0.1:{port}/#/experiments/" in trained.stdout  # the link, without credentials
    evaluated = harness(["eval", "--ckpt", "checkpoints/sac_her_FetchReach-v4_seed0.zip", "--n-episodes", "2"], work, uri)
    assert evaluated.returncode == 0, evaluated.stderr
    nobody = free_port()
    dead = harness(["compare", "--env", "FetchReach-v4"], work, f"http://alice:{SECRET}@127.0.0.1:{nobody}")
    assert dead.returncode == 1 and f"tracking server http://127.0.0.1:{nobody} does not answer" in dead.stderr
    database = harness(["compare", "--env", "FetchReach-v4"], work, f"postgresql://mlflow:{SECRET}@127.0.0.1:{nobody}/x")
    assert database.returncode == 1 and database.stderr.strip() == (
        f"harness: error: tracking database postgresql://mlflow:***@127.0.0.1:{nobody}/x does not answer (connection "
        "failed); start it, or point MLFLOW_TRACKING_URI at a running server or at a sqlite:///path/mlflow.db file"
    )
    for proc in (trained, evaluated, dead, database):
        assert SECRET not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    # tags, params, meta.json (local and the artifact), the store's database and every artifact
    assert files_holding(work, SECRET.encode()) == []
    assert files_holding(base, SECRET.encode()) == []
    assert (work / "checkpoints" / "sac_her_FetchReach-v4_seed0.meta.json").is_file()
