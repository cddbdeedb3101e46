"""What a training is between two rollouts, as plain data, and how it is put back into a fresh model.

Beyond its networks and optimizers (SB3's zip, read through torch's tensors-only loader), a continuation
draws from: SB3's counters, last observations and episode-info windows, the replay buffer (HER's episode
bookkeeping and step infos too), VecNormalize's running statistics, the Python, numpy and torch generators,
the action space's generator, each env's state mid-episode (:func:`harness.envs.env_state`) and the metrics
the SB3 logger has recorded but not yet written. :func:`checkpoint_state` gathers them as the plain data
:mod:`harness.plain_state` writes; :func:`restore` puts them into a model built from the run's config as for a
new training. Each array is checked against the shape and dtype the config gives before it is used.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np

from harness.envs import env_state, restore_env_state
from harness.seeding import random_state, restore_random_state


def base_vec_env(vec_env):
    """The innermost SB3 VecEnv, under any wrapper such as VecNormalize."""
    while hasattr(vec_env, "venv"):
        vec_env = vec_env.venv
    return vec_env


def envs_of(vec_env) -> list:
    """The gym envs inside an SB3 VecEnv (under VecNormalize, if any)."""
    return base_vec_env(vec_env).envs


def training_state(model) -> dict:
    """What a continuation draws from beyond the model and its replay buffer (module docstring)."""
    logger = model.logger
    return {
        "random": random_state(),
        "action_space": model.action_space.np_random.bit_generator.state,
        "envs": [env_state(env) for env in envs_of(model.get_env())],
        "logger": {
            "values": dict(logger.name_to_value),
            "counts": dict(logger.name_to_count),
            "excluded": dict(logger.name_to_excluded),
        },
    }


def restore_training_state(model, state: dict) -> None:
    """After SB3's load (which reseeds every generator from the config's seed), put back the
    generators, the envs and the logger as they were when the checkpoint was taken."""
    vec_env = base_vec_env(model.get_env())  # not VecNormalize's reset, which would count the observation again
    vec_env.reset()  # Gymnasium refuses to step an env never reset; its state is then overwritten
    for env, saved in zip(envs_of(vec_env), state["envs"], strict=True):
        restore_env_state(env, saved)
    restore_random_state(state["random"])
    model.action_space.np_random.bit_generator.state = state["action_space"]
    model.logger.name_to_value.update(state["logger"]["values"])
    model.logger.name_to_count.update(state["logger"]["counts"])
    model.logger.name_to_excluded.update(state["logger"]["excluded"])


# What SB3 keeps on the model between rollouts beyond its networks: counters, the observation the next
# step continues from and the windows of finished episodes that rollout/* metrics average.
MODEL_STATE = (
    "num_timesteps",
    "_num_timesteps_at_start",
    "_episode_num",
    "_current_progress_remaining",
    "_n_updates",
    "_last_obs",
    "_last_original_obs",
    "_last_episode_starts",
    "ep_info_buffer",
    "ep_success_buffer",
)


BUFFER_STATE = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


EPISODE_STATE = ("ep_start", "ep_length", "_current_ep_start")  # HER's episode bookkeeping


class TrainingClock:
    """Seconds a training has spent training, across its resumes: what its checkpoint recorded (the time up to
    it; the time after it until an interruption was redone, and the pause is not training) plus this process's."""

    def __init__(self, before: float = 0.0):
        self.before = before
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started


def checkpoint_state(model, vecnormalize=None, trained_seconds: float = 0.0) -> dict:
    """Everything of a training but its networks and optimizers, as plain data (module docstring), and the
    seconds it has trained (:class:`TrainingClock`)."""
    return {
        "model": {name: getattr(model, name) for name in MODEL_STATE},
        "replay_buffer": buffer_state(model.replay_buffer),
        "vecnormalize": vecnormalize_state(vecnormalize) if vecnormalize is not None else None,
        "training": training_state(model),
        "trained_seconds": float(trained_seconds),
    }


def restore(zip_path: Path, state: dict, model, vecnormalize=None) -> None:
    """Put ``state`` and the zip's tensors into ``model`` (built as for a new training) and ``vecnormalize``."""
    from stable_baselines3.common.vec_env import VecNormalize

    params, variables = zip_tensors(zip_path)
    model.set_parameters(params, exact_match=True, device=model.device)
    for name, value in variables.items():
        target = model
        for part in name.split("."):
            target = getattr(target, part)
        target.data = value.to(target.device).data
    for name in MODEL_STATE:
        setattr(model, name, state["model"][name])
    restore_buffer(model.replay_buffer, state["replay_buffer"])
    if vecnormalize is not None:
        if not isinstance(vecnormalize, VecNormalize) or state["vecnormalize"] is None:
            raise ValueError("the checkpoint's normalization does not match the config's")
        restore_vecnormalize(vecnormalize, state["vecnormalize"])
    restore_training_state(model, state["training"])


