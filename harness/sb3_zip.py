"""Reading an SB3 checkpoint zip as data, and rebuilding a model from it: nothing is unpickled.

SB3's own ``load`` unpickles the zip's ``:serialized:`` entries (policy class, spaces, schedules ...),
which runs whatever code they name. Here the ``data`` entry is read as plain JSON (the serialized
entries are never decoded, only the text SB3 writes beside them), the policy's tensors through
``torch.load(weights_only=True)``, and the model is rebuilt from the algorithm and the layer sizes those
tensors have (:func:`policy_model`).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, first_line

POLICY_WEIGHTS = "policy.pth"  # the policy's state dict inside an SB3 zip


def not_a_checkpoint(path: Path | str, why: str) -> HarnessError:
    return HarnessError(f"checkpoint '{path}' is not a readable SB3 checkpoint ({why})")


def read_zip_data(path: Path, name: str | None = None) -> dict[str, Any]:
    """SB3's saved attributes as plain JSON. Entries SB3 pickled (``:serialized:``) stay undecoded: only
    the text SB3 wrote beside them (such as a class's ``__module__``) is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:  # ValueError: JSON and text decoding
        raise not_a_checkpoint(name or path, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("policy_class"), dict):
        raise not_a_checkpoint(name or path, "no saved model data")
    return data


def read_policy_weights(path: Path, name: str | None = None) -> dict[str, Any]:
    """The policy's tensors from an SB3 zip, through torch's tensors-only loader. ``name``: what the user
    called the checkpoint (a run id, not the temporary folder it was downloaded to), for the error line."""
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read(POLICY_WEIGHTS)
    except Exception as exc:  # zipfile's several errors, a truncated file
        raise not_a_checkpoint(name or path, f"{POLICY_WEIGHTS}: {type(exc).__name__}: {first_line(exc)}") from None
    state, why = tensors_in(io.BytesIO(raw))
    if state is None:
        raise not_a_checkpoint(name or path, f"{POLICY_WEIGHTS}: {why}")
    return state


def tensors_in(file) -> tuple[dict[str, Any] | None, str]:
    """``(state dict, "")`` from a file of plain tensors, through torch's tensors-only loader, or
    ``(None, why)`` in a few words. torch's own message is a page that advises loading with
    ``weights_only=False`` (running the file's code): never shown."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file that is not plain tensors
        refused = re.search(r"Unsupported (global: GLOBAL \S+|operand \S+)", str(exc))
        return None, f"not plain tensors: {refused.group(0)}" if refused else f"{type(exc).__name__}: {first_line(exc)}"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None, "no state dict of tensors"
    return state, ""


def _module_of(entry: Any) -> str:
    """The ``__module__`` SB3 writes as text beside a pickled class."""
    return str(entry.get("__module__", "")) if isinstance(entry, dict) else ""


def describe_zip(data: dict[str, Any]) -> dict[str, Any]:
    """algo, her and seed as recorded in the zip itself (from the text SB3 writes, never unpickled)."""
    policy_module = _module_of(data.get("policy_class"))
    # The policy class names the algorithm family: HerDDPG is a TD3 subclass and saves TD3's policy.
    algo = "tqc" if "tqc" in policy_module else "ddpg" if "td3" in policy_module else "sac"
    buffer_module = _module_of(data.get("replay_buffer_class"))
    seed = data.get("seed")
    return {
        "algo": algo,
        "her": buffer_module in ("stable_baselines3.her.her_replay_buffer", "harness.her_replay"),
        "seed": seed if isinstance(seed, int) else None,
    }


def _layer_sizes(state: dict[str, Any], prefix: str) -> list[int]:
    """Output sizes of the linear layers ``<prefix>.<i>.weight``, in order."""
    found = {}
    for key, tensor in state.items():
        rest = key.removeprefix(prefix + ".")
        if rest != key and rest.endswith(".weight") and rest.split(".")[0].isdigit() and tensor.dim() == 2:
            found[int(rest.split(".")[0])] = int(tensor.shape[0])
    return [found[i] for i in sorted(found)]


def policy_kwargs_of(algo: str, state: dict[str, Any]) -> dict[str, Any]:
    """The policy's layout, read from the shapes of its tensors: hidden layers of the actor (the harness
    gives actor and critics the same), the number of critics and, for TQC, of quantiles."""
    hidden = _layer_sizes(state, "actor.mu")[:-1] if algo == "ddpg" else _layer_sizes(state, "actor.latent_pi")
    critics = sorted({key.split(".")[1] for key in state if key.startswith("critic.qf")})
    if not hidden or not critics:
        raise HarnessError(f"the policy weights are not those of an SB3 {algo} MultiInputPolicy")
    kwargs: dict[str, Any] = {"net_arch": hidden, "n_critics": len(critics)}
    if algo == "tqc":
        kwargs["n_quantiles"] = _layer_sizes(state, f"critic.{critics[0]}")[-1]
    return kwargs


def critics_have_layer_norm(state: dict[str, Any]) -> bool:
    """Whether the critics carry LayerNorm weights (one-dimensional ``critic.qf0.<i>.weight``:
    :class:`harness.algorithms.LayerNormCritic`)."""
    return any(
        key.startswith("critic.qf0.") and key.endswith(".weight") and tensor.dim() == 1 for key, tensor in state.items()
    )


def policy_model(algo: str, env, state: dict[str, Any], source: str, num_timesteps: int = 0):
    """An SB3 model of ``algo`` on ``env`` holding ``state`` as its policy, ready for ``predict``.

    Built from the algorithm and the tensors' shapes; no replay buffer (evaluation needs none)."""
    import gymnasium as gym

    from harness.algorithms import algo_class

    policy = "MultiInputPolicy" if isinstance(env.observation_space, gym.spaces.Dict) else "MlpPolicy"
    extra = {"critic_layer_norm": True} if algo == "sac" and critics_have_layer_norm(state) else {}
    try:
        model = algo_class(algo)(
            policy, env, buffer_size=1, policy_kwargs=policy_kwargs_of(algo, state), device="cpu", verbose=0, **extra
        )
        model.policy.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, IndexError, HarnessError) as exc:  # shapes or names that do not fit
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(f"'{source}' holds no {algo} policy for {env_id_of(env)} ({first})") from None
    model.policy.set_training_mode(False)
    model.num_timesteps = num_timesteps
    return model


def env_id_of(env) -> str:
    try:
        return env.envs[0].spec.id
    except (AttributeError, IndexError):
        return "this env"
