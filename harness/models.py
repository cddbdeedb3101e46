"""A policy as an MLflow model, and loading a policy from any reference.

Each checkpoint a training evaluates is logged as an MLflow *logged model* of its run
(:func:`log_checkpoint_model`, ``models:/m-<id>``), that evaluation's ``eval/*`` linked to it, and kept
as :class:`KeepCheckpoints` says; ``harness register`` makes registered models of the same plain data.
:func:`load_checkpoint` takes any reference: a checkpoint path, a run id, a ``runs:/`` URI, a registered
model (``models:/<name>@<alias>`` or ``/<version>``) or a logged model (``models:/m-<id>``); every file
is checked against the sha256 recorded with it, and nothing is unpickled (:mod:`harness.checkpoints`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checkpoints import (
    WEIGHTS_ARTIFACT,
    WEIGHTS_FILE,
    WEIGHTS_HASH_TAG,
    LoadedCheckpoint,
    export_weights,
    load_weights,
    resolve_checkpoint_files,
    sha256_of,
    load_zip_checkpoint,
)
from harness.errors import HarnessError, first_line
from harness.atomic_files import scratch_directory
from harness.run_schema import CHECKPOINT_STEP_TAG, KIND_TAG, SOURCE_RUN_ID_TAG, WEIGHTS_SHA256_TAG


CHECKPOINT_KIND = "checkpoint"  # the harness.kind tag of a checkpoint's logged model
LOGGED_MODEL_ID = re.compile(r"^(models:/)?(m-[0-9a-f]{32})$")


@dataclass(frozen=True)
class KeepCheckpoints:
    """How many of a run's evaluated checkpoints stay as logged models: ``all``, ``none``, ``best:K`` (the K
    with the highest eval success, ties by return, then the later) or ``last:K`` (the K latest)."""

    rule: str
    count: int = 0

    ACCEPTED = "all, none, best:K or last:K (K >= 1)"

    @classmethod
    def parse(cls, text: str) -> KeepCheckpoints:
        rule, _, count = text.partition(":")
        if rule in ("all", "none") and not count:
            return cls(rule)
        if rule in ("best", "last") and count.isdigit() and int(count) >= 1:
            return cls(rule, int(count))
        raise HarnessError(f"--keep-checkpoints must be {cls.ACCEPTED}, got {text!r}")

    def __str__(self) -> str:
        return f"{self.rule}:{self.count}" if self.count else self.rule

    def to_delete(self, models: list[Any]) -> list[Any]:
        """Of a run's checkpoint models, those this rule does not keep."""
        if self.rule == "all":
            return []
        if self.rule == "none":
            return list(models)

        def step(model) -> int:
            return int(model.tags.get(CHECKPOINT_STEP_TAG, 0))

        def score(model) -> tuple[float, float, int]:
            metrics = {m.key: m.value for m in model.metrics or []}
            return metrics.get("eval/success_rate", -1.0), metrics.get("eval/mean_return", -math.inf), step(model)

        ranked = sorted(models, key=score if self.rule == "best" else step, reverse=True)
        return ranked[self.count :]


KEEP_NONE = KeepCheckpoints("none")
# What a 2-core machine and a shared server want: the few worth registering, a few MB each (docs/mlflow.md).
DEFAULT_KEEP = KeepCheckpoints("best", 3)


def log_checkpoint_model(loaded: LoadedCheckpoint, run_id: str, experiment_id: str, tags: dict[str, str]) -> str:
    """Log the policy of ``loaded`` as a logged model of run ``run_id`` at its env step: plain files
    (:func:`export_weights`) with their sha256 as a tag; returns the model id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    step = int(loaded.model.num_timesteps)
    name = f"{loaded.meta.get('run_name', 'checkpoint')}-step{step}"
    model_tags = {**tags, KIND_TAG: CHECKPOINT_KIND, CHECKPOINT_STEP_TAG: str(step), SOURCE_RUN_ID_TAG: run_id}
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=model_tags)
    try:
        with scratch_directory("model") as directory:
            hashes = export_weights(loaded, Path(directory))
            client.log_model_artifacts(logged.model_id, directory)
        client.set_logged_model_tags(logged.model_id, {WEIGHTS_SHA256_TAG: json.dumps(hashes, sort_keys=True)})
        client.finalize_logged_model(logged.model_id, "READY")
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    return logged.model_id


def run_checkpoint_models(run_id: str, experiment_id: str) -> list[Any]:
    """The run's checkpoint logged models (READY ones), with their metrics."""
    import mlflow

    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND tags.`{KIND_TAG}` = '{CHECKPOINT_KIND}'",
        output_format="list",
    )
    return [m for m in found if str(m.status) in ("READY", "LoggedModelStatus.READY")]


