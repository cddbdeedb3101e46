"""Stage 4 of a run: score a policy with deterministic episodes.

The same episode runner serves the periodic evaluation during training (``eval/*`` learning
curves) and ``harness eval`` on a finished checkpoint. Episode ``i`` always starts from
``env.reset(seed=EVAL_RESET_SEED + i)``, so every model is scored on the same goals.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Callable

import numpy as np

from harness.run_schema import (
    ENV_TAG,
    EVALUATED_TAG,
    EVAL_EPISODES_TAG,
    EVAL_RESET_SEED_TAG,
    KIND_TAG,
    PARENT_RUN_ID_TAG,
    RUN_NAME_TAG,
    RunIdentity,
    SOURCE_RUN_ID_TAG,
)

if TYPE_CHECKING:
    from harness.accounts import AcceptedAccounts


EVAL_RESET_SEED = 10_000
RESULTS_DIR = Path("results")
# Evaluations during training log the env steps and minutes at which success first reached these.
SUCCESS_THRESHOLDS = (0.5, 0.9)


def threshold_metrics(threshold: float) -> tuple[str, str]:
    """The metric names for the first time success reached ``threshold``: ``eval/steps_to_90``, ``eval/minutes_to_90``."""
    percent = round(100 * threshold)
    return f"eval/steps_to_{percent}", f"eval/minutes_to_{percent}"


@dataclass
class EpisodeResults:
    """Per-episode outcomes of a deterministic evaluation."""

    successes: np.ndarray
    returns: np.ndarray
    final_distances: np.ndarray

    def summary(self) -> dict[str, float]:
        """The eval metrics (means and standard deviations over episodes)."""
        return {
            "success_rate": float(self.successes.mean()),
            "success_rate_std": float(self.successes.std()),
            "mean_return": float(self.returns.mean()),
            "mean_return_std": float(self.returns.std()),
            "final_distance": float(self.final_distances.mean()),
            "final_distance_std": float(self.final_distances.std()),
            "n_episodes": float(len(self.successes)),
        }


def run_episodes(
    policy: Callable[[Any], np.ndarray],
    env_id: str,
    n_episodes: int,
    reset_seed: int = EVAL_RESET_SEED,
    frames: list[list[np.ndarray]] | None = None,
) -> EpisodeResults:
    """Roll out ``policy(obs) -> action`` for ``n_episodes`` full episodes; with ``frames`` given,
    also render every step of each episode into it (one list of RGB frames per episode)."""
    from harness.envs import goal_distance, make_env

    env = make_env(env_id, render=frames is not None)
    successes, returns, distances = [], [], []
    try:
        for episode in range(n_episodes):
            obs, _ = env.reset(seed=reset_seed + episode)
            if frames is not None:
                frames.append([env.render()])
            total, done, info = 0.0, False, {}
            while not done:
                obs, reward, terminated, truncated, info = env.step(policy(obs))
                total += float(reward)
                done = terminated or truncated
                if frames is not None:
                    frames[-1].append(env.render())
            successes.append(float(info.get("is_success", 0.0)))
            returns.append(total)
            distances.append(goal_distance(obs))
    finally:
        env.close()
    return EpisodeResults(np.array(successes), np.array(returns), np.array(distances))


def deterministic_policy(model, normalize=None) -> Callable[[Any], np.ndarray]:
    """``obs -> action`` with the model's deterministic action, normalizing obs when trained so."""

    def act(obs):
        action, _ = model.predict(normalize(obs) if normalize else obs, deterministic=True)
        return action

    return act


def results_path(run_name: str) -> Path:
    """The chapter's eval file name, ``ch04_<run name, lower case>_eval.json``, e.g.
    ``results/ch04_sac_her_fetchpush-v4_seed0_eval.json``. Anything but letters, digits, '.', '_'
    and '-' in the name becomes '_': a name from a file (a meta.json) never leads outside results/."""
    return RESULTS_DIR / f"ch04_{re.sub(r'[^a-z0-9._-]', '_', run_name.lower())}_eval.json"


def write_videos(frames: list[list[np.ndarray]], stem: str, fps: int = 25) -> list[Path]:
    """One MP4 per episode under ``results/videos/`` (Fetch steps last 0.04 s: 25 fps is real time)."""
    import imageio.v2 as imageio

    out_dir = RESULTS_DIR / "videos"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for episode, episode_frames in enumerate(frames):
        path = out_dir / f"{stem}_ep{episode}.mp4"
        imageio.mimsave(path, episode_frames, fps=fps, macro_block_size=1)
        paths.append(path)
    return paths


