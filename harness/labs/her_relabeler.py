"""The HER relabeling lab: what Hindsight Experience Replay does to your data, in small functions.

This is for reading, not for training (training uses SB3's ``HerReplayBuffer``). It follows the
chapter's ``scripts/labs/her_relabeler.py``:

- ``Transition``: one step of an episode, with the goals HER works on;
- ``sample_goal_indices`` / ``sample_goals``: where substitute goals come from (``future``, ``final``,
  ``episode``), ``k`` per transition, from a seeded generator;
- ``relabel_transition``: swap the desired goal, recompute the reward; nothing else changes;
- ``process_episode_with_her``: the originals plus relabeled copies, as a HER buffer would hold them.

Conventions (the same as SB3's, so the lab and ``HerReplayBuffer`` can be compared):

- a transition's ``achieved_goal`` is the goal achieved *after* its action (SB3's
  ``next_observations["achieved_goal"]``); the reward compares it with the desired goal;
- ``future`` samples the achieved goal of a step ``j`` uniformly from ``t <= j <= T-1``: the current
  step is included, as SB3 does ("our implementation is inclusive"); ``final`` uses ``j = T-1``;
  ``episode`` any ``0 <= j <= T-1``.

Rewards always come from the env's own ``compute_reward`` (sparse Fetch: 0 within 5 cm, else -1).

Run it:  python -m harness.labs.her_relabeler --verify   (or --demo [--track]; or `harness lab`)
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from harness.run_schema import KIND_TAG

STRATEGIES = ("future", "final", "episode")
ComputeReward = Callable[[np.ndarray, np.ndarray, Any], Any]


# --8<-- [start:transition]
@dataclass(frozen=True)
class Transition:
    """One step: (s, a, r, s') plus the goal reached after the step and the goal that was asked for."""

    obs: np.ndarray
    action: np.ndarray
    reward: float
    next_obs: np.ndarray
    achieved_goal: np.ndarray  # where the achieved goal (gripper or object) ended up after this step
    desired_goal: np.ndarray  # what the episode asked for
    info: dict


# --8<-- [end:transition]


def collect_random_episode(env, seed: int) -> list[Transition]:
    """One episode with uniformly random actions, seeded (reset seed and action sampling)."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    episode, done = [], False
    while not done:
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, info = env.step(action)
        episode.append(
            Transition(
                obs=obs["observation"],
                action=action,
                reward=float(reward),
                next_obs=next_obs["observation"],
                achieved_goal=next_obs["achieved_goal"].copy(),
                desired_goal=obs["desired_goal"].copy(),
                info=dict(info),
            )
        )
        obs, done = next_obs, terminated or truncated
    return episode


# --8<-- [start:goal_sampling]
def sample_goal_indices(t: int, episode_length: int, k: int, strategy: str, rng: np.random.Generator) -> np.ndarray:
    """The time steps whose achieved goals replace the desired goal of transition ``t``."""
    if strategy == "future":  # a step at or after t: a goal this state demonstrably leads to
        return rng.integers(t, episode_length, size=k)
    if strategy == "final":  # where the episode ended
        return np.full(k, episode_length - 1)
    if strategy == "episode":  # anywhere in the episode, earlier steps included
        return rng.integers(0, episode_length, size=k)
    raise ValueError(f"unknown strategy '{strategy}'; accepted: {', '.join(STRATEGIES)}")


def sample_goals(episode: Sequence[Transition], t: int, k: int, strategy: str, rng: np.random.Generator) -> list[np.ndarray]:
    """``k`` substitute goals for transition ``t``: goals the agent actually achieved in this episode."""
    return [episode[j].achieved_goal for j in sample_goal_indices(t, len(episode), k, strategy, rng)]


# --8<-- [end:goal_sampling]


# --8<-- [start:relabel_transition]
def relabel_transition(transition: Transition, new_goal: np.ndarray, compute_reward_fn: ComputeReward) -> Transition:
    """Pretend ``new_goal`` was the goal all along: only the desired goal changes, the reward is recomputed."""
    reward = compute_reward_fn(transition.achieved_goal, new_goal, transition.info)
    return dataclasses.replace(transition, desired_goal=new_goal, reward=float(reward))


# --8<-- [end:relabel_transition]


# --8<-- [start:her_buffer_insert]
def process_episode_with_her(
    episode: Sequence[Transition],
    k: int = 4,
    her_ratio: float = 0.8,
    strategy: str = "future",
    compute_reward_fn: ComputeReward | None = None,
    rng: np.random.Generator | None = None,
) -> list[Transition]:
    """What a HER buffer stores for one episode: every original transition, and for each of them
    ``k`` sampled goals, each kept as a relabeled copy with probability ``her_ratio``."""
    if compute_reward_fn is None:
        raise ValueError("compute_reward_fn is required: pass the env's compute_reward")
    rng = rng or np.random.default_rng(0)
    stored = []
    for t, transition in enumerate(episode):
        stored.append(transition)
        for goal in sample_goals(episode, t, k, strategy, rng):
            if rng.random() < her_ratio:
                stored.append(relabel_transition(transition, goal, compute_reward_fn))
    return stored


# --8<-- [end:her_buffer_insert]


def success_share(transitions: Sequence[Transition]) -> float:
    """Share of transitions with reward 0 (success under Fetch's sparse reward)."""
    return float(np.mean([t.reward == 0.0 for t in transitions])) if transitions else 0.0


def compute_reward_of(env) -> ComputeReward:
    """The env's own reward function (Gymnasium-Robotics ``compute_reward``)."""
    return env.unwrapped.compute_reward


def random_episodes(env_id: str, n_episodes: int, seed: int = 0) -> tuple[list[list[Transition]], ComputeReward]:
    from harness.envs import make_env

    env = make_env(env_id)
    episodes = [collect_random_episode(env, seed + i) for i in range(n_episodes)]
    return episodes, compute_reward_of(env)


def her_success_share(episodes, compute_reward_fn, *, k=4, her_ratio=0.8, strategy="future", seed=0) -> float:
    rng = np.random.default_rng(seed)
    stored = [t for ep in episodes for t in process_episode_with_her(ep, k, her_ratio, strategy, compute_reward_fn, rng)]
    return success_share(stored)


def exact_future_success_probability(episodes, compute_reward_fn) -> float:
    """P(a relabeled ``future`` sample is a success), enumerated exactly over all (t, j >= t)."""
    per_transition = []
    for episode in episodes:
        goals = np.array([t.achieved_goal for t in episode])
        for t, transition in enumerate(episode):
            future = goals[t:]
            rewards = compute_reward_fn(np.repeat(transition.achieved_goal[None], len(future), 0), future, None)
            per_transition.append(float(np.mean(np.asarray(rewards) == 0.0)))
    return float(np.mean(per_transition))


def sb3_relabeled_success_share(episodes, env_id: str, k: int, batch_size: int, seed: int = 0) -> tuple[float, int]:
    """Store the same episodes in SB3's HerReplayBuffer (future, n_sampled_goal=k), sample a batch and
    return the success share among its relabeled rows (SB3 puts them last) and their number."""
    import torch
    from stable_baselines3 import HerReplayBuffer
    from stable_baselines3.common.env_util import make_vec_env

    from harness.envs import make_env

    vec_env = make_vec_env(lambda: make_env(env_id), n_envs=1)
    n_steps = sum(len(ep) for ep in episodes)
    buffer = HerReplayBuffer(
        n_steps,
        vec_env.observation_space,
        vec_env.action_space,
        env=vec_env,
        n_sampled_goal=k,
        goal_selection_strategy="future",
        device="cpu",
    )
    for episode in episodes:
        for i, tr in enumerate(episode):
            last = i == len(episode) - 1
            prev_goal = episode[i - 1].achieved_goal if i else tr.achieved_goal  # only next_obs goals are sampled
            obs = {"observation": tr.obs[None], "achieved_goal": prev_goal[None], "desired_goal": tr.desired_goal[None]}
            next_obs = {
                "observation": tr.next_obs[None],
                "achieved_goal": tr.achieved_goal[None],
                "desired_goal": tr.desired_goal[None],
            }
            info = {**tr.info, "TimeLimit.truncated": last}
            buffer.add(obs, next_obs, tr.action[None], np.array([tr.reward]), np.array([last]), [info])
    np.random.seed(seed)  # SB3 samples with numpy's global generator
    torch.manual_seed(seed)
    samples = buffer.sample(batch_size)
    n_virtual = int(buffer.her_ratio * batch_size)
    relabeled = samples.rewards.numpy().ravel()[batch_size - n_virtual :]
    vec_env.close()
    return float(np.mean(relabeled == 0.0)), n_virtual


# ---------------------------------------------------------------- --verify


def verify(env_id: str = "FetchReach-v4", n_episodes: int = 50, seed: int = 0, out=sys.stdout) -> bool:
    """The chapter's sanity checks, each printed PASS/FAIL with what was measured."""
    results = []

    def check(name: str, ok: bool, detail: str) -> None:
        results.append(ok)
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", file=out)

    episodes, compute_reward = random_episodes(env_id, n_episodes, seed)
    rng = np.random.default_rng(seed)
    T = len(episodes[0])
    for strategy, allowed in (
        ("future", lambda t, j: t <= j <= T - 1),
        ("final", lambda t, j: j == T - 1),
        ("episode", lambda t, j: 0 <= j <= T - 1),
    ):
        counts_ok, range_ok = True, True
        for k in (1, 4, 8):
            for t in range(T):
                idx = sample_goal_indices(t, T, k, strategy, rng)
                counts_ok &= len(idx) == k
                range_ok &= all(allowed(t, int(j)) for j in idx)
        check(
            f"goal sampling '{strategy}'",
            counts_ok and range_ok,
            f"k goals per transition (k=1,4,8) over {T} steps, all from allowed steps"
            + {"future": " (t <= j <= T-1)", "final": " (j = T-1)", "episode": " (0 <= j <= T-1)"}[strategy],
        )

    own = [relabel_transition(tr, tr.achieved_goal, compute_reward) for ep in episodes for tr in ep]
    check("relabel with own achieved goal", all(t.reward == 0.0 for t in own), f"reward 0 for all {len(own)} transitions")

    original = episodes[0][10]
    moved = relabel_transition(original, original.desired_goal + 1.0, compute_reward)
    unchanged = all(
        np.array_equal(getattr(original, f), getattr(moved, f)) for f in ("obs", "action", "next_obs", "achieved_goal")
    )
    check(
        "relabel changes only the desired goal",
        unchanged and moved.reward == -1.0,
        "obs, action, next_obs, achieved_goal unchanged; a goal 1 m away gives reward -1",
    )

    before = success_share([t for ep in episodes for t in ep])
    after = her_success_share(episodes, compute_reward, k=4, her_ratio=0.8, strategy="future", seed=seed)
    check(
        "HER raises the success share",
        after > before + 0.05 and after > 3 * before,
        f"{100 * before:.1f}% of real transitions succeed, {100 * after:.1f}% after HER "
        f"(future, k=4, her_ratio=0.8) on {n_episodes} random-action {env_id} episodes",
    )
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed", file=out)
    return all(results)


# ---------------------------------------------------------------- --demo


def demo_tables(env_ids=("FetchReach-v4", "FetchPush-v4"), n_episodes: int = 50, seed: int = 0) -> dict[str, dict]:
    """Success share of the stored transitions by strategy, by k and by her_ratio (others at defaults)."""
    tables = {}
    for env_id in env_ids:
        episodes, compute_reward = random_episodes(env_id, n_episodes, seed)
        share = functools.partial(her_success_share, episodes, compute_reward, seed=seed)
        tables[env_id] = {
            "real transitions (no relabeling)": success_share([t for ep in episodes for t in ep]),
            "strategy (k=4, her_ratio=0.8)": {s: share(strategy=s) for s in STRATEGIES},
            "k (future, her_ratio=0.8)": {str(k): share(k=k) for k in (1, 4, 8, 16)},
            "her_ratio (future, k=4)": {str(r): share(her_ratio=r) for r in (0.0, 0.5, 0.8, 1.0)},
        }
    return tables


def format_tables(tables: dict[str, dict], n_episodes: int) -> str:
    lines = []
    for env_id, table in tables.items():
        lines.append(f"## {env_id}: success share of stored transitions ({n_episodes} random-action episodes)")
        lines.append(f"real transitions only: {100 * table['real transitions (no relabeling)']:.1f}%")
        for title, row in table.items():
            if isinstance(row, dict):
                lines.append("")
                lines.append(f"| {title} | success share |")
                lines.append("|---|---|")
                lines.extend(f"| {key} | {100 * value:.1f}% |" for key, value in row.items())
        lines.append("")
    lines.append(
        "Reading the tables: relabeled goals come from where the achieved goal went. On Reach that is the\n"
        "gripper, which random actions move around, so only goals from nearby steps count as successes\n"
        "(future > episode > final). On Push the achieved goal is the object, which random actions rarely\n"
        "touch: nearly every relabeled goal is where the object already lies, a 'success' that says nothing\n"
        "about pushing. HER amplifies competence; it does not create it."
    )
    return "\n".join(lines)


def demo(n_episodes: int = 50, seed: int = 0, track: bool = False, out=sys.stdout) -> dict[str, dict]:
    tables = demo_tables(n_episodes=n_episodes, seed=seed)
    text = format_tables(tables, n_episodes)
    print(text, file=out)
    if track:
        import mlflow

        from harness import tracking

        with tracking.tracked_run("her_lab_demo", {KIND_TAG: "lab"}) as run:
            mlflow.log_params({"n_episodes": n_episodes, "seed": seed})
            mlflow.log_text(text, "her_lab_tables.md")
            mlflow.log_dict(tables, "her_lab_tables.json")
            metrics = {}
            for env_id, table in tables.items():
                for title, row in table.items():
                    if isinstance(row, dict):
                        axis = title.split(" ")[0]
                        metrics.update({f"{env_id}/{axis}_{key}": value for key, value in row.items()})
            tracking.log_metrics_at(run.info.run_id, metrics, 0)
            print(f"logged to MLflow run {run.info.run_id}", file=out)
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.labs.her_relabeler --verify | --demo [--track]``, as the chapter runs its lab
    script; standalone (argparse), so the lab needs nothing from the harness's CLI (``harness lab`` is that)."""
    import argparse

    from harness.errors import HarnessError

    def count(minimum: int):
        def parse(text: str) -> int:
            if not text.isdigit() or int(text) < minimum:
                raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
            return int(text)

        return parse

    parser = argparse.ArgumentParser(
        prog="python -m harness.labs.her_relabeler",
        description="HER relabeling lab: goal sampling and relabeling on random-action Fetch episodes.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--verify", action="store_true", help="run the sanity checks; exit 1 on any FAIL")
    mode.add_argument("--demo", action="store_true", help="tables of success share by strategy, k and her_ratio")
    parser.add_argument("--track", action="store_true", help="with --demo: log the tables to MLflow as a run")
    parser.add_argument("--episodes", type=count(1), default=50, help="random-action episodes per env (default 50)")
    parser.add_argument("--seed", type=count(0), default=0, help="seed (default 0)")
    args = parser.parse_args(argv)
    if args.track and not args.demo:
        parser.error("--track goes with --demo")
    try:
        if args.verify:
            return 0 if verify(n_episodes=args.episodes, seed=args.seed) else 1
        demo(n_episodes=args.episodes, seed=args.seed, track=args.track)
    except HarnessError as exc:
        print(f"her_relabeler: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
