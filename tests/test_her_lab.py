"""The HER relabeling lab: its functions, its CLI modes, and its agreement with SB3's HerReplayBuffer."""

import math

import numpy as np
import pytest

from harness.labs import her_relabeler as lab
from tests.conftest import all_runs, run_cli


@pytest.fixture(scope="module")
def reach_episodes():
    return lab.random_episodes("FetchReach-v4", n_episodes=20, seed=0)


def test_goal_indices_come_from_allowed_steps():
    rng = np.random.default_rng(0)
    for t in range(50):
        future = lab.sample_goal_indices(t, 50, 16, "future", rng)
        assert len(future) == 16 and future.min() >= t and future.max() <= 49
        assert list(lab.sample_goal_indices(t, 50, 3, "final", rng)) == [49, 49, 49]
        episode = lab.sample_goal_indices(t, 50, 16, "episode", rng)
        assert episode.min() >= 0 and episode.max() <= 49
    with pytest.raises(ValueError, match="unknown strategy 'random'"):
        lab.sample_goal_indices(0, 50, 4, "random", rng)


def test_relabeling_uses_the_real_fetch_reward(reach_episodes):
    episodes, compute_reward = reach_episodes
    transition = episodes[0][5]
    assert lab.relabel_transition(transition, transition.achieved_goal, compute_reward).reward == 0.0
    near = transition.achieved_goal + np.array([0.049, 0.0, 0.0])
    far = transition.achieved_goal + np.array([0.051, 0.0, 0.0])
    assert lab.relabel_transition(transition, near, compute_reward).reward == 0.0
    moved = lab.relabel_transition(transition, far, compute_reward)
    assert moved.reward == -1.0 and np.array_equal(moved.desired_goal, far)
    assert np.array_equal(moved.achieved_goal, transition.achieved_goal) and np.array_equal(moved.obs, transition.obs)


def test_process_episode_counts_and_ratio(reach_episodes):
    episodes, compute_reward = reach_episodes
    episode = episodes[0]
    assert len(lab.process_episode_with_her(episode, k=4, her_ratio=0.0, compute_reward_fn=compute_reward)) == 50
    assert len(lab.process_episode_with_her(episode, k=4, her_ratio=1.0, compute_reward_fn=compute_reward)) == 250
    stored = lab.process_episode_with_her(episode, k=4, her_ratio=1.0, strategy="final", compute_reward_fn=compute_reward)
    relabeled = [t for i, t in enumerate(stored) if i % 5]
    assert all(np.array_equal(t.desired_goal, episode[-1].achieved_goal) for t in relabeled)


def test_demo_is_seeded():
    first = lab.demo_tables(env_ids=("FetchReach-v4",), n_episodes=5, seed=3)
    assert first == lab.demo_tables(env_ids=("FetchReach-v4",), n_episodes=5, seed=3)
    table = first["FetchReach-v4"]
    assert table["her_ratio (future, k=4)"]["0.0"] == table["real transitions (no relabeling)"]
    assert table["her_ratio (future, k=4)"]["1.0"] > table["her_ratio (future, k=4)"]["0.0"]


def test_future_sampling_agrees_with_sb3_her_replay_buffer(reach_episodes):
    """Both estimate p = P(relabeled future sample succeeds), which is enumerated exactly here.

    SB3's relabeled rows are i.i.d. Bernoulli(p) draws, so their share has standard error
    sqrt(p(1-p)/n); the lab's share over 1000 episodes x 50 steps x k goals is no noisier. A
    tolerance of 4 standard errors fails a correct implementation with probability < 1e-4, while
    the off-by-one bug of excluding the current step (p drops by about E[1/(T-t)] = 9 points on
    these episodes) is many standard errors away.
    """
    episodes, compute_reward = reach_episodes
    k, batch = 4, 50_000
    exact = lab.exact_future_success_probability(episodes, compute_reward)
    sb3_share, n_relabeled = lab.sb3_relabeled_success_share(episodes, "FetchReach-v4", k=k, batch_size=batch, seed=1)
    rng = np.random.default_rng(1)
    lab_relabeled = [
        lab.relabel_transition(tr, g, compute_reward)
        for _ in range(20)
        for ep in episodes
        for t, tr in enumerate(ep)
        for g in lab.sample_goals(ep, t, k, "future", rng)
    ]
    lab_share = lab.success_share(lab_relabeled)
    se = math.sqrt(exact * (1 - exact) / n_relabeled)
    assert abs(sb3_share - exact) < 4 * se, (sb3_share, exact, se)
    assert abs(lab_share - exact) < 4 * math.sqrt(exact * (1 - exact) / len(lab_relabeled))
    assert abs(sb3_share - lab_share) < 4 * math.sqrt(2) * se


def test_cli_verify_and_tracked_demo(store, tmp_path):
    proc = run_cli(["lab", "--verify", "--episodes", "10"], tmp_path, store)
    assert proc.stdout.count("[PASS]") == 6 and "[FAIL]" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "6 passed, 0 failed"
    proc = run_cli(["lab", "--demo", "--track", "--episodes", "3"], tmp_path, store)
    assert "| strategy (k=4, her_ratio=0.8) | success share |" in proc.stdout
    (run,) = all_runs()
    assert run.info.status == "FINISHED" and run.data.tags["harness.kind"] == "lab"
    assert "FetchPush-v4/k_16" in run.data.metrics
    bad = run_cli(["lab"], tmp_path, store, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "harness: error: give --verify or --demo"


def test_the_chapters_module_form_runs_without_the_harness_cli(tmp_path):
    """``python -m harness.labs.her_relabeler`` is the chapter's command; it must not reach into entry_points."""
    import subprocess
    import sys

    probe = (
        "import sys, runpy; sys.argv = ['her_relabeler', '--verify', '--episodes', '5']\n"
        "try:\n    runpy.run_module('harness.labs.her_relabeler', run_name='__main__')\n"
        "except SystemExit as stop:\n    print('exit', stop.code)\n"
        "print('cli loaded:', any(name.startswith(('entry_points', 'click')) for name in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "6 passed, 0 failed" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-2:] == ["exit 0", "cli loaded: False"]
    bad = subprocess.run(
        [sys.executable, "-m", "harness.labs.her_relabeler", "--demo", "--episodes", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "python -m harness.labs.her_relabeler: error: argument --episodes: expected an integer >= 1, got '0'"
    )
