"""Stage 3 of a run: train one model and record everything about it in one MLflow run.

``train(config)`` is the whole life of a training run:

1. start (or attach to) the MLflow run, tag it, log the resolved config as params;
2. build the vectorized env (+ observation normalization) and the SB3 model;
3. learn, with SB3's metrics flowing into MLflow and TensorBoard, and a deterministic
   evaluation every ``eval_freq`` env steps (``eval/*`` learning curves);
4. save the checkpoint in the chapter's layout and as run artifacts, with ``meta.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gymnasium as gym
import mlflow
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat

from harness import tracking
from harness.checkpoints import ARTIFACT_DIR, CHECKPOINT_DIR, algo_class, local_paths, write_atomically, write_json_atomically
from harness.config import TrainConfig
from harness.envs import make_vec_env, validate_env_id
from harness.evaluation import deterministic_policy, run_episodes
from harness.provenance import git_state, package_versions
from harness.seeding import seed_everything


@dataclass
class TrainResult:
    run_id: str
    run_name: str
    checkpoint: Path
    meta: dict[str, Any]


def run_tags(config: TrainConfig, kind: str = "train") -> dict[str, str]:
    """The tags ``compare`` and the MLflow UI filter on."""
    return {
        "harness.kind": kind,
        "harness.env": config.env_id,
        "harness.her": str(config.her).lower(),
        "harness.seed": str(config.seed),
        "harness.algo": config.algo,
        "harness.n_sampled_goal": str(config.n_sampled_goal),
        "harness.preset": config.preset,
    }


class PeriodicEvaluation(BaseCallback):
    """Every ``eval_freq`` env steps, score the deterministic policy and dump ``eval/*`` through
    the SB3 logger (so MLflow and TensorBoard both get it at step = env steps)."""

    def __init__(self, config: TrainConfig, vecnormalize=None):
        super().__init__()
        self.config = config
        self.vecnormalize = vecnormalize
        self.next_eval = config.eval_freq

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
        self.logger.dump(self.num_timesteps)


def build_model(config: TrainConfig, env, logger: Logger):
    """The SB3 model the config describes; HER is only the replay buffer class, as in SB3."""
    kwargs: dict[str, Any] = dict(
        learning_rate=config.learning_rate,
        buffer_size=config.buffer_size,
        learning_starts=config.learning_starts,
        batch_size=config.batch_size,
        tau=config.tau,
        gamma=config.gamma,
        train_freq=config.train_freq,
        gradient_steps=config.gradient_steps,
        ent_coef=config.ent_coef,
        policy_kwargs=dict(net_arch=list(config.net_arch)),
        seed=config.seed,
        device="cpu",
        verbose=0,
    )
    if config.her:
        from stable_baselines3 import HerReplayBuffer

        kwargs["replay_buffer_class"] = HerReplayBuffer
        kwargs["replay_buffer_kwargs"] = dict(
            n_sampled_goal=config.n_sampled_goal, goal_selection_strategy=config.goal_selection_strategy
        )
    policy = "MultiInputPolicy" if isinstance(env.observation_space, gym.spaces.Dict) else "MlpPolicy"
    model = algo_class(config.algo)(policy, env, **kwargs)
    model.set_logger(logger)
    return model


def build_env(config: TrainConfig):
    env = make_vec_env(config.env_id, config.n_envs, config.seed)
    if not config.normalize_obs:
        return env, None
    from stable_baselines3.common.vec_env import VecNormalize

    vecnormalize = VecNormalize(env, norm_obs=True, norm_reward=False, clip_obs=5.0, gamma=config.gamma)
    return vecnormalize, vecnormalize


def train(
    config: TrainConfig, experiment: str | None = None, progress_bar: bool = False, torch_threads: int = 0
) -> TrainResult:
    """Train one model as one MLflow run; see the module docstring for the stages.

    ``torch_threads`` > 0 caps torch's intra-op threads: processes training side by side must
    share the cores, or their OpenMP threads fight and each runs several times slower.
    """
    validate_env_id(config.env_id, her=config.her)
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
    seed_everything(config.seed)
    tags = {**run_tags(config), "harness.torch_threads": str(torch.get_num_threads())}
    with tracking.tracked_run(config.run_name, tags, experiment) as run:
        run_id = run.info.run_id
        tracking.log_params_once(run_id, config.to_dict())
        mlflow.log_dict(config.to_dict(), "config.json")

        env, vecnormalize = build_env(config)
        config.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        to_mlflow = tracking.MLflowOutputFormat(run_id)
        logger = Logger(
            folder=str(config.tensorboard_dir),
            output_formats=[TensorBoardOutputFormat(str(config.tensorboard_dir)), to_mlflow],
        )
        model = build_model(config, env, logger)
        evaluation = PeriodicEvaluation(config, vecnormalize)

        started = time.perf_counter()
        model.learn(total_timesteps=config.total_steps, callback=evaluation, progress_bar=progress_bar)
        wall_time = time.perf_counter() - started
        logger.close()
        env.close()

        paths = local_paths(config.run_name, CHECKPOINT_DIR)
        write_atomically(paths["model"], lambda tmp: model.save(tmp))
        if vecnormalize is not None:
            write_atomically(paths["vecnormalize"], lambda tmp: vecnormalize.save(str(tmp)))
        meta = training_meta(config, run_id, model, wall_time, to_mlflow.latest)
        write_json_atomically(paths["meta"], meta)

        mlflow.log_artifact(str(paths["model"]), ARTIFACT_DIR)
        if vecnormalize is not None:
            mlflow.log_artifact(str(paths["vecnormalize"]), ARTIFACT_DIR)
        mlflow.log_dict(meta, "meta.json")
        mlflow.log_metric("time/wall_time_s", wall_time, step=int(model.num_timesteps))
    return TrainResult(run_id=run_id, run_name=config.run_name, checkpoint=paths["model"], meta=meta)


def training_meta(config: TrainConfig, run_id: str, model, wall_time: float, final: dict[str, float]) -> dict[str, Any]:
    """What ``meta.json`` records next to the checkpoint: how it was made and how it ended."""
    commit, dirty = git_state()
    return {
        "run_id": run_id,
        "run_name": config.run_name,
        "tracking_uri": mlflow.get_tracking_uri(),
        "config": config.to_dict(),
        "num_timesteps": int(model.num_timesteps),
        "wall_time_s": round(wall_time, 2),
        "steps_per_second": round(model.num_timesteps / wall_time, 1) if wall_time > 0 else None,
        "final_metrics": dict(sorted(final.items())),
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": package_versions(),
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
