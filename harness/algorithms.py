"""The off-policy algorithms a config can name, as Stable-Baselines3 classes.

``sac`` is :class:`FastSAC`: SB3's SAC with the same math and a cheaper gradient step (see its
docstring); its checkpoints are plain SB3 SAC checkpoints. ``tqc`` is sb3-contrib's own.
``ddpg`` is :class:`HerDDPG`: DDPG as
OpenAI's original HER code trains it on the Fetch tasks (``baselines/her``), written as a
subclass of SB3's TD3 so that HerReplayBuffer, VecNormalize, callbacks, ``save``/``load``,
``predict`` and everything in the harness built on them work unchanged.

What makes HerDDPG differ from SB3's TD3/DDPG (each is in the HER paper's code, and each is a
reason plain TD3 stalls on FetchPush at the do-nothing floor):

- exploration: Gaussian noise on the actor's action *and*, with probability ``random_eps``, a
  uniformly random action instead (so the gripper keeps bumping into the object);
- the actor's loss has an L2 penalty on its (scaled) actions, ``action_l2``;
- the TD target is clipped to ``[-1/(1-gamma), 0]``, the range of returns of the -1/0 reward;
- one critic, no target policy smoothing, actor updated every gradient step (plain DDPG);
- the target networks move once per training round (``tau`` after all of a round's gradient
  steps), not after every gradient step.
"""

from __future__ import annotations

import math

import numpy as np
import torch as th
import torch.nn.functional as F
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import create_mlp
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import MultiInputPolicy, SACPolicy
from torch import nn

from harness.config import ALGOS
from harness.errors import HarnessError
from harness.run_schema import CPU_CAPABILITY_TAG, DEVICE_TAG, NATIVE_BF16_TAG, PRECISION_TAG, TORCH_THREADS_TAG


def layer_precision(precision: str, device_type: str = "cpu"):
    """Where the networks' layers run during gradient steps: ``fp32``, or ``bf16`` through autocast on
    the model's device (matrix multiplies in bfloat16, weights, gradients and optimizer state stay
    fp32). Callers turn a layer's output back to fp32 before any loss, log or tanh math, which
    bfloat16's 8-bit mantissa would spoil (``log(1 - tanh^2 + 1e-6)`` loses its epsilon)."""
    return th.autocast(device_type, dtype=th.bfloat16, enabled=precision == "bf16")


# bf16 where the CPU has no bfloat16 instructions (AVX2 only, most laptops): torch emulates it. Measured on
# an AMD EPYC of the Zen 3 class, a 3x256 MLP's forward+backward at batch 2048 on one thread: 620 ms under
# bf16 autocast, 35 ms in fp32 (BENCHMARKS.md, "CPU classes").
EMULATED_BF16_SLOWDOWN = 17.7


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels use here, as torch names it (DEFAULT, AVX2, AVX512, ...);
    ``ATEN_CPU_CAPABILITY`` lowers it."""
    return th.backends.cpu.get_cpu_capability()


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether torch runs bfloat16 matrix multiplies natively on this device: on a CPU,
    :func:`cpu_runs_bf16`; on CUDA the GPU's own support."""
    if device_type == "cuda":
        return bool(th.cuda.is_available() and th.cuda.is_bf16_supported())
    return cpu_runs_bf16()


