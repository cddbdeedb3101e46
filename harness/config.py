"""Stage 1 of a run: resolve the training configuration.

A training is described by one frozen :class:`TrainConfig`. It is built from a named
preset (a YAML file in ``harness/presets/``) and the user's overrides, in that order:

    preset ``defaults``  ->  ``algos[<algo>]``  ->  ``envs[<env id>]``  ->  ``envs[<env id>].algos[<algo>]``
    ->  command-line overrides

The resolved object is what gets logged to MLflow as params, written next to the
checkpoint as ``meta.json`` and used to name the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml

from harness.errors import HarnessError
from harness.identity import RunIdentity

PRESET_DIR = Path(__file__).parent / "presets"
GOAL_SELECTION_STRATEGIES = ("future", "final", "episode")
# Envs whose gripper can pick the object up (Push and Slide keep the fingers blocked).
HELD_OBJECT_ENVS = ("FetchPickAndPlace-v4", "FetchPickAndPlaceDense-v4")
MAX_SEED = 2**32 - 1  # numpy seeds its generators from 32 bits
# The --algo choices (classes in harness.algorithms) and the layer precisions of gradient steps; here,
# not there, so that the CLIs can list them without importing torch and SB3.
ALGOS = ("sac", "tqc", "ddpg")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does. Defaults are SB3's own."""

    env_id: str = "FetchReach-v4"
    """Gymnasium id of the task, e.g. FetchPush-v4 (sparse) or FetchPushDense-v4."""
    algo: str = "sac"
    """Off-policy algorithm: 'sac' (stable-baselines3), 'tqc' (sb3-contrib) or 'ddpg' (the HER paper's
    DDPG, :class:`harness.algorithms.HerDDPG`)."""
    her: bool = False
    """Store hindsight-relabeled transitions (SB3's HerReplayBuffer)."""
    seed: int = 0
    """Seeds torch, numpy, the training envs and the action space."""
    total_steps: int = 500_000
    """Environment steps to train for (summed over all parallel envs)."""
    n_envs: int = 1
    """Parallel environments stepping in one process (DummyVecEnv)."""
    n_sampled_goal: int = 4
    """HER: relabeled goals per real transition (the 'k' of the HER paper)."""
    goal_selection_strategy: str = "future"
    """HER: where relabeled goals come from: future | final | episode."""
    desired_goal_share: float = 0.0
    """HER: share of the relabeled goals replaced by the desired goal of a random stored transition
    (mostly another episode's real goal; spitis/mrl's 'futureactual' mix is 0.5 with n_sampled_goal 4).
    0 keeps SB3's HerReplayBuffer exactly."""
    held_object_start: float = 0.0
    """FetchPickAndPlace only: share of the training episodes that start with the object held in the
    gripper (the HER paper's pick-and-place setting, :class:`harness.envs.HeldObjectStart`);
    evaluation always starts from the env's own reset. 0 leaves the training envs as they are."""
    learning_starts: int = 10_000
    """Environment steps of random actions before the first gradient step."""
    batch_size: int = 256
    """Transitions per gradient step."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity in transitions."""
    learning_rate: float = 3e-4
    """Adam learning rate of actor, critics and entropy coefficient."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Soft (Polyak) update coefficient of the target critics."""
    train_freq: int = 1
    """Train every this many vectorized env steps."""
    gradient_steps: int = 1
    """Gradient steps per training round (-1: as many as env steps collected)."""
    ent_coef: str | float = "auto"
    """Entropy coefficient: 'auto' (learned), 'auto_0.1' (learned from 0.1) or a number."""
    net_arch: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of actor and critics."""
    normalize_obs: bool = False
    """Running mean/std observation normalization (VecNormalize, std floored at 0.01, clipped at 5)."""
    action_noise: float = 0.2
    """ddpg only: std of the Gaussian noise added to the actor's actions (in [-1, 1] units) while training."""
    random_eps: float = 0.3
    """ddpg only: share of training actions replaced by uniformly random ones."""
    action_l2: float = 1.0
    """ddpg only: weight of the L2 penalty on the actor's actions in its loss."""
    precision: str = "fp32"
    """sac and ddpg: 'fp32', 'bf16' to run the networks' layers in bfloat16 during gradient steps
    (autocast; weights, losses, optimizer, acting and evaluation stay fp32), or 'auto': bf16 where the
    device runs it natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU with bf16), fp32 elsewhere. bf16 is
    ~2x faster on CPUs with AMX and ~18x slower on CPUs without native bf16 (AVX2 only); its numbers differ
    slightly from fp32's. The run's ``harness.precision`` tag says what was used."""
    eval_freq: int = 10_000
    """Env steps between deterministic evaluations during training (0: none)."""
    eval_episodes: int = 20
    """Episodes per evaluation during training."""
    checkpoint_freq: int = 50_000
    """Env steps between resumable checkpoints (model, replay buffer, normalization; 0: none)."""
    preset: str = "ch04"
    """Name of the preset this config was resolved from."""

    @property
    def run_name(self) -> str:
        """The chapter's checkpoint name, e.g. ``sac_her_FetchPush-v4_seed0`` (:class:`RunIdentity`)."""
        return RunIdentity.of(self).name

    @property
    def tensorboard_dir(self) -> Path:
        """The chapter's TensorBoard layout, e.g. ``runs/sac_her_nsg4/FetchPush-v4/seed0``."""
        condition = f"{self.algo}_her_nsg{self.n_sampled_goal}" if self.her else f"{self.algo}_noher"
        return Path("runs") / condition / self.env_id / f"seed{self.seed}"

    @property
    def config_hash(self) -> str:
        """Short digest of the resolved config: equal hashes mean the same training."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["net_arch"] = list(self.net_arch)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """Read ``harness/presets/<name>.yaml``: ``description``, ``defaults``, per-algo ``algos`` and per-env
    ``envs`` (an env section may have per-algo ``algos`` of its own)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise HarnessError(f"unknown preset '{name}'; available: {', '.join(available_presets())}")
    preset = yaml.safe_load(path.read_text()) or {}
    env_sections = list(preset.get("envs", {}).values())
    sections = [
        preset.get("defaults", {}),
        *preset.get("algos", {}).values(),
        *({k: v for k, v in env.items() if k != "algos"} for env in env_sections),
        *(algo_section for env in env_sections for algo_section in env.get("algos", {}).values()),
    ]
    for section in sections:
        unknown = sorted(set(section) - set(FIELD_NAMES))
        if unknown:
            raise HarnessError(f"preset '{name}' has unknown keys {unknown}; known: {', '.join(FIELD_NAMES)}")
    return preset


