"""Stage 6: pipelines. The chapter's ``reach-all`` / ``push-all`` and the ``n_sampled_goal`` ablation.

A pipeline is one parent MLflow run (``harness.kind=pipeline``); its trainings, evaluations and the
comparison are child runs (``mlflow.parentRunId``), so the UI groups them. Its life:

1. plan: for every training the pipeline needs, look in MLflow for a run with the same resolved
   config and code version. FINISHED and evaluated: **reuse** it. FINISHED, not evaluated:
   **evaluate** it. Interrupted with a resumable checkpoint: **resume** it in the same run.
   Otherwise: **train** it. Runs an earlier, killed attempt left RUNNING are marked KILLED first.
2. execute the trainings and evaluations side by side: in local worker processes (``--workers``,
   torch threads split so the cores are not oversubscribed) or as Ray tasks (``--executor ray``),
   with a live overview of queued, running (steps, steps/s, ETA) and finished runs;
3. report: the comparison table, a plot and a markdown report, logged to the parent run and
   written under ``results/``.

Re-running the same command after a crash or SIGKILL therefore finishes the work: an unfinished
parent run with the same pipeline key is reopened, and only what is missing runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import mlflow
from mlflow.tracking import MlflowClient

from harness import resume, tracking
from harness.checkpoints import CHECKPOINT_DIR
from harness.config import TrainConfig, resolve_config
from harness.envs import validate_her_start
from harness.errors import HarnessError, Terminated
from harness.evaluation import RESULTS_DIR
from harness.provenance import code_version
from harness.statistics import summarize

EXECUTORS = ("local", "ray")
OVERVIEW_SECONDS = 15.0


@dataclass(frozen=True)
class Job:
    """One training of a pipeline and the evaluation that follows it."""

    config: TrainConfig
    run_name: str
    n_eval_episodes: int


@dataclass
class Planned:
    job: Job
    action: str  # reuse | evaluate | resume | train
    run_id: str | None = None


@dataclass
class PipelineResult:
    parent_run_id: str
    planned: list[Planned]
    run_ids: dict[str, str] = field(default_factory=dict)  # run name -> training run id
    wall_time_s: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------- what to run

def chapter_jobs(env_id: str, seeds: Sequence[int], preset: str, overrides: dict[str, Any], n_eval_episodes: int) -> list[Job]:
    """The chapter's order: no-HER for every seed, then HER for every seed."""
    jobs = []
    for her in (False, True):
        for seed in seeds:
            config = resolve_config(preset, env_id, {**overrides, "her": her, "seed": seed})
            if her:
                validate_her_start(env_id, config.n_envs, config.learning_starts)
            jobs.append(Job(config, config.run_name, n_eval_episodes))
    return jobs


def ablation_jobs(env_id: str, nsg_values: Sequence[int], seeds: Sequence[int], preset: str,
                  overrides: dict[str, Any], n_eval_episodes: int) -> list[Job]:
    """HER runs, one per (n_sampled_goal, seed); named ``sac_her_nsg<k>_<env>_seed<s>`` so they don't collide."""
    jobs = []
    for nsg in nsg_values:
        for seed in seeds:
            config = resolve_config(preset, env_id, {**overrides, "her": True, "seed": seed, "n_sampled_goal": nsg})
            validate_her_start(env_id, config.n_envs, config.learning_starts)
            jobs.append(Job(config, f"{config.algo}_her_nsg{nsg}_{env_id}_seed{seed}", n_eval_episodes))
    return jobs


def pipeline_key(kind: str, jobs: Sequence[Job]) -> str:
    """Same key = same pipeline: same jobs, same evaluation, same code."""
    payload = json.dumps([kind, code_version(), [(j.run_name, j.config.config_hash, j.n_eval_episodes) for j in jobs]])
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def plan(jobs: Sequence[Job], experiment_ids: Sequence[str]) -> list[Planned]:
    """Decide per job: reuse, evaluate, resume or train (see the module docstring)."""
    client = MlflowClient()
    version = code_version()
    planned = []
    for job in jobs:
        tags = {"harness.kind": "train", "harness.config_hash": job.config.config_hash,
                "harness.code_version": version, "mlflow.runName": job.run_name}
        runs = client.search_runs(experiment_ids, tracking.tag_filter(tags), order_by=["attributes.start_time DESC"])
        finished = [r for r in runs if r.info.status == "FINISHED"]
        evaluated = [r for r in finished if r.data.tags.get("harness.eval_episodes") == str(job.n_eval_episodes)]
        resumable = [r for r in runs if r.info.status != "FINISHED" and resume.latest(r.info.run_id) is not None]
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
    stale = client.search_runs(
        experiment_ids, f"tags.\"mlflow.parentRunId\" = '{parent_run_id}' and attributes.status = 'RUNNING'"
    )
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)


