"""Checkpoints on disk and in MLflow: the chapter's file layout, and loading from any reference.

A checkpoint is the SB3 zip plus ``meta.json`` (how it was made) and, when observations were
normalized, the VecNormalize statistics. Locally it lives in the chapter's layout::

    checkpoints/sac_her_FetchPush-v4_seed0.zip
    checkpoints/sac_her_FetchPush-v4_seed0.meta.json
    checkpoints/sac_her_FetchPush-v4_seed0.vecnormalize.pkl   (normalize_obs only)

and in its MLflow run as artifacts ``checkpoint/<name>.zip``, ``checkpoint/<name>.vecnormalize.pkl``
and ``meta.json``. :func:`load_checkpoint` takes a path, a run id, a ``runs:/`` URI or a
``models:/`` URI of a model registered by ``harness register``.

SB3 zips and VecNormalize files are pickles: loading one runs whatever code it holds. A registered
model therefore carries the policy as plain data instead (:func:`export_weights`): the policy's
tensors (``policy.pt``, read with ``torch.load(weights_only=True)``), the normalization statistics as
JSON and ``meta.json``; :func:`load_weights` rebuilds the SB3 model from the config around them.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.identity import CHECKPOINT_SHA256_TAG, VECNORMALIZE_SHA256_TAG

CHECKPOINT_DIR = Path("checkpoints")
ARTIFACT_DIR = "checkpoint"
RUN_ID_LENGTH = 32  # an MLflow run id: 32 hex digits
# Tags a training run carries with the sha256 of its checkpoint files (see verify_hashes).
HASH_TAGS = {"model": CHECKPOINT_SHA256_TAG, "vecnormalize": VECNORMALIZE_SHA256_TAG}


def local_paths(run_name: str, directory: Path = CHECKPOINT_DIR) -> dict[str, Path]:
    return {
        "model": directory / f"{run_name}.zip",
        "meta": directory / f"{run_name}.meta.json",
        "vecnormalize": directory / f"{run_name}.vecnormalize.pkl",
    }


def stats_path(zip_path: Path) -> Path:
    """The VecNormalize statistics saved beside a checkpoint zip (present when observations were normalized)."""
    return zip_path.with_name(zip_path.name[: -len(".zip")] + ".vecnormalize.pkl")


@dataclass
class LoadedCheckpoint:
    """A model ready for ``predict`` plus what is known about how it was made."""

    model: Any
    meta: dict[str, Any]
    vecnormalize: Any | None
    source: str

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config", {})

    @property
    def run_id(self) -> str | None:
        return self.meta.get("run_id")

    def normalize(self, obs):
        """Observations as the policy saw them in training (identity without VecNormalize)."""
        return self.vecnormalize.normalize_obs(obs) if self.vecnormalize is not None else obs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tags(zip_path: Path) -> dict[str, str]:
    """The content hashes a training run records for its checkpoint files, which hold pickles."""
    tags = {HASH_TAGS["model"]: sha256_of(zip_path)}
    stats = stats_path(zip_path)
    if stats.is_file():
        tags[HASH_TAGS["vecnormalize"]] = sha256_of(stats)
    return tags


def verify_hashes(run_id: str, zip_path: Path) -> None:
    """Refuse checkpoint files from a store unless each matches the sha256 its training run recorded.

    An SB3 zip (and VecNormalize's pickle) runs code when loaded, so on a shared tracking server
    anyone who can write artifacts could run code on whoever evaluates them. Every file that
    would be unpickled needs a hash recorded at training (a file logged afterwards has none), and
    the check comes before anything is unpickled. A local path is the way to load files one trusts
    without a recorded hash.
    """
    from mlflow.tracking import MlflowClient

    recorded = {k: v for k, v in MlflowClient().get_run(run_id).data.tags.items() if k in HASH_TAGS.values()}
    found = hash_tags(zip_path)
    for tag, digest in found.items():
        name = zip_path.name if tag == HASH_TAGS["model"] else stats_path(zip_path).name
        if tag not in recorded:
            raise HarnessError(
                f"run {run_id} records no sha256 for its artifact {ARTIFACT_DIR}/{name} (tag {tag}); "
                "refusing to unpickle a file its training did not record (an SB3 checkpoint runs code "
                "when loaded); if you trust it, download it and pass the local .zip path"
            )
        if digest != recorded[tag]:
            raise HarnessError(
                f"the checkpoint files of run {run_id} differ from the sha256 recorded on the run at "
                f"training ({tag}); refusing to load them (an SB3 checkpoint runs code when loaded)"
            )
    missing = sorted(recorded.keys() - found.keys())  # e.g. the statistics the model was trained with
    if missing:
        raise HarnessError(
            f"run {run_id} recorded {missing[0]} at training but its {ARTIFACT_DIR}/ artifacts lack "
            "that file; refusing to load the checkpoint without it"
        )


def looks_like_run_id(text: str) -> bool:
    return len(text) == RUN_ID_LENGTH and all(c in "0123456789abcdef" for c in text)


def resolve_checkpoint_files(ckpt: str, download_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Find the zip and its meta for a path, run id or ``runs:/`` URI (downloading if needed)."""
    if ckpt.startswith("runs:/") or looks_like_run_id(ckpt):
        from harness.tracking import get_run

        run_id = ckpt[len("runs:/") :].split("/")[0] if ckpt.startswith("runs:/") else ckpt
        get_run(run_id)  # a clear error for an unknown id
        import mlflow

        try:
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=str(download_dir)))
        except Exception as exc:  # MLflow raises several types for missing artifacts
            raise HarnessError(f"run {run_id} has no downloadable checkpoint artifacts ({exc})") from None
        zips = sorted((local / ARTIFACT_DIR).glob("*.zip"))
        if not zips:
            raise HarnessError(f"run {run_id} has no checkpoint: no '{ARTIFACT_DIR}/*.zip' artifact (is it a training run?)")
        verify_hashes(run_id, zips[0])
        meta_path = local / "meta.json"
        meta = read_meta(meta_path) if meta_path.is_file() else {"run_id": run_id}
        return zips[0], meta

    path = Path(ckpt)
    if not path.is_file():
        raise HarnessError(
            f"checkpoint '{ckpt}' not found; give a .zip path, an MLflow run id, a runs:/<run id> "
            "or a models:/<name>@<alias> URI"
        )
    meta_path = path.with_name(path.name[: -len(".zip")] + ".meta.json") if path.name.endswith(".zip") else None
    meta = read_meta(meta_path) if meta_path is not None and meta_path.is_file() else {}
    return path, meta


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json, or a clear error when it is not what ``harness train`` writes."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HarnessError(f"checkpoint metadata '{path}' is not valid JSON; delete it and pass --env") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
        raise HarnessError(
            f"checkpoint metadata '{path}' is not a harness meta.json (a JSON object with a "
            "'config' object); delete it and pass --env"
        )
    return meta


