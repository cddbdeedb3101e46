"""Stage 3 of a run: train one model and record everything about it in one MLflow run.

``train(config)`` is the whole life of a training run:

1. start (or attach to, or resume) the MLflow run, tag it, log the resolved config as params;
2. build the vectorized env (+ observation normalization) and the SB3 model, or load them from
   the run's last resumable checkpoint;
3. learn, with SB3's metrics flowing into MLflow and TensorBoard, a deterministic evaluation every
   ``eval_freq`` env steps (``eval/*`` learning curves) and a resumable checkpoint every
   ``checkpoint_freq`` env steps;
4. save the checkpoint in the chapter's layout and as run artifacts, with ``meta.json``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import gymnasium as gym
import mlflow
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat

from harness import resume, stores, tracking
from harness.resume import next_multiple
from harness.algorithms import algo_class, compute_tags, emulated_bf16_warning, resolve_device, resolve_precision
from harness.checkpoints import ARTIFACT_DIR, CHECKPOINT_DIR, LoadedCheckpoint, hash_tags, local_paths
from harness.normalization import write_normalization
from harness.config import TrainConfig
from harness.credentials import redact
from harness.envs import her_reward_warning, make_env, make_vec_env, validate_env_id, validate_her_start
from harness.errors import HarnessError, first_line, warn
from harness.atomic_files import check_writable, write_atomically, write_text_atomically
from harness.evaluation import SUCCESS_THRESHOLDS, deterministic_policy, run_episodes, threshold_metrics
from harness.models import (
    DEFAULT_KEEP,
    KEEP_NONE,
    KeepCheckpoints,
    delete_checkpoint_model,
    log_checkpoint_model,
    run_checkpoint_models,
)
from harness.run_schema import (
    CONFIG_HASH_TAG,
    META_SHA256_TAG,
    N_SAMPLED_GOAL_TAG,
    PARENT_RUN_ID_TAG,
    PRESET_TAG,
    RESUMED_FROM_STEP_TAG,
    RunIdentity,
    TOTAL_STEPS_TAG,
    WARNINGS_TAG,
)
from harness.provenance import DIFF_ARTIFACT, code_version, git_diff, git_state, package_versions
from harness.her_replay import her_buffer
from harness.seeding import seed_everything
from harness.training_state import TrainingClock


@dataclass
class TrainResult:
    run_id: str
    run_name: str
    checkpoint: Path
    meta: dict[str, Any]


def run_tags(config: TrainConfig, identity: RunIdentity, kind: str = "train") -> dict[str, str]:
    """The run's identity (what ``compare``, ``register``, the pipelines and the MLflow UI filter on),
    and the config facts shown beside it in the UI."""
    return {
        **identity.tags(kind),
        N_SAMPLED_GOAL_TAG: str(config.n_sampled_goal),
        PRESET_TAG: config.preset,
        CONFIG_HASH_TAG: config.config_hash,
        TOTAL_STEPS_TAG: str(config.total_steps),
    }


def thresholds_pending(logged: dict[str, float], step: int) -> list[float]:
    """The success thresholds a training starting at env step ``step`` has still to report. A resumed run
    reached some before its checkpoint; one that it logged after the checkpoint, before it was interrupted,
    belongs to steps the resumed run does again, so it is reported again when reached."""
    reached_at = {t: logged.get(threshold_metrics(t)[0]) for t in SUCCESS_THRESHOLDS}
    return [t for t, at in reached_at.items() if at is None or at > step]


class PeriodicEvaluation(BaseCallback):
    """Every ``eval_freq`` env steps, score the deterministic policy and dump ``eval/*`` through
    the SB3 logger (so MLflow and TensorBoard both get it at step = env steps). The first time
    success reaches 50% and 90%, also ``eval/steps_to_<pct>`` and ``eval/minutes_to_<pct>``
    (minutes of training, :class:`TrainingClock`: a resumed run counts the time up to its checkpoint, not its
    pause)."""

    def __init__(
        self,
        config: TrainConfig,
        run_id: str,
        vecnormalize=None,
        to_mlflow: MLflowOutputFormat | None = None,
        keep: KeepCheckpoints = KEEP_NONE,
        identity: RunIdentity | None = None,
        clock: TrainingClock | None = None,
    ):
        super().__init__()
        self.config = config
        self.run_id = run_id
        self.vecnormalize = vecnormalize
        self.to_mlflow = to_mlflow
        self.keep = keep
        self.identity = identity or RunIdentity.of(config)
        self.clock = clock or TrainingClock()

    def _on_training_start(self) -> None:
        self.next_eval = next_multiple(self.num_timesteps, self.config.eval_freq)
        run = mlflow.MlflowClient().get_run(self.run_id)
        self.experiment_id = run.info.experiment_id
        self.pending = thresholds_pending(run.data.metrics, self.num_timesteps)

    def _on_step(self) -> bool:
        if self.config.eval_freq and self.num_timesteps >= self.next_eval:
            self.next_eval += self.config.eval_freq
            self.evaluate()
        return True

    def evaluate(self) -> None:
        normalize = self.vecnormalize.normalize_obs if self.vecnormalize is not None else None
        episodes = run_episodes(deterministic_policy(self.model, normalize), self.config.env_id, self.config.eval_episodes)
        summary = episodes.summary()
        for key in ("success_rate", "mean_return", "final_distance"):
            self.logger.record(f"eval/{key}", summary[key])
        for threshold in [t for t in self.pending if summary["success_rate"] >= t]:
            steps_key, minutes_key = threshold_metrics(threshold)
            self.logger.record(steps_key, self.num_timesteps)
            self.logger.record(minutes_key, self.clock.seconds() / 60)
            self.pending.remove(threshold)
        logged = self.keep.rule != "none" and self.to_mlflow is not None
        if logged:  # the checkpoint this evaluation scored, as a logged model its eval/* metrics belong to
            meta = {"config": self.config.to_dict(), "run_id": self.run_id, "run_name": self.identity.name}
            tags = {**self.identity.tags(), CONFIG_HASH_TAG: self.config.config_hash}
            checkpoint = LoadedCheckpoint(self.model, meta, self.vecnormalize, "training")
            self.to_mlflow.link_next("eval/", log_checkpoint_model(checkpoint, self.run_id, self.experiment_id, tags))
        self.logger.dump(self.num_timesteps)
        if logged:
            for model in self.keep.to_delete(run_checkpoint_models(self.run_id, self.experiment_id)):
                delete_checkpoint_model(model)


def effective_buffer_size(config: TrainConfig) -> int:
    """A replay buffer larger than the whole training never fills; SB3 allocates it up front all
    the same (gigabytes at 1M Fetch transitions) and a resumable checkpoint would pickle it."""
    return min(config.buffer_size, config.total_steps + config.n_envs)


def layer_precision_for(config: TrainConfig, device: str) -> str:
    """The precision the gradient steps run in on ``device``: the config's, with ``auto`` resolved
    (:func:`harness.algorithms.resolve_precision`); tqc always trains in fp32."""
    return resolve_precision(config.precision, device) if config.algo in ("sac", "ddpg") else "fp32"


def build_model(config: TrainConfig, env, logger: Logger, device: str = "cpu"):
    """The SB3 model the config describes; HER is only the replay buffer class, as in SB3."""
    kwargs: dict[str, Any] = dict(
        learning_rate=config.learning_rate,
        buffer_size=effective_buffer_size(config),
        learning_starts=config.learning_starts,
        batch_size=config.batch_size,
        tau=config.tau,
        gamma=config.gamma,
        train_freq=config.train_freq,
        gradient_steps=config.gradient_steps,
        policy_kwargs=dict(net_arch=list(config.net_arch)),
        seed=config.seed,
        device=device,
        verbose=0,
    )
    if config.algo == "ddpg":
        kwargs.update(random_eps=config.random_eps, action_noise_std=config.action_noise, action_l2=config.action_l2)
        kwargs["policy_kwargs"]["n_critics"] = 1
    else:
        kwargs["ent_coef"] = config.ent_coef
    if config.algo == "sac":
        kwargs.update(
            clip_target_q=config.clip_target_q,
            random_action_share=config.random_action_share,
            random_action_repeat=config.random_action_repeat,
            critic_layer_norm=config.critic_layer_norm,
        )
    if config.algo in ("sac", "ddpg"):
        kwargs["precision"] = layer_precision_for(config, device)
    if config.episode_buffer:  # without HER: the same episode buffer for n-step returns, nothing relabeled
        kwargs.update(
            her_buffer(
                config.n_sampled_goal if config.her else 0,
                config.goal_selection_strategy,
                config.desired_goal_share if config.her else 0.0,
                config.n_step_returns,
                config.gamma,
                config.energy_priority_clip if config.her else 0.0,
            )
        )
    policy = "MultiInputPolicy" if isinstance(env.observation_space, gym.spaces.Dict) else "MlpPolicy"
    model = algo_class(config.algo)(policy, env, **kwargs)
    model.set_logger(logger)
    return model


def network_bytes(config: TrainConfig, obs_dim: int, action_dim: int) -> int:
    """About what the networks of ``config`` take in memory while training: weights, gradients and Adam's
    two moments of the actor and of each critic, the critics' targets (and DDPG's actor target), and the
    activations of one batch, all fp32."""

    def params(sizes: list[int]) -> int:
        return sum(a * b + b for a, b in itertools.pairwise(sizes))

    hidden = list(config.net_arch)
    actor = params([obs_dim, *hidden, action_dim if config.algo == "ddpg" else 2 * action_dim])
    n_critics, outputs = (1, 1) if config.algo == "ddpg" else (2, 25 if config.algo == "tqc" else 1)
    critic = params([obs_dim + action_dim, *hidden, outputs])
    copies = 4 * actor + (actor if config.algo == "ddpg" else 0) + 5 * n_critics * critic
    activations = 2 * config.batch_size * sum(hidden) * (1 + 2 * n_critics)  # forward and backward
    return 4 * (copies + activations)


def available_memory_bytes(device: str) -> int | None:
    """Memory free for new allocations on ``device`` (Linux's MemAvailable on a CPU), None when unknown."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_networks_fit(config: TrainConfig, device: str) -> None:
    """Layer sizes that cannot fit are one line before any run starts, not a failed allocation deep in torch."""
    env = make_env(config.env_id)
    space = env.observation_space
    spaces = space.spaces.values() if isinstance(space, gym.spaces.Dict) else [space]
    obs_dim, action_dim = sum(int(np.prod(space.shape)) for space in spaces), int(np.prod(env.action_space.shape))
    env.close()
    needed, available = network_bytes(config, obs_dim, action_dim), available_memory_bytes(device)
    if available is not None and needed > available:
        raise HarnessError(
            f"net_arch {list(config.net_arch)} needs about {needed / 2**30:,.1f} GiB for the {config.algo} networks "
            f"(weights, gradients, targets, Adam state and a batch of {config.batch_size}) and {device} memory has "
            f"{available / 2**30:,.1f} GiB free; give smaller layer sizes"
        )


def build_env(config: TrainConfig):
    env = make_vec_env(config.env_id, config.n_envs, config.seed, config.held_object_start)
    if not config.normalize_obs:
        return env, None
    from stable_baselines3.common.vec_env import VecNormalize

    # epsilon 1e-4 floors the std at 0.01 (OpenAI HER's norm_eps): goal coordinates that hardly
    # vary (the table height on Push) must not blow tiny differences up to the clip value.
    vecnormalize = VecNormalize(env, norm_obs=True, norm_reward=False, clip_obs=5.0, gamma=config.gamma, epsilon=1e-4)
    return vecnormalize, vecnormalize


@dataclass(frozen=True)
class RunOptions:
    """How one training is run and filed, beside what it trains (:class:`TrainConfig`): none of these
    changes the trained model, so none is part of the config hash."""

    experiment: str | None = None
    """MLflow experiment [None: the default one, or the one ``mlflow run`` or a pipeline chose]."""
    parent_run_id: str | None = None
    """Make the run a child of this (pipeline) run."""
    resume_run_id: str | None = None
    """Continue this run from its last resumable checkpoint (same run, metrics at the right steps)."""
    variant: str = ""
    """Sets the run apart where several share (env, algo, HER, seed): the ablation's ``nsg4``, a
    benchmark's label; part of the run's name (:class:`RunIdentity`)."""
    kind: str = "train"
    """The ``harness.kind`` tag: benchmarks use ``bench`` so that ``compare``, ``register`` and the
    pipelines, which look for ``train`` runs, never pick their runs up."""
    torch_threads: int = 0
    """> 0 caps torch's intra-op threads: processes training side by side must share the cores, or
    their OpenMP threads fight and each runs several times slower."""
    progress_bar: bool = False
    """SB3's progress bar on stderr."""
    device: str = "auto"
    """Where the networks train: ``cpu``, ``cuda``, or ``auto`` (CUDA when present); the ``harness.device``
    tag says which. Checkpoints load on any device (evaluation runs on the CPU)."""
    keep_checkpoints: KeepCheckpoints = DEFAULT_KEEP
    """Which evaluated checkpoints stay as MLflow logged models of the run (``models:/m-<id>``, listed in the
    experiment's Models tab with their ``eval/*``): best 3 by eval success by default (a few MB each)."""
    system_metrics: bool = True
    """MLflow's system metrics (``system/cpu_utilization_percentage``, memory, ...) beside the learning
    curves, so a slow run shows whether it was starved of CPU."""


class MLflowOutputFormat(KVWriter):
    """An SB3 logger output: every numeric key SB3 dumps (``rollout/success_rate``,
    ``train/actor_loss``, ``time/fps``, ...) becomes an MLflow metric at ``step`` = env steps."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.latest: dict[str, float] = {}
        self.linked: dict[str, str] = {}  # key prefix -> logged model id, for the next write only

    def link_next(self, prefix: str, model_id: str) -> None:
        """The next write's metrics under ``prefix`` are also those of logged model ``model_id``."""
        self.linked[prefix] = model_id

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        metrics = {
            key: value for key, value in key_values.items() if not (key_excluded.get(key) and "mlflow" in key_excluded[key])
        }
        unlinked = dict(metrics)
        for prefix, model_id in self.linked.items():
            linked = {key: value for key, value in unlinked.items() if key.startswith(prefix)}
            tracking.log_metrics_at(self.run_id, linked, step, model_id=model_id)
            unlinked = {key: value for key, value in unlinked.items() if key not in linked}
        tracking.log_metrics_at(self.run_id, unlinked, step)
        self.linked.clear()
        self.latest.update({k: float(v) for k, v in metrics.items() if tracking.is_loggable(v)})

    def close(self) -> None:
        pass


def train(config: TrainConfig, options: RunOptions = RunOptions()) -> TrainResult:
    """Train one model as one MLflow run; see the module docstring for the stages."""
    resume_run_id = options.resume_run_id
    if options.torch_threads > 0:
        torch.set_num_threads(options.torch_threads)
    device = resolve_device(options.device)
    precision = layer_precision_for(config, device)
    identity = RunIdentity.of(config, options.variant)
    tags = checked_run_tags(config, options, identity, device, precision)
    seed_everything(config.seed)
    if resume_run_id and resume.trained_elsewhere(resume_run_id):  # refused before the run is reopened
        raise resume.busy(resume_run_id)
    saved = resume.checkpoint_to_continue(resume_run_id) if resume_run_id else None
    if resume_run_id and saved is None:
        resume_run_id = None  # a new run: never a second history from step 0 inside the old one
    with (
        tracking.tracked_run(
            identity.name, tags, options.experiment, run_id=resume_run_id, system_metrics=options.system_metrics
        ) as run,
        resume.owned(run.info.run_id),
    ):
        run_id = run.info.run_id
        tracking.log_params_once(run_id, config.to_dict())
        if resume_run_id is None:
            mlflow.log_dict(config.to_dict(), "config.json")
            if git_state()[1]:  # a dirty tree: the commit alone does not say what code ran (harness reproduce)
                mlflow.log_text(git_diff(), DIFF_ARTIFACT)

        env, vecnormalize = build_env(config)
        config.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        to_mlflow = MLflowOutputFormat(run_id)
        logger = Logger(
            folder=str(config.tensorboard_dir),
            output_formats=[TensorBoardOutputFormat(str(config.tensorboard_dir)), to_mlflow],
        )
        trained_before = 0.0
        if saved is not None:
            model, env, vecnormalize, trained_before = continued_model(
                saved, config, env, logger, vecnormalize, device, precision, run_id
            )
        else:
            model = build_model(config, env, logger, device)
        clock = TrainingClock(trained_before)  # a resumed run's minutes include those up to its checkpoint
        callbacks = [
            PeriodicEvaluation(config, run_id, vecnormalize, to_mlflow, options.keep_checkpoints, identity, clock),
            resume.ResumableCheckpoint(config, run_id, vecnormalize, clock),
        ]

        remaining = config.total_steps - model.num_timesteps
        if remaining > 0:
            model.learn(
                total_timesteps=remaining,
                callback=callbacks,
                progress_bar=options.progress_bar,
                reset_num_timesteps=saved is None,
            )
        wall_time = clock.seconds()
        logger.close()
        env.close()
        meta = training_meta(config, run_id, identity, model, wall_time, to_mlflow.latest)
        checkpoint, meta = save_final_checkpoint(model, vecnormalize, identity.name, meta)
        mlflow.log_metric("time/wall_time_s", wall_time, step=int(model.num_timesteps))
    resume.discard(run_id)  # finished: the final checkpoint supersedes the resumable ones
    resume.forget_remote(run_id)
    return TrainResult(run_id=run_id, run_name=identity.name, checkpoint=checkpoint, meta=meta)


def checked_run_tags(config: TrainConfig, options: RunOptions, identity: RunIdentity, device: str, precision: str) -> dict:
    """Everything that can be refused before a run exists (env, HER start, network size, the store, the
    directories), the warnings said once, and the tags the run starts with."""
    validate_env_id(config.env_id, her=config.her)
    if config.episode_buffer:
        what = "--her" if config.her else "n_step_returns > 1"
        validate_her_start(config.env_id, config.n_envs, config.learning_starts, what)
    check_networks_fit(config, device)
    tags = {**run_tags(config, identity, options.kind), **compute_tags(device, precision)}
    warnings = [w for w in (her_reward_warning(config.env_id, config.her), emulated_bf16_warning(precision, device)) if w]
    for warning in warnings:
        warn(warning)
    if warnings:
        tags[WARNINGS_TAG] = "; ".join(warnings)
    if options.parent_run_id:
        tags[PARENT_RUN_ID_TAG] = options.parent_run_id
    stores.prepare_store()
    stores.check_integrity()  # not minutes of training into a store that cannot keep them
    stores.check_store_writable()
    for directory in (CHECKPOINT_DIR, config.tensorboard_dir):  # before a run exists that could not finish
        check_writable(directory)
    return tags


def continued_model(saved: Path, config: TrainConfig, env, logger, vecnormalize, device: str, precision: str, run_id: str):
    """The model, env and statistics of a resumable checkpoint, tagged with the step it resumes from; one
    that cannot be loaded is set aside and named in one line."""
    try:
        model, env, vecnormalize, trained_seconds = resume.load(saved, config, env, logger, vecnormalize, device, build_model)
    except Exception as exc:
        kept = resume.set_aside(saved)
        raise HarnessError(
            f"the resumable checkpoint of run {run_id} at {saved.name} cannot be loaded "
            f"({type(exc).__name__}: {first_line(exc)}); set aside as {kept}; the same "
            "command again starts the training anew"
        ) from None
    if hasattr(model, "precision"):  # 'auto' resolves for the machine the run continues on
        model.precision = precision
    mlflow.set_tag(RESUMED_FROM_STEP_TAG, str(model.num_timesteps))
    return model, env, vecnormalize, trained_seconds


def save_final_checkpoint(model, vecnormalize, run_name: str, meta: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The chapter's checkpoint files (zip, statistics, meta.json), each written whole, then logged to the
    active run with their sha256 as tags; returns the zip's path and the meta written."""
    paths = local_paths(run_name, CHECKPOINT_DIR)
    write_atomically(paths["model"], lambda tmp: model.save(tmp))
    if vecnormalize is not None:
        write_normalization(vecnormalize, paths["normalization"])
    else:  # an earlier training of this name may have left statistics that do not belong to this model
        paths["normalization"].unlink(missing_ok=True)
    hashes = hash_tags(paths["model"])
    meta = {**meta, "sha256": hashes}
    meta_text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    write_text_atomically(paths["meta"], meta_text)
    mlflow.log_artifact(str(paths["model"]), ARTIFACT_DIR)
    if vecnormalize is not None:
        mlflow.log_artifact(str(paths["normalization"]), ARTIFACT_DIR)
    mlflow.log_text(meta_text, "meta.json")  # the bytes its sha256 below is of
    mlflow.set_tags({**hashes, META_SHA256_TAG: hashlib.sha256(meta_text.encode()).hexdigest()})
    return paths["model"], meta


def training_meta(
    config: TrainConfig, run_id: str, identity: RunIdentity, model, wall_time: float, final: dict[str, float]
) -> dict[str, Any]:
    """What ``meta.json`` records next to the checkpoint: how it was made and how it ended."""
    commit, dirty = git_state()
    return {
        "run_id": run_id,
        "run_name": identity.name,
        "variant": identity.variant,
        "tracking_uri": redact(mlflow.get_tracking_uri()),
        "config": config.to_dict(),
        "config_hash": config.config_hash,
        "num_timesteps": int(model.num_timesteps),
        "wall_time_s": round(wall_time, 2),
        "steps_per_second": round(model.num_timesteps / wall_time, 1) if wall_time > 0 else None,
        "final_metrics": dict(sorted(final.items())),
        "git_commit": commit,
        "git_dirty": dirty,
        "code_version": code_version(),
        "versions": package_versions(),
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