# ---------------------------------------------------------------- running one job (in a worker)

def job_spec(planned: Planned, parent_run_id: str, cwd: Path) -> dict[str, Any]:
    """What a worker needs, as plain data (it crosses process and machine boundaries)."""
    return {"config": planned.job.config.to_dict(), "run_name": planned.job.run_name, "action": planned.action,
            "run_id": planned.run_id, "n_eval_episodes": planned.job.n_eval_episodes,
            "parent_run_id": parent_run_id, "cwd": str(cwd)}


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) and evaluate one job; runs in a worker process or a Ray task."""
    from harness.evaluation import evaluate_checkpoint
    from harness.training import train

    if Path(spec["cwd"]).is_dir():
        os.chdir(spec["cwd"])
    data = dict(spec["config"])
    data["net_arch"] = tuple(data["net_arch"])
    config = TrainConfig(**data)
    run_id = spec["run_id"]
    checkpoint = run_id  # evaluate-only: fetch the checkpoint from the run's artifacts
    if spec["action"] in ("train", "resume"):
        result = train(config, parent_run_id=spec["parent_run_id"], run_name=spec["run_name"],
                       resume_run_id=run_id if spec["action"] == "resume" else None)
        run_id, checkpoint = result.run_id, str(result.checkpoint)
    report = evaluate_checkpoint(checkpoint, n_episodes=spec["n_eval_episodes"], parent_run_id=spec["parent_run_id"])
    return {"run_name": spec["run_name"], "run_id": run_id, "action": spec["action"],
            "success_rate": report["success_rate"]}


def _local_job(spec: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_job` in a local worker process. Told to stop (SIGTERM, Ctrl-C), the worker ends its
    run KILLED and exits, rather than take the next job the executor had already queued for it."""
    try:
        return run_job(spec)
    except (KeyboardInterrupt, Terminated):
        os._exit(143)


def _init_worker(env: dict[str, str], torch_threads: int) -> None:
    """Each worker logs to the pipeline's store and experiment, never to the parent run itself,
    uses its share of the cores, and dies with the pipeline process (a SIGKILLed pipeline must not
    leave workers writing to runs that the next attempt takes over)."""
    os.environ.pop("MLFLOW_RUN_ID", None)
    os.environ.update(env)
    import torch

    torch.set_num_threads(torch_threads)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _ray_job(spec: dict[str, Any], env: dict[str, str], torch_threads: int) -> dict[str, Any]:
    _init_worker(env, torch_threads)
    return run_job(spec)


# ---------------------------------------------------------------- executors

def execute_local(specs: list[dict], workers: int, env: dict[str, str], threads: int, progress: Callable[[], None]) -> list[dict]:
    import multiprocessing

    results = []
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch/MuJoCo/SQLite state
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(env, threads))
    try:
        pending = {pool.submit(_local_job, spec) for spec in specs}
        while pending:
            done, pending = wait(pending, timeout=OVERVIEW_SECONDS, return_when=FIRST_COMPLETED)
            for future in done:
                results.append(future.result())
            progress()
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown()
    return results


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Ctrl-C, SIGTERM or a failed job: stop now. Leaving a ``with ProcessPoolExecutor`` block waits
    for the queue (``shutdown(wait=True)`` still runs every job not yet started). Queued jobs are
    cancelled and each worker gets SIGTERM, so the run it trains ends KILLED, not RUNNING."""
    workers = list((pool._processes or {}).values())  # the executor offers no public handle on them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        if process.is_alive():
            process.terminate()
    for process in workers:
        process.join(timeout=30)
        if process.is_alive():  # stuck: its run is left for the next attempt to mark KILLED
            process.kill()


def execute_ray(specs: list[dict], address: str | None, env: dict[str, str], threads: int,
                progress: Callable[[], None]) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise HarnessError("--executor ray needs Ray: pip install '.[ray]' (or pip install ray==2.60.0)") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=threads)(_ray_job)
        pending = [task.remote(spec, env, threads) for spec in specs]
        results = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=OVERVIEW_SECONDS)
            results.extend(ray.get(done))
            progress()
        return results
    finally:
        if started_here:
            ray.shutdown()


def absolute_tracking_uri() -> str:
    """Workers may start elsewhere (Ray): a relative SQLite path must not change meaning."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


