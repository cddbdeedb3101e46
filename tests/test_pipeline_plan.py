"""The pipelines' plan: per job, reuse, evaluate, resume or train, decided from what the store holds."""

import mlflow

from harness.run_schema import RunIdentity
from harness.pipelines import ablation_jobs, chapter_jobs
from harness.pipelines.plan import plan, unfinished_parent
from harness.provenance import code_version


def stored_run(client, experiment_id, job, status, **tags):
    """A training run as a pipeline's worker leaves it: same config hash, code version and run name."""
    run = client.create_run(
        experiment_id,
        tags={
            "harness.kind": "train",
            "harness.config_hash": job.config.config_hash,
            "mlflow.runName": job.run_name,
            "harness.code_version": code_version(),
            **job.identity.tags(),
            **tags,
        },
    )
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_plan_reuses_evaluates_resumes_or_trains(store, tmp_path):
    jobs = chapter_jobs("FetchReach-v4", [0, 1], "fast", {"total_steps": 300}, n_eval_episodes=5)
    assert [job.run_name for job in jobs] == [
        "sac_FetchReach-v4_seed0",
        "sac_FetchReach-v4_seed1",
        "sac_her_FetchReach-v4_seed0",
        "sac_her_FetchReach-v4_seed1",
    ]
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("plan")
    reusable = stored_run(client, experiment_id, jobs[0], "FINISHED", **{"harness.eval_episodes": "5"})
    stored_run(
        client, experiment_id, jobs[0], "FINISHED", **{"harness.eval_episodes": "3"}
    )  # scored on 3 episodes: not this plan's
    scored_otherwise = stored_run(client, experiment_id, jobs[1], "FINISHED", **{"harness.eval_episodes": "3"})
    killed = stored_run(client, experiment_id, jobs[2], "KILLED")
    (tmp_path / "checkpoints" / "resume" / killed / "step_000000000150").mkdir(parents=True)
    (tmp_path / "checkpoints" / "resume" / killed / "step_000000000300.tmp").mkdir()  # half-written: not picked
    stored_run(client, experiment_id, jobs[3], "FAILED")  # nothing to resume from
    stored_run(
        client, experiment_id, jobs[3], "FINISHED", **{"harness.code_version": "other", "harness.eval_episodes": "5"}
    )  # other code

    planned = plan(jobs, [experiment_id])
    assert [(p.action, p.run_id) for p in planned] == [
        ("reuse", reusable),
        ("evaluate", scored_otherwise),
        ("resume", killed),
        ("train", None),
    ]

    # another config (more steps) is another training: nothing of the above is reused for it
    longer = chapter_jobs("FetchReach-v4", [0], "fast", {"total_steps": 600}, n_eval_episodes=5)
    assert [p.action for p in plan(longer, [experiment_id])] == ["train", "train"]


def test_ablation_runs_have_their_own_identity():
    (job,) = ablation_jobs("FetchReach-v4", [2], [3], "fast", {}, n_eval_episodes=5)
    assert job.identity == RunIdentity("FetchReach-v4", "sac", True, 3, "nsg2")
    assert job.run_name == "sac_her_nsg2_FetchReach-v4_seed3"
    assert job.identity.tags("train")["harness.variant"] == "nsg2"
    assert RunIdentity.from_tags(job.identity.tags("train")) == job.identity


def test_an_unfinished_parent_is_found_by_its_key(store):
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("pipelines")
    done = client.create_run(experiment_id, tags={"harness.pipeline_key": "abc"})
    client.set_terminated(done.info.run_id, "FINISHED")
    assert unfinished_parent("abc") is None
    cut = client.create_run(experiment_id, tags={"harness.pipeline_key": "abc"})
    client.set_terminated(cut.info.run_id, "KILLED")
    assert unfinished_parent("abc") == cut.info.run_id
    assert unfinished_parent("other") is None


def test_on_a_server_with_accounts_the_plan_takes_up_only_this_accounts_runs(store, monkeypatch):
    """Another account's finished run of the very same job (tags and all) is never reused: the job trains."""
    from harness import accounts

    jobs = chapter_jobs("FetchReach-v4", [0], "fast", {"total_steps": 300}, n_eval_episodes=5)
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("plan")
    finished = {"harness.eval_episodes": "5"}
    stored_run(client, experiment_id, jobs[0], "FINISHED", **finished, **{"harness.created_by": "bob"})
    mine = stored_run(client, experiment_id, jobs[1], "FINISHED", **finished, **{"harness.created_by": "alice"})
    monkeypatch.setattr(accounts, "current_account", lambda: "alice")
    assert [(p.action, p.run_id) for p in plan(jobs, [experiment_id])] == [("train", None), ("reuse", mine)]
    monkeypatch.setattr(accounts, "current_account", lambda: None)  # a local store: no one to tell apart
    assert [p.action for p in plan(jobs, [experiment_id])] == ["reuse", "reuse"]