def zip_tensors(zip_path: Path) -> tuple[dict, dict]:
    """The networks' and optimizers' state dicts, and SB3's extra tensors (``log_ent_coef``), from an SB3 zip,
    each through torch's tensors-only loader (plain containers of tensors and numbers)."""
    import io

    import torch

    params, variables = {}, {}
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            if not name.endswith(".pth"):
                continue
            loaded = torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
            if name == "pytorch_variables.pth":
                variables = {key: value for key, value in loaded.items() if value is not None}
            else:
                params[name.removesuffix(".pth")] = loaded
    return params, variables


def buffer_state(buffer) -> dict:
    """A replay buffer's contents and position (HER's episode bookkeeping too) as arrays."""
    state = {"pos": int(buffer.pos), "full": bool(buffer.full)}
    for name in BUFFER_STATE + EPISODE_STATE:
        value = getattr(buffer, name, None)
        if value is not None:
            state[name] = dict(value) if isinstance(value, dict) else value
    if getattr(buffer, "infos", None) is not None and isinstance(buffer.infos, np.ndarray):
        state["infos"] = infos_state(buffer.infos)
    return state


def infos_state(infos: np.ndarray) -> dict:
    """HER's stored step infos, their numbers and flags as one array per key (NaN: absent); the other
    entries (a Monitor's episode summary, the terminal observation, which HER keeps as the next
    observation) are not used by relabeling and are left out."""
    columns: dict[str, dict] = {}
    for index, info in enumerate(infos.flat):
        for key, value in info.items():
            if isinstance(value, (bool, np.bool_)):
                kind = "bool"
            elif isinstance(value, (int, float, np.integer, np.floating)):
                kind = "number"
            else:
                continue
            column = columns.setdefault(key, {"kind": kind, "values": np.full(infos.size, np.nan)})
            column["values"][index] = float(value)
    return {"shape": list(infos.shape), "columns": columns}


def restore_infos(state: dict) -> np.ndarray:
    shape = tuple(state["shape"])
    rows: list[dict] = [{} for _ in range(int(np.prod(shape)))]
    for key, column in state["columns"].items():
        values = np.asarray(column["values"], dtype=np.float64)
        for index in np.flatnonzero(~np.isnan(values)):
            rows[index][key] = bool(values[index]) if column["kind"] == "bool" else values[index]
    infos = np.empty(len(rows), dtype=object)
    infos[:] = rows
    return infos.reshape(shape)


def _put(target: np.ndarray, value, name: str) -> None:
    value = np.asarray(value)
    if value.shape != target.shape or value.dtype != target.dtype:
        raise ValueError(f"{name} is {value.dtype}{list(value.shape)}, this config's is {target.dtype}{list(target.shape)}")
    target[...] = value


def restore_buffer(buffer, state: dict) -> None:
    for name in BUFFER_STATE + EPISODE_STATE:
        target = getattr(buffer, name, None)
        if target is None:
            continue
        if isinstance(target, dict):
            if set(state[name]) != set(target):
                raise ValueError(f"replay buffer {name} has keys {sorted(state[name])}, this config's {sorted(target)}")
            for key in target:
                _put(target[key], state[name][key], f"replay buffer {name}[{key}]")
        else:
            _put(target, state[name], f"replay buffer {name}")
    if "infos" in state and getattr(buffer, "infos", None) is not None:
        infos = restore_infos(state["infos"])
        if infos.shape != buffer.infos.shape:
            raise ValueError(f"replay buffer infos are {list(infos.shape)}, this config's {list(buffer.infos.shape)}")
        buffer.infos = infos
    buffer.pos, buffer.full = int(state["pos"]), bool(state["full"])
    if hasattr(buffer, "recompute_energies"):  # derived from the positions, so not part of the state
        buffer.recompute_energies()


def _rms_state(rms) -> dict:
    return {"mean": rms.mean, "var": rms.var, "count": rms.count}


def _restore_rms(rms, state: dict, name: str) -> None:
    _put(rms.mean, state["mean"], f"{name} mean")
    _put(rms.var, state["var"], f"{name} var")
    rms.count = state["count"]


def vecnormalize_state(vecnormalize) -> dict:
    """VecNormalize's running statistics and the last raw observation and reward (what SB3 pickles of it)."""
    obs_rms = vecnormalize.obs_rms
    return {
        "obs_rms": {k: _rms_state(r) for k, r in obs_rms.items()} if isinstance(obs_rms, dict) else _rms_state(obs_rms),
        "ret_rms": _rms_state(vecnormalize.ret_rms),
        "old_obs": vecnormalize.old_obs,
        "old_reward": vecnormalize.old_reward,
    }


def restore_vecnormalize(vecnormalize, state: dict) -> None:
    obs_rms = vecnormalize.obs_rms
    if isinstance(obs_rms, dict):
        if set(state["obs_rms"]) != set(obs_rms):
            raise ValueError(f"normalization keys {sorted(state['obs_rms'])}, this config's {sorted(obs_rms)}")
        for key, rms in obs_rms.items():
            _restore_rms(rms, state["obs_rms"][key], f"normalization {key}")
    else:
        _restore_rms(obs_rms, state["obs_rms"], "normalization")
    _restore_rms(vecnormalize.ret_rms, state["ret_rms"], "return normalization")
    vecnormalize.old_obs, vecnormalize.old_reward = state["old_obs"], state["old_reward"]
