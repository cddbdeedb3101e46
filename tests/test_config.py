import itertools
import dataclasses

import pytest
import yaml

from harness.config import FIELD_NAMES, PRESET_DIR, TrainConfig, available_presets, load_preset, resolve_config
from harness.errors import HarnessError


def test_every_field_is_documented_and_presets_load():
    """Each TrainConfig field is followed by its docstring (a string statement), as CleanRL documents its Args."""
    import ast

    tree = ast.parse((PRESET_DIR.parent / "config.py").read_text())
    (body,) = [node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "TrainConfig"]
    documented = {
        statement.target.id
        for statement, following in itertools.pairwise(body)
        if isinstance(statement, ast.AnnAssign)
        and isinstance(following, ast.Expr)
        and isinstance(following.value, ast.Constant)
        and isinstance(following.value.value, str)
        and following.value.value.strip()
    }
    undocumented = [field.name for field in dataclasses.fields(TrainConfig) if field.name not in documented]
    assert not undocumented, f"TrainConfig fields without a docstring: {undocumented}"
    for name in available_presets():
        assert load_preset(name)["defaults"]


def test_ch04_preset_is_the_chapter_settings():
    config = resolve_config("ch04", "FetchPush-v4")
    assert (config.algo, config.total_steps, config.n_envs) == ("sac", 500_000, 8)
    assert (config.n_sampled_goal, config.goal_selection_strategy, config.learning_starts) == (4, "future", 10_000)
    # SB3's SAC defaults
    assert (config.batch_size, config.learning_rate, config.gamma, config.tau) == (256, 3e-4, 0.99, 0.005)
    assert (config.train_freq, config.gradient_steps, config.ent_coef, config.net_arch) == (1, 1, "auto", (256, 256))
    assert (config.normalize_obs, config.buffer_size) == (False, 1_000_000)


def test_fast_preset_trains_push_with_sac_in_the_her_papers_layout():
    push = resolve_config("fast", "FetchPush-v4", {"her": True})
    # the HER code's 8-worker set-up in one process: 16 envs, batch 8 x 256, 20 steps per 800 env steps
    assert (push.algo, push.n_envs, push.train_freq, push.gradient_steps) == ("sac", 16, 50, 20)
    assert (push.gamma, push.batch_size, push.net_arch, push.normalize_obs) == (0.98, 1024, (256, 256, 256), True)
    assert (push.tau, push.precision, push.desired_goal_share) == (0.01, "auto", 0.0)
    assert (push.total_steps, push.eval_freq, push.checkpoint_freq) == (250_000, 20_000, 100_000)
    assert push.n_step_returns == 3  # 3-step returns under HER (BENCHMARKS.md, issue #36)
    # --algo ddpg: the previous default, unchanged (the HER paper's DDPG, 900k steps)
    ddpg = resolve_config("fast", "FetchPush-v4", {"her": True, "algo": "ddpg"})
    assert (ddpg.n_envs, ddpg.batch_size, ddpg.train_freq, ddpg.gradient_steps) == (16, 2048, 50, 20)
    assert (ddpg.gamma, ddpg.tau, ddpg.net_arch, ddpg.normalize_obs) == (0.98, 0.05, (256, 256, 256), True)
    assert (ddpg.total_steps, ddpg.precision, ddpg.desired_goal_share) == (900_000, "auto", 0.0)
    assert (ddpg.random_eps, ddpg.action_noise, ddpg.action_l2, ddpg.n_step_returns) == (0.3, 0.2, 1.0, 1)
    assert resolve_config("fast", "FetchReach-v4").algo == "sac"
    reach = resolve_config("fast", "FetchReach-v4", {"algo": "ddpg"})  # the preset's algos.ddpg section
    assert (reach.n_envs, reach.gradient_steps, reach.gamma, reach.total_steps) == (2, 40, 0.98, 10_000)
    assert resolve_config("ch04", "FetchPush-v4").precision == "fp32"  # the chapter's path stays fp32


