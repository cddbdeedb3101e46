"""Resumable checkpoints: what an interrupted training needs to continue in the same MLflow run.

Layout: ``checkpoints/resume/<run id>/step_<N>/`` with ``model.zip`` (SB3's: its networks and optimizers)
and ``state.json`` + ``state.npz`` (:mod:`harness.plain_state`: everything else, as JSON and arrays).
Nothing in it is unpickled when it is loaded: the model is built from the run's config as for a new
training, its tensors come from the zip through torch's tensors-only loader, and the rest from the plain
state. So a checkpoint fetched from a tracking server runs no code, whoever wrote it.

A resumed training ends exactly where an uninterrupted one would: the checkpoint is taken between
two rollouts (after the gradient steps of the last one, see :class:`ResumableCheckpoint`) and the
state holds every other thing the continuation draws from: the replay buffer, the normalization
statistics, SB3's last observations, episode counters and episode-info buffers, the Python, numpy and
torch generators, the action space's generator, each env's state mid-episode
(:func:`harness.envs.env_state`) and the metrics the SB3 logger has recorded but not yet written.
Checkpoints of older harnesses (``replay_buffer.pkl``, ``training_state.pkl``: pickles) are loaded from
this machine's own files only, never from a store. A checkpoint is written into
``step_<N>.tmp`` and renamed into place only when complete (:mod:`harness.atomic_files`), so a kill at any moment never leaves
a half-written directory that :func:`latest` would pick.

On a tracking server (workers on several machines), each checkpoint is also sent to the run's
artifacts under ``resume/`` (``resume/step.json`` last, with the files' sha256): a worker on another
machine continues a run whose machine was lost from there (:func:`fetch`).

``checkpoints/resume/<run id>/owner.lock`` is locked (flock) by the process training the run, for
as long as it trains. The kernel releases the lock when that process dies, however it dies (even
SIGKILL), so a run whose lock is free while MLflow still says RUNNING was abandoned.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import shutil
from pathlib import Path
from collections.abc import Iterator

from stable_baselines3.common.callbacks import BaseCallback

from harness import accounts, plain_state, stores, tracking
from harness.algorithms import algo_class
from harness.checkpoints import CHECKPOINT_DIR, sha256_of
from harness.config import TrainConfig
from harness.errors import HarnessError, warn
from harness.atomic_files import build_directory_atomically
from harness.training_state import TrainingClock, checkpoint_state, restore, restore_training_state
from harness.run_schema import (
    CONFIG_HASH_TAG,
    DAMAGED_CHECKPOINT_TAG,
    KIND_TAG,
    PARENT_RUN_ID_TAG,
    RESUME_MANIFEST_SHA256_TAG,
    RUN_NAME_TAG,
)

RESUME_DIR = CHECKPOINT_DIR / "resume"
OWNER_LOCK = "owner.lock"
STATE_JSON, STATE_ARRAYS = "state.json", "state.npz"
LEGACY_STATE_FILE = "training_state.pkl"  # older harnesses' pickles: read from this machine's own files only
# Modules renamed since older harnesses pickled their classes (the replay buffer's): a pickle names the old path.
RENAMED_MODULES = {f"{__package__}.replay": f"{__package__}.her_replay"}
REMOTE_DIR = "resume"  # the run's artifact folder for its latest resumable checkpoint (tracking server only)
MANIFEST = "step.json"


def run_dir(run_id: str) -> Path:
    return RESUME_DIR / run_id


def save(run_id: str, model, vecnormalize=None, trained_seconds: float = 0.0) -> Path:
    step = int(model.num_timesteps)
    final = run_dir(run_id) / f"step_{step:012d}"

    def fill(directory: Path) -> None:
        model.save(directory / "model.zip")
        state = checkpoint_state(model, vecnormalize, trained_seconds)
        plain_state.write(state, directory / STATE_JSON, directory / STATE_ARRAYS)
        write_manifest(directory, step)

    build_directory_atomically(final, fill)  # a full disk leaves no partial checkpoint behind
    for older in checkpoints(run_id):
        if older != final:
            shutil.rmtree(older, ignore_errors=True)
    if stores.on_server():
        upload(run_id, final, step)
    return final


def upload(run_id: str, saved: Path, step: int) -> None:
    """Send a checkpoint to the run's artifacts; the manifest goes last, so a reader that finds it
    finds every file it names (and checks each against its sha256)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for path in sorted(p for p in saved.iterdir() if p.is_file() and p.name != MANIFEST):
        client.log_artifact(run_id, str(path), REMOTE_DIR)
    client.log_artifact(run_id, str(saved / MANIFEST), REMOTE_DIR)
    # The manifest vouches for the files; this tag vouches for the manifest (see fetch).
    client.set_tag(run_id, RESUME_MANIFEST_SHA256_TAG, sha256_of(saved / MANIFEST))


