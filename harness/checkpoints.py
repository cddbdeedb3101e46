"""Checkpoints on disk and in MLflow: the chapter's file layout, and loading from any reference.

A checkpoint is the SB3 zip plus ``meta.json`` (how it was made) and, when observations were
normalized, the normalization statistics as JSON. Locally it lives in the chapter's layout::

    checkpoints/sac_her_FetchPush-v4_seed0.zip
    checkpoints/sac_her_FetchPush-v4_seed0.meta.json
    checkpoints/sac_her_FetchPush-v4_seed0.normalization.json   (normalize_obs only)

and in its MLflow run as artifacts ``checkpoint/<name>.zip``, ``checkpoint/<name>.normalization.json``
and ``meta.json``. :func:`harness.models.load_checkpoint` takes a path, a run id, a ``runs:/`` URI or a
``models:/`` URI (a registered model, or a checkpoint's logged model).

Loading unpickles nothing, by construction: SB3's own ``load`` would unpickle the zip's
``:serialized:`` entries, so anyone who can write a run's artifacts and tags could run code on whoever
loads it. The zip is read as data only (:mod:`harness.sb3_zip`) and the statistics are JSON
(:mod:`harness.normalization`). The sha256 tags a training records
(:func:`verify_hashes`) stay as an integrity check: they find a file cut short or changed, not an
attacker who can also set tags. Older checkpoints kept the statistics as a VecNormalize pickle
(``.vecnormalize.pkl``): from a store they are refused; from a local path the user names they are
converted once (:func:`convert_legacy_statistics`).

A registered model carries the same plain data (:func:`export_weights`): the policy's tensors
(``policy.pt``), the statistics as JSON and ``meta.json``; :func:`load_weights` rebuilds it. So does each
checkpoint a training logs as an MLflow *logged model* (:mod:`harness.models`, which also holds
``load_checkpoint``, the one entry for any reference).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, first_line
from harness.normalization import normalization_stats, normalizer
from harness.sb3_zip import describe_zip, policy_model, read_policy_weights, read_zip_data, tensors_in
from harness.run_schema import (
    CHECKPOINT_SHA256_TAG,
    NORMALIZATION_SHA256_TAG,
)

CHECKPOINT_DIR = Path("checkpoints")
ARTIFACT_DIR = "checkpoint"
RUN_ID_LENGTH = 32  # an MLflow run id: 32 hex digits
# Tags a training run carries with the sha256 of its checkpoint files (see verify_hashes).
HASH_TAGS = {"model": CHECKPOINT_SHA256_TAG, "normalization": NORMALIZATION_SHA256_TAG}
STATS_SUFFIX = ".normalization.json"
LEGACY_STATS_SUFFIX = ".vecnormalize.pkl"  # VecNormalize's pickle, written before the statistics were JSON


def local_paths(run_name: str, directory: Path = CHECKPOINT_DIR) -> dict[str, Path]:
    return {
        "model": directory / f"{run_name}.zip",
        "meta": directory / f"{run_name}.meta.json",
        "normalization": directory / f"{run_name}{STATS_SUFFIX}",
    }


def _beside(zip_path: Path, suffix: str) -> Path:
    return zip_path.with_name(zip_path.name.removesuffix(".zip") + suffix)


def stats_path(zip_path: Path) -> Path:
    """The normalization statistics saved beside a checkpoint zip (present when observations were normalized)."""
    return _beside(zip_path, STATS_SUFFIX)


def legacy_stats_path(zip_path: Path) -> Path:
    return _beside(zip_path, LEGACY_STATS_SUFFIX)


@dataclass
class LoadedCheckpoint:
    """A model ready for ``predict`` plus what is known about how it was made."""

    model: Any
    meta: dict[str, Any]
    vecnormalize: Any | None
    source: str
    sha256: str | None = None
    """Of the SB3 zip it was loaded from (None for plain weights): which run's checkpoint it is."""

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
    """The content hashes a training run records for its checkpoint files."""
    tags = {HASH_TAGS["model"]: sha256_of(zip_path)}
    stats = stats_path(zip_path)
    if stats.is_file():
        tags[HASH_TAGS["normalization"]] = sha256_of(stats)
    return tags


