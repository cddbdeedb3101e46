"""Same config and seed twice: identical evaluation (SB3's test_deterministic, on a real Fetch env)."""

import pytest
import torch

from harness.models import load_checkpoint
from harness.config import resolve_config
from harness.evaluation import evaluate_checkpoint
from harness.training import RunOptions, train

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out


def test_same_config_and_seed_give_identical_eval_metrics(store):
    config = resolve_config(
        "fast",
        "FetchReach-v4",
        {"her": True, "seed": 5, "total_steps": 400, "learning_starts": 100, "eval_freq": 200, "eval_episodes": 2},
    )
    reports, weights = [], []
    for _ in range(2):
        result = train(config, RunOptions(experiment="determinism", torch_threads=1))
        reports.append(evaluate_checkpoint(str(result.checkpoint), n_episodes=5))
        weights.append(torch.cat([p.flatten() for p in load_checkpoint(result.run_id).model.policy.parameters()]))
    assert reports[0]["run_id"] != reports[1]["run_id"]
    for key in ("success_rate", "mean_return", "final_distance"):
        assert reports[0][key] == reports[1][key]
    assert reports[0]["episodes"] == reports[1]["episodes"]
    assert torch.equal(weights[0], weights[1])
