"""Pipeline stage 1, plan: what the pipeline trains (its jobs) and, per job, what is left to do.

For every training the pipeline needs, MLflow is asked for a run with the same resolved config and
code version. FINISHED and evaluated: **reuse** it. FINISHED, not evaluated: **evaluate** it.
Interrupted with a resumable checkpoint: **resume** it in the same run. Otherwise: **train** it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

from mlflow.tracking import MlflowClient

from harness import accounts, resume, tracking
from harness.config import TrainConfig, resolve_config
from harness.envs import validate_her_start
from harness.run_schema import (
    CODE_VERSION_TAG,
    CONFIG_HASH_TAG,
    EVAL_EPISODES_TAG,
    KIND_TAG,
    PIPELINE_KEY_TAG,
    RUN_NAME_TAG,
    RunIdentity,
)
from harness.provenance import code_version


@dataclass(frozen=True)
class Job:
    """One training of a pipeline and the evaluation that follows it."""

    config: TrainConfig
    identity: RunIdentity
    n_eval_episodes: int

    @property
    def run_name(self) -> str:
        return self.identity.name


@dataclass
class Planned:
    job: Job
    action: str  # reuse | evaluate | resume | train
    run_id: str | None = None


def chapter_jobs(env_id: str, seeds: Sequence[int], preset: str, overrides: dict[str, Any], n_eval_episodes: int) -> list[Job]:
    """The chapter's order: no-HER for every seed, then HER for every seed."""
    jobs = []
    for her in (False, True):
        for seed in seeds:
            config = resolve_config(preset, env_id, {**overrides, "her": her, "seed": seed})
            if config.episode_buffer:
                what = "--her" if her else "n_step_returns > 1"
                validate_her_start(env_id, config.n_envs, config.learning_starts, what)
            jobs.append(Job(config, RunIdentity.of(config), n_eval_episodes))
    return jobs


def ablation_jobs(
    env_id: str, nsg_values: Sequence[int], seeds: Sequence[int], preset: str, overrides: dict[str, Any], n_eval_episodes: int
) -> list[Job]:
    """HER runs, one per (n_sampled_goal, seed); their variant ``nsg<k>`` names them ``sac_her_nsg<k>_<env>_seed<s>``
    so they don't collide."""
    jobs = []
    for nsg in nsg_values:
        for seed in seeds:
            config = resolve_config(preset, env_id, {**overrides, "her": True, "seed": seed, "n_sampled_goal": nsg})
            validate_her_start(env_id, config.n_envs, config.learning_starts)
            jobs.append(Job(config, RunIdentity.of(config, variant=f"nsg{nsg}"), n_eval_episodes))
    return jobs


def pipeline_key(kind: str, jobs: Sequence[Job]) -> str:
    """Same key = same pipeline: same jobs, same evaluation, same code."""
    payload = json.dumps([kind, code_version(), [(j.run_name, j.config.config_hash, j.n_eval_episodes) for j in jobs]])
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def own(runs: Sequence) -> list:
    """The runs this account made: on a server with accounts a pipeline never takes up (reuses, evaluates,
    continues or marks) another account's runs, whatever their tags say (harness.accounts)."""
    return accounts.usable_runs(runs, accounts.OWN_RUNS_ONLY)[0]


def plan(jobs: Sequence[Job], experiment_ids: Sequence[str]) -> list[Planned]:
    """Decide per job: reuse, evaluate, resume or train (see the module docstring)."""
    version = code_version()
    planned = []
    for job in jobs:
        tags = {
            KIND_TAG: "train",
            CONFIG_HASH_TAG: job.config.config_hash,
            CODE_VERSION_TAG: version,
            RUN_NAME_TAG: job.run_name,
        }
        runs = own(tracking.search_runs(tags, experiment_ids))
        finished = [r for r in runs if r.info.status == "FINISHED"]
        evaluated = [r for r in finished if r.data.tags.get(EVAL_EPISODES_TAG) == str(job.n_eval_episodes)]
        resumable = [r for r in runs if r.info.status != "FINISHED" and resume.available(r.info.run_id)]
        if evaluated:
            planned.append(Planned(job, "reuse", evaluated[0].info.run_id))
        elif finished:
            planned.append(Planned(job, "evaluate", finished[0].info.run_id))
        elif resumable:
            planned.append(Planned(job, "resume", resumable[0].info.run_id))
        else:
            planned.append(Planned(job, "train"))
    return planned


def mark_abandoned_runs_killed(parent_run_id: str, experiment_ids: Sequence[str]) -> int:
    """Children a killed attempt left RUNNING (nothing is running them now: we hold the pipeline lock)."""
    client = MlflowClient()
    stale = own(tracking.child_runs(parent_run_id, experiment_ids, status="RUNNING"))
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)


def lost_attempt(parent_run_id: str, run_name: str, experiment_ids: Sequence[str]) -> str | None:
    """A job about to train may find its own run already there, RUNNING: an earlier attempt at this very
    job whose worker was lost (Ray runs a task again when its node dies; the pipeline, holding its
    lock, started nothing else under that name). Returns that run when it has a checkpoint to continue
    from (here or in its artifacts); without one the run is marked KILLED and the job trains anew."""
    for run in own(tracking.child_runs(parent_run_id, experiment_ids, kind="train", status="RUNNING")):
        if run.data.tags.get(RUN_NAME_TAG) != run_name:
            continue
        if resume.available(run.info.run_id):
            return run.info.run_id
        MlflowClient().set_terminated(run.info.run_id, "KILLED")
    return None


def unfinished_parent(key: str) -> str | None:
    """The parent run of an earlier attempt at this pipeline that did not finish (None: there is none)."""
    runs = own(tracking.search_runs({PIPELINE_KEY_TAG: key}, tracking.experiment_ids(None), unfinished=True))
    return runs[0].info.run_id if runs else None