def read_zip_data(path: Path) -> dict[str, Any]:
    """SB3's saved attributes (policy class, replay buffer class, seed, ...) without building a model."""
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(path, load_data=True, device="cpu", print_system_info=False)
    except Exception as exc:  # zipfile, json and pickle errors all mean "not a checkpoint"
        raise HarnessError(f"checkpoint '{path}' is not a readable SB3 checkpoint ({type(exc).__name__}: {exc})") from None
    if not data or "policy_class" not in data:
        raise HarnessError(f"checkpoint '{path}' is not a readable SB3 checkpoint (no saved model data)")
    return data


def describe_zip(data: dict[str, Any]) -> dict[str, Any]:
    """algo, her and seed as recorded in the zip itself."""
    from stable_baselines3 import HerReplayBuffer

    policy_module = getattr(data["policy_class"], "__module__", "")
    buffer_class = data.get("replay_buffer_class")
    # The policy class names the algorithm family: HerDDPG is a TD3 subclass and saves TD3's policy.
    algo = "tqc" if "tqc" in policy_module else "ddpg" if "td3" in policy_module else "sac"
    return {
        "algo": algo,
        "her": isinstance(buffer_class, type) and issubclass(buffer_class, HerReplayBuffer),
        "seed": data.get("seed"),
    }


WEIGHTS_FILE = "policy.pt"
NORMALIZATION_FILE = "normalization.json"
WEIGHTS_ARTIFACT = "weights"  # the registered model's artifact folder holding them
WEIGHTS_HASH_TAG = "weights_sha256"  # on the model version: {file name: sha256}