def write_manifest(directory: Path, step: int) -> None:
    """``step.json``: the step and each file's sha256, so a file cut short or changed later is found
    before anything is loaded (:func:`damage`)."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    (directory / MANIFEST).write_text(json.dumps({"step": step, "sha256": {p.name: sha256_of(p) for p in files}}))


def damage(saved: Path) -> str | None:
    """What is wrong with a checkpoint's files by its manifest (None: nothing found; checkpoints
    from before manifests are judged when loaded)."""
    manifest = saved / MANIFEST
    if not manifest.is_file():
        return None
    try:
        recorded = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    for name, digest in sorted(recorded.items()):
        if not (saved / name).is_file():
            return f"{name} is missing"
        if sha256_of(saved / name) != digest:
            return f"{name} differs from the sha256 recorded when it was written (cut short or changed)"
    return None


def set_aside(saved: Path) -> Path:
    """Rename a damaged checkpoint out of the way (kept for inspection; never picked again)."""
    kept = saved.with_name(saved.name + ".damaged")
    n = 1
    while kept.exists():
        n += 1
        kept = saved.with_name(f"{saved.name}.damaged{n}")
    os.rename(saved, kept)
    return kept


class DamagedCheckpoint(HarnessError):
    """A run's resumable checkpoint whose files do not match their manifest: it cannot be continued."""


def remote_step(run_id: str) -> int | None:
    """The step of the checkpoint in the run's artifacts (tracking server only), if any."""
    if not stores.on_server():
        return None
    import mlflow

    try:
        return int(mlflow.artifacts.load_dict(f"runs:/{run_id}/{REMOTE_DIR}/{MANIFEST}")["step"])
    except Exception:
        return None


def fetch(run_id: str) -> Path | None:
    """Download the run's checkpoint from its artifacts into this machine's resume directory (a worker
    continuing a run another machine started); None when there is none. :class:`DamagedCheckpoint` when a
    file does not match its manifest; a HarnessError when another worker checkpoints it meanwhile."""
    step = remote_step(run_id)
    if step is None:
        return None
    import mlflow
    from mlflow.tracking import MlflowClient

    def recorded_manifest() -> str | None:
        return MlflowClient().get_run(run_id).data.tags.get(RESUME_MANIFEST_SHA256_TAG)

    vouched = recorded_manifest()

    final = run_dir(run_id) / f"step_{step:012d}"

    def fill(directory: Path) -> bool:
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REMOTE_DIR, dst_path=str(directory))
        fetched = directory / REMOTE_DIR
        if sha256_of(fetched / MANIFEST) != vouched:
            if recorded_manifest() != vouched:
                return False  # a live worker checkpointed the run while we read it
            # Anyone who can write artifacts could have put other files and a manifest naming them there.
            raise HarnessError(
                f"the resumable checkpoint in the artifacts of run {run_id} does not match the "
                f"sha256 its training recorded ({RESUME_MANIFEST_SHA256_TAG}); refusing to load it"
            )
        manifest = json.loads((fetched / MANIFEST).read_text())
        wrong = [name for name, digest in manifest["sha256"].items() if sha256_of(fetched / name) != digest]
        if manifest["step"] != step or wrong:
            if recorded_manifest() != vouched:
                return False  # overwritten while we read it: the run is being checkpointed by a live worker
            raise DamagedCheckpoint(
                f"the resumable checkpoint in the artifacts of run {run_id} is damaged ({REMOTE_DIR}/"
                f"{', '.join(wrong) or MANIFEST} does not match its manifest)"
            )
        pickles = sorted(name for name in manifest["sha256"] if name.endswith(".pkl"))
        if pickles:
            raise DamagedCheckpoint(
                f"the resumable checkpoint in the artifacts of run {run_id} was written by an older harness as "
                f"pickles ({', '.join(pickles)}), which are never loaded from a store"
            )
        for name in [*manifest["sha256"], MANIFEST]:
            os.rename(fetched / name, directory / name)
        shutil.rmtree(fetched)
        return True

    if not build_directory_atomically(final, fill):  # a live worker checkpointed it while we read it
        raise busy(run_id)
    return final


def available(run_id: str) -> bool:
    """A checkpoint to continue the run from exists, here or in its artifacts."""
    return latest(run_id) is not None or remote_step(run_id) is not None


