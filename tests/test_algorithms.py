"""The harness's algorithm classes: FastSAC does SB3 SAC's math; HerDDPG does the HER paper's DDPG."""

import copy
import zipfile

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC, HerReplayBuffer
from stable_baselines3.common.logger import Logger

from harness.algorithms import FastSAC, HerDDPG, LayerNormCritic, RandomActionRuns
from harness.config import resolve_config
from harness.envs import make_vec_env
from harness.sb3_zip import policy_model, read_policy_weights
from harness.training import build_env, build_model

HER = dict(replay_buffer_class=HerReplayBuffer, replay_buffer_kwargs=dict(n_sampled_goal=4, goal_selection_strategy="future"))


def quiet(model):
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


@pytest.mark.parametrize("ent_coef", ["auto", 0.1])
def test_fast_sac_gradient_step_equals_sb3_sac(ent_coef):
    """Same weights, same batch, same noise: one FastSAC step lands where SB3's SAC step lands."""
    env = make_vec_env("FetchReach-v4", 1, seed=0)
    # learning_starts beyond the steps taken: the buffer fills, no optimizer has state yet
    sb3 = quiet(SAC("MultiInputPolicy", env, learning_starts=1000, buffer_size=1000, seed=0, ent_coef=ent_coef, **HER))
    sb3.learn(300)
    fast = quiet(FastSAC("MultiInputPolicy", env, learning_starts=1000, buffer_size=1000, seed=0, ent_coef=ent_coef, **HER))
    fast.policy.load_state_dict(sb3.policy.state_dict())
    if sb3.log_ent_coef is not None:
        fast.log_ent_coef.data.copy_(sb3.log_ent_coef.data)
    batch = sb3.replay_buffer.sample(64)
    for model in (sb3, fast):
        model.replay_buffer = copy.copy(model.replay_buffer)
        model.replay_buffer.sample = lambda *args, **kwargs: batch
    initial = {k: v.clone() for k, v in sb3.policy.state_dict().items()}
    torch.manual_seed(1)
    SAC.train(sb3, gradient_steps=2, batch_size=64)
    torch.manual_seed(1)
    fast.train(gradient_steps=2, batch_size=64)
    for (name, expected), (_, actual) in zip(sb3.policy.state_dict().items(), fast.policy.state_dict().items(), strict=True):
        # Adam's first steps move every weight by about lr (3e-4); a different loss or update order
        # would show up at that scale, float rounding (fused vs per-tensor Adam) far below it.
        assert torch.allclose(expected, actual, atol=2e-5), (name, (expected - actual).abs().max().item())
        if not name.startswith("critic_target"):
            assert (expected - initial[name]).abs().max() > 2e-4, name
    if sb3.log_ent_coef is not None:
        assert torch.allclose(sb3.log_ent_coef, fast.log_ent_coef, atol=1e-7)