def verify_hashes(run_id: str, zip_path: Path) -> None:
    """Refuse checkpoint files from a store unless each matches the sha256 its training run recorded.

    An integrity check (a file cut short, changed or logged to the run later is found before it is
    read), not the security boundary: anyone who can write a run's artifacts can usually set its tags
    too, which is why loading unpickles nothing (module docstring).
    """
    from mlflow.tracking import MlflowClient

    legacy = legacy_stats_path(zip_path)
    if legacy.is_file():
        raise HarnessError(
            f"run {run_id} keeps its normalization statistics as a pickle ({ARTIFACT_DIR}/{legacy.name}, "
            "written by an older harness), which is never opened from a store; if you trust the run, download "
            f"its {ARTIFACT_DIR}/ artifacts and pass the local .zip path (the pickle is converted to JSON once)"
        )
    recorded = {k: v for k, v in MlflowClient().get_run(run_id).data.tags.items() if k in HASH_TAGS.values()}
    found = hash_tags(zip_path)
    for tag, digest in found.items():
        name = zip_path.name if tag == HASH_TAGS["model"] else stats_path(zip_path).name
        if tag not in recorded:
            raise HarnessError(
                f"run {run_id} records no sha256 for its artifact {ARTIFACT_DIR}/{name} (tag {tag}); "
                "refusing a file its training did not write; if you trust it, download it and pass the local .zip path"
            )
        if digest != recorded[tag]:
            raise HarnessError(
                f"the checkpoint files of run {run_id} differ from the sha256 recorded on the run at "
                f"training ({tag}); refusing to load them (cut short or changed after the training)"
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
        run = get_run(run_id)  # a clear error for an unknown id
        import mlflow

        # The checkpoint and its meta.json only: not the run's resumable checkpoints, videos or results.
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT_DIR, dst_path=str(download_dir))
            )
        except Exception as exc:  # MLflow raises several types for missing artifacts
            raise HarnessError(f"run {run_id} has no downloadable checkpoint artifacts ({first_line(exc)})") from None
        zips = sorted(local.glob("*.zip"))
        if not zips:
            raise HarnessError(f"run {run_id} has no checkpoint: no '{ARTIFACT_DIR}/*.zip' artifact (is it a training run?)")
        verify_hashes(run_id, zips[0])
        return zips[0], store_meta(run, download_dir)

    path = Path(ckpt)
    if not path.is_file():
        raise HarnessError(
            f"checkpoint '{ckpt}' not found; give a .zip path, an MLflow run id, a runs:/<run id> "
            "or a models:/<name>@<alias> URI"
        )
    meta_path = _beside(path, ".meta.json") if path.name.endswith(".zip") else None
    meta = read_meta(meta_path) if meta_path is not None and meta_path.is_file() else {}
    if path.name.endswith(".zip") and legacy_stats_path(path).is_file() and not stats_path(path).is_file():
        convert_legacy_statistics(path)
    return path, meta


def store_meta(run, download_dir: Path) -> dict[str, Any]:
    """A store run's meta.json, checked against the sha256 its training recorded (runs from before the
    tag are read unchecked); whatever it says, the run id and name are the run's own, since a meta.json
    naming another run would send an evaluation's numbers there, and its name picks the results file."""
    import mlflow

    from harness.run_schema import META_SHA256_TAG, RUN_NAME_TAG

    run_id = run.info.run_id
    meta: dict[str, Any] = {}
    try:
        path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="meta.json", dst_path=str(download_dir)))
    except Exception:  # an older run, or one made by hand: the zip itself says enough to load it
        path = None
    recorded = run.data.tags.get(META_SHA256_TAG)
    if path is not None and recorded is not None and sha256_of(path) != recorded:
        raise HarnessError(
            f"the meta.json of run {run_id} differs from the sha256 recorded on the run at training "
            f"({META_SHA256_TAG}); refusing it (changed after the training)"
        )
    if path is None and recorded is not None:
        raise HarnessError(f"run {run_id} recorded {META_SHA256_TAG} at training but its meta.json artifact is gone")
    if path is not None:
        meta = read_meta(path)
    return {**meta, "run_id": run_id, "run_name": run.data.tags.get(RUN_NAME_TAG) or run.info.run_name}


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


