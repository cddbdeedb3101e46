"""The HER replay buffer a config asks for: SB3's ``HerReplayBuffer``, optionally with real goals mixed in.

``desired_goal_share`` > 0 gives :class:`MixedGoalHerReplayBuffer`: of the relabeled (virtual)
transitions, that share get the *desired* goal of a random stored transition, usually from
another episode, instead of a goal from the selection strategy. This is the "futureactual" mix of
spitis/mrl (``futureactual_2_2``: 1/5 real, 2/5 future, 2/5 other episodes' desired goals, i.e.
n_sampled_goal 4 and a share of 0.5). Future goals are mostly reached, so they teach what success
looks like; desired goals of other episodes are mostly not, and they are drawn from the goal
distribution the policy is evaluated on. mrl reports FetchPush at 90% success in ~0.26M env steps
with the mix against ~0.40M with ``future`` alone.

``n_step`` > 1 makes every sampled transition an n-step one under its (relabeled) goal: the rewards of
the next n steps of the same episode, each recomputed for that goal, discounted and summed, and the
observation n steps on (fewer where the episode ends first) with ``discounts`` = gamma^m for the m
steps taken. A sparse reward then reaches the critic's target n steps sooner; the price is the bias of
uncorrected n-step returns off-policy (the actions between were the behaviour policy's), which is why
the multi-step HER papers keep n small (2-3).

``energy_clip`` > 0 samples episodes by their *trajectory energy* (Zhao & Tresp, "Energy-Based Hindsight
Experience Prioritization", CoRL 2018) instead of uniformly. An episode's energy is what its achieved goal
(on the Fetch tasks the object's position; the gripper's on Reach) gained: at each step, g times the height
gained since the episode's start plus half the squared velocity (unit mass), and the step's increase of that
sum clipped to [0, energy_clip]; the episode's energy is the sum over its steps. Episodes are ranked by energy
among those stored (equal energies share a rank; the lowest is 1) and an episode is drawn with probability
proportional to its rank, then one of its transitions uniformly. So an episode in which the object was lifted
or moved fast is replayed up to twice as often as the average one, and one in which it never moved about never
(rank 1 among many). The paper's reason: on manipulation tasks the rare episodes where the object moved are
the ones that teach, and uniform replay spends most updates on episodes where nothing happened. Relabeling
(future goals, the desired-goal mix, n-step returns) is then applied to the drawn transitions as usual.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples


GRAVITY = 9.81  # m/s^2: the potential energy of a unit mass lifted by h is GRAVITY * h


def trajectory_energy(positions: np.ndarray, dt: float, clip: float) -> float:
    """The energy an episode's achieved goal gained (module docstring): ``positions`` are its T+1 positions
    (x, y, z first), ``dt`` the seconds between two of them."""
    height = positions[1:, 2] - positions[0, 2]
    velocity = np.diff(positions[:, :3], axis=0) / dt
    energy = GRAVITY * height + 0.5 * np.sum(velocity**2, axis=1)
    gains = np.diff(energy, prepend=0.0)  # the first step's gain is all its energy (at rest at height 0 before)
    return float(np.sum(np.clip(gains, 0.0, clip)))


def dense_rank(values: np.ndarray) -> np.ndarray:
    """1 for the smallest value, equal values sharing a rank, no gaps."""
    return np.unique(values, return_inverse=True)[1].reshape(-1) + 1


class MixedGoalHerReplayBuffer(HerReplayBuffer):
    """SB3's HerReplayBuffer with a share of the relabeled goals taken from other transitions' desired goals,
    optionally n-step returns and optionally episodes drawn by trajectory energy (module docstring)."""

    def __init__(
        self,
        *args,
        desired_goal_share: float = 0.0,
        n_step: int = 1,
        gamma: float = 0.99,
        energy_clip: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.desired_goal_share = desired_goal_share
        self.n_step = n_step
        self.gamma = gamma
        self.energy_clip = energy_clip
        # each stored transition's episode energy (derived from the positions: recomputed, not saved)
        self.episode_energy = np.zeros(self.ep_length.shape, dtype=np.float64) if energy_clip > 0 else None
        self._draw_table: tuple[np.ndarray, np.ndarray] | None = None  # (episodes' first rows and envs, cumulative weights)
        self._dt = float(self.env.get_attr("dt", indices=[0])[0]) if energy_clip > 0 else 0.0

    def __setstate__(self, state: dict) -> None:
        # a buffer pickled by an older harness (a legacy resumable checkpoint) has no energy sampling
        super().__setstate__({"energy_clip": 0.0, "episode_energy": None, "_draw_table": None, "_dt": 0.0, **state})

    def add(self, *args, **kwargs) -> None:
        super().add(*args, **kwargs)
        self._draw_table = None  # an episode ended or an old one was overwritten: the draw changes

    def _compute_episode_length(self, env_idx: int) -> None:
        start = self._current_ep_start[env_idx]
        super()._compute_episode_length(env_idx)
        if self.episode_energy is not None:
            self._store_energy(start, env_idx)

    def _store_energy(self, start: int, env_idx: int) -> None:
        length = self.ep_length[start, env_idx]
        indices = (start + np.arange(length)) % self.buffer_size
        positions = np.concatenate(
            [
                self.observations["achieved_goal"][indices, env_idx],
                self.next_observations["achieved_goal"][indices[-1:], env_idx],
            ]
        )
        self.episode_energy[indices, env_idx] = trajectory_energy(positions, self._dt, self.energy_clip)

    def _finished_episodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Each stored finished episode once: the row and env of its first transition."""
        return np.nonzero((self.ep_length > 0) & (self.ep_start == np.arange(self.buffer_size)[:, None]))

    def recompute_energies(self) -> None:
        """Every stored episode's energy again, from its positions (after the buffer is restored from a checkpoint)."""
        if self.episode_energy is None:
            return
        for row, env_idx in zip(*self._finished_episodes(), strict=True):
            self._store_energy(int(row), int(env_idx))
        self._draw_table = None

    def _draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Transitions of finished episodes, as SB3 samples them: an episode in proportion to its length (every
        transition equally likely) or to its energy rank, then one of its transitions uniformly."""
        if self._draw_table is None:
            rows, envs = self._finished_episodes()
            if len(rows) == 0:
                raise RuntimeError("Unable to sample before the end of the first episode")
            if self.episode_energy is None:
                weights = self.ep_length[rows, envs].astype(np.float64)
            else:
                weights = dense_rank(self.episode_energy[rows, envs]).astype(np.float64)
            self._draw_table = (np.stack([rows, envs]), np.cumsum(weights))
        episodes, cumulative = self._draw_table
        picks = np.searchsorted(cumulative, np.random.uniform(0.0, cumulative[-1], size=batch_size), side="right")
        starts, envs = episodes[:, np.minimum(picks, episodes.shape[1] - 1)]
        offsets = (np.random.uniform(size=batch_size) * self.ep_length[starts, envs]).astype(np.int64)
        return (starts + offsets) % self.buffer_size, envs

    def sample(self, batch_size: int, env=None) -> DictReplayBufferSamples:  # type: ignore[override]
        if self.n_step == 1 and self.episode_energy is None:
            return super().sample(batch_size, env)
        batch_indices, env_indices = self._draw(batch_size)
        goals = self.observations["desired_goal"][batch_indices, env_indices].copy()
        relabeled = int(self.her_ratio * batch_size)  # the first ones, as SB3 splits them
        goals[:relabeled] = self._sample_goals(batch_indices[:relabeled], env_indices[:relabeled])
        return self.n_step_samples(batch_indices, env_indices, goals, env)

    def n_step_samples(self, batch_indices: np.ndarray, env_indices: np.ndarray, goals: np.ndarray, env=None):
        """The n-step transitions starting at the given ones, all under ``goals``."""
        position = (batch_indices - self.ep_start[batch_indices, env_indices]) % self.buffer_size
        steps_left = self.ep_length[batch_indices, env_indices] - position  # >= 1, this transition included
        returns = np.zeros(len(batch_indices), dtype=np.float32)
        discounts = np.ones(len(batch_indices), dtype=np.float32)
        last = batch_indices.copy()
        going = np.ones(len(batch_indices), dtype=bool)  # not yet past the episode's end or a termination
        terminated = np.zeros(len(batch_indices), dtype=np.float32)
        infos = [{} for _ in range(len(batch_indices))]
        for offset in range(self.n_step):
            going &= offset < steps_left
            index = (batch_indices + offset) % self.buffer_size
            rewards = self.env.env_method(
                "compute_reward", self.next_observations["achieved_goal"][index, env_indices], goals, infos, indices=[0]
            )[0].astype(np.float32)
            returns += np.where(going, discounts * rewards, 0.0).astype(np.float32)
            discounts = np.where(going, discounts * self.gamma, discounts).astype(np.float32)
            last = np.where(going, index, last)
            ended = self.dones[index, env_indices] * (1 - self.timeouts[index, env_indices])
            terminated = np.where(going, ended, terminated).astype(np.float32)
            going &= ended == 0
        observations = {key: obs[batch_indices, env_indices] for key, obs in self.observations.items()}
        next_observations = {key: obs[last, env_indices] for key, obs in self.next_observations.items()}
        observations["desired_goal"] = next_observations["desired_goal"] = goals
        observations = self._normalize_obs(observations, env)
        next_observations = self._normalize_obs(next_observations, env)
        return DictReplayBufferSamples(
            observations={key: self.to_torch(obs) for key, obs in observations.items()},
            actions=self.to_torch(self.actions[batch_indices, env_indices]),
            next_observations={key: self.to_torch(obs) for key, obs in next_observations.items()},
            dones=self.to_torch(terminated).reshape(-1, 1),
            rewards=self.to_torch(returns).reshape(-1, 1),
            discounts=self.to_torch(discounts).reshape(-1, 1),
        )

    def _sample_goals(self, batch_indices: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        goals = super()._sample_goals(batch_indices, env_indices)  # fancy indexing: a copy, ours to change
        replace = np.random.uniform(size=len(goals)) < self.desired_goal_share
        if replace.any():
            # any stored transition of a finished episode, as SB3 samples the batch itself
            donors = np.random.choice(np.flatnonzero(self.ep_length > 0), size=int(replace.sum()), replace=True)
            donor_batch, donor_env = np.unravel_index(donors, self.ep_length.shape)
            goals[replace] = self.observations["desired_goal"][donor_batch, donor_env]
        return goals


def her_buffer(
    n_sampled_goal: int,
    goal_selection_strategy: str,
    desired_goal_share: float,
    n_step: int = 1,
    gamma: float = 0.99,
    energy_clip: float = 0.0,
) -> dict[str, Any]:
    """``replay_buffer_class`` and ``replay_buffer_kwargs`` for an SB3 model: SB3's own class unless the mix,
    n-step returns or energy-based episode sampling are asked for."""
    kwargs: dict[str, Any] = dict(n_sampled_goal=n_sampled_goal, goal_selection_strategy=goal_selection_strategy)
    if desired_goal_share > 0 or n_step > 1 or energy_clip > 0:
        return dict(
            replay_buffer_class=MixedGoalHerReplayBuffer,
            replay_buffer_kwargs={
                **kwargs,
                "desired_goal_share": desired_goal_share,
                "n_step": n_step,
                "gamma": gamma,
                "energy_clip": energy_clip,
            },
        )
    return dict(replay_buffer_class=HerReplayBuffer, replay_buffer_kwargs=kwargs)
