"""Stage 1 of a run: resolve the training configuration.

A training is described by one frozen :class:`TrainConfig`. It is built from a named
preset (a YAML file in ``harness/presets/``) and the user's overrides, in that order:

    preset ``defaults``  ->  ``algos[<algo>]``  ->  ``envs[<env id>]``  ->  ``envs[<env id>].algos[<algo>]``
    ->  command-line overrides

The resolved object is what gets logged to MLflow as params, written next to the
checkpoint as ``meta.json`` and used to name the run.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.run_schema import RunIdentity

PRESET_DIR = Path(__file__).parent / "presets"
GOAL_SELECTION_STRATEGIES = ("future", "final", "episode")
# Envs whose gripper can pick the object up (Push and Slide keep the fingers blocked).
HELD_OBJECT_ENVS = ("FetchPickAndPlace-v4", "FetchPickAndPlaceDense-v4")
MAX_SEED = 2**32 - 1  # numpy seeds its generators from 32 bits
# The --algo choices (classes in harness.algorithms) and the layer precisions of gradient steps; here,
# not there, so that the CLIs can list them without importing torch and SB3.
ALGOS = ("sac", "tqc", "ddpg")
PRECISIONS = ("auto", "fp32", "bf16")


ENT_COEF_ACCEPTED = "a number >= 0, 'auto' or 'auto_<initial value>' such as auto_0.1"


@dataclass(frozen=True)
class Accepts:
    """What a config field accepts: the phrase its error message gives and the test of a value.
    ``choices`` and ``minimum`` are the same rule in the form the command line's option types take."""

    phrase: str
    test: Callable[[Any], bool]
    choices: tuple[str, ...] = ()
    minimum: int | None = None


ABOVE_ZERO = Accepts("> 0", lambda v: v > 0, minimum=1)
AT_LEAST_ZERO = Accepts(">= 0", lambda v: v >= 0, minimum=0)
SHARE = Accepts("in [0, 1]", lambda v: 0 <= v <= 1)
UP_TO_ONE = Accepts("in (0, 1]", lambda v: 0 < v <= 1)


def one_of(choices: tuple[str, ...]) -> Accepts:
    return Accepts(f"one of {', '.join(choices)}", lambda v: v in choices, choices=choices)


def ent_coef_ok(ent: float | str) -> bool:
    """SB3's spellings: a fixed coefficient >= 0, 'auto', or 'auto_<initial value > 0>'."""
    if not isinstance(ent, str):
        return math.isfinite(ent) and ent >= 0
    if ent == "auto":
        return True
    try:
        return ent.startswith("auto_") and math.isfinite(float(ent[5:])) and float(ent[5:]) > 0
    except ValueError:
        return False