def find(run_id: str) -> Path | None:
    """The newest checkpoint of the run here, else the one in its artifacts (fetched)."""
    return latest(run_id) or fetch(run_id)


def forget_remote(run_id: str) -> None:
    """A finished run's resumable checkpoint is dead weight in the artifact store (replay buffers are large)."""
    if remote_step(run_id) is None:
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    repository = get_artifact_repository(MlflowClient().get_run(run_id).info.artifact_uri)
    try:
        repository.delete_artifacts(REMOTE_DIR)
    except Exception:
        pass


@contextlib.contextmanager
def owned(run_id: str) -> Iterator[None]:
    """Hold the run's owner lock while training it; refuse a run another process is training."""
    run_dir(run_id).mkdir(parents=True, exist_ok=True)
    with open(run_dir(run_id) / OWNER_LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(run_id) from None
        yield


def busy(run_id: str):
    return HarnessError(f"run {run_id} is being trained by another process right now")


def abandoned(run_id: str) -> bool:
    """True when a training of this run started here and its process is gone."""
    return _owner_lock_free(run_id) is True


def trained_elsewhere(run_id: str) -> bool:
    """True while another process holds the run's owner lock."""
    return _owner_lock_free(run_id) is False


def _owner_lock_free(run_id: str) -> bool | None:
    path = run_dir(run_id) / OWNER_LOCK
    if not path.is_file():
        return None  # never trained from this directory: nothing is known about its process
    with open(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def latest(run_id: str) -> Path | None:
    """The newest complete checkpoint of the run, if any."""
    complete = checkpoints(run_id)
    return complete[-1] if complete else None


def checkpoints(run_id: str) -> list[Path]:
    """The run's complete checkpoints, oldest first: ``step_<N>``, not ``.tmp`` (being written) or
    ``.damaged`` (set aside)."""
    directory = run_dir(run_id)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step_*") if p.name.removeprefix("step_").isdigit())


def load(saved: Path, config, env, logger, vecnormalize, device: str, build_model):
    """Model (with its replay buffer, logging to ``logger``), env, statistics and the seconds trained so far,
    continuing where ``saved`` left off. ``build_model(config, env, logger, device)`` makes the model as a new
    training would; the checkpoint's state is then put into it (:func:`restore`), unpickling nothing."""
    if not (saved / STATE_JSON).is_file():
        return (*_load_legacy(saved, config, env, logger, vecnormalize, device), 0.0)  # it kept no time
    state = plain_state.read(saved / STATE_JSON, saved / STATE_ARRAYS)
    model = build_model(config, env, logger, device)
    restore(saved / "model.zip", state, model, vecnormalize)
    return model, env, vecnormalize, float(state.get("trained_seconds", 0.0))


def _load_legacy(saved: Path, config, env, logger, vecnormalize=None, device: str = "cpu"):
    """A checkpoint of an older harness (pickles), from this machine's own files (:func:`fetch` never
    takes one from a store)."""
    if vecnormalize is not None:
        from stable_baselines3.common.vec_env import VecNormalize

        vecnormalize = VecNormalize.load(str(saved / "vecnormalize.pkl"), vecnormalize.venv)
        env = vecnormalize
    state_file = saved / LEGACY_STATE_FILE
    exact = state_file.is_file()
    # With the envs' state restored, SB3 must continue from the observation it saved, not reset
    # them (force_reset), and HER must keep the episode in progress (truncate_last_traj); an older
    # checkpoint without that state drops the cut episode so no half episode is ever sampled.
    with _old_module_names():
        model = algo_class(config.algo).load(str(saved / "model.zip"), env=env, device=device, force_reset=not exact)
        model.load_replay_buffer(saved / "replay_buffer.pkl", truncate_last_traj=not exact)
        model.set_logger(logger)
        if exact:
            with open(state_file, "rb") as f:
                restore_training_state(model, pickle.load(f))
    return model, env, vecnormalize


@contextlib.contextmanager
def _old_module_names() -> Iterator[None]:
    """Let an older harness's pickles find the classes they name under the modules' old names."""
    import importlib
    import sys

    added = [old for old in RENAMED_MODULES if old not in sys.modules]
    for old in added:
        sys.modules[old] = importlib.import_module(RENAMED_MODULES[old])
    try:
        yield
    finally:
        for old in added:
            sys.modules.pop(old, None)


def discard(run_id: str) -> None:
    """Remove the run's resumable checkpoints and lock; damaged ones set aside stay for inspection."""
    directory = run_dir(run_id)
    if not any(directory.glob("step_*.damaged*")):
        shutil.rmtree(directory, ignore_errors=True)
        return
    for path in directory.iterdir():
        if ".damaged" in path.name:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class ResumableCheckpoint(BaseCallback):
    """Every ``checkpoint_freq`` env steps, write what a resume needs (see :mod:`harness.resume`).

    Written when the next rollout starts, not at the step itself: SB3 trains on a rollout after
    collecting it, and a checkpoint taken before those gradient steps would make a resumed run
    skip them."""

    def __init__(self, config: TrainConfig, run_id: str, vecnormalize=None, clock: TrainingClock | None = None):
        super().__init__()
        self.config = config
        self.run_id = run_id
        self.vecnormalize = vecnormalize
        self.clock = clock or TrainingClock()

    def _on_training_start(self) -> None:
        self.next_save = next_multiple(self.num_timesteps, self.config.checkpoint_freq)

    def _on_rollout_start(self) -> None:
        if self.config.checkpoint_freq and self.num_timesteps >= self.next_save:
            self.next_save = next_multiple(self.num_timesteps, self.config.checkpoint_freq)
            save(self.run_id, self.model, self.vecnormalize, self.clock.seconds())

    def _on_step(self) -> bool:
        return True


def checkpoint_to_continue(run_id: str) -> Path | None:
    """The run's resumable checkpoint, here or fetched from its artifacts; None, with one warning, when it
    has none that can be loaded: the run is then marked FAILED (its history stays as it was) and the
    caller trains anew in a new run."""
    from mlflow.tracking import MlflowClient

    try:
        saved = find(run_id)
        why = "none was found here or in its artifacts"
    except DamagedCheckpoint as damaged:
        saved, why = None, str(damaged)
    if saved is None:
        warn(f"run {run_id} cannot be continued: {why}; it is marked FAILED and the training starts anew as a new run")
        client = MlflowClient()
        client.set_tag(run_id, DAMAGED_CHECKPOINT_TAG, why)
        client.set_terminated(run_id, "FAILED")
    return saved


def interrupted_run(config: TrainConfig, experiment: str | None = None) -> tuple[str, int] | None:
    """(run id, env steps) of the newest run of this config that a crash, a kill or a closed
    terminal cut short and that can continue from this directory: same run name and config hash,
    not FINISHED, not a pipeline's, no process training it, a resumable checkpoint here. Runs found
    RUNNING with their process gone and no checkpoint to continue from are marked KILLED."""
    from mlflow.tracking import MlflowClient

    stores.prepare_store()
    client = MlflowClient()
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        experiment_ids = [os.environ["MLFLOW_EXPERIMENT_ID"]]
    else:
        found = client.get_experiment_by_name(experiment or tracking.DEFAULT_EXPERIMENT)
        experiment_ids = [found.experiment_id] if found is not None and found.lifecycle_stage == "active" else []
    if not experiment_ids:
        return None
    tags = {KIND_TAG: "train", CONFIG_HASH_TAG: config.config_hash, RUN_NAME_TAG: config.run_name}
    same_name = {key: value for key, value in tags.items() if key != CONFIG_HASH_TAG}
    # On a server with accounts, another account's run of this name is never continued nor marked (harness.accounts).
    for run in accounts.usable_runs(tracking.search_runs(same_name, experiment_ids), accounts.OWN_RUNS_ONLY)[0]:
        run_id = run.info.run_id
        if run.info.status == "FINISHED" or PARENT_RUN_ID_TAG in run.data.tags or not abandoned(run_id):
            continue
        if run.data.tags.get(CONFIG_HASH_TAG) != config.config_hash:
            # Another config of this name whose process died: not ours to resume (its own command can,
            # from its checkpoint), but no longer RUNNING either.
            if run.info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED")
            continue
        saved = latest(run_id)
        problem = damage(saved) if saved is not None else None
        if saved is not None and problem is None:
            return run_id, int(saved.name.removeprefix("step_"))
        if saved is not None:
            kept = set_aside(saved)
            warn(
                f"the resumable checkpoint of run {run_id} at {saved.name} is damaged ({problem}); set aside as "
                f"{kept}; the run is marked FAILED and the training starts anew"
            )
            client.set_tag(run_id, DAMAGED_CHECKPOINT_TAG, str(kept))
            client.set_terminated(run_id, "FAILED")
            continue
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
        discard(run_id)  # only its owner lock is left (and any checkpoint set aside)
    return None


def next_multiple(steps: int, freq: int) -> int:
    """The first multiple of ``freq`` after ``steps`` (0 when ``freq`` is 0: never); after a resume,
    periodic work continues on the same grid of env steps as before the interruption."""
    return (steps // freq + 1) * freq if freq else 0