# ---------------------------------------------------------------- live overview

def overview(planned: Sequence[Planned], parent_run_id: str, experiment_ids: Sequence[str]) -> str:
    """One line per job: reused / queued / running (steps, steps/s, ETA) / done (eval success)."""
    client = MlflowClient()
    children = client.search_runs(experiment_ids, f"tags.\"mlflow.parentRunId\" = '{parent_run_id}' and tags.\"harness.kind\" = 'train'")
    by_name = {r.info.run_name: r for r in sorted(children, key=lambda r: r.info.start_time)}
    lines = []
    for item in planned:
        name, total = item.job.run_name, item.job.config.total_steps
        run = by_name.get(name)
        if item.action == "reuse":
            lines.append(f"  {name:<42} reused   {item.run_id}")
        elif run is None and item.action != "evaluate":
            lines.append(f"  {name:<42} queued")
        elif run is not None and run.info.status == "RUNNING":
            steps = int(run.data.metrics.get("time/total_timesteps", 0))
            fps = run.data.metrics.get("time/fps", 0.0)
            eta = f"{(total - steps) / fps / 60:.1f} min" if fps > 0 else "?"
            lines.append(f"  {name:<42} running  {steps:>8}/{total} steps  {fps:6.0f} steps/s  ETA {eta}")
        elif run is not None and run.data.tags.get("harness.evaluated") == "true":
            lines.append(f"  {name:<42} done     eval success {100 * run.data.metrics.get('eval/success_rate', 0):.0f}%")
        else:
            lines.append(f"  {name:<42} {'evaluating' if run is not None or item.action == 'evaluate' else 'queued'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the pipeline

def run_pipeline(
    kind: str,
    jobs: Sequence[Job],
    report: Callable[[str, dict[str, str]], dict[str, Any]],
    *,
    workers: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    experiment: str | None = None,
    echo: Callable[[str], None] = click.echo,
) -> PipelineResult:
    """Plan, execute and report; ``report(parent_run_id, run_ids_by_name)`` builds the results."""
    if executor not in EXECUTORS:
        raise HarnessError(f"unknown executor '{executor}'; accepted: {', '.join(EXECUTORS)}")
    workers = workers or cpu_count()
    if workers < 1:
        raise HarnessError(f"--workers must be >= 1, got {workers}")
    threads = max(1, cpu_count() // workers)
    key = pipeline_key(kind, jobs)
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    lock = open(CHECKPOINT_DIR / f".pipeline-{key}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise HarnessError(f"this {kind} pipeline (key {key}) is already running in another process") from None

    tracking.prepare_store()
    attached = bool(os.environ.get("MLFLOW_RUN_ID"))
    previous = None if attached else _unfinished_parent(key)
    tags = {"harness.kind": "pipeline", "harness.pipeline": kind, "harness.pipeline_key": key,
            "harness.executor": executor, "harness.workers": str(workers)}
    started = time.perf_counter()
    with tracking.tracked_run(f"{kind}_{jobs[0].config.env_id}", tags, experiment, run_id=previous) as parent:
        parent_id = parent.info.run_id
        experiment_ids = [parent.info.experiment_id]
        if previous:
            killed = mark_abandoned_runs_killed(parent_id, experiment_ids)
            echo(f"continuing pipeline run {parent_id} (an earlier attempt stopped; {killed} abandoned runs marked KILLED)")
        planned = plan(jobs, tracking.experiment_ids(None))
        counts = {a: sum(p.action == a for p in planned) for a in ("reuse", "evaluate", "resume", "train")}
        echo(f"{kind}: {len(jobs)} trainings: {counts['train']} to train, {counts['resume']} to resume, "
             f"{counts['evaluate']} to evaluate, {counts['reuse']} reused; {workers} {executor} workers x {threads} threads")
        if not previous:  # params are immutable: a continued pipeline keeps its first plan
            mlflow.log_params({"jobs": len(jobs), **{f"planned_{a}": n for a, n in counts.items()}})

        specs = [job_spec(p, parent_id, Path.cwd()) for p in planned if p.action != "reuse"]
        env = {"MLFLOW_TRACKING_URI": absolute_tracking_uri(), "MLFLOW_EXPERIMENT_ID": parent.info.experiment_id}
        last_shown = [""]

        def progress() -> None:
            text = overview(planned, parent_id, experiment_ids)
            if text != last_shown[0]:
                echo(f"[{time.strftime('%H:%M:%S')}]\n{text}")
                last_shown[0] = text

        progress()
        if specs:
            if executor == "local":
                results = execute_local(specs, min(workers, len(specs)), env, threads, progress)
            else:
                results = execute_ray(specs, ray_address, env, threads, progress)
        else:
            results = []
        run_ids = {p.job.run_name: p.run_id for p in planned if p.action == "reuse"}
        run_ids.update({r["run_name"]: r["run_id"] for r in results})
        wall = time.perf_counter() - started
        result = PipelineResult(parent_id, planned, run_ids, wall)
        result.report = report(parent_id, run_ids)
        mlflow.log_metric("pipeline/wall_time_s", wall)
        mlflow.set_tag("harness.actions", json.dumps({p.job.run_name: p.action for p in planned}))
    lock.close()
    return result


def _unfinished_parent(key: str) -> str | None:
    client = MlflowClient()
    runs = client.search_runs(
        tracking.experiment_ids(None),
        f"tags.\"harness.pipeline_key\" = '{key}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None


# ---------------------------------------------------------------- reports

def chapter_report(env_id: str, seeds: Sequence[int], algo: str) -> Callable:
    """The comparison (child run), then the markdown report on the parent run."""
    from harness.comparison import report_comparison

    def build(parent_id: str, run_ids: dict[str, str]) -> dict[str, Any]:
        client = MlflowClient()
        found = {her: [client.get_run(run_ids[f"{algo}{'_her' if her else ''}_{env_id}_seed{s}"]) for s in seeds]
                 for her in (False, True)}
        comparison = report_comparison(env_id, seeds, found, algo, parent_run_id=parent_id)
        md_path = RESULTS_DIR / f"ch04_{env_id.lower()}_report.md"
        plot = Path(comparison["plot_file"]).name
        lines = [f"# {env_id}: {algo.upper()} without and with HER, seeds {', '.join(map(str, seeds))}", "",
                 comparison["markdown_table"], "",
                 "Mean +/- 95% confidence interval (Student's t, n-1 degrees of freedom) over seeds; "
                 "each seed scored on the same deterministic evaluation episodes.", "",
                 comparison["details"], "",
                 f"![eval success]({plot})", "", "| run | condition | seed | eval success | run id |", "|---|---|---|---|---|"]
        for her in (False, True):
            for seed, run in zip(seeds, found[her]):
                lines.append(f"| {run.info.run_name} | {'HER' if her else 'no-HER'} | {seed} | "
                             f"{100 * run.data.metrics['eval/success_rate']:.0f}% | {run.info.run_id} |")
        md_path.write_text("\n".join(lines) + "\n")
        mlflow.log_artifact(str(md_path))
        # The pipeline run's description in the MLflow UI (rendered as markdown).
        mlflow.set_tag("mlflow.note.content", "\n".join(lines[:lines.index(f"![eval success]({plot})")]))
        mlflow.log_artifact(comparison["plot_file"])
        mlflow.log_artifact(comparison["results_file"])
        return {**comparison, "report_file": str(md_path)}

    return build


def ablation_report(env_id: str, nsg_values: Sequence[int], seeds: Sequence[int], algo: str) -> Callable:
    """Table across n_sampled_goal values (mean +/- 95% CI over seeds), then per value the seeds,
    the IQM with its bootstrap CI and the pooled episodes' Wilson CI, beside the do-nothing floor;
    JSON, plot and markdown."""

    def build(parent_id: str, run_ids: dict[str, str]) -> dict[str, Any]:
        from harness.comparison import ROWS, SUCCESS, condition_statistics, episodes_of, learning_curve
        from harness.evaluation import floor_run

        client = MlflowClient()
        rows, curves, table = {}, {}, []
        header = f"{'n_sampled_goal':<15} | " + " | ".join(f"{row.label:>20}" for row in ROWS)
        table += [header, "-" * len(header)]
        md = ["| n_sampled_goal | " + " | ".join(row.label for row in ROWS) + " |", "|---" * (len(ROWS) + 1) + "|"]
        details = ["| n_sampled_goal | success per seed (" + ", ".join(map(str, seeds)) + ") | "
                   "IQM [bootstrap 95% CI] | pooled episodes [Wilson 95% CI] | env steps to 90% (IQM) |",
                   "|---|---|---|---|---|"]
        runs_by_nsg = {nsg: [client.get_run(run_ids[f"{algo}_her_nsg{nsg}_{env_id}_seed{s}"]) for s in seeds]
                       for nsg in nsg_values}
        all_runs = [run for runs in runs_by_nsg.values() for run in runs]
        floor = floor_run(env_id, max(episodes_of(r) for r in all_runs), all_runs[0].info.experiment_id)
        for nsg, runs in runs_by_nsg.items():
            ids = [r.info.run_id for r in runs]
            cells, rows[nsg] = [], {"run_ids": ids}
            for row in ROWS:
                summary = summarize([r.data.metrics[row.metric] for r in runs])
                rows[nsg][row.metric] = summary.to_dict()
                cell = row.fmt_mean(summary.mean) + ("" if summary.ci95 is None else f" +/- {row.fmt_ci(summary.ci95)}")
                cells.append(cell)
            table.append(f"{nsg:<15} | " + " | ".join(f"{c:>20}" for c in cells))
            md.append(f"| {nsg} | " + " | ".join(cells) + " |")
            stats = rows[nsg]["statistics"] = condition_statistics(runs, seeds)
            details.append(f"| {nsg} | " + ", ".join(f"{100 * v:.1f}%" for v in stats["success"])
                           + f" | {_percent_with_interval(stats['iqm'], stats['iqm_ci95'])}"
                           + f" | {stats['pooled_successes']}/{stats['pooled_episodes']} "
                           + _percent_with_interval(stats['pooled_successes'] / max(stats['pooled_episodes'], 1),
                                                    stats['pooled_wilson_ci95'])
                           + " | " + ("not every seed" if stats["to_90"]["steps_iqm"] is None
                                      else f"{stats['to_90']['steps_iqm'] / 1000:.0f}k") + " |")
            curves[nsg] = learning_curve(ids, SUCCESS)
        details.append(f"\nDo-nothing floor (zero actions, the same {floor['n_episodes']} episodes): "
                       f"{100 * floor['success_rate']:.1f}% (floor run {floor['run_id']}).")
        stem = RESULTS_DIR / f"ch04_{env_id.lower()}_ablation_nsg"
        report = {"env_id": env_id, "seeds": list(seeds), "nsg_values": list(nsg_values), "rows": rows,
                  "floor": floor, "table": "\n".join(table), "details": "\n".join(details)}
        from harness.checkpoints import write_json_atomically

        write_json_atomically(stem.with_suffix(".json"), report)
        _plot_ablation(env_id, nsg_values, rows, curves, floor, stem.with_suffix(".png"))
        markdown = "\n".join(md) + "\n\n" + "\n".join(details) + "\n"
        stem.with_suffix(".md").write_text(f"# {env_id}: HER n_sampled_goal ablation, seeds {list(seeds)}\n\n"
                                           + markdown + f"\n![ablation]({stem.name}.png)\n")
        for suffix in (".json", ".png", ".md"):
            mlflow.log_artifact(str(stem.with_suffix(suffix)))
        mlflow.set_tag("mlflow.note.content", f"# {env_id}: HER n_sampled_goal ablation\n\n{markdown}")
        return {**report, "results_file": str(stem.with_suffix(".json")), "report_file": str(stem.with_suffix(".md"))}

    return build


def _percent_with_interval(value: float, interval) -> str:
    return f"{100 * value:.1f}%" + ("" if interval is None else f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]")


def _plot_ablation(env_id, nsg_values, rows, curves, floor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.comparison import plot_floor, plot_success_curve, save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for x, nsg in enumerate(nsg_values):
        stats = rows[nsg]["statistics"]
        left.scatter([x] * len(stats["success"]), stats["success"], color="tab:blue", alpha=0.5)
        low, high = stats["iqm_ci95"] or (stats["iqm"], stats["iqm"])
        left.errorbar([x + 0.15], [stats["iqm"]], yerr=[[stats["iqm"] - low], [high - stats["iqm"]]], fmt="o",
                      color="black", capsize=6)
    left.set_xticks(range(len(nsg_values)), [str(n) for n in nsg_values])
    left.set_ylim(-0.05, 1.05)
    left.set_xlabel("n_sampled_goal")
    left.set_ylabel("final eval success rate")
    left.set_title("Per seed (dots), IQM ± bootstrap 95% CI (black)")
    for nsg in nsg_values:
        plot_success_curve(right, curves[nsg], label=f"k={nsg}")
    for ax in (left, right):
        plot_floor(ax, floor)
    right.legend()
    save_figure(fig, path, f"{env_id}: HER n_sampled_goal ablation")