def test_fast_sac_step_changes_the_weights():
    env = make_vec_env("FetchReach-v4", 1, seed=0)
    fast = quiet(FastSAC("MultiInputPolicy", env, learning_starts=100, buffer_size=1000, seed=0, **HER))
    fast.learn(300)
    before = {k: v.clone() for k, v in fast.policy.state_dict().items()}
    fast.train(gradient_steps=2, batch_size=64)
    after = fast.policy.state_dict()
    for prefix in ("actor.", "critic.", "critic_target."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix


def ddpg_model(tmp_path, monkeypatch, **overrides):
    monkeypatch.chdir(tmp_path)
    # the one-worker layout (2 envs, batch 256): small and quick, and what the tests below index
    config = resolve_config(
        "fast",
        "FetchPush-v4",
        {**dict(her=True, algo="ddpg", total_steps=400, learning_starts=100, n_envs=2, batch_size=256), **overrides},
    )
    env, vecnormalize = build_env(config)
    return build_model(config, env, Logger(folder=None, output_formats=[])), vecnormalize


def td_target_of_critics_that_believe_in_large_values(model, monkeypatch):
    """The TD target of one gradient step after the target critics' outputs were pushed to +100."""
    with torch.no_grad():
        for q_net in model.critic_target.q_networks:
            q_net[-1].bias.fill_(100.0)
    seen = {}
    original = torch.nn.functional.mse_loss

    def spy(prediction, target):
        seen["target"] = target.clone()
        return original(prediction, target)

    monkeypatch.setattr("harness.algorithms.F.mse_loss", spy)
    model.train(gradient_steps=1, batch_size=32)
    return seen["target"]


@pytest.mark.parametrize("clip", [True, False])
def test_sac_targets_are_clipped_to_the_return_range_when_the_config_asks(clip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve_config(
        "fast", "FetchPush-v4", dict(her=True, total_steps=400, learning_starts=100, n_envs=2, clip_target_q=clip)
    )
    env, _ = build_env(config)
    model = build_model(config, env, Logger(folder=None, output_formats=[]))
    assert model.clip_target_q is clip
    model.learn(200)
    target = td_target_of_critics_that_believe_in_large_values(model, monkeypatch)
    inside = target.max() <= 0.0 and target.min() >= -1 / (1 - model.gamma)
    assert bool(inside) is clip  # targets inside [-1/(1-gamma), 0] only with the clip


def test_her_ddpg_explores_with_random_actions_and_noise(tmp_path, monkeypatch):
    model, _ = ddpg_model(tmp_path, monkeypatch, random_eps=1.0, action_noise=0.0)
    model.learn(200)  # past learning_starts: the policy acts, random_eps replaces every action
    policy_actions = model.predict(model._last_obs, deterministic=True)[0]
    explored = np.array([model._sample_action(100, None, 2)[1] for _ in range(200)])
    assert not np.allclose(explored[0], policy_actions)
    assert explored.min() < -0.9 and explored.max() > 0.9 and abs(explored.mean()) < 0.1  # uniform on [-1, 1]
    model.random_eps = 0.0
    noiseless = np.array([model._sample_action(100, None, 2)[1] for _ in range(3)])
    assert np.allclose(noiseless, model.policy.scale_action(policy_actions), atol=1e-6)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_sac_replaces_the_configured_share_of_its_actions_by_uniform_ones(share, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = dict(her=True, total_steps=400, learning_starts=100, n_envs=2, random_action_share=share)
    config = resolve_config("fast", "FetchPush-v4", overrides)
    model = build_model(config, build_env(config)[0], Logger(folder=None, output_formats=[]))
    assert model.random_action_share == share
    model.learn(200)  # past learning_starts: the policy acts

    def drawn(sample):
        np.random.seed(7), torch.manual_seed(7)
        return np.array([sample(model, 100, None, 2)[1] for _ in range(200)])

    sampled, sacs_own = drawn(FastSAC._sample_action), drawn(SAC._sample_action)
    if share:  # uniform on [-1, 1], nothing of what the policy says
        assert sampled.min() < -0.99 and sampled.max() > 0.99 and abs(sampled.mean()) < 0.05
        assert np.isclose(sampled, sacs_own).mean() < 0.01
    else:  # SAC's own sampling, draw for draw
        assert np.array_equal(sampled, sacs_own)


def test_random_action_runs_hold_one_action_per_run_and_keep_the_share():
    np.random.seed(3)
    runs = RandomActionRuns(share=0.3, length=10)
    steps, n_envs = 20_000, 3
    explored, actions = np.zeros((steps, n_envs), dtype=bool), np.zeros((steps, n_envs, 4))
    for t in range(steps):
        explore, held = runs.draw(np.zeros(n_envs, dtype=bool), (n_envs, 4))
        explored[t], actions[t] = explore, held
    assert abs(explored.mean() - 0.3) < 0.02  # the share of random steps is the configured one
    for env in range(n_envs):
        t = 0
        while t < steps - 10:
            if not explored[t, env]:
                t += 1
                continue
            # a run: ten steps of one action (the next run, if one starts at once, draws anew)
            assert explored[t : t + 10, env].all()
            assert (actions[t : t + 10, env] == actions[t, env]).all()
            t += 10
    # an episode's end ends its run: the first step of the next episode starts a new one
    runs = RandomActionRuns(share=1.0, length=10)
    first = runs.draw([False], (1, 4))[1].copy()
    assert (runs.draw([False], (1, 4))[1] == first).all()
    assert not (runs.draw([True], (1, 4))[1] == first).any()


def test_sac_with_random_action_runs_holds_each_random_action(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = dict(her=True, total_steps=400, learning_starts=100, n_envs=2, random_action_share=1.0, random_action_repeat=5)
    config = resolve_config("fast", "FetchPush-v4", overrides)
    model = build_model(config, build_env(config)[0], Logger(folder=None, output_formats=[]))
    assert (model.random_action_repeat, model._random_action_runs.length) == (5, 5)
    model.learn(200)  # past learning_starts: every action random, in runs of 5
    model._last_episode_starts = np.zeros(2, dtype=bool)
    model._random_action_runs.left[:] = 0
    drawn = np.array([model._sample_action(100, None, 2)[1] for _ in range(10)])
    assert all((drawn[i : i + 5] == drawn[i]).all() for i in (0, 5)) and not (drawn[5] == drawn[0]).any()
    model.save(tmp_path / "sac.zip")  # the runs under way are exploration state, not saved with the model
    assert "_random_action_runs" not in zipfile.ZipFile(tmp_path / "sac.zip").read("data").decode()


@pytest.mark.parametrize("layer_norm", [True, False])
def test_sac_critics_get_a_layer_norm_per_hidden_layer_when_the_config_asks(layer_norm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = dict(her=True, total_steps=400, learning_starts=100, n_envs=2, critic_layer_norm=layer_norm)
    config = resolve_config("fast", "FetchPush-v4", overrides)
    model = build_model(config, build_env(config)[0], Logger(folder=None, output_formats=[]))
    norms = lambda net: [m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)]  # noqa: E731
    for critic in (model.critic, model.critic_target):
        assert isinstance(critic, LayerNormCritic) is layer_norm and len(critic.q_networks) == 2
        for q_net in critic.q_networks:  # Linear -> LayerNorm -> ReLU per hidden layer, none after the output
            assert [m.normalized_shape[0] for m in norms(q_net)] == (list(config.net_arch) if layer_norm else [])
            assert not isinstance(q_net[-1], torch.nn.LayerNorm)
    assert not norms(model.actor)
    before = {k: v.clone() for k, v in model.critic.state_dict().items()}
    model.learn(300)  # past learning_starts: gradient steps move the LayerNorms' weights too
    moved = [k for k, v in model.critic.state_dict().items() if not torch.equal(v, before[k])]
    assert all(k in moved for k in before), sorted(set(before) - set(moved))
    # a saved zip comes back, from its tensors alone, with the same critics and the same actions
    model.save(tmp_path / "sac.zip")
    state = read_policy_weights(tmp_path / "sac.zip")
    loaded = policy_model("sac", model.get_env(), state, "sac.zip")
    assert isinstance(loaded.critic, LayerNormCritic) is layer_norm
    obs = model._last_obs
    assert np.allclose(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_her_ddpg_targets_are_clipped_to_the_return_range(tmp_path, monkeypatch):
    model, _ = ddpg_model(tmp_path, monkeypatch)
    model.learn(200)
    target = td_target_of_critics_that_believe_in_large_values(model, monkeypatch)
    # still inside [-1/(1-gamma), 0], the range of returns of the -1/0 reward
    assert target.max() <= 0.0 and target.min() >= -1 / (1 - model.gamma)


def test_her_ddpg_saves_loads_and_keeps_its_settings(tmp_path, monkeypatch):
    model, _ = ddpg_model(tmp_path, monkeypatch, action_l2=0.5)
    model.learn(300)
    model.save(tmp_path / "ddpg.zip")
    loaded = HerDDPG.load(tmp_path / "ddpg.zip", env=model.get_env())
    assert (loaded.random_eps, loaded.action_l2, loaded.policy_delay) == (0.3, 0.5, 1)
    assert loaded.critic.n_critics == 1 if hasattr(loaded.critic, "n_critics") else len(loaded.critic.q_networks) == 1
    obs = model._last_obs
    assert np.allclose(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("algo", ["sac", "ddpg"])
def test_bf16_precision_trains_close_to_fp32_and_is_kept_on_save(algo, tmp_path, monkeypatch):
    """precision bf16: the same gradient step with bfloat16 layers lands near fp32's (not on it), and a
    saved model loads with its precision; acting stays fp32."""
    models = {}
    for precision in ("fp32", "bf16"):
        model, _ = ddpg_model(tmp_path, monkeypatch, algo=algo, precision=precision)
        model.learn(200)
        models[precision] = model
    fp32, bf16 = models["fp32"], models["bf16"]
    bf16.policy.load_state_dict(fp32.policy.state_dict())
    batch = fp32.replay_buffer.sample(256, env=fp32._vec_normalize_env)
    for model in (fp32, bf16):
        model.replay_buffer = copy.copy(model.replay_buffer)
        model.replay_buffer.sample = lambda *args, **kwargs: batch
    before = {k: v.clone() for k, v in fp32.policy.state_dict().items()}
    for model in (fp32, bf16):
        torch.manual_seed(1)
        model.train(gradient_steps=1, batch_size=256)
    for (name, a), (_, b) in zip(fp32.policy.state_dict().items(), bf16.policy.state_dict().items(), strict=True):
        assert a.dtype == b.dtype == torch.float32, name
        step_fp32, step_bf16 = (a - before[name]).flatten(), (b - before[name]).flatten()
        if step_fp32.abs().max() > 0:
            # Adam's first step moves each weight by ~lr in the gradient's sign: bf16 rounding may flip
            # the sign of tiny gradients, not the direction of the update (measured: 0.78-1.0 per tensor)
            assert torch.cosine_similarity(step_fp32, step_bf16, dim=0) > 0.5, name
    assert any(
        not torch.equal(a, b)
        for a, b in zip(fp32.policy.state_dict().values(), bf16.policy.state_dict().values(), strict=True)
    )
    bf16.save(tmp_path / "bf16.zip")
    loaded = type(bf16).load(tmp_path / "bf16.zip", env=bf16.get_env())
    assert loaded.precision == "bf16"


def test_mixed_goal_buffer_relabels_with_other_episodes_desired_goals(tmp_path, monkeypatch):
    from harness.her_replay import MixedGoalHerReplayBuffer

    model, _ = ddpg_model(tmp_path, monkeypatch, algo="sac", desired_goal_share=1.0)
    assert isinstance(model.replay_buffer, MixedGoalHerReplayBuffer)
    model.learn(300)
    buffer = model.replay_buffer
    stored = buffer.observations["desired_goal"][buffer.ep_length > 0]
    achieved = buffer.next_observations["achieved_goal"][buffer.ep_length > 0]
    indices = np.flatnonzero(buffer.ep_length > 0)
    batch, env = np.unravel_index(indices[:500], buffer.ep_length.shape)
    goals = buffer._sample_goals(batch, env)
    # share 1: every relabeled goal is a stored desired goal, none is an achieved goal from 'future'
    assert all(any(np.allclose(g, s) for s in stored) for g in goals)
    assert not any(any(np.allclose(g, a) for a in achieved) for g in goals[:50])
    # share 0 is SB3's own buffer
    plain, _ = ddpg_model(tmp_path, monkeypatch, algo="sac", n_step_returns=1)
    assert type(plain.replay_buffer) is HerReplayBuffer


def test_n_step_returns_sum_the_next_rewards_for_the_relabeled_goal_and_stop_at_the_episode_end(tmp_path, monkeypatch):
    """Against a reference walked step by step: rewards recomputed for each goal, discounted, cut at the end."""
    from harness.her_replay import MixedGoalHerReplayBuffer

    model, _ = ddpg_model(tmp_path, monkeypatch, algo="sac", n_step_returns=3, learning_starts=400)
    buffer = model.replay_buffer
    assert isinstance(buffer, MixedGoalHerReplayBuffer) and (buffer.n_step, buffer.gamma) == (3, model.gamma)
    model.learn(300)  # random actions: 3 finished episodes per env, nothing trained
    env = buffer.env.envs[0].unwrapped
    # every position of the first episode of env 1, its last ones included (fewer than 3 steps left there)
    batch = np.arange(50)
    envs = np.ones(50, dtype=int)
    # the episode's own (mostly unreached) goal for even positions, one its object reached for odd ones
    reached = buffer.next_observations["achieved_goal"][(batch + 7) % 50, 1]
    goals = np.where((batch % 2 == 0)[:, None], buffer.observations["desired_goal"][batch, 1], reached)
    samples = buffer.n_step_samples(batch, envs, goals)
    for i, t in enumerate(batch):
        steps = min(3, 50 - t)
        expected = sum(
            model.gamma**j * env.compute_reward(buffer.next_observations["achieved_goal"][t + j, 1], goals[i], {})
            for j in range(steps)
        )
        assert samples.rewards[i, 0].item() == pytest.approx(expected, abs=1e-5)
        assert samples.discounts[i, 0].item() == pytest.approx(model.gamma**steps)
        last = buffer.next_observations["achieved_goal"][t + steps - 1, 1]
        assert np.allclose(samples.next_observations["achieved_goal"][i].numpy(), last)
        assert np.allclose(samples.next_observations["desired_goal"][i].numpy(), goals[i])
        assert np.allclose(samples.observations["desired_goal"][i].numpy(), goals[i])
    assert samples.dones.sum().item() == 0  # Fetch episodes end by time limit, which is not a termination
    assert (samples.rewards <= 0).all() and (samples.rewards < -0.5).any() and (samples.rewards > -0.5).any()

    batch_samples = buffer.sample(64)  # the sampler: relabeled and real goals, every discount gamma^1..3
    assert tuple(batch_samples.rewards.shape) == (64, 1)
    powers = np.array([model.gamma**m for m in (1, 2, 3)])
    assert all(np.isclose(d, powers, atol=1e-6).any() for d in batch_samples.discounts.numpy().ravel())
    model.train(gradient_steps=2, batch_size=32)  # the SAC step takes the n-step discounts


def test_n_step_returns_without_her_use_the_same_buffer_and_relabel_nothing(tmp_path, monkeypatch):
    from harness.her_replay import MixedGoalHerReplayBuffer

    model, _ = ddpg_model(tmp_path, monkeypatch, algo="sac", her=False, n_step_returns=3, learning_starts=400)
    buffer = model.replay_buffer
    assert isinstance(buffer, MixedGoalHerReplayBuffer) and buffer.her_ratio == 0 and buffer.n_step == 3
    model.learn(300)
    samples = buffer.sample(64)
    stored = buffer.observations["desired_goal"][buffer.ep_length > 0]
    assert all(any(np.allclose(g, s) for s in stored) for g in samples.observations["desired_goal"].numpy())
    plain, _ = ddpg_model(tmp_path, monkeypatch, algo="sac", her=False, n_step_returns=1)  # SB3's own buffer
    assert not isinstance(plain.replay_buffer, HerReplayBuffer)


def test_trajectory_energy_counts_height_gained_and_speed_gained_each_step_clipped():
    from harness.her_replay import GRAVITY, trajectory_energy

    still = np.tile([1.3, 0.7, 0.42], (51, 1))
    assert trajectory_energy(still, dt=0.04, clip=0.5) == 0.0
    # lifted 4 mm per step for 10 steps, then held: the height's energy, and the speed's once (gained at step 1)
    lift = still.copy()
    lift[1:11, 2] += 0.004 * np.arange(1, 11)
    lift[11:, 2] = lift[10, 2]
    expected = GRAVITY * 0.04 + 0.5 * (0.004 / 0.04) ** 2
    assert trajectory_energy(lift, dt=0.04, clip=10.0) == pytest.approx(expected)
    # pushed along the table at constant speed: only the first step gains (kinetic) energy; stopping loses it
    push = still.copy()
    push[1:21, 0] += 0.01 * np.arange(1, 21)
    push[21:, 0] = push[20, 0]
    assert trajectory_energy(push, dt=0.04, clip=10.0) == pytest.approx(0.5 * (0.01 / 0.04) ** 2)
    # a jump of 10 cm in one step gains ~4 J, and one step counts for at most the clip
    jump = still.copy()
    jump[5:, 2] += 0.1
    assert trajectory_energy(jump, dt=0.04, clip=0.5) == pytest.approx(0.5)


def test_energy_priority_draws_episodes_in_proportion_to_their_energy_rank(tmp_path, monkeypatch):
    """Each stored episode's energy comes from its own positions; episodes are drawn in proportion to the rank
    of that energy (equal energies share one), transitions uniformly within; a restored buffer has them again."""
    from harness.her_replay import MixedGoalHerReplayBuffer, trajectory_energy
    from harness.training_state import buffer_state, restore_buffer

    model, _ = ddpg_model(tmp_path, monkeypatch, algo="sac", energy_priority_clip=0.5, n_step_returns=1, learning_starts=400)
    buffer = model.replay_buffer
    assert isinstance(buffer, MixedGoalHerReplayBuffer) and buffer.energy_clip == 0.5 and buffer._dt == 0.04
    model.learn(300)  # random actions: 3 finished episodes per env, nothing trained
    for env_index in range(2):
        for start in (0, 50, 100):
            positions = np.concatenate(
                [
                    buffer.observations["achieved_goal"][start : start + 50, env_index],
                    buffer.next_observations["achieved_goal"][start + 49 : start + 50, env_index],
                ]
            )
            energy = buffer.episode_energy[start : start + 50, env_index]
            assert np.all(energy == trajectory_energy(positions, 0.04, 0.5))

    energies = {(0, 0): 0.0, (50, 0): 3.0, (100, 0): 1.0, (0, 1): 1.0, (50, 1): 2.0, (100, 1): 0.5}
    ranks = {(0, 0): 1, (50, 0): 5, (100, 0): 3, (0, 1): 3, (50, 1): 4, (100, 1): 2}
    for (start, env_index), energy in energies.items():
        buffer.episode_energy[start : start + 50, env_index] = energy
    buffer._draw_table = None
    rows, envs = buffer._draw(200_000)
    assert rows.max() < 150  # the episode in progress (steps 150-) is never drawn
    for (start, env_index), rank in ranks.items():
        drawn = (envs == env_index) & (rows >= start) & (rows < start + 50)
        assert drawn.mean() == pytest.approx(rank / sum(ranks.values()), abs=0.01)
        assert len(np.unique(rows[drawn])) == 50  # every transition of a drawn episode
    samples = buffer.sample(64)  # relabeled as usual, one-step targets
    assert tuple(samples.rewards.shape) == (64, 1)
    assert np.allclose(samples.discounts.numpy(), model.gamma)
    model.train(gradient_steps=2, batch_size=32)

    restored, _ = ddpg_model(
        tmp_path, monkeypatch, algo="sac", energy_priority_clip=0.5, n_step_returns=1, learning_starts=400
    )
    model.learn(10)  # an episode's energy recomputed from its positions, not copied
    restore_buffer(restored.replay_buffer, buffer_state(model.replay_buffer))
    assert restored.replay_buffer.episode_energy[0, 0] == trajectory_energy(
        np.concatenate([buffer.observations["achieved_goal"][:50, 0], buffer.next_observations["achieved_goal"][49:50, 0]]),
        0.04,
        0.5,
    )
    # without HER the option changes nothing: the no-HER condition keeps uniform replay
    no_her, _ = ddpg_model(tmp_path, monkeypatch, algo="sac", her=False, energy_priority_clip=0.5)
    assert no_her.replay_buffer.episode_energy is None