def test_fast_preset_trains_pick_and_place_in_pushs_layout_with_held_starts():
    pick = resolve_config("fast", "FetchPickAndPlace-v4", {"her": True})
    push = resolve_config("fast", "FetchPush-v4", {"her": True})
    layout = (
        "algo",
        "n_envs",
        "train_freq",
        "gradient_steps",
        "gamma",
        "net_arch",
        "normalize_obs",
        "precision",
        "eval_freq",
        "checkpoint_freq",
        "learning_starts",
    )
    assert {k: getattr(pick, k) for k in layout} == {k: getattr(push, k) for k in layout}
    # Push's batch and target rate, one-step targets (3-step returns were tried on one seed only)
    assert (pick.batch_size, pick.tau, pick.n_step_returns) == (push.batch_size, push.tau, 1)
    assert (pick.held_object_start, pick.total_steps) == (0.5, 600_000)
    assert push.held_object_start == 0.0
    slide = resolve_config("fast", "FetchSlide-v4", {"her": True})
    assert {k: getattr(slide, k) for k in layout} == {k: getattr(push, k) for k in layout}
    assert (slide.desired_goal_share, slide.held_object_start, slide.total_steps) == (0.5, 0.0, 1_200_000)
    assert (slide.batch_size, slide.tau, slide.n_step_returns) == (push.batch_size, push.tau, push.n_step_returns)
    slide_ddpg = resolve_config("fast", "FetchSlide-v4", {"her": True, "algo": "ddpg"})
    assert (slide_ddpg.total_steps, slide_ddpg.n_step_returns) == (2_000_000, 1)
    ddpg = resolve_config("fast", "FetchPickAndPlace-v4", {"her": True, "algo": "ddpg"})
    assert (ddpg.total_steps, ddpg.tau, ddpg.precision, ddpg.held_object_start) == (800_000, 0.05, "auto", 0.5)


def test_set_parses_values_as_yaml():
    from harness.config import parse_settings

    overrides = parse_settings(["gamma=0.98", "net_arch=[64, 64]", "normalize-obs=true", "total_steps=2e5"])
    config = resolve_config("fast", "FetchReach-v4", overrides)
    assert (config.gamma, config.net_arch, config.normalize_obs, config.total_steps) == (0.98, (64, 64), True, 200_000)


@pytest.mark.parametrize("item", ["gamma=", "gamma= ", "gamma=null", "gamma=~"])
def test_set_with_an_empty_value_is_refused_not_ignored(item):
    from harness.config import parse_settings

    with pytest.raises(HarnessError, match=r"--set gamma has no value .*; give KEY=VALUE, e.g. --set gamma=0.98"):
        parse_settings([item])


def test_overrides_beat_env_section_beats_defaults(tmp_path, monkeypatch):
    preset = {
        "defaults": {"gamma": 0.9, "batch_size": 64, "total_steps": 100},
        "algos": {"tqc": {"gamma": 0.8, "batch_size": 32}},
        "envs": {"FetchPush-v4": {"batch_size": 128, "total_steps": 200, "algos": {"ddpg": {"tau": 0.5}}}},
    }
    monkeypatch.setattr("harness.config.PRESET_DIR", tmp_path)
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(preset))
    config = resolve_config("mine", "FetchPush-v4", {"total_steps": 300, "her": None})
    assert (config.gamma, config.batch_size, config.total_steps, config.her) == (0.9, 128, 300, False)
    assert config.preset == "mine" and config.env_id == "FetchPush-v4"
    assert resolve_config("mine", "FetchReach-v4").batch_size == 64
    tqc = resolve_config("mine", "FetchPush-v4", {"algo": "tqc"})
    assert (tqc.gamma, tqc.batch_size, tqc.tau) == (0.8, 128, 0.005)  # the env section beats the algos section
    ddpg = resolve_config("mine", "FetchPush-v4", {"algo": "ddpg"})
    assert (ddpg.batch_size, ddpg.tau) == (128, 0.5)  # the env section's own algos section comes last
    assert resolve_config("mine", "FetchReach-v4", {"algo": "ddpg"}).tau == 0.005