def cpu_runs_bf16() -> bool:
    """The CPU has bfloat16 instructions (AVX512-BF16 or AMX) and oneDNN may use them (``ONEDNN_MAX_CPU_ISA``
    lowers that). oneDNN's own check alone also says yes on AVX-512 CPUs without them (Ice Lake, Skylake-X),
    where it converts in software: a 3x256 MLP's forward+backward at batch 2048 on one thread of an Ice Lake
    Xeon took 64 ms under bf16 autocast against 24 ms in fp32 (BENCHMARKS.md, "CPU classes")."""
    instructions = th.cpu._is_avx512_bf16_supported() or th.cpu._is_amx_tile_supported()
    return bool(instructions and th.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """``auto``: bf16 where :func:`native_bf16` holds for the device in use, fp32 elsewhere (a default
    must not depend on one CPU's features). ``fp32`` and ``bf16`` are taken as asked."""
    if precision == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    return precision


def emulated_bf16_warning(precision: str, device_type: str = "cpu") -> str | None:
    """The line to say when bf16 was asked for explicitly on a device without native bf16."""
    if precision != "bf16" or native_bf16(device_type):
        return None
    where = f"this CPU (torch: {cpu_capability()})" if device_type == "cpu" else "this GPU"
    return (
        f"precision bf16 on {where} without native bfloat16: torch emulates it and gradient steps run "
        f"~{EMULATED_BF16_SLOWDOWN:g}x slower than fp32; use precision auto or fp32"
    )


def compute_tags(device_type: str, precision: str) -> dict[str, str]:
    """What a run's arithmetic depended on: the resolved precision, torch's instruction set and thread count,
    and whether the device runs bf16 natively (``harness reproduce`` names them when they differ)."""
    return {
        PRECISION_TAG: precision,
        CPU_CAPABILITY_TAG: cpu_capability(),
        NATIVE_BF16_TAG: str(native_bf16(device_type)).lower(),
        TORCH_THREADS_TAG: str(th.get_num_threads()),
        DEVICE_TAG: device_type,
    }


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU (as SB3's own ``device="auto"``)."""
    if device not in DEVICES:
        raise HarnessError(f"unknown device '{device}'; accepted: {', '.join(DEVICES)}")
    if device == "cuda" and not th.cuda.is_available():
        raise HarnessError(
            "--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False; "
            f"torch {th.__version__}); accepted on this machine: auto, cpu"
        )
    if device == "auto":
        return "cuda" if th.cuda.is_available() else "cpu"
    return device


def with_random_actions(model, learning_starts: int, action, buffer_action, share: float, runs=None):
    """The HER paper's exploration: once learning has started, each env's action replaced, with probability
    ``share``, by a uniformly random one. ``buffer_action`` is the action scaled to [-1, 1] (what the replay
    buffer stores). With ``runs`` (a :class:`RandomActionRuns`) the random actions come in runs instead."""
    if model.num_timesteps < learning_starts or share <= 0:
        return action, buffer_action  # before learning_starts SB3's actions are uniform already
    if runs is not None:
        explore, random_actions = runs.draw(model._last_episode_starts, buffer_action.shape)
    else:
        explore = np.random.uniform(size=len(buffer_action)) < share
        random_actions = None
    if not explore.any():
        return action, buffer_action
    buffer_action = buffer_action.copy()
    if random_actions is None:
        buffer_action[explore] = np.random.uniform(-1.0, 1.0, size=buffer_action[explore].shape)
    else:
        buffer_action[explore] = random_actions[explore]
    return model.policy.unscale_action(buffer_action), buffer_action


class RandomActionRuns:
    """Random actions in runs of ``length`` env steps, one uniformly random action held for the whole run,
    per env (temporally extended exploration, as Dabney et al. 2021's ez-greedy with a fixed duration): a
    run that closes the gripper and moves up lasts long enough to lift an object, which single random
    steps between the policy's own rarely do. A run starts, at a step where none is under way, with the
    probability that makes ``share`` of all steps random in the long run
    (``share = p * length / (1 + p * (length - 1))``), and ends early when its episode ends. The runs
    under way are not saved with a resumable checkpoint: a resumed training starts with none."""

    def __init__(self, share: float, length: int):
        self.length = length
        self.start_probability = share / (length - share * (length - 1))
        self.left: np.ndarray | None = None  # steps left in each env's run
        self.held: np.ndarray | None = None  # each env's held action, in [-1, 1]

    def draw(self, episode_starts, shape) -> tuple[np.ndarray, np.ndarray]:
        """Which envs act randomly at this step, and the actions they take."""
        if self.left is None or self.held.shape != shape:
            self.left, self.held = np.zeros(shape[0], dtype=np.int64), np.zeros(shape)
        self.left[np.asarray(episode_starts, dtype=bool)] = 0
        start = (self.left == 0) & (np.random.uniform(size=shape[0]) < self.start_probability)
        self.held[start] = np.random.uniform(-1.0, 1.0, size=(int(start.sum()), *shape[1:]))
        self.left[start] = self.length
        explore = self.left > 0
        self.left[explore] -= 1
        return explore, self.held


class HerDDPG(TD3):
    """DDPG with the HER paper's exploration, action penalty and target clipping (see module doc)."""

    def __init__(
        self,
        policy,
        env,
        *,
        random_eps: float = 0.3,
        action_noise_std: float = 0.2,
        action_l2: float = 1.0,
        clip_target: bool = True,
        precision: str = "fp32",
        **kwargs,
    ):
        kwargs.setdefault("policy_delay", 1)
        kwargs.setdefault("target_policy_noise", 0.0)
        kwargs.setdefault("target_noise_clip", 0.0)
        self.random_eps = random_eps
        self.action_noise_std = action_noise_std
        self.action_l2 = action_l2
        self.clip_target = clip_target
        self.precision = precision
        super().__init__(policy, env, **kwargs)
        if self.action_noise is None and action_noise_std > 0 and self.action_space is not None:
            n_actions = self.action_space.shape[-1]
            self.action_noise = NormalActionNoise(np.zeros(n_actions), action_noise_std * np.ones(n_actions))

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        action, buffer_action = super()._sample_action(learning_starts, action_noise, n_envs)
        return with_random_actions(self, learning_starts, action, buffer_action, self.random_eps)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        lowest_return = -1.0 / (1.0 - self.gamma) if self.gamma < 1 else -np.inf
        critic_losses, actor_losses = [], []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            with th.no_grad():
                with layer_precision(self.precision, self.device.type):
                    next_q = self.critic_target.q1_forward(data.next_observations, self.actor_target(data.next_observations))
                discounts = data.discounts if data.discounts is not None else self.gamma  # n-step: gamma^m
                target_q = data.rewards + (1 - data.dones) * discounts * next_q.float()
                if self.clip_target:
                    target_q.clamp_(lowest_return, 0.0)
            with layer_precision(self.precision, self.device.type):
                current_q = self.critic.q1_forward(data.observations, data.actions)
            critic_loss = F.mse_loss(current_q.float(), target_q)
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            # The actor's loss needs gradients through the critic's input only, not its weights.
            self.critic.requires_grad_(False)
            with layer_precision(self.precision, self.device.type):
                actions_pi = self.actor(data.observations).float()
                q_pi = self.critic.q1_forward(data.observations, actions_pi).float()
            actor_loss = -q_pi.mean() + self.action_l2 * actions_pi.pow(2).mean()
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()
            self.critic.requires_grad_(True)

            critic_losses.append(critic_loss.detach())
            actor_losses.append(actor_loss.detach())
        polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
        polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
        self._n_updates += gradient_steps
        if gradient_steps > 0:
            self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
            self.logger.record("train/critic_loss", th.stack(critic_losses).mean().item())
            self.logger.record("train/actor_loss", th.stack(actor_losses).mean().item())


def algo_class(algo: str):
    """The SB3 class behind a config's ``algo``."""
    if algo == "sac":
        return FastSAC
    if algo == "tqc":
        from sb3_contrib import TQC

        return TQC
    if algo == "ddpg":
        return HerDDPG
    raise HarnessError(f"unknown algo '{algo}'; accepted: {', '.join(ALGOS)}")


class LayerNormCritic(ContinuousCritic):
    """SB3's SAC critics with a LayerNorm after each hidden linear layer, before its activation
    (``Linear -> LayerNorm -> ReLU``, as spitis/mrl's critics); same names, so one more tensor pair per layer."""

    def __init__(
        self, observation_space, action_space, net_arch, features_extractor, features_dim, activation_fn=nn.ReLU, **kw
    ):
        super().__init__(observation_space, action_space, net_arch, features_extractor, features_dim, activation_fn, **kw)
        q_input_dim = features_dim + get_action_dim(action_space)
        for idx in range(self.n_critics):
            q_net = nn.Sequential(*create_mlp(q_input_dim, 1, net_arch, activation_fn, post_linear_modules=[nn.LayerNorm]))
            self.add_module(f"qf{idx}", q_net)  # replaces the plain one of the same name
            self.q_networks[idx] = q_net


class _LayerNormCritics:
    def make_critic(self, features_extractor=None) -> LayerNormCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return LayerNormCritic(**critic_kwargs).to(self.device)


class LayerNormCriticMlpPolicy(_LayerNormCritics, SACPolicy):
    """SAC's ``MlpPolicy`` with :class:`LayerNormCritic` critics."""


class LayerNormCriticMultiInputPolicy(_LayerNormCritics, MultiInputPolicy):
    """SAC's ``MultiInputPolicy`` (the goal envs' dict observations) with :class:`LayerNormCritic` critics."""


LAYER_NORM_CRITIC_POLICIES = {"MlpPolicy": LayerNormCriticMlpPolicy, "MultiInputPolicy": LayerNormCriticMultiInputPolicy}


class FastSAC(SAC):
    """SB3's SAC, same losses and update order, with a gradient step that costs less on a CPU.

    ~85% of SAC's time on a CPU is the gradient step, and much of that is not arithmetic:
    module-call and distribution-object overhead, a per-tensor Adam loop, one flatten of the dict
    observation per network call, and weight gradients of the critics computed during the actor's
    backward pass only to be thrown away. This step flattens each observation batch once, calls the
    layers directly, computes the squashed-Gaussian log-probability in closed form (as SB3's
    ``SquashedDiagGaussianDistribution`` does), freezes the critics during the actor's backward,
    uses Adam's fused implementation and a multi-tensor Polyak update.
    Falls back to SB3's own step for gSDE and for feature extractors with weights.

    ``precision="bf16"`` runs the layers of the gradient step in bfloat16 (:func:`layer_precision`);
    acting, evaluation and saved weights stay fp32. The default ``fp32`` is SB3's arithmetic.

    ``clip_target_q=True`` clips the TD target (the soft value with its entropy term) to
    ``[-1/(1-gamma), 0]``, the range of returns of the Fetch tasks' -1/0 reward, as the HER paper's
    DDPG does: a critic's early overshoot past what any return can be is not bootstrapped from.

    ``critic_layer_norm=True`` builds the critics as :class:`LayerNormCritic` (the policy named
    ``MlpPolicy`` or ``MultiInputPolicy`` becomes its ``LayerNormCritic...`` counterpart); the actor is SB3's.

    ``random_action_share`` > 0 replaces that share of the training actions (after ``learning_starts``) by
    uniformly random ones, as the HER paper's DDPG does (its ``random_eps``), on top of SAC's own sampling;
    ``random_action_repeat`` > 1 makes them runs of one held action (:class:`RandomActionRuns`).
    """

    def __init__(
        self,
        policy,
        *args,
        precision: str = "fp32",
        clip_target_q: bool = False,
        random_action_share: float = 0.0,
        random_action_repeat: int = 1,
        critic_layer_norm: bool = False,
        **kwargs,
    ):
        self.precision = precision
        self.critic_layer_norm = critic_layer_norm
        if critic_layer_norm and isinstance(policy, str):
            if policy not in LAYER_NORM_CRITIC_POLICIES:
                raise HarnessError(f"critic_layer_norm needs {' or '.join(LAYER_NORM_CRITIC_POLICIES)}, not {policy}")
            policy = LAYER_NORM_CRITIC_POLICIES[policy]
        self.clip_target_q = clip_target_q
        self.random_action_share = random_action_share
        self.random_action_repeat = random_action_repeat
        self._random_action_runs = (
            RandomActionRuns(random_action_share, random_action_repeat) if random_action_repeat > 1 else None
        )
        super().__init__(policy, *args, **kwargs)

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        action, buffer_action = super()._sample_action(learning_starts, action_noise, n_envs)
        share, runs = self.random_action_share, self._random_action_runs
        return with_random_actions(self, learning_starts, action, buffer_action, share, runs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_random_action_runs"]  # exploration state, not the model

    def _setup_model(self) -> None:
        super()._setup_model()
        for optimizer in self._optimizers():
            for group in optimizer.param_groups:
                group["foreach"], group["fused"] = False, True
        self._critic_params = list(self.critic.parameters())
        self._critic_target_params = list(self.critic_target.parameters())

    def _optimizers(self):
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        return optimizers + ([self.ent_coef_optimizer] if self.ent_coef_optimizer is not None else [])

    def _fast_path(self) -> bool:
        extractors = (self.actor.features_extractor, self.critic.features_extractor)
        return not self.use_sde and not any(any(True for _ in e.parameters()) for e in extractors)

    def _actor_sample(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Reparameterized tanh-squashed Gaussian action and its log-probability (SB3's formulas)."""
        with layer_precision(self.precision, self.device.type):
            latent = self.actor.latent_pi(features)
            mean, log_std = self.actor.mu(latent).float(), self.actor.log_std(latent).float()
        log_std = th.clamp(log_std, -20, 2)
        std = log_std.exp()
        gaussian = mean + std * th.randn_like(mean)
        action = th.tanh(gaussian)
        normal_log_prob = -((gaussian - mean) ** 2) / (2 * std**2) - log_std - math.log(math.sqrt(2 * math.pi))
        log_prob = normal_log_prob.sum(dim=1) - th.log(1 - action**2 + 1e-6).sum(dim=1)
        return action, log_prob.reshape(-1, 1)

    def _q_values(self, critic, features: th.Tensor, actions: th.Tensor) -> list[th.Tensor]:
        q_input = th.cat([features, actions], dim=1)
        with layer_precision(self.precision, self.device.type):
            return [q_net(q_input).float() for q_net in critic.q_networks]

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        if not self._fast_path():
            if self.clip_target_q:  # SB3's own step has no clipping
                raise HarnessError("clip_target_q needs the harness's SAC gradient step (no gSDE, no extractor weights)")
            return super().train(gradient_steps, batch_size)
        self.policy.set_training_mode(True)
        self._update_learning_rate(self._optimizers())

        def flatten(obs):  # the extractor has no weights: actor's and critics' features are the same
            return self.actor.extract_features(obs, self.actor.features_extractor)

        ent_coef_losses, ent_coefs, actor_losses, critic_losses = [], [], [], []

        for gradient_step in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = data.discounts if data.discounts is not None else self.gamma
            features = flatten(data.observations)
            next_features = flatten(data.next_observations)

            actions_pi, log_prob = self._actor_sample(features)
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                ent_coef = th.exp(self.log_ent_coef.detach())
                ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
                ent_coef_losses.append(ent_coef_loss.detach())
                self.ent_coef_optimizer.zero_grad()
                ent_coef_loss.backward()
                self.ent_coef_optimizer.step()
            else:
                ent_coef = self.ent_coef_tensor
            ent_coefs.append(ent_coef)

            with th.no_grad():
                next_actions, next_log_prob = self._actor_sample(next_features)
                next_q = th.min(
                    th.cat(self._q_values(self.critic_target, next_features, next_actions), dim=1), dim=1, keepdim=True
                )[0]
                next_q = next_q - ent_coef * next_log_prob
                target_q = data.rewards + (1 - data.dones) * discounts * next_q
                if self.clip_target_q:
                    target_q = target_q.clamp(-1 / (1 - self.gamma), 0.0)

            current_q = self._q_values(self.critic, features, data.actions)
            critic_loss = 0.5 * sum(F.mse_loss(q, target_q) for q in current_q)
            critic_losses.append(critic_loss.detach())
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            # The actor's loss needs gradients through the critics' inputs only, not their weights.
            self.critic.requires_grad_(False)
            q_pi = th.min(th.cat(self._q_values(self.critic, features, actions_pi), dim=1), dim=1, keepdim=True)[0]
            actor_loss = (ent_coef * log_prob - q_pi).mean()
            actor_losses.append(actor_loss.detach())
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()
            self.critic.requires_grad_(True)

            if gradient_step % self.target_update_interval == 0:
                with th.no_grad():
                    th._foreach_lerp_(self._critic_target_params, self._critic_params, self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps
        if gradient_steps > 0:
            self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
            self.logger.record("train/ent_coef", th.stack(ent_coefs).mean().item())
            self.logger.record("train/actor_loss", th.stack(actor_losses).mean().item())
            self.logger.record("train/critic_loss", th.stack(critic_losses).mean().item())
            if ent_coef_losses:
                self.logger.record("train/ent_coef_loss", th.stack(ent_coef_losses).mean().item())