def convert_legacy_statistics(zip_path: Path) -> Path:
    """Turn the VecNormalize pickle an older harness saved beside a local checkpoint into the JSON file
    loading reads. Unpickles: called only for a local path the user named, never for a store's files."""
    import pickle

    legacy, converted = legacy_stats_path(zip_path), stats_path(zip_path)
    try:
        with open(legacy, "rb") as f:
            vecnormalize = pickle.load(f)  # a local file the user chose to trust (docstring)
        stats = normalization_stats(vecnormalize)
    except Exception as exc:  # a pickle can fail in any way
        raise HarnessError(f"'{legacy}' is not a readable VecNormalize file ({type(exc).__name__}: {exc})") from None
    from harness.atomic_files import write_text_atomically

    write_text_atomically(converted, json.dumps(stats))
    print(f"converted {legacy.name} (a pickle) to {converted.name} beside it; later loads read the JSON", file=sys.stderr)
    return converted


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
        (directory / NORMALIZATION_FILE).write_text(json.dumps(normalization_stats(loaded.vecnormalize)))
    meta = {**loaded.meta, "num_timesteps": int(loaded.model.num_timesteps)}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return {path.name: sha256_of(path) for path in sorted(directory.iterdir())}


def load_weights(directory: Path, source: str, env_id: str | None = None) -> LoadedCheckpoint:
    """The model :func:`export_weights` wrote, rebuilt from its config (on ``env_id`` if given, for
    scoring it on another env); nothing is unpickled."""

    from harness.envs import make_vec_env

    meta = read_meta(directory / "meta.json")
    config = dict(meta.get("config", {}))
    trained_env_id = config["env_id"]
    config["env_id"] = env_id or trained_env_id
    env = make_vec_env(config["env_id"], n_envs=1, seed=0)
    state, why = tensors_in(directory / WEIGHTS_FILE)
    if state is None:
        raise HarnessError(f"'{source}' holds no loadable policy weights ({why})")
    model = policy_model(config["algo"], env, state, source, int(meta.get("num_timesteps", 0)))
    normalization = directory / NORMALIZATION_FILE
    vecnormalize = normalizer(normalization, env, source) if normalization.is_file() else None
    return LoadedCheckpoint(
        model=model,
        meta={**meta, "config": config, "trained_env_id": trained_env_id},
        vecnormalize=vecnormalize,
        source=source,
    )


def load_zip_checkpoint(ckpt: str, zip_path: Path, meta: dict[str, Any], env_id: str | None) -> LoadedCheckpoint:
    from harness.envs import make_vec_env, validate_env_id

    data = read_zip_data(zip_path, ckpt)
    described = describe_zip(data)
    config = dict(meta.get("config", {}))
    for key, value in described.items():
        config.setdefault(key, value)
    if config.get("algo") not in ("sac", "tqc", "ddpg"):
        raise HarnessError(f"checkpoint '{ckpt}' names algo {config.get('algo')!r}; accepted: sac, tqc, ddpg")
    env_id = env_id or config.get("env_id")
    if not env_id:
        raise HarnessError(f"checkpoint '{ckpt}' has no meta.json naming its env; pass --env")
    validate_env_id(env_id)
    # The env it was trained on stays known when --env scores it on another one.
    trained_env_id = meta.get("config", {}).get("env_id")
    config["env_id"] = env_id
    meta = {**meta, "config": config, "trained_env_id": trained_env_id}

    env = make_vec_env(env_id, n_envs=1, seed=0)
    steps = data.get("num_timesteps")
    model = policy_model(
        config["algo"], env, read_policy_weights(zip_path, ckpt), ckpt, steps if isinstance(steps, int) else 0
    )
    stats = stats_path(zip_path)
    vecnormalize = normalizer(stats, env, ckpt) if stats.is_file() else None
    return LoadedCheckpoint(model=model, meta=meta, vecnormalize=vecnormalize, source=ckpt, sha256=sha256_of(zip_path))
