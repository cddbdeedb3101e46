"""Resumable checkpoints: what an interrupted training needs to continue in the same MLflow run.

Layout: ``checkpoints/resume/<run id>/step_<N>/`` with ``model.zip``, ``replay_buffer.pkl`` and,
with observation normalization, ``vecnormalize.pkl``. A checkpoint is written into
``step_<N>.tmp`` and renamed into place only when complete, so a kill at any moment never leaves
a half-written directory that :func:`latest` would pick.

``checkpoints/resume/<run id>/owner.lock`` is locked (flock) by the process training the run, for
as long as it trains. The kernel releases the lock when that process dies, however it dies (even
SIGKILL), so a run whose lock is free while MLflow still says RUNNING was abandoned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator

from harness.algorithms import algo_class
from harness.checkpoints import CHECKPOINT_DIR

RESUME_DIR = CHECKPOINT_DIR / "resume"
OWNER_LOCK = "owner.lock"


def run_dir(run_id: str) -> Path:
    return RESUME_DIR / run_id


def save(run_id: str, model, vecnormalize=None) -> Path:
    step = int(model.num_timesteps)
    final = run_dir(run_id) / f"step_{step:012d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save(tmp / "model.zip")
        model.save_replay_buffer(tmp / "replay_buffer.pkl")
        if vecnormalize is not None:
            vecnormalize.save(str(tmp / "vecnormalize.pkl"))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no partial checkpoint behind
        raise
    for older in run_dir(run_id).glob("step_*"):
        if older != final:
            shutil.rmtree(older, ignore_errors=True)
    return final


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
    from harness.errors import HarnessError

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
    directory = run_dir(run_id)
    if not directory.is_dir():
        return None
    complete = sorted(p for p in directory.glob("step_*") if not p.name.endswith(".tmp"))
    return complete[-1] if complete else None


def load(saved: Path, config, env, vecnormalize=None):
    """Model (with its replay buffer) and env, continuing where ``saved`` left off."""
    if vecnormalize is not None:
        from stable_baselines3.common.vec_env import VecNormalize

        vecnormalize = VecNormalize.load(str(saved / "vecnormalize.pkl"), vecnormalize.venv)
        env = vecnormalize
    model = algo_class(config.algo).load(str(saved / "model.zip"), env=env, device="cpu")
    # HER drops the episode the kill cut short (truncate_last_traj), so no half episode is sampled.
    model.load_replay_buffer(saved / "replay_buffer.pkl")
    return model, env, vecnormalize


def discard(run_id: str) -> None:
    shutil.rmtree(run_dir(run_id), ignore_errors=True)
