"""Stage 6: pipelines. The chapter's ``reach-all`` / ``push-all`` / ``experiment`` and the ``n_sampled_goal`` ablation.

A pipeline is one parent MLflow run (``harness.kind=pipeline``); its trainings, evaluations and the
comparison are child runs (``mlflow.parentRunId``), so the UI groups them. Its life, one module each:

1. plan (:mod:`~harness.pipelines.plan`): for every training the pipeline needs, look in MLflow for a
   run with the same resolved config and code version. FINISHED and evaluated: **reuse** it. FINISHED,
   not evaluated: **evaluate** it. Interrupted with a resumable checkpoint: **resume** it in the same
   run. Otherwise: **train** it. Runs an earlier, killed attempt left RUNNING are marked KILLED first.
2. execute (:mod:`~harness.pipelines.execute`) the trainings and evaluations side by side: in local
   worker processes (``--workers``, torch threads split so the cores are not oversubscribed) or as Ray
   tasks (``--executor ray``), with a live overview (:mod:`~harness.pipelines.overview`) of queued,
   running (steps, steps/s, ETA) and finished runs;
3. report (:mod:`~harness.pipelines.report`): the comparison table, a plot and a markdown report,
   logged to the parent run and written under ``results/``.

Re-running the same command after a crash or SIGKILL therefore finishes the work: an unfinished
parent run with the same pipeline key is reopened, and only what is missing runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import mlflow

from harness import stores, tracking
from harness.checkpoints import CHECKPOINT_DIR
from harness.errors import HarnessError
from harness.run_schema import ACTIONS_TAG, EXECUTOR_TAG, KIND_TAG, PIPELINE_KEY_TAG, PIPELINE_TAG, WORKERS_TAG
from harness.pipelines.lease import Lease, refuse_if_held
from harness.pipelines.execute import EXECUTORS, check_ray_address, cpu_count, execute_local, execute_ray, job_spec
from harness.pipelines.overview import overview
from harness.pipelines.plan import (
    Job,
    Planned,
    ablation_jobs,
    chapter_jobs,
    mark_abandoned_runs_killed,
    pipeline_key,
    plan,
    unfinished_parent,
)
from harness.pipelines.report import ablation_report, chapter_report

__all__ = [
    "Job",
    "PipelineResult",
    "Planned",
    "ablation_jobs",
    "ablation_report",
    "chapter_jobs",
    "chapter_report",
    "run_pipeline",
]


@dataclass
class PipelineResult:
    parent_run_id: str
    planned: list[Planned]
    run_ids: dict[str, str] = field(default_factory=dict)  # run name -> training run id
    wall_time_s: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


def run_pipeline(
    kind: str,
    jobs: Sequence[Job],
    report: Callable[[str, dict[str, str]], dict[str, Any]],
    *,
    workers: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    experiment: str | None = None,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
) -> PipelineResult:
    """Plan, execute and report; ``report(parent_run_id, run_ids_by_name)`` builds the results."""
    if executor not in EXECUTORS:
        raise HarnessError(f"unknown executor '{executor}'; accepted: {', '.join(EXECUTORS)}")
    workers = workers or cpu_count()
    if workers < 1:
        raise HarnessError(f"--workers must be >= 1, got {workers}")
    if executor == "ray" and ray_address:
        check_ray_address(ray_address)
    threads = max(1, cpu_count() // workers)
    key = pipeline_key(kind, jobs)
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    lock = open(CHECKPOINT_DIR / f".pipeline-{key}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise HarnessError(f"this {kind} pipeline (key {key}) is already running in another process") from None

    stores.prepare_store()
    attached = bool(os.environ.get("MLFLOW_RUN_ID"))
    previous = None if attached else unfinished_parent(key)
    # Another copy on this store (another directory or machine) holds it: its trainings are live, not abandoned.
    refuse_if_held(kind, key)
    tags = {KIND_TAG: "pipeline", PIPELINE_TAG: kind, PIPELINE_KEY_TAG: key, EXECUTOR_TAG: executor, WORKERS_TAG: str(workers)}
    started = time.perf_counter()
    with (
        tracking.tracked_run(f"{kind}_{jobs[0].config.env_id}", tags, experiment, run_id=previous) as parent,
        Lease(parent.info.run_id),
    ):
        parent_id = parent.info.run_id
        experiment_ids = [parent.info.experiment_id]
        refuse_if_held(kind, key, ours=parent)  # two copies started at the same moment: the first goes on
        if previous:
            killed = mark_abandoned_runs_killed(parent_id, experiment_ids)
            echo(f"continuing pipeline run {parent_id} (an earlier attempt stopped; {killed} abandoned runs marked KILLED)")
        planned = plan(jobs, tracking.experiment_ids(None))
        counts = {a: sum(p.action == a for p in planned) for a in ("reuse", "evaluate", "resume", "train")}
        echo(
            f"{kind}: {len(jobs)} trainings: {counts['train']} to train, {counts['resume']} to resume, "
            f"{counts['evaluate']} to evaluate, {counts['reuse']} reused; {workers} {executor} workers x {threads} threads"
        )
        if not previous:  # params are immutable: a continued pipeline keeps its first plan
            mlflow.log_params({"jobs": len(jobs), **{f"planned_{a}": n for a, n in counts.items()}})

        specs = [job_spec(p, parent_id, Path.cwd()) for p in planned if p.action != "reuse"]
        env = {
            "MLFLOW_TRACKING_URI": stores.absolute_tracking_uri(),
            "MLFLOW_EXPERIMENT_ID": parent.info.experiment_id,
            **stores.credential_variables(),
        }
        last_shown = [""]

        def progress() -> None:
            text = overview(planned, parent_id, experiment_ids)
            if text != last_shown[0]:
                echo(f"[{time.strftime('%H:%M:%S')}]\n{text}")
                last_shown[0] = text

        progress()
        if specs and executor == "local":
            try:
                results = execute_local(specs, min(workers, len(specs)), env, threads, progress)
            except BaseException:
                # Stopped or failed: every worker has ended (execute.stop_workers), so a run still RUNNING is
                # one whose worker could not end it in time and was killed; nothing trains it any more.
                mark_abandoned_runs_killed(parent_id, experiment_ids)
                raise
        elif specs:
            results = execute_ray(specs, ray_address, env, threads, progress)
        else:
            results = []
        run_ids = {p.job.run_name: p.run_id for p in planned if p.action == "reuse"}
        run_ids.update({r["run_name"]: r["run_id"] for r in results})
        wall = time.perf_counter() - started
        result = PipelineResult(parent_id, planned, run_ids, wall)
        result.report = report(parent_id, run_ids)
        mlflow.log_metric("pipeline/wall_time_s", wall)
        mlflow.set_tag(ACTIONS_TAG, json.dumps({p.job.run_name: p.action for p in planned}))
    lock.close()
    return result