def test_unknown_keys_in_a_preset_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr("harness.config.PRESET_DIR", tmp_path)
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"envs": {"FetchPush-v4": {"algos": {"ddpg": {"batchsize": 8}}}}}))
    with pytest.raises(HarnessError, match=r"preset 'typo' has unknown keys \['batchsize'\]"):
        resolve_config("typo", "FetchReach-v4")


def test_run_name_and_tensorboard_dir_follow_the_chapter():
    her = resolve_config("ch04", "FetchPush-v4", {"her": True, "seed": 2, "n_sampled_goal": 8})
    assert her.run_name == "sac_her_FetchPush-v4_seed2"
    assert str(her.tensorboard_dir) == "runs/sac_her_nsg8/FetchPush-v4/seed2"
    plain = resolve_config("ch04", "FetchPush-v4", {"seed": 0})
    assert plain.run_name == "sac_FetchPush-v4_seed0"
    assert str(plain.tensorboard_dir) == "runs/sac_noher/FetchPush-v4/seed0"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"total_steps": 0}, "total_steps must be > 0, got 0"),
        ({"n_sampled_goal": -1}, "n_sampled_goal must be >= 0, got -1"),
        ({"goal_selection_strategy": "random"}, "goal_selection_strategy must be one of future, final, episode, got 'random'"),
        ({"algo": "ppo"}, "algo must be one of sac, tqc, ddpg, got 'ppo'"),
        ({"net_arch": "big"}, "net_arch must be a list of integers, got 'big'"),
        ({"her": "maybe"}, "her must be true or false, got 'maybe'"),
        ({"total_steps": 1.5}, "total_steps must be an integer, got 1.5"),
        ({"gamma": 1.5}, "gamma must be in (0, 1], got 1.5"),
        ({"ent_coef": "sometimes"}, "ent_coef must be a number"),
        ({"bogus": 1}, "unknown config keys ['bogus']"),
        ({"precision": "fp16"}, "precision must be one of auto, fp32, bf16, got 'fp16'"),
        ({"algo": "tqc", "precision": "bf16"}, "precision bf16 is for sac and ddpg; tqc trains in fp32"),
        ({"desired_goal_share": 1.5}, "desired_goal_share must be in [0, 1], got 1.5"),
        ({"algo": "tqc", "clip_target_q": True}, "clip_target_q is for sac (ddpg always clips its targets), not tqc"),
        ({"n_step_returns": 0}, "n_step_returns must be > 0, got 0"),
        ({"algo": "ddpg", "random_action_share": 0.3}, "random_action_share is for sac (ddpg has random_eps), not ddpg"),
        ({"random_action_share": 1.2}, "random_action_share must be in [0, 1], got 1.2"),
        ({"random_action_repeat": 0}, "random_action_repeat must be > 0, got 0"),
        ({"algo": "ddpg", "critic_layer_norm": True}, "critic_layer_norm is for sac, not ddpg"),
        ({"algo": "tqc", "critic_layer_norm": True}, "critic_layer_norm is for sac, not tqc"),
        ({"algo": "ddpg", "random_action_repeat": 5}, "random_action_repeat is for sac (ddpg has random_eps), not ddpg"),
        ({"energy_priority_clip": -0.5}, "energy_priority_clip must be >= 0, got -0.5"),
        ({"clip_target_q": "sometimes"}, "clip_target_q must be true or false, got 'sometimes'"),
        ({"held_object_start": -0.1}, "held_object_start must be in [0, 1], got -0.1"),
        (
            {"held_object_start": 0.5},
            "held_object_start needs an env whose gripper can hold the object "
            "(FetchPickAndPlace-v4, FetchPickAndPlaceDense-v4), not FetchReach-v4",
        ),
    ],
)
def test_bad_values_name_the_value_and_what_is_accepted(overrides, message):
    with pytest.raises(
        HarnessError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        resolve_config("ch04", "FetchReach-v4", overrides)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(HarnessError, match="unknown preset 'nope'; available: ch04, fast"):
        resolve_config("nope", "FetchReach-v4")


def test_resolved_config_round_trips_through_json():
    config = resolve_config("fast", "FetchReach-v4", {"her": True})
    data = config.to_dict()
    assert set(data) == set(FIELD_NAMES)
    assert TrainConfig(**{**data, "net_arch": tuple(data["net_arch"])}) == config


@pytest.mark.parametrize("native", [False, True])
def test_every_fast_preset_section_resolves_precision_by_the_cpus_bf16_support(native, monkeypatch):
    """precision auto: bf16 only where the CPU runs it natively (cpu_runs_bf16, patched here), fp32 elsewhere;
    the chapter's preset stays fp32 (SB3's arithmetic) and tqc always trains in fp32."""
    from harness.envs import FETCH_ENV_IDS
    from harness.training import layer_precision_for

    monkeypatch.setattr("harness.algorithms.cpu_runs_bf16", lambda: native)
    expected = "bf16" if native else "fp32"
    for env_id in FETCH_ENV_IDS:
        for algo in ("sac", "ddpg"):
            config = resolve_config("fast", env_id, {"her": True, "algo": algo})
            assert config.precision == "auto"
            assert layer_precision_for(config, "cpu") == expected, (env_id, algo)
        assert layer_precision_for(resolve_config("fast", env_id, {"algo": "tqc"}), "cpu") == "fp32"
        assert layer_precision_for(resolve_config("ch04", env_id), "cpu") == "fp32"
    explicit = resolve_config("fast", "FetchPush-v4", {"precision": "bf16"})
    assert layer_precision_for(explicit, "cpu") == "bf16"  # asked for explicitly: taken, with a warning line


@pytest.mark.parametrize("gpu_bf16", [False, True])
def test_precision_auto_on_cuda_follows_the_gpus_bf16_support(gpu_bf16, monkeypatch):
    import torch

    from harness.algorithms import emulated_bf16_warning, resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: gpu_bf16)
    monkeypatch.setattr("harness.algorithms.cpu_runs_bf16", lambda: not gpu_bf16)  # the CPU's is not asked
    assert resolve_precision("auto", "cuda") == ("bf16" if gpu_bf16 else "fp32")
    assert (emulated_bf16_warning("bf16", "cuda") is None) == gpu_bf16