def export_weights(loaded: LoadedCheckpoint, directory: Path) -> dict[str, str]:
    """Write the policy as plain data into ``directory``; returns the sha256 of each file."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.save(loaded.model.policy.state_dict(), directory / WEIGHTS_FILE)
    if loaded.vecnormalize is not None:
        rms = loaded.vecnormalize.obs_rms
        stats = {
            "clip_obs": loaded.vecnormalize.clip_obs,
            "epsilon": loaded.vecnormalize.epsilon,
            "obs_rms": {
                key: {"mean": r.mean.tolist(), "var": r.var.tolist(), "count": float(r.count)} for key, r in rms.items()
            },
        }
        (directory / NORMALIZATION_FILE).write_text(json.dumps(stats))
    meta = {**loaded.meta, "num_timesteps": int(loaded.model.num_timesteps)}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return {path.name: sha256_of(path) for path in sorted(directory.iterdir())}


def load_weights(directory: Path, source: str, env_id: str | None = None) -> LoadedCheckpoint:
    """The model :func:`export_weights` wrote, rebuilt from its config (on ``env_id`` if given, for
    scoring it on another env); nothing is unpickled."""
    import torch
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.vec_env import VecNormalize

    from harness.algorithms import algo_class
    from harness.envs import make_vec_env

    meta = read_meta(directory / "meta.json")
    config = dict(meta.get("config", {}))
    trained_env_id = config["env_id"]
    config["env_id"] = env_id or trained_env_id
    env = make_vec_env(config["env_id"], n_envs=1, seed=0)
    policy_kwargs: dict[str, Any] = {"net_arch": list(config["net_arch"])}
    if config["algo"] == "ddpg":
        policy_kwargs["n_critics"] = 1
    model = algo_class(config["algo"])(
        "MultiInputPolicy", env, buffer_size=1, policy_kwargs=policy_kwargs, device="cpu", verbose=0
    )
    try:
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.policy.load_state_dict(state)
    except Exception as exc:  # torch raises several types for a file that is not plain tensors
        raise HarnessError(f"'{source}' holds no loadable policy weights ({type(exc).__name__}: {exc})") from None
    model.policy.set_training_mode(False)
    model.num_timesteps = int(meta.get("num_timesteps", 0))
    vecnormalize = None
    normalization = directory / NORMALIZATION_FILE
    if normalization.is_file():
        stats = json.loads(normalization.read_text())
        vecnormalize = VecNormalize(
            env, training=False, norm_obs=True, norm_reward=False, clip_obs=stats["clip_obs"], epsilon=stats["epsilon"]
        )
        for key, saved in stats["obs_rms"].items():
            rms = RunningMeanStd(shape=vecnormalize.obs_rms[key].mean.shape)
            rms.mean, rms.var, rms.count = np.asarray(saved["mean"]), np.asarray(saved["var"]), saved["count"]
            vecnormalize.obs_rms[key] = rms
    return LoadedCheckpoint(
        model=model,
        meta={**meta, "config": config, "trained_env_id": trained_env_id},
        vecnormalize=vecnormalize,
        source=source,
    )


def load_checkpoint(ckpt: str, env_id: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint for evaluation from a path, run id, ``runs:/`` or ``models:/`` URI.

    HER checkpoints need an env at load time (SB3 rebuilds the HerReplayBuffer's settings
    from it), so one is always passed; the user never has to know.
    """
    # Downloaded files are only needed while loading: the model lives in memory afterwards.
    with tempfile.TemporaryDirectory(prefix="harness-ckpt-") as download_dir:
        if ckpt.startswith("models:/"):
            return _load_registered(ckpt, Path(download_dir), env_id)
        zip_path, meta = resolve_checkpoint_files(ckpt, Path(download_dir))
        return _load_files(ckpt, zip_path, meta, env_id)


def _load_registered(model_uri: str, download_dir: Path, env_id: str | None) -> LoadedCheckpoint:
    """A model ``harness register`` logged: plain weights, checked against the sha256 that
    registration recorded on the model version."""
    import mlflow
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from harness import tracking

    tracking.prepare_store()
    client = mlflow.MlflowClient()
    try:
        name, version = get_model_name_and_version(client, model_uri)
        recorded = client.get_model_version(name, version).tags.get(WEIGHTS_HASH_TAG)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(download_dir)))
    except Exception as exc:  # unknown name, version or alias
        raise HarnessError(f"registered model '{model_uri}' not found in {mlflow.get_tracking_uri()} ({exc})") from None
    weights = local / "artifacts" / WEIGHTS_ARTIFACT
    if recorded is None or not (weights / WEIGHTS_FILE).is_file():
        raise HarnessError(
            f"registered model '{model_uri}' holds no plain policy weights with a recorded sha256 "
            "(an older harness registered a pickled checkpoint); register it again with harness register"
        )
    if {path.name: sha256_of(path) for path in sorted(weights.iterdir())} != json.loads(recorded):
        raise HarnessError(
            f"the files of registered model '{model_uri}' differ from the sha256 recorded when it was "
            "registered; refusing to load them"
        )
    return load_weights(weights, model_uri, env_id)


def _load_files(ckpt: str, zip_path: Path, meta: dict[str, Any], env_id: str | None) -> LoadedCheckpoint:
    from harness.algorithms import algo_class
    from harness.envs import make_vec_env, validate_env_id

    described = describe_zip(read_zip_data(zip_path))
    config = dict(meta.get("config", {}))
    for key, value in described.items():
        config.setdefault(key, value)
    env_id = env_id or config.get("env_id")
    if not env_id:
        raise HarnessError(f"checkpoint '{ckpt}' has no meta.json naming its env; pass --env")
    validate_env_id(env_id)
    # The env it was trained on stays known when --env scores it on another one.
    trained_env_id = meta.get("config", {}).get("env_id")
    config["env_id"] = env_id
    meta = {**meta, "config": config, "trained_env_id": trained_env_id}

    env = make_vec_env(env_id, n_envs=1, seed=0)
    vecnormalize = None
    stats = stats_path(zip_path)
    if stats.is_file():
        from stable_baselines3.common.vec_env import VecNormalize

        vecnormalize = VecNormalize.load(str(stats), env)
        vecnormalize.training = False
        env = vecnormalize
    try:
        model = algo_class(config["algo"]).load(str(zip_path), env=env, device="cpu")
    except Exception as exc:
        raise HarnessError(f"checkpoint '{ckpt}' could not be loaded for {env_id} ({type(exc).__name__}: {exc})") from None
    return LoadedCheckpoint(model=model, meta=meta, vecnormalize=vecnormalize, source=ckpt)