def setting(default: Any, accepts: Accepts) -> Any:
    """A config field with its default and the rule :func:`validate_config` checks it against."""
    return dataclasses.field(default=default, metadata={"accepts": accepts})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does. Defaults are SB3's own."""

    env_id: str = "FetchReach-v4"
    """Gymnasium id of the task, e.g. FetchPush-v4 (sparse) or FetchPushDense-v4."""
    algo: str = setting("sac", one_of(ALGOS))
    """Off-policy algorithm: 'sac' (stable-baselines3), 'tqc' (sb3-contrib) or 'ddpg' (the HER paper's
    DDPG, :class:`harness.algorithms.HerDDPG`)."""
    her: bool = False
    """Store hindsight-relabeled transitions (SB3's HerReplayBuffer)."""
    seed: int = setting(0, Accepts(f"in [0, {MAX_SEED}] (numpy's seed range)", lambda n: 0 <= n <= MAX_SEED, minimum=0))
    """Seeds torch, numpy, the training envs and the action space."""
    total_steps: int = setting(500_000, ABOVE_ZERO)
    """Environment steps to train for (summed over all parallel envs)."""
    n_envs: int = setting(1, ABOVE_ZERO)
    """Parallel environments stepping in one process (DummyVecEnv)."""
    n_sampled_goal: int = setting(4, AT_LEAST_ZERO)
    """HER: relabeled goals per real transition (the 'k' of the HER paper)."""
    goal_selection_strategy: str = setting("future", one_of(GOAL_SELECTION_STRATEGIES))
    """HER: where relabeled goals come from: future | final | episode."""
    desired_goal_share: float = setting(0.0, SHARE)
    """HER: share of the relabeled goals replaced by the desired goal of a random stored transition
    (mostly another episode's real goal; spitis/mrl's 'futureactual' mix is 0.5 with n_sampled_goal 4).
    0 keeps SB3's HerReplayBuffer exactly."""
    n_step_returns: int = setting(1, ABOVE_ZERO)
    """n-step returns: each sampled transition's target sums the next n rewards of its episode, recomputed for
    its goal (with HER the relabeled one), and bootstraps n steps on (harness.her_replay; without HER the same
    episode buffer, nothing relabeled, so HER vs no-HER differ in relabeling only). 1: one-step targets."""
    energy_priority_clip: float = setting(0.0, AT_LEAST_ZERO)
    """HER on the Fetch tasks: when > 0, draw episodes for replay by trajectory energy instead of uniformly
    (Zhao & Tresp 2018's energy-based prioritization, harness.her_replay): an episode's chance is proportional
    to the rank of the energy its achieved goal gained (height x g plus kinetic energy, each step's gain clipped
    to this value; the paper uses 0.5), so episodes where the object was lifted or moved are replayed more.
    0 samples uniformly (SB3); a run without HER ignores it, as it does the HER fields above."""
    held_object_start: float = setting(0.0, SHARE)
    """FetchPickAndPlace only: share of the training episodes that start with the object held in the
    gripper (the HER paper's pick-and-place setting, :class:`harness.envs.HeldObjectStart`);
    evaluation always starts from the env's own reset. 0 leaves the training envs as they are."""
    learning_starts: int = setting(10_000, AT_LEAST_ZERO)
    """Environment steps of random actions before the first gradient step."""
    batch_size: int = setting(256, ABOVE_ZERO)
    """Transitions per gradient step."""
    buffer_size: int = setting(1_000_000, ABOVE_ZERO)
    """Replay buffer capacity in transitions."""
    learning_rate: float = setting(3e-4, ABOVE_ZERO)
    """Adam learning rate of actor, critics and entropy coefficient."""
    gamma: float = setting(0.99, UP_TO_ONE)
    """Discount factor."""
    tau: float = setting(0.005, UP_TO_ONE)
    """Soft (Polyak) update coefficient of the target critics."""
    train_freq: int = setting(1, ABOVE_ZERO)
    """Train every this many vectorized env steps."""
    gradient_steps: int = setting(1, Accepts("> 0 or -1", lambda n: n > 0 or n == -1))
    """Gradient steps per training round (-1: as many as env steps collected)."""
    ent_coef: str | float = setting("auto", Accepts(ENT_COEF_ACCEPTED, lambda e: ent_coef_ok(e)))
    """Entropy coefficient: 'auto' (learned), 'auto_0.1' (learned from 0.1) or a number."""
    net_arch: tuple[int, ...] = setting((256, 256), Accepts("positive layer sizes", lambda a: bool(a) and min(a) > 0))
    """Hidden layer sizes of actor and critics."""
    normalize_obs: bool = False
    """Running mean/std observation normalization (VecNormalize, std floored at 0.01, clipped at 5)."""
    clip_target_q: bool = False
    """sac only: clip the critics' TD targets (entropy term included) to [-1/(1-gamma), 0], the range of
    discounted returns of the Fetch tasks' -1/0 sparse reward, as the HER paper's DDPG always does."""
    critic_layer_norm: bool = False
    """sac only: a LayerNorm after each hidden linear layer of the critics (before the ReLU), as spitis/mrl's
    critics have; the actor is unchanged. Costs a few % more time per gradient step, no more matmul work."""
    random_action_share: float = setting(0.0, SHARE)
    """sac only: share of the training actions (after learning_starts) replaced by uniformly random ones, as the
    HER paper's DDPG explores (ddpg's random_eps); 0 leaves SAC's own sampling alone."""
    random_action_repeat: int = setting(1, ABOVE_ZERO)
    """sac only: random actions (random_action_share of the training actions) come in runs of this many env
    steps, one random action held for a run and a run ending with its episode (temporally extended
    exploration, ez-greedy with a fixed duration), so that a random close-and-lift lasts long enough to lift
    the object; the share of random actions stays random_action_share. 1: each on its own."""
    action_noise: float = setting(0.2, AT_LEAST_ZERO)
    """ddpg only: std of the Gaussian noise added to the actor's actions (in [-1, 1] units) while training."""
    random_eps: float = setting(0.3, SHARE)
    """ddpg only: share of training actions replaced by uniformly random ones."""
    action_l2: float = setting(1.0, AT_LEAST_ZERO)
    """ddpg only: weight of the L2 penalty on the actor's actions in its loss."""
    precision: str = setting("fp32", one_of(PRECISIONS))
    """sac and ddpg: 'fp32', 'bf16' to run the networks' layers in bfloat16 during gradient steps
    (autocast; weights, losses, optimizer, acting and evaluation stay fp32), or 'auto': bf16 where the
    device runs it natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU with bf16), fp32 elsewhere. bf16 is
    ~2x faster on CPUs with AMX and ~18x slower on CPUs without native bf16 (AVX2 only); its numbers differ
    slightly from fp32's. The run's ``harness.precision`` tag says what was used."""
    eval_freq: int = setting(10_000, AT_LEAST_ZERO)
    """Env steps between deterministic evaluations during training (0: none)."""
    eval_episodes: int = setting(20, AT_LEAST_ZERO)
    """Episodes per evaluation during training."""
    checkpoint_freq: int = setting(50_000, AT_LEAST_ZERO)
    """Env steps between resumable checkpoints (model, replay buffer, normalization; 0: none)."""
    preset: str = "ch04"
    """Name of the preset this config was resolved from."""

    @property
    def episode_buffer(self) -> bool:
        """Whether the replay buffer keeps episodes (harness.her_replay): for HER, and for n-step returns."""
        return self.her or self.n_step_returns > 1

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
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise HarnessError(f"--set {key}: cannot read value '{raw}'") from None
        if value is None:  # `gamma=`, `gamma=null`: YAML's nothing would silently keep the preset's value
            raise HarnessError(f"--set {key} has no value (got '{item}'); give KEY=VALUE, e.g. --set gamma=0.98")
        overrides[key] = value
    return overrides