def evaluate_checkpoint(
    ckpt: str,
    n_episodes: int = 100,
    env_id: str | None = None,
    parent_run_id: str | None = None,
    video: int = 0,
    accepted: AcceptedAccounts | None = None,
) -> dict[str, Any]:
    """``harness eval``: score a checkpoint, write its results JSON and log it to MLflow.

    The ``eval/*`` metrics and the JSON go to the training run the checkpoint came from (if it
    is in this tracking store), tagged ``harness.evaluated=true`` so ``compare`` finds it.
    An eval run of its own (``harness.kind=eval``) gets them too under ``mlflow run -e eval``
    (the run ``mlflow run`` created) and in a pipeline (a child of ``parent_run_id``).
    On a server with accounts, a run's checkpoint made by another account only if ``accepted``.
    """
    from harness.models import load_checkpoint
    from harness.atomic_files import check_writable, write_json_atomically
    from harness.errors import HarnessError

    if n_episodes <= 0:
        raise HarnessError(f"--n-episodes must be > 0, got {n_episodes}")
    if not 0 <= video <= n_episodes:
        raise HarnessError(f"--video must be between 0 and --n-episodes ({n_episodes}), got {video}")
    check_source_account(ckpt, accepted)
    loaded = load_checkpoint(ckpt, env_id=env_id)
    config = loaded.config
    trained_on = loaded.meta.get("trained_env_id")
    identity = RunIdentity.of({**config, "env_id": trained_on or config["env_id"]}, loaded.meta.get("variant", ""))
    run_name = loaded.meta.get("run_name") or identity.name  # a checkpoint's meta names it
    # Scored on another env (--env FetchReachDense-v4 for a FetchReach-v4 policy): a result of its
    # own, never the training run's evaluation, which compare and register would then report.
    elsewhere = trained_on is not None and trained_on != config["env_id"]
    if elsewhere:
        run_name = f"{run_name}_on_{config['env_id']}"
    # A checkpoint of a periodic evaluation (a logged model) is not the run's final model: its score is a
    # result of its own, never the training run's evaluation that compare and register read.
    of_a_step = loaded.meta.get("logged_model_id") is not None
    if of_a_step:
        run_name = f"{run_name}_step{int(loaded.model.num_timesteps)}"
    # Found before the episodes run: a deleted run or an unwritable results/ fails at once, not after.
    training_run = None if elsewhere or of_a_step else _training_run_in_store(loaded)
    out = results_path(run_name)
    check_writable(out.parent)
    if training_run is not None or parent_run_id or os.environ.get("MLFLOW_RUN_ID"):
        from harness.stores import check_store_writable, prepare_store

        prepare_store()  # a leftover MLFLOW_RUN_ID is refused here, before the episodes and the file
        check_store_writable()
    policy = deterministic_policy(loaded.model, loaded.normalize)
    episodes = run_episodes(policy, config["env_id"], n_episodes)
    videos = []
    if video:
        # The first episodes again, rendered: the same reset seeds and a deterministic policy
        # replay them exactly, and the scored run above stays free of rendering cost.
        frames: list[list[np.ndarray]] = []
        run_episodes(policy, config["env_id"], video, frames=frames)
        videos = write_videos(frames, out.stem.removesuffix("_eval"))
    summary = episodes.summary()
    step = int(loaded.model.num_timesteps)
    report = {
        "checkpoint": ckpt,
        "run_id": loaded.run_id,
        "env_id": config["env_id"],
        "trained_on": trained_on,
        "algo": config["algo"],
        "her": bool(config.get("her")),
        "seed": config.get("seed"),
        "n_sampled_goal": config.get("n_sampled_goal"),
        "num_timesteps": step,
        "logged_model_id": loaded.meta.get("logged_model_id"),
        "deterministic": True,
        "reset_seeds": [EVAL_RESET_SEED, EVAL_RESET_SEED + n_episodes - 1],
        **summary,
        "episodes": {
            "success": episodes.successes.tolist(),
            "return": episodes.returns.tolist(),
            "final_distance": episodes.final_distances.tolist(),
        },
    }
    write_json_atomically(out, report)
    report["results_file"] = str(out)
    report["videos"] = [str(p) for p in videos]

    import mlflow

    from harness import tracking

    client = mlflow.MlflowClient()
    metrics = {f"eval/{key}": value for key, value in summary.items()}
    if training_run is not None:
        tracking.log_metrics_at(training_run, metrics, step)
        client.log_artifact(training_run, str(out), artifact_path="eval")
        for path in videos:
            client.log_artifact(training_run, str(path), artifact_path="videos")
        client.set_tag(training_run, EVAL_EPISODES_TAG, str(n_episodes))
        client.set_tag(training_run, EVALUATED_TAG, "true")
    report["logged_to_run"] = training_run

    attached = os.environ.get("MLFLOW_RUN_ID")
    if parent_run_id or (attached and attached != training_run):
        tags = RunIdentity.of(config, identity.variant).tags("eval")
        if loaded.run_id:
            tags[SOURCE_RUN_ID_TAG] = loaded.run_id
        if parent_run_id:
            tags[PARENT_RUN_ID_TAG] = parent_run_id
        with tracking.tracked_run(f"eval_{Path(out).stem}", tags) as run:
            tracking.log_metrics_at(run.info.run_id, metrics, step)
            mlflow.log_artifact(str(out), artifact_path="eval")
            for path in videos:
                mlflow.log_artifact(str(path), artifact_path="videos")
            report["eval_run_id"] = run.info.run_id
    return report


