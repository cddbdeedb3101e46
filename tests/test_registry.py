"""Model Registry: register the best HER run, champion alias, pyfunc in a fresh process, load_policy, eval from models:/."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import TINY, clean_env, cli_in_process, run_cli

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out

NAME = "ch04-sac-her-FetchReach-v4"


@pytest.fixture(scope="module")
def registry_store(tmp_path_factory):
    """Two evaluated HER runs and one no-HER run of FetchReach-v4."""
    cwd = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    for her, seed in (("true", 0), ("true", 1), ("false", 0)):
        cli_in_process(["train", "--her", her, "--seed", str(seed), *TINY], cwd, uri)
        name = f"sac{'_her' if her == 'true' else ''}_FetchReach-v4_seed{seed}"
        cli_in_process(["eval", "--ckpt", f"checkpoints/{name}.zip", "--n-episodes", "3"], cwd, uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    yield cwd, uri, {r.info.run_name: r for r in runs}
    mlflow.set_tracking_uri(None)


def key(run):
    return run.data.metrics["eval/success_rate"], run.data.metrics["eval/mean_return"]


def test_register_best_then_champion_moves_only_when_better(registry_store):
    cwd, uri, runs = registry_store
    first, second = runs["sac_her_FetchReach-v4_seed0"], runs["sac_her_FetchReach-v4_seed1"]
    worse, better = sorted([first, second], key=key)
    assert key(worse) != key(better)

    proc = run_cli(["register", "--run-id", worse.info.run_id], cwd, uri)
    assert f"registered {NAME} version 1" in proc.stdout and "alias champion -> version 1" in proc.stdout
    proc = run_cli(["register", "--env", "FetchReach-v4"], cwd, uri)  # the best run: strictly better
    assert f"registered {NAME} version 2 from run {better.info.run_id}" in proc.stdout
    assert "alias champion -> version 2" in proc.stdout
    proc = run_cli(["register", "--run-id", worse.info.run_id], cwd, uri)
    assert "alias champion stays on version 2" in proc.stdout

    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == "2"
    assert champion.tags["source_run_id"] == better.info.run_id
    assert float(champion.tags["eval_success_rate"]) == better.data.metrics["eval/success_rate"]
    assert json.loads(champion.tags["config"])["her"] is True
    # the pages of the version and of the registered model say where the champion came from
    assert better.info.run_id in champion.description and better.info.run_name in champion.description
    assert f"success **{100 * better.data.metrics['eval/success_rate']:.1f}%**" in champion.description
    assert "| total_steps | 300 |" in champion.description
    model = client.get_registered_model(NAME)
    assert model.description.startswith(f"Champion (`models:/{NAME}@champion`): version 2.")
    assert better.info.run_id in model.description


def test_pyfunc_predicts_in_a_fresh_process(registry_store):
    cwd, uri, _ = registry_store
    run_cli(["register", "--env", "FetchReach-v4"], cwd, uri)
    script = (
        "import mlflow, numpy as np, gymnasium as gym, gymnasium_robotics\n"
        "gym.register_envs(gymnasium_robotics)\n"
        f"model = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
        "env = gym.make('FetchReach-v4')\n"
        "obs = [env.reset(seed=s)[0] for s in range(3)]\n"
        "batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}\n"
        "actions = model.predict(batch)\n"
        "print(np.asarray(actions).shape, float(np.abs(actions).max()) <= 1.0)\n"
        "single = model.predict(obs[1])\n"
        "print(np.asarray(single).shape, bool(np.allclose(single, actions[1])))\n"
        "try:\n"
        "    model.predict({**obs[0], 'desired_goal': np.zeros(5)})\n"
        "except Exception as exc:\n"
        "    print('rejected:', exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=clean_env(uri), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-3:-1] == ["(3, 4) True", "(4,) True"]
    assert lines[-1].startswith("rejected:") and "'desired_goal' has shape (5,)" in lines[-1]


def test_load_policy_and_eval_from_models_uri(registry_store):
    cwd, uri, runs = registry_store
    run_cli(["register", "--env", "FetchReach-v4"], cwd, uri)
    import harness
    from harness.envs import make_env

    model = harness.load_policy(f"models:/{NAME}@champion")
    obs, _ = make_env("FetchReach-v4").reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)  # a single raw observation
    assert action.shape == (4,)
    same = harness.load_policy(runs["sac_her_FetchReach-v4_seed0"].info.run_id)
    assert same.num_timesteps == 300
    proc = run_cli(["eval", "--ckpt", f"models:/{NAME}@champion", "--n-episodes", "2"], cwd, uri)
    assert "FetchReach-v4 sac + HER" in proc.stdout and "logged eval/* to training run" in proc.stdout
    # the registered model is tensors, JSON and code: nothing in it is a pickle
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}@champion", dst_path=str(cwd / "model"))
    files = [p.name for p in Path(local).rglob("*") if p.is_file()]
    assert "policy.pt" in files and "registry_model.py" in files
    assert not [name for name in files if name.endswith((".pkl", ".zip"))], files


def test_register_errors(registry_store):
    cwd, uri, runs = registry_store
    for args, expected in (
        (["register"], "give --env (register its best HER run) or --run-id (register that run)"),
        (["register", "--env", "FetchPush-v4"], "no finished, evaluated HER training run for FetchPush-v4"),
        (["register", "--run-id", runs["sac_FetchReach-v4_seed0"].info.run_id], "is not a HER run"),
        (["eval", "--ckpt", "models:/nope@champion"], "registered model 'models:/nope@champion' not found"),
        (["eval", "--ckpt", "models:/m-123"], "'models:/m-123' is not a logged model's URI; accepted: models:/m-<32 hex"),
        (["eval", "--ckpt", f"models:/{NAME}"], f"'models:/{NAME}' names no version or alias of a registered model"),
    ):
        proc = run_cli(args, cwd, uri, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr


def test_registered_weights_that_are_not_tensors_are_one_line_without_torchs_advice(registry_store):
    """Weights replaced in the store with a pickle that names a function, and the version's sha256 tag set to
    match (what someone who can write the store can do): one line, no warning, nothing of torch's page that
    advises loading with weights_only=False."""
    import torch

    from harness.checkpoints import WEIGHTS_HASH_TAG, sha256_of

    cwd, uri, _ = registry_store
    run_cli(["register", "--env", "FetchReach-v4"], cwd, uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(NAME, "champion")
    weights = Path(client.get_model_version_download_uri(NAME, version.version).removeprefix("file://"))
    weights = weights / "artifacts" / "weights"
    original, tag = (weights / "policy.pt").read_bytes(), version.tags[WEIGHTS_HASH_TAG]
    try:
        torch.save({"actor.weight": print}, weights / "policy.pt")
        hashes = {p.name: sha256_of(p) for p in sorted(weights.iterdir())}
        client.set_model_version_tag(NAME, version.version, WEIGHTS_HASH_TAG, json.dumps(hashes))
        proc = run_cli(["eval", "--ckpt", f"models:/{NAME}@champion"], cwd, uri, check=False)
    finally:
        (weights / "policy.pt").write_bytes(original)
        client.set_model_version_tag(NAME, version.version, WEIGHTS_HASH_TAG, tag)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"harness: error: 'models:/{NAME}@champion' holds no loadable policy weights (not plain tensors: "
        "Unsupported global: GLOBAL print)"
    ]


@pytest.mark.parametrize("algo", ["sac", "tqc", "ddpg"])
def test_plain_weights_rebuild_the_same_policy_without_unpickling(tmp_path, algo):
    """What a registered model carries: tensors and JSON, from which the same policy is rebuilt."""
    from stable_baselines3.common.logger import configure

    from harness.checkpoints import LoadedCheckpoint, export_weights, load_weights
    from harness.config import resolve_config
    from harness.envs import make_env
    from harness.training import build_env, build_model

    config = resolve_config(
        "fast",
        "FetchReach-v4",
        {"algo": algo, "her": True, "n_envs": 1, "total_steps": 100, "normalize_obs": True, "net_arch": [32, 16]},
    )
    env, vecnormalize = build_env(config)
    model = build_model(config, env, configure(None, []))
    vecnormalize.reset()
    for _ in range(5):  # statistics that are not the defaults
        vecnormalize.step([env.action_space.sample()])
    model.num_timesteps = 123
    hashes = export_weights(LoadedCheckpoint(model, {"config": config.to_dict()}, vecnormalize, "test"), tmp_path)
    assert sorted(hashes) == ["meta.json", "normalization.json", "policy.pt"]
    loaded = load_weights(tmp_path, "test")
    assert loaded.model.num_timesteps == 123 and loaded.meta["trained_env_id"] == "FetchReach-v4"
    obs = {k: v[None] for k, v in make_env("FetchReach-v4").reset(seed=3)[0].items()}
    assert loaded.normalize(obs)["observation"].tolist() == vecnormalize.normalize_obs(obs)["observation"].tolist()
    expected, _ = model.predict(vecnormalize.normalize_obs(obs), deterministic=True)
    actual, _ = loaded.model.predict(loaded.normalize(obs), deterministic=True)
    assert actual.tolist() == expected.tolist()