def delete_checkpoint_model(model) -> None:
    """Delete a logged model and its files (MLflow's delete only marks it; its files would stay)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(Exception):  # files already gone, or a store that cannot delete: the mark still holds
        get_artifact_repository(model.artifact_location).delete_artifacts()
    MlflowClient().delete_logged_model(model.model_id)


def load_checkpoint(ckpt: str, env_id: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint for evaluation from a path, run id, ``runs:/`` or ``models:/`` URI (a registered
    model or a checkpoint's logged model, ``models:/m-<id>`` or ``m-<id>``), unpickling nothing."""
    # Downloaded files are only needed while loading: the model lives in memory afterwards.
    with scratch_directory("ckpt") as download_dir:
        logged_model = LOGGED_MODEL_ID.match(ckpt)
        if logged_model:
            return _load_logged_model(logged_model.group(2), Path(download_dir), env_id)
        if ckpt.startswith("models:/"):
            check_model_uri(ckpt)
            return _load_registered(ckpt, Path(download_dir), env_id)
        zip_path, meta = resolve_checkpoint_files(ckpt, Path(download_dir))
        return load_zip_checkpoint(ckpt, zip_path, meta, env_id)


# models:/<name>/<version> (or /latest, a stage) and models:/<name>@<alias>, as MLflow reads them
REGISTERED_MODEL_URI = re.compile(r"^models:/[^/@]+(/[^/@]+|@[^/@]+)$")


def check_model_uri(uri: str) -> None:
    """One line for a ``models:/`` URI that names neither a logged model nor a registered model's version
    or alias (MLflow's own parser answers 'not enough values to unpack')."""
    if uri.startswith("models:/m-") and not REGISTERED_MODEL_URI.match(uri):
        raise HarnessError(f"'{uri}' is not a logged model's URI; accepted: models:/m-<32 hex digits> (as MLflow shows it)")
    if not REGISTERED_MODEL_URI.match(uri):
        raise HarnessError(
            f"'{uri}' names no version or alias of a registered model; accepted: models:/<name>/<version>, "
            "models:/<name>@<alias> (e.g. @champion) or a logged model's models:/m-<id>"
        )


def _load_logged_model(model_id: str, download_dir: Path, env_id: str | None) -> LoadedCheckpoint:
    """A checkpoint's logged model: plain weights, checked against the sha256 logged with them."""
    import mlflow

    from harness import stores

    stores.prepare_store(create=False)
    try:
        logged = mlflow.MlflowClient().get_logged_model(model_id)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(download_dir)))
    except Exception as exc:  # unknown id, deleted, files gone
        raise HarnessError(f"logged model '{model_id}' not found in {mlflow.get_tracking_uri()} ({first_line(exc)})") from None
    recorded = logged.tags.get(WEIGHTS_SHA256_TAG)
    if recorded is None or not (local / WEIGHTS_FILE).is_file():
        raise HarnessError(f"logged model '{model_id}' is not a harness checkpoint (no {WEIGHTS_FILE} with a recorded sha256)")
    if {path.name: sha256_of(path) for path in sorted(local.iterdir()) if path.is_file()} != json.loads(recorded):
        raise HarnessError(f"the files of logged model '{model_id}' differ from the sha256 logged with them; refusing them")
    loaded = load_weights(local, f"models:/{model_id}", env_id)
    loaded.meta.setdefault("run_id", logged.source_run_id)
    loaded.meta["logged_model_id"] = model_id
    return loaded


def _load_registered(model_uri: str, download_dir: Path, env_id: str | None) -> LoadedCheckpoint:
    """A model ``harness register`` logged: plain weights, checked against the sha256 that
    registration recorded on the model version."""
    import mlflow
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from harness import stores

    stores.prepare_store(create=False)
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
