"""Whose run it is (issue #39, item 2): on `harness server start --auth` the server stamps every run with the
account that created it (harness.created_by), no client can write that tag, and register / compare / eval use
another account's runs only with --accept-runs-from. Asked of a real server with two accounts."""

from __future__ import annotations

import secrets
import time

import pytest
import requests

from harness.accounts import AcceptedAccounts, left_out_line
from harness.run_schema import CREATED_BY_TAG
from tests.conftest import TINY, cli_in_process


class FakeRun:
    """Just what harness.accounts reads of a run."""

    def __init__(self, tags: dict[str, str]):
        self.data = type("Data", (), {"tags": tags})()
        self.info = type("Info", (), {"run_id": "f" * 32, "run_name": "sac_her_FetchPush-v4_seed0"})()


def test_accepted_accounts_use_ones_own_runs_and_the_named_ones_only():
    mine, bobs, unstamped = FakeRun({CREATED_BY_TAG: "alice"}), FakeRun({CREATED_BY_TAG: "bob"}), FakeRun({})
    own_only = AcceptedAccounts.parse("")
    assert own_only.refusal(mine, "alice") is None
    assert own_only.refusal(bobs, "alice") == (
        f"run {'f' * 32} (sac_her_FetchPush-v4_seed0) was made by account 'bob', not by 'alice': its numbers and "
        "checkpoint could be planted; --accept-runs-from bob uses it"
    )
    assert "has no server stamp of the account that made it" in own_only.refusal(unstamped, "alice")
    assert AcceptedAccounts.parse("carol, bob").refusal(bobs, "alice") is None
    assert AcceptedAccounts.parse("carol").refusal(bobs, "alice") is not None
    assert AcceptedAccounts.parse("*").refusal(unstamped, "alice") is None
    for run in (mine, bobs, unstamped):  # a local store or a server without accounts: nothing to tell apart
        assert own_only.refusal(run, None) is None
    assert left_out_line({"bob": 2}) == "left out runs made by other accounts (2 by 'bob'); --accept-runs-from bob uses them"
    assert left_out_line({"?": 1, "bob": 1}).endswith("--accept-runs-from * uses them")


def _post(uri: str, path: str, auth: tuple[str, str], body: dict) -> requests.Response:
    return requests.post(f"{uri}/api/2.0/mlflow/{path}", json=body, auth=auth, timeout=30)