def resolve_config(preset: str, env_id: str, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Merge, later winning: the preset's ``defaults``, its ``algos`` section for the chosen algo, its
    ``envs`` section for ``env_id``, that env section's ``algos`` section for the chosen algo, and the
    overrides (None = not given). The algo is the first one named by the overrides, the env section
    or the defaults."""
    data = load_preset(preset)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    env_section = dict(data.get("envs", {}).get(env_id, {}))
    env_algo_sections = env_section.pop("algos", {})
    defaults = data.get("defaults", {})
    algo = given.get("algo", env_section.get("algo", defaults.get("algo", TrainConfig.algo)))
    values: dict[str, Any] = {
        **defaults,
        **data.get("algos", {}).get(algo, {}),
        **env_section,
        **env_algo_sections.get(algo, {}),
        **given,
    }
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise HarnessError(f"unknown config keys {unknown}; known: {', '.join(FIELD_NAMES)}")
    values["env_id"] = env_id
    values["preset"] = preset
    config = TrainConfig(**{name: _coerce(name, value) for name, value in values.items()})
    validate_config(config)
    return config


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A config back from its logged form (:meth:`TrainConfig.to_dict`: a pipeline's job spec, a
    checkpoint's ``meta.json``), typed and validated as :func:`resolve_config` does."""
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise HarnessError(f"unknown config keys {unknown}; known: {', '.join(FIELD_NAMES)}")
    config = TrainConfig(**{name: _coerce(name, value) for name, value in data.items()})
    validate_config(config)
    return config


_DEFAULTS = TrainConfig()


def _coerce(name: str, value: Any) -> Any:
    """Give ``value`` the type of the field's default, or say which value is wrong and what is expected."""
    default = getattr(_DEFAULTS, name)
    try:
        if name == "ent_coef":
            return value if isinstance(value, str) else float(value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or any(isinstance(n, bool) or int(n) != n for n in value):
                raise ValueError
            return tuple(int(n) for n in value)
        return str(value)
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a number", tuple: "a list of integers"}
        raise HarnessError(f"{name} must be {kind.get(type(default), 'a string')}, got {value!r}") from None


def parse_settings(settings: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["gamma=0.98", "net_arch=[256,256]"]`` -> overrides; values are read as YAML scalars/lists."""
    overrides: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise HarnessError(f"--set takes KEY=VALUE, got '{item}'")
        if key not in FIELD_NAMES or key in ("env_id", "preset"):
            raise HarnessError(
                f"unknown config key '{key}' in --set; known: "
                f"{', '.join(n for n in FIELD_NAMES if n not in ('env_id', 'preset'))}"
            )
        try:
            overrides[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise HarnessError(f"--set {key}: cannot read value '{raw}'") from None
    return overrides


def validate_config(config: TrainConfig) -> None:  # noqa: C901 - one flat check per field, read top to bottom
    """Reject values SB3 would choke on later, with a message naming what is accepted."""
    if config.algo not in ALGOS:
        raise HarnessError(f"unknown algo '{config.algo}'; accepted: {', '.join(ALGOS)}")
    if config.goal_selection_strategy not in GOAL_SELECTION_STRATEGIES:
        raise HarnessError(
            f"unknown goal selection strategy '{config.goal_selection_strategy}'; "
            f"accepted: {', '.join(GOAL_SELECTION_STRATEGIES)}"
        )
    positive = ("total_steps", "n_envs", "batch_size", "buffer_size", "train_freq")
    for name in positive:
        if getattr(config, name) <= 0:
            raise HarnessError(f"{name} must be > 0, got {getattr(config, name)}")
    non_negative = ("n_sampled_goal", "learning_starts", "eval_freq", "eval_episodes", "seed", "checkpoint_freq")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise HarnessError(f"{name} must be >= 0, got {getattr(config, name)}")
    if config.gradient_steps == 0 or config.gradient_steps < -1:
        raise HarnessError(f"gradient_steps must be > 0 or -1, got {config.gradient_steps}")
    if not 0.0 < config.gamma <= 1.0:
        raise HarnessError(f"gamma must be in (0, 1], got {config.gamma}")
    if not 0.0 < config.tau <= 1.0:
        raise HarnessError(f"tau must be in (0, 1], got {config.tau}")
    if config.learning_rate <= 0:
        raise HarnessError(f"learning_rate must be > 0, got {config.learning_rate}")
    if config.action_noise < 0:
        raise HarnessError(f"action_noise must be >= 0, got {config.action_noise}")
    if not 0.0 <= config.random_eps <= 1.0:
        raise HarnessError(f"random_eps must be in [0, 1], got {config.random_eps}")
    if config.action_l2 < 0:
        raise HarnessError(f"action_l2 must be >= 0, got {config.action_l2}")
    if not config.net_arch or any(n <= 0 for n in config.net_arch):
        raise HarnessError(f"net_arch must be positive layer sizes, got {list(config.net_arch)}")
    if not 0.0 <= config.desired_goal_share <= 1.0:
        raise HarnessError(f"desired_goal_share must be in [0, 1], got {config.desired_goal_share}")
    if not 0.0 <= config.held_object_start <= 1.0:
        raise HarnessError(f"held_object_start must be in [0, 1], got {config.held_object_start}")
    if config.held_object_start > 0 and config.env_id not in HELD_OBJECT_ENVS:
        raise HarnessError(
            f"held_object_start needs an env whose gripper can hold the object "
            f"({', '.join(HELD_OBJECT_ENVS)}), not {config.env_id}"
        )
    if config.precision not in PRECISIONS:
        raise HarnessError(f"precision must be one of {', '.join(PRECISIONS)}, got '{config.precision}'")
    if config.precision == "bf16" and config.algo == "tqc":
        raise HarnessError(f"precision {config.precision} is for sac and ddpg; tqc trains in fp32")
    if config.seed > MAX_SEED:
        raise HarnessError(f"seed must be in [0, {MAX_SEED}] (numpy's seed range), got {config.seed}")
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise HarnessError(f"{field.name} must be a finite number, got {value}")
    validate_ent_coef(config.ent_coef)


def validate_ent_coef(ent: float | str) -> None:
    """SB3's spellings: a fixed coefficient >= 0, 'auto', or 'auto_<initial value > 0>'."""
    accepted = "a number >= 0, 'auto' or 'auto_<initial value>' such as auto_0.1"
    if isinstance(ent, str):
        if ent == "auto":
            return
        initial = ent[len("auto_") :] if ent.startswith("auto_") else None
        try:
            valid = initial is not None and math.isfinite(float(initial)) and float(initial) > 0
        except ValueError:
            valid = False
        if not valid:
            raise HarnessError(f"ent_coef must be {accepted}, got '{ent}'")
    elif not (math.isfinite(ent) and ent >= 0):
        raise HarnessError(f"ent_coef must be {accepted}, got {ent}")