def check_source_account(ckpt: str, accepted: AcceptedAccounts | None) -> None:
    """A checkpoint named by its run (a run id, ``runs:/``) or by a logged model (``models:/m-<id>``) that
    another account made is refused in one line unless ``accepted`` (harness.accounts); an unknown run or
    model is left to the loader, which says so."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness import accounts
    from harness.checkpoints import looks_like_run_id
    from harness.models import LOGGED_MODEL_ID

    if accounts.current_account() is None:
        return
    client = MlflowClient()
    try:
        if ckpt.startswith("runs:/") or looks_like_run_id(ckpt):
            run_id = ckpt.removeprefix("runs:/").split("/")[0]
        elif logged_model := LOGGED_MODEL_ID.match(ckpt):
            run_id = client.get_logged_model(logged_model.group(2)).source_run_id
        else:
            return
        run = client.get_run(run_id) if run_id else None
    except MlflowException:
        return
    if run is not None:
        accounts.check_usable(run, accepted or accounts.OWN_RUNS_ONLY)


def _training_run_in_store(loaded) -> str | None:
    """The id of the training run the checkpoint came from if that run is in the current tracking store
    (a copied checkpoint may not be), and the checkpoint is the file that run recorded (a meta.json
    that names another run would send this evaluation's numbers there); a HarnessError if it is there
    but deleted, since its evaluation could not be logged."""
    from harness.errors import warn
    from harness.run_schema import CHECKPOINT_SHA256_TAG
    from harness.tracking import find_run

    run = find_run(loaded.run_id) if loaded.run_id else None
    if run is None:
        return None
    recorded = run.data.tags.get(CHECKPOINT_SHA256_TAG)
    if loaded.sha256 is not None and recorded is not None and recorded != loaded.sha256:
        warn(
            f"checkpoint {loaded.source} names run {loaded.run_id}, whose recorded checkpoint is another file "
            "(its sha256 differs); this evaluation is not logged to that run"
        )
        return None
    return loaded.run_id


def floor_run(env_id: str, n_episodes: int, experiment_id: str) -> dict[str, Any]:
    """The env's do-nothing floor: success of zero actions on the evaluation episodes
    (``reset(seed=EVAL_RESET_SEED + i)``, i < ``n_episodes``), which every policy is scored on.

    Measured once per (env, episodes) and kept in the store as its own FINISHED run
    (``harness.kind=floor``, in ``experiment_id``); later calls read that run back. The run is
    logged only once the episodes are done, so an interrupted measurement leaves nothing behind.
    """
    from mlflow.tracking import MlflowClient

    from harness import tracking

    tags = {KIND_TAG: "floor", ENV_TAG: env_id, EVAL_EPISODES_TAG: str(n_episodes), EVAL_RESET_SEED_TAG: str(EVAL_RESET_SEED)}
    from harness import accounts

    client = MlflowClient()
    # Another account's floor run could carry any number: on a server with accounts, only one's own is read.
    found = accounts.usable_runs(
        tracking.search_runs(tags, tracking.all_experiment_ids(), status="FINISHED", max_results=tracking.SEARCH_PAGE),
        accounts.OWN_RUNS_ONLY,
    )[0]
    if found:
        run = found[0]
        return {
            **{key.removeprefix("eval/"): value for key, value in run.data.metrics.items()},
            "run_id": run.info.run_id,
            "n_episodes": n_episodes,
            "measured": False,
        }
    from harness.envs import make_env

    env = make_env(env_id)
    zero = np.zeros(env.action_space.shape, dtype=env.action_space.dtype)
    env.close()
    summary = run_episodes(lambda obs: zero, env_id, n_episodes).summary()
    run = client.create_run(
        experiment_id, run_name=f"floor_{env_id}", tags={RUN_NAME_TAG: f"floor_{env_id}", **tracking.provenance_tags(), **tags}
    )
    try:
        tracking.log_metrics_at(run.info.run_id, {f"eval/{key}": value for key, value in summary.items()}, 0)
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return {**summary, "run_id": run.info.run_id, "n_episodes": n_episodes, "measured": True}