@pytest.mark.slow
def test_another_accounts_planted_run_is_used_only_when_accepted(tmp_path):
    """One --auth server for both: without an account a client is refused in one line; with one, another
    account's planted run is used only when accepted."""
    from harness import postgres
    from tests.test_stack import tracking_server

    with tracking_server(auth=True) as (stack, base):
        uri = stack.tracking_uri
        admin = ("admin", (base / "server" / "admin-password").read_text().strip())
        for secret in ("basic_auth.db", "admin-password", "flask-secret", postgres.PASSWORD_FILE):  # hashes, passwords
            assert (base / "server" / secret).stat().st_mode & 0o777 == 0o600, secret
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert requests.get(search, timeout=30).status_code == 401
        assert requests.get(search, auth=admin, timeout=30).status_code == 200
        refused = cli_in_process(["compare", "--env", "FetchReach-v4"], tmp_path, uri, check=False)
        assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
            f"harness: error: tracking server {uri} refused no user (401 Unauthorized); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account on it"
        ]
        with_admin = uri.replace("http://", f"http://admin:{admin[1]}@")
        allowed = cli_in_process(["compare", "--env", "FetchReach-v4"], tmp_path, with_admin, check=False)
        assert "no finished, evaluated training run for FetchReach-v4" in allowed.stderr
        assert admin[1] not in refused.stderr + allowed.stdout + allowed.stderr

        accounts = {name: secrets.token_urlsafe(18) for name in ("alice", "bob")}
        for name, password in accounts.items():
            assert _post(uri, "users/create", admin, {"username": name, "password": password}).status_code == 200
        bob, alice = ("bob", accounts["bob"]), ("alice", accounts["alice"])
        alice_uri = uri.replace("http://", f"http://alice:{accounts['alice']}@")

        # Alice trains and evaluates a tiny HER run of her own: the server stamps it with her account.
        trained = cli_in_process(["train", "--env", "FetchReach-v4", "--her", "--seed", "0", *TINY], tmp_path, alice_uri)
        own_id = next(line.split()[1] for line in trained.stdout.splitlines() if line.startswith("run "))
        cli_in_process(["eval", "--ckpt", own_id, "--n-episodes", "2"], tmp_path, alice_uri)

        # Bob plants a better-looking run in an experiment of his, claiming to be alice.
        experiment = _post(uri, "experiments/create", bob, {"name": "bobs"}).json()["experiment_id"]
        looks_evaluated = {
            "harness.kind": "train",
            "harness.env": "FetchReach-v4",
            "harness.algo": "sac",
            "harness.her": "true",
            "harness.seed": "0",
            "harness.evaluated": "true",
            "mlflow.user": "alice",
        }
        tags = [{"key": k, "value": v} for k, v in looks_evaluated.items()]
        forged = {"key": CREATED_BY_TAG, "value": "alice"}
        refused = _post(uri, "runs/create", bob, {"experiment_id": experiment, "tags": [*tags, forged]})
        assert refused.status_code == 403 and CREATED_BY_TAG in refused.json()["message"]
        created = _post(uri, "runs/create", bob, {"experiment_id": experiment, "run_name": "planted", "tags": tags})
        planted = created.json()["run"]["info"]["run_id"]
        now = int(time.time() * 1000)
        metrics = {"eval/success_rate": 1.0, "eval/mean_return": -1.0, "eval/final_distance": 0.001}
        body = {
            "run_id": planted,
            "metrics": [{"key": k, "value": v, "timestamp": now, "step": 0} for k, v in metrics.items()],
        }
        assert _post(uri, "runs/log-batch", bob, body).status_code == 200
        for path, write in (
            ("runs/set-tag", {"run_id": planted, **forged}),
            ("runs/delete-tag", {"run_id": planted, "key": CREATED_BY_TAG}),
            ("runs/log-batch", {"run_id": planted, "tags": [forged]}),
        ):
            assert _post(uri, path, bob, write).status_code == 403, path
        assert _post(uri, "runs/update", bob, {"run_id": planted, "status": "FINISHED", "end_time": now}).status_code == 200
        got = requests.get(f"{uri}/api/2.0/mlflow/runs/get", params={"run_id": planted}, auth=alice, timeout=30).json()
        stamped = {t["key"]: t["value"] for t in got["run"]["data"]["tags"]}
        assert stamped[CREATED_BY_TAG] == "bob" and stamped["mlflow.user"] == "alice"

        # Alice's commands leave bob's run out, or refuse it in one line when she names it.
        registered = cli_in_process(["register", "--env", "FetchReach-v4"], tmp_path, alice_uri)
        assert f"from run {own_id} (made by alice)" in registered.stdout
        search = {"experiment_ids": [], "filter": "tags.`harness.kind` = 'register'", "run_view_type": "ACTIVE_ONLY"}
        search["experiment_ids"] = [
            e["experiment_id"]
            for e in requests.get(
                f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 100}, auth=alice, timeout=30
            ).json()["experiments"]
        ]
        register_run = _post(uri, "runs/search", alice, search).json()["runs"][0]
        recorded = {t["key"]: t["value"] for t in register_run["data"]["tags"]}
        assert recorded["harness.source_run_id"] == own_id and recorded["harness.source_created_by"] == "alice"
        assert [line for line in registered.stderr.splitlines() if line.startswith("harness:")] == [
            "harness: warning: left out runs made by other accounts (1 by 'bob'); --accept-runs-from bob uses them"
        ]
        refusal = (
            f"harness: error: run {planted} (planted) was made by account 'bob', not by 'alice': its numbers and "
            "checkpoint could be planted; --accept-runs-from bob uses it"
        )
        for command in (["register", "--run-id", planted], ["eval", "--ckpt", f"runs:/{planted}", "--n-episodes", "2"]):
            proc = cli_in_process(command, tmp_path, alice_uri, check=False)
            assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [refusal], command
        compared = cli_in_process(["compare", "--env", "FetchReach-v4", "--seeds", "0"], tmp_path, alice_uri, check=False)
        assert compared.returncode == 1
        assert compared.stderr.strip().splitlines()[0].startswith("harness: warning: left out runs made by other accounts")
        # Accepted, bob's run gets past the account check (and then fails as what it is: a run with no checkpoint).
        accepted = cli_in_process(
            ["register", "--run-id", planted, "--accept-runs-from", "bob"], tmp_path, alice_uri, check=False
        )
        assert accepted.returncode == 1 and "made by account" not in accepted.stderr
        assert "no downloadable checkpoint" in accepted.stderr or "has no checkpoint" in accepted.stderr


def test_compare_records_who_made_each_run_it_used():
    from harness.comparison import run_provenance

    run = FakeRun({CREATED_BY_TAG: "alice", "mlflow.user": "alice", "harness.seed": "3"})
    run.data.metrics = {}
    provenance = run_provenance(run)
    assert (provenance["created_by"], provenance["mlflow_user"], provenance["seed"]) == ("alice", "alice", 3)
    assert provenance["run_id"] == "f" * 32