def test_explicit_bf16_without_native_support_says_how_much_slower(monkeypatch):
    import torch

    from harness.algorithms import emulated_bf16_warning

    monkeypatch.setattr("harness.algorithms.cpu_runs_bf16", lambda: False)
    warning = emulated_bf16_warning("bf16", "cpu")
    assert warning.startswith(
        f"precision bf16 on this CPU (torch: {torch.backends.cpu.get_cpu_capability()}) without native bfloat16"
    )
    assert "~17.7x slower than fp32" in warning and "use precision auto or fp32" in warning
    assert emulated_bf16_warning("fp32", "cpu") is None and emulated_bf16_warning("auto", "cpu") is None
    monkeypatch.setattr("harness.algorithms.cpu_runs_bf16", lambda: True)
    assert emulated_bf16_warning("bf16", "cpu") is None


@pytest.mark.parametrize(
    "onednn, avx512_bf16, amx, native",
    [
        (True, False, False, False),  # AVX-512 without bf16 instructions (Ice Lake): oneDNN says yes, it emulates
        (True, True, False, True),  # AVX512-BF16 (Zen 4/5, Cooper Lake)
        (True, False, True, True),  # AMX (Sapphire Rapids and later)
        (False, True, True, False),  # ONEDNN_MAX_CPU_ISA=AVX2 on such a CPU: oneDNN may not use them
        (False, False, False, False),  # AVX2 only (Zen 3, most laptops)
    ],
)
def test_native_bf16_needs_the_instructions_and_onednn(monkeypatch, onednn, avx512_bf16, amx, native):
    import torch

    from harness.algorithms import native_bf16

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bf16("cpu") is native