def validate_config(config: TrainConfig) -> None:
    """Reject values SB3 would choke on later, with a message naming what is accepted: each field by the
    rule declared beside it, then the two rules that join fields."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise HarnessError(f"{field.name} must be a finite number, got {value}")
        accepts = field.metadata.get("accepts")
        if accepts is not None and not accepts.test(value):
            shown = list(value) if isinstance(value, tuple) else repr(value) if isinstance(value, str) else value
            raise HarnessError(f"{field.name} must be {accepts.phrase}, got {shown}")
    if config.held_object_start > 0 and config.env_id not in HELD_OBJECT_ENVS:
        raise HarnessError(
            f"held_object_start needs an env whose gripper can hold the object "
            f"({', '.join(HELD_OBJECT_ENVS)}), not {config.env_id}"
        )
    if config.energy_priority_clip > 0 and not config.env_id.startswith("Fetch"):
        raise HarnessError(f"energy_priority_clip needs a Fetch task (goals that are positions), not {config.env_id}")
    if config.clip_target_q and config.algo != "sac":
        raise HarnessError(f"clip_target_q is for sac (ddpg always clips its targets), not {config.algo}")
    if config.critic_layer_norm and config.algo != "sac":
        raise HarnessError(f"critic_layer_norm is for sac, not {config.algo}")
    for field, default in (("random_action_share", 0.0), ("random_action_repeat", 1)):
        if getattr(config, field) != default and config.algo != "sac":
            raise HarnessError(f"{field} is for sac (ddpg has random_eps), not {config.algo}")
    if config.precision == "bf16" and config.algo == "tqc":
        raise HarnessError(f"precision {config.precision} is for sac and ddpg; tqc trains in fp32")


@functools.cache
def field_docs() -> dict[str, str]:
    """Each :class:`TrainConfig` field's docstring (the string under it), read from this module's source:
    the command line's help texts, so that a field is documented once."""
    body = ast.parse(inspect.getsource(TrainConfig)).body[0].body
    docs = {}
    for node, after in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def field_rule(name: str) -> Accepts | None:
    """The rule a field is checked against (None for the fields without one: env_id, her, preset)."""
    return next(f.metadata.get("accepts") for f in dataclasses.fields(TrainConfig) if f.name == name)
