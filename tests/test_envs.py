"""Every Fetch v4 env builds and steps: guards the mujoco pin (gymnasium-robotics 1.4.2 breaks on mujoco >= 3.12)."""

import numpy as np
import pytest

from harness.envs import (
    FETCH_ENV_IDS,
    HeldObjectStart,
    goal_distance,
    is_goal_conditioned,
    make_env,
    make_vec_env,
    validate_env_id,
)
from harness.errors import HarnessError


@pytest.mark.parametrize("env_id", FETCH_ENV_IDS)
def test_every_fetch_env_builds_resets_and_steps(env_id):
    env = make_env(env_id)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"observation", "achieved_goal", "desired_goal"}
    for _ in range(5):
        obs, reward, _terminated, _truncated, info = env.step(env.action_space.sample())
    assert "is_success" in info
    sparse = "Dense" not in env_id
    if sparse:
        assert reward in (0.0, -1.0)
    else:
        assert reward == pytest.approx(-goal_distance(obs), abs=1e-6)
    env.close()


def test_fetch_list_matches_the_registry():
    assert len(FETCH_ENV_IDS) == 8
    for env_id in FETCH_ENV_IDS:
        validate_env_id(env_id, her=True)
        assert is_goal_conditioned(env_id)


def test_unknown_env_lists_the_fetch_tasks():
    with pytest.raises(
        HarnessError, match=r"unknown env 'FetchPush-v9'; the Fetch tasks are: FetchReach-v4, FetchReachDense-v4"
    ):
        validate_env_id("FetchPush-v9")


def test_her_needs_a_goal_conditioned_env():
    validate_env_id("Pendulum-v1", her=False)
    with pytest.raises(HarnessError, match=r"--her needs a goal-conditioned env.*'Pendulum-v1' is not one"):
        validate_env_id("Pendulum-v1", her=True)


def test_vec_env_is_seeded():
    first = make_vec_env("FetchPush-v4", n_envs=2, seed=3).reset()
    second = make_vec_env("FetchPush-v4", n_envs=2, seed=3).reset()
    np.testing.assert_array_equal(first["desired_goal"], second["desired_goal"])
    assert not np.array_equal(first["desired_goal"][0], first["desired_goal"][1])


def test_goal_distance():
    obs = {"achieved_goal": np.array([0.0, 0.0, 0.0]), "desired_goal": np.array([0.03, 0.04, 0.0])}
    assert goal_distance(obs) == pytest.approx(0.05)
    assert np.isnan(goal_distance(np.zeros(3)))


def test_held_object_start_puts_the_object_in_the_closed_gripper_for_its_share_of_episodes():
    env = HeldObjectStart(make_env("FetchPickAndPlace-v4"), share=1.0)
    obs, _ = env.reset(seed=3)
    grip, obj = obs["observation"][:3], obs["achieved_goal"]
    assert np.linalg.norm(grip - obj) < 0.04  # between the fingers (the block is 5 cm)
    for _ in range(10):  # up, fingers shut: the object comes along
        obs, *_ = env.step(np.array([0.0, 0.0, 1.0, -1.0]))
    assert obs["achieved_goal"][2] > obj[2] + 0.1
    assert np.linalg.norm(obs["observation"][:3] - obs["achieved_goal"]) < 0.04

    plain = make_env("FetchPickAndPlace-v4")
    never = HeldObjectStart(make_env("FetchPickAndPlace-v4"), share=0.0)
    for seed in range(3):  # share 0: exactly the env's own reset
        a, _ = plain.reset(seed=seed)
        b, _ = never.reset(seed=seed)
        assert all(np.array_equal(a[key], b[key]) for key in a)

    half = HeldObjectStart(make_env("FetchPickAndPlace-v4"), share=0.5)
    half.reset(seed=0)
    held = [np.linalg.norm(o["observation"][:3] - o["achieved_goal"]) < 0.04 for o in (half.reset()[0] for _ in range(200))]
    assert 0.4 < np.mean(held) < 0.6
    half.reset(seed=0)
    again = [np.linalg.norm(o["observation"][:3] - o["achieved_goal"]) < 0.04 for o in (half.reset()[0] for _ in range(200))]
    assert again == held  # drawn from the env's seeded generator: reproducible


def test_held_object_start_reaches_the_training_envs_only(tmp_path):
    from harness.config import resolve_config
    from harness.training import build_env

    config = resolve_config("fast", "FetchPickAndPlace-v4", {"held_object_start": 1.0, "n_envs": 2})
    env, _ = build_env(config)
    obs = env.reset()
    assert np.all(np.linalg.norm(obs["observation"][:, :3] - obs["achieved_goal"], axis=1) < 0.04)
    env.close()


@pytest.mark.parametrize("env_id", FETCH_ENV_IDS)
def test_fetch_observations_with_cached_ids_equal_the_librarys_bit_for_bit(env_id):
    """FetchObservationIndex: the same observations, rewards, flags and infos as Gymnasium-Robotics' own
    code, over whole episodes (resets included) of random actions; and it is really in use."""
    import gymnasium as gym

    from harness.envs import FetchObservationIndex

    ours, theirs = make_env(env_id), gym.make(env_id)
    assert isinstance(ours.unwrapped.generate_mujoco_observations.func.__self__, FetchObservationIndex)
    assert "generate_mujoco_observations" not in vars(theirs.unwrapped)
    rng = np.random.default_rng(7)
    for episode in range(3):
        a, _ = ours.reset(seed=episode)
        b, _ = theirs.reset(seed=episode)
        for _ in range(50):
            for key in a:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
            action = rng.uniform(-1, 1, size=4).astype(np.float32)
            a, reward_a, *flags_a, info_a = ours.step(action)
            b, reward_b, *flags_b, info_b = theirs.step(action)
            assert (reward_a, flags_a, info_a) == (reward_b, flags_b, info_b)
        assert flags_a[1]  # the episode ran to its time limit


def test_non_fetch_envs_are_left_as_they_are():
    env = make_env("Pendulum-v1")
    assert "generate_mujoco_observations" not in vars(env.unwrapped)
