"""Loading a checkpoint unpickles nothing: every kind the harness writes loads with the unpicklers patched
to fail, and a checkpoint whose every pickled entry would run code loads (or is refused in one line)
without running it."""

from __future__ import annotations

import base64
import importlib
import io
import json
import pickle
import zipfile

import cloudpickle
import pytest
import torch

from harness.checkpoints import LEGACY_STATS_SUFFIX, local_paths
from harness.normalization import write_normalization
from harness.models import load_checkpoint
from harness.config import resolve_config
from harness.envs import make_env
from harness.errors import HarnessError


class CreatesFileWhenUnpickled:
    """What an attacker's pickle does: call something of its choice (here: create a marker file)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def no_unpickling(monkeypatch):
    """Every way bytes could be unpickled fails the test: pickle, cloudpickle, and torch.load unless tensors only."""

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    original_torch_load = torch.load

    def tensors_only(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError("torch.load without weights_only=True")
        return original_torch_load(*args, **kwargs)

    # torch's optimizers import torch._dynamo lazily, and its module body subclasses pickle.Unpickler
    importlib.import_module("torch._dynamo")

    for target in (pickle, cloudpickle):
        monkeypatch.setattr(target, "loads", refuse)
        monkeypatch.setattr(target, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", tensors_only)


def saved_checkpoint(directory, algo: str, normalize: bool = True):
    """A checkpoint as ``harness train`` writes it (zip, meta.json, statistics), of an untrained model."""
    from stable_baselines3.common.logger import configure

    from harness.training import build_env, build_model

    config = resolve_config(
        "fast",
        "FetchReach-v4",
        {"algo": algo, "her": True, "n_envs": 1, "total_steps": 100, "normalize_obs": normalize, "net_arch": [32, 16]},
    )
    env, vecnormalize = build_env(config)
    model = build_model(config, env, configure(None, []))
    if vecnormalize is not None:
        vecnormalize.reset()
        for _ in range(5):  # statistics that are not the defaults
            vecnormalize.step([env.action_space.sample()])
    model.num_timesteps = 123
    paths = local_paths("ckpt", directory)
    model.save(paths["model"])
    if vecnormalize is not None:
        write_normalization(vecnormalize, paths["normalization"])
    paths["meta"].write_text(json.dumps({"config": config.to_dict(), "run_name": "ckpt"}))
    return paths, model, vecnormalize


def an_observation():
    return {k: v[None] for k, v in make_env("FetchReach-v4").reset(seed=3)[0].items()}


@pytest.mark.parametrize("algo", ["sac", "tqc", "ddpg"])
def test_every_checkpoint_the_harness_writes_loads_with_unpickling_forbidden(tmp_path, algo, request):
    paths, model, vecnormalize = saved_checkpoint(tmp_path, algo)
    obs = an_observation()
    expected, _ = model.predict(vecnormalize.normalize_obs(obs), deterministic=True)
    request.getfixturevalue("no_unpickling")

    loaded = load_checkpoint(str(paths["model"]))
    assert loaded.model.num_timesteps == 123 and loaded.config["algo"] == algo
    assert loaded.normalize(obs)["observation"].tolist() == vecnormalize.normalize_obs(obs)["observation"].tolist()
    actual, _ = loaded.model.predict(loaded.normalize(obs), deterministic=True)
    assert actual.tolist() == expected.tolist()

    # a bare SB3 zip (no meta.json): algo and HER read from the zip's text, the layers from the tensors' shapes
    paths["meta"].unlink()
    bare = load_checkpoint(str(paths["model"]), env_id="FetchReach-v4")
    assert (bare.config["algo"], bare.config["her"], bare.config["seed"]) == (algo, True, 0)
    assert bare.model.predict(bare.normalize(obs), deterministic=True)[0].tolist() == expected.tolist()


def replace_in_zip(path, name: str, content: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        entries = {entry: archive.read(entry) for entry in archive.namelist()}
    entries[name] = content
    with zipfile.ZipFile(path, "w") as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)


def test_a_checkpoint_whose_every_pickled_entry_runs_code_loads_without_running_it(tmp_path, no_unpickling):
    paths, model, _ = saved_checkpoint(tmp_path, "sac", normalize=False)
    marker = tmp_path / "code-ran"
    with zipfile.ZipFile(paths["model"]) as archive:
        data = json.loads(archive.read("data"))
    planted = base64.b64encode(pickle.dumps(CreatesFileWhenUnpickled(marker))).decode()
    serialized = [key for key, value in data.items() if isinstance(value, dict) and ":serialized:" in value]
    assert {"policy_class", "observation_space", "lr_schedule"} <= set(serialized)
    for key in serialized:
        data[key][":serialized:"] = planted
    replace_in_zip(paths["model"], "data", json.dumps(data).encode())

    loaded = load_checkpoint(str(paths["model"]))
    obs = an_observation()
    assert loaded.model.predict(obs, deterministic=True)[0].tolist() == model.predict(obs, deterministic=True)[0].tolist()
    assert not marker.exists()


def test_weights_that_are_not_plain_tensors_are_refused_in_one_line(tmp_path, no_unpickling):
    paths, _, _ = saved_checkpoint(tmp_path, "sac", normalize=False)
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"actor.mu.weight": CreatesFileWhenUnpickled(marker)}, buffer)
    replace_in_zip(paths["model"], "policy.pth", buffer.getvalue())
    with pytest.raises(
        HarnessError,
        match=r"is not a readable SB3 checkpoint \(policy.pth: not plain tensors: Unsupported global: GLOBAL io.open\)$",
    ) as error:
        load_checkpoint(str(paths["model"]))
    assert "\n" not in str(error.value) and not marker.exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda stats: stats["obs_rms"].pop("desired_goal"), "keys ['achieved_goal', 'observation'], expected"),
        (lambda stats: stats["obs_rms"]["observation"].update(mean=[0.0]), "'observation' has shape (1,), expected (10,)"),
        (lambda stats: stats.pop("clip_obs"), "('clip_obs')"),
    ],
)
def test_statistics_that_do_not_fit_the_env_are_one_line(tmp_path, change, expected):
    paths, _, _ = saved_checkpoint(tmp_path, "sac")
    stats = json.loads(paths["normalization"].read_text())
    change(stats)
    paths["normalization"].write_text(json.dumps(stats))
    with pytest.raises(HarnessError, match="normalization statistics of") as error:
        load_checkpoint(str(paths["model"]))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_local_checkpoint_from_an_older_harness_has_its_pickled_statistics_converted_once(tmp_path, capsys):
    paths, _, vecnormalize = saved_checkpoint(tmp_path, "sac")
    legacy = paths["model"].with_name("ckpt" + LEGACY_STATS_SUFFIX)
    vecnormalize.save(str(legacy))  # what harness train wrote before the statistics were JSON
    paths["normalization"].unlink()

    loaded = load_checkpoint(str(paths["model"]))  # a path the user named: trusted, converted
    assert "converted ckpt.vecnormalize.pkl (a pickle) to ckpt.normalization.json" in capsys.readouterr().err
    assert paths["normalization"].is_file()
    obs = an_observation()
    assert loaded.normalize(obs)["observation"].tolist() == vecnormalize.normalize_obs(obs)["observation"].tolist()
    load_checkpoint(str(paths["model"]))
    assert capsys.readouterr().err == ""  # once


def test_an_older_harness_resumable_pickle_finds_its_replay_buffer_under_the_module_s_old_name():
    from harness import resume
    from harness.her_replay import MixedGoalHerReplayBuffer

    # A resumable checkpoint of an older harness pickled its buffer class as harness.replay's.
    old = pickle.dumps(MixedGoalHerReplayBuffer, protocol=0).replace(b"harness.her_replay", b"harness.replay")
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(old)
    with resume._old_module_names():
        assert pickle.loads(old) is MixedGoalHerReplayBuffer
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(old)  # the old name is not left behind


@pytest.mark.parametrize("algo", ["sac", "tqc", "ddpg"])
def test_a_resumable_checkpoint_continues_with_unpickling_forbidden(tmp_path, monkeypatch, algo, request):
    """The resumable checkpoint (model.zip + state.json/state.npz) is loaded as JSON, arrays and tensors:
    with every unpickler patched to fail, the continued model has the trained weights, optimizers, replay
    buffer, normalization and counters of the one saved."""
    from stable_baselines3.common.logger import configure

    from harness import resume
    from harness.training import build_env, build_model

    monkeypatch.chdir(tmp_path)
    config = resolve_config(
        "fast",
        "FetchReach-v4",
        {
            "algo": algo,
            "her": True,
            "n_envs": 2,
            "total_steps": 300,
            "learning_starts": 200,
            "normalize_obs": True,
            "net_arch": [32, 16],
            "n_step_returns": 3,
        },
    )
    env, vecnormalize = build_env(config)
    model = build_model(config, env, configure(None, []))
    model.learn(300)
    saved = resume.save("f" * 32, model, vecnormalize)
    assert sorted(p.name for p in saved.iterdir()) == ["model.zip", "state.json", "state.npz", "step.json"]
    request.getfixturevalue("no_unpickling")

    env2, vecnormalize2 = build_env(config)
    continued, _, normalizer, _ = resume.load(saved, config, env2, configure(None, []), vecnormalize2, "cpu", build_model)
    assert continued.num_timesteps == model.num_timesteps and continued._n_updates == model._n_updates > 0
    for name, tensor in model.policy.state_dict().items():
        assert torch.equal(tensor, continued.policy.state_dict()[name]), name
    saved_optimizer = model.actor.optimizer.state_dict()["state"]
    assert all(
        torch.equal(saved_optimizer[i]["exp_avg"], continued.actor.optimizer.state_dict()["state"][i]["exp_avg"])
        for i in saved_optimizer
    )
    buffer, restored = model.replay_buffer, continued.replay_buffer
    assert (restored.pos, restored.full) == (buffer.pos, buffer.full)
    assert (restored.observations["observation"] == buffer.observations["observation"]).all()
    assert (restored.ep_length == buffer.ep_length).all()
    assert normalizer.obs_rms["observation"].count == vecnormalize.obs_rms["observation"].count
    assert (continued._last_obs["desired_goal"] == model._last_obs["desired_goal"]).all()
    continued.learn(100, reset_num_timesteps=False)  # and it trains on
