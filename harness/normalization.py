"""Observation normalization statistics (SB3's VecNormalize) as JSON: written beside a checkpoint,
read back into a VecNormalize that only normalizes. JSON, not VecNormalize's pickle, so that loading
them from a store runs no code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError


def normalization_stats(vecnormalize) -> dict[str, Any]:
    """VecNormalize's observation statistics as JSON-ready data (what :func:`normalizer` reads back)."""
    return {
        "clip_obs": float(vecnormalize.clip_obs),
        "epsilon": float(vecnormalize.epsilon),
        "obs_rms": {
            key: {"mean": r.mean.tolist(), "var": r.var.tolist(), "count": float(r.count)}
            for key, r in vecnormalize.obs_rms.items()
        },
    }


def write_normalization(vecnormalize, path: Path) -> None:
    from harness.atomic_files import write_text_atomically

    write_text_atomically(path, json.dumps(normalization_stats(vecnormalize)))


def normalizer(path: Path, env, source: str):
    """A VecNormalize on ``env`` (not training) with the statistics of the JSON file at ``path``."""
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.vec_env import VecNormalize

    try:
        stats = json.loads(path.read_text())
        vecnormalize = VecNormalize(
            env,
            training=False,
            norm_obs=True,
            norm_reward=False,
            clip_obs=float(stats["clip_obs"]),
            epsilon=float(stats["epsilon"]),
        )
        if set(stats["obs_rms"]) != set(vecnormalize.obs_rms):
            raise ValueError(f"keys {sorted(stats['obs_rms'])}, expected {sorted(vecnormalize.obs_rms)}")
        for key, saved in stats["obs_rms"].items():
            rms = RunningMeanStd(shape=vecnormalize.obs_rms[key].mean.shape)
            mean, var = np.asarray(saved["mean"], dtype=np.float64), np.asarray(saved["var"], dtype=np.float64)
            if mean.shape != rms.mean.shape or var.shape != rms.var.shape:
                raise ValueError(f"'{key}' has shape {mean.shape}, expected {rms.mean.shape}")
            rms.mean, rms.var, rms.count = mean, var, float(saved["count"])
            vecnormalize.obs_rms[key] = rms
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"the normalization statistics of '{source}' ({path.name}) are not readable ({exc})") from None
    return vecnormalize
