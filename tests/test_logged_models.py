"""Checkpoints as MLflow logged models: each periodic evaluation's checkpoint is a logged model of its run at
its env step with the run's identity as tags and that evaluation's eval/* linked to it; how many stay is
bounded; `harness eval` and `harness register --best-checkpoint` take them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest

from harness.models import KeepCheckpoints
from harness.errors import HarnessError
from tests.conftest import TINY, cli_in_process, run_cli

ENV = "FetchReach-v4"


def test_keep_rules_parse_and_name_what_they_accept():
    assert str(KeepCheckpoints.parse("best:3")) == "best:3" and str(KeepCheckpoints.parse("all")) == "all"
    for bad in ("best", "best:0", "last:x", "some", "all:2"):
        with pytest.raises(
            HarnessError, match=rf"--keep-checkpoints must be all, none, best:K or last:K \(K >= 1\), got '{bad}'"
        ):
            KeepCheckpoints.parse(bad)


def model(step: int, success: float, mean_return: float):
    metrics = [
        SimpleNamespace(key="eval/success_rate", value=success),
        SimpleNamespace(key="eval/mean_return", value=mean_return),
    ]
    return SimpleNamespace(tags={"harness.step": str(step)}, metrics=metrics, step=step)


def test_keep_rules_choose_the_best_or_the_latest():
    models = [model(100, 0.5, -30), model(200, 0.9, -20), model(300, 0.9, -25), model(400, 0.2, -40), model(500, 0.9, -20)]
    kept = [m.step for m in models if m not in KeepCheckpoints.parse("best:2").to_delete(models)]
    assert kept == [200, 500]  # 90% and the better return; of those equal, both
    assert sorted(m.step for m in KeepCheckpoints.parse("best:1").to_delete(models)) == [100, 200, 300, 400]  # the later
    assert sorted(m.step for m in KeepCheckpoints.parse("last:2").to_delete(models)) == [100, 200, 300]
    assert KeepCheckpoints.parse("all").to_delete(models) == [] and KeepCheckpoints.parse("none").to_delete(models) == models


@pytest.mark.slow
def test_evaluated_checkpoints_are_logged_models_with_their_metrics_and_the_best_one_registers(store, tmp_path):
    args = ["train", "--env", ENV, "--her", "true", *TINY, "--eval-freq", "60", "--keep-checkpoints", "best:2"]
    cli_in_process(args, tmp_path, store)
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = {
        key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        for key in ("eval/success_rate", "eval/mean_return")
    }
    assert sorted(history["eval/success_rate"]) == [60, 120, 180, 240, 300]  # one point per evaluation, as before

    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string="metrics.`eval/success_rate` >= 0", output_format="list"
    )
    ranked = sorted(
        history["eval/success_rate"], key=lambda s: (history["eval/success_rate"][s], history["eval/mean_return"][s], s)
    )
    assert sorted(int(m.tags["harness.step"]) for m in models) == sorted(ranked[-2:])  # best:2 of the 5
    config_hash = run.data.tags["harness.config_hash"]
    for logged in models:
        step = int(logged.tags["harness.step"])
        assert logged.source_run_id == run.info.run_id and logged.name == f"sac_her_{ENV}_seed0-step{step}"
        expected = {"harness.env": ENV, "harness.her": "true", "harness.seed": "0", "harness.algo": "sac"}
        assert expected.items() <= logged.tags.items() and logged.tags["harness.config_hash"] == config_hash
        linked = {m.key: (m.step, m.value) for m in logged.metrics}
        assert linked["eval/success_rate"] == (step, history["eval/success_rate"][step])
        assert linked["eval/mean_return"] == (step, history["eval/mean_return"][step])

    best = max(
        models,
        key=lambda m: (
            history["eval/success_rate"][int(m.tags["harness.step"])],
            history["eval/mean_return"][int(m.tags["harness.step"])],
            int(m.tags["harness.step"]),
        ),
    )
    scored = run_cli(["eval", "--ckpt", f"models:/{best.model_id}", "--n-episodes", "2"], tmp_path, store)
    step = best.tags["harness.step"]
    assert f"logged model {best.model_id} (the checkpoint of step {step}) is scored as a result of its own" in scored.stdout
    assert (tmp_path / "results" / f"ch04_sac_her_fetchreach-v4_seed0_step{step}_eval.json").is_file()
    assert client.get_run(run.info.run_id).data.tags.get("harness.evaluated") is None  # not the run's evaluation

    registered = run_cli(["register", "--env", ENV, "--best-checkpoint"], tmp_path, store)
    assert f"from checkpoint {best.model_id} (step {step}) of run {run.info.run_id}" in registered.stdout
    version = client.get_model_version_by_alias(f"ch04-sac-her-{ENV}", "champion")
    assert version.tags["source_model_id"] == best.model_id and version.tags["source_step"] == step

    # the files are checked against the sha256 logged with them
    weights = Path(best.artifact_location.removeprefix("file://")) / "policy.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    refused = run_cli(["eval", "--ckpt", best.model_id, "--n-episodes", "1"], tmp_path, store, check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"harness: error: the files of logged model '{best.model_id}' differ from the sha256 logged with them; refusing them"
    ]
