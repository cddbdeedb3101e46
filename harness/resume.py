"""Resumable checkpoints: what an interrupted training needs to continue in the same MLflow run.

Layout: ``checkpoints/resume/<run id>/step_<N>/`` with ``model.zip``, ``replay_buffer.pkl`` and,
with observation normalization, ``vecnormalize.pkl``. A checkpoint is written into
``step_<N>.tmp`` and renamed into place only when complete, so a kill at any moment never leaves
a half-written directory that :func:`latest` would pick.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.checkpoints import CHECKPOINT_DIR, algo_class

RESUME_DIR = CHECKPOINT_DIR / "resume"


def run_dir(run_id: str) -> Path:
    return RESUME_DIR / run_id


def save(run_id: str, model, vecnormalize=None) -> Path:
    step = int(model.num_timesteps)
    final = run_dir(run_id) / f"step_{step:012d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / "model.zip")
    model.save_replay_buffer(tmp / "replay_buffer.pkl")
    if vecnormalize is not None:
        vecnormalize.save(str(tmp / "vecnormalize.pkl"))
    os.rename(tmp, final)
    for older in run_dir(run_id).iterdir():
        if older != final:
            shutil.rmtree(older, ignore_errors=True)
    return final


def latest(run_id: str) -> Path | None:
    """The newest complete checkpoint of the run, if any."""
    directory = run_dir(run_id)
    if not directory.is_dir():
        return None
    complete = sorted(p for p in directory.iterdir() if p.name.startswith("step_") and not p.name.endswith(".tmp"))
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
