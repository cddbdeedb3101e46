"""Pipeline stage 2, execute: each job trained (or resumed) and evaluated in a worker.

Jobs travel as plain data (:func:`job_spec`) and run side by side in local worker processes, torch
threads split so the cores are not oversubscribed, or as Ray tasks. Told to stop (SIGTERM, Ctrl-C,
a failed job), the local executor stops at once: queued jobs never start, and running ones end KILLED.
"""

from __future__ import annotations

import os
import socket
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any
from collections.abc import Callable

from harness.config import config_from_dict
from harness.errors import HarnessError, Terminated, first_line
from harness.library_logs import quiet_library_logs
from harness.pipelines.plan import Planned, lost_attempt

EXECUTORS = ("local", "ray")
OVERVIEW_SECONDS = 15.0
MAX_RAY_RETRIES = 3


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def job_spec(planned: Planned, parent_run_id: str, cwd: Path) -> dict[str, Any]:
    """What a worker needs, as plain data (it crosses process and machine boundaries)."""
    return {
        "config": planned.job.config.to_dict(),
        "variant": planned.job.identity.variant,
        "run_name": planned.job.run_name,
        "action": planned.action,
        "run_id": planned.run_id,
        "n_eval_episodes": planned.job.n_eval_episodes,
        "parent_run_id": parent_run_id,
        "cwd": str(cwd),
    }


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) and evaluate one job; runs in a worker process or a Ray task."""
    from harness.evaluation import evaluate_checkpoint
    from harness.training import RunOptions, train

    if spec["cwd"] and Path(spec["cwd"]).is_dir():
        os.chdir(spec["cwd"])
    config = config_from_dict(spec["config"])
    run_id, action = spec["run_id"], spec["action"]
    if action == "train":
        lost = lost_attempt(spec["parent_run_id"], spec["run_name"], [os.environ["MLFLOW_EXPERIMENT_ID"]])
        if lost is not None:
            run_id, action = lost, "resume"
    checkpoint = run_id  # evaluate-only: fetch the checkpoint from the run's artifacts
    if action in ("train", "resume"):
        result = train(
            config,
            RunOptions(
                parent_run_id=spec["parent_run_id"],
                variant=spec["variant"],
                resume_run_id=run_id if action == "resume" else None,
            ),
        )
        run_id, checkpoint = result.run_id, str(result.checkpoint)
    report = evaluate_checkpoint(checkpoint, n_episodes=spec["n_eval_episodes"], parent_run_id=spec["parent_run_id"])
    return {"run_name": spec["run_name"], "run_id": run_id, "action": action, "success_rate": report["success_rate"]}


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
    quiet_library_logs()
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


def execute_local(
    specs: list[dict], workers: int, env: dict[str, str], threads: int, progress: Callable[[], None]
) -> list[dict]:
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
    cancelled and each worker gets SIGTERM, so the run it trains ends KILLED, not RUNNING; one still alive
    30 s later is killed. When this returns, no worker is left."""
    workers = list((pool._processes or {}).values())  # the executor offers no public handle on them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        if process.is_alive():
            process.terminate()
    for process in workers:
        process.join(timeout=30)
        if process.is_alive():  # stuck: the pipeline marks its run KILLED (run_pipeline)
            process.kill()


RAY_WORKER_NICENESS = "RAY_worker_niceness"  # read by the raylet that ray.init starts
RAY_ADDRESS_FORMS = "auto on a node of a running cluster, HOST:PORT of its head, or ray://HOST:10001"


def check_ray_address(address: str) -> None:
    """Ask the head before anything starts: Ray itself waits minutes for a head that does not answer."""
    if address == "auto":
        return  # Ray reads the local node's address file and says at once when there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise HarnessError(f"--ray-address {address} is not an address; accepted: {RAY_ADDRESS_FORMS}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise HarnessError(f"no Ray cluster answers at --ray-address {address} ({exc.strerror or exc})") from None


def execute_ray(
    specs: list[dict], address: str | None, env: dict[str, str], threads: int, progress: Callable[[], None]
) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise HarnessError("--executor ray needs Ray: pip install '.[ray]' (or pip install ray==2.60.0)") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise HarnessError(
                    f"no Ray cluster answers at --ray-address {address} ({first_line(str(exc))}); "
                    f"accepted: {RAY_ADDRESS_FORMS}"
                ) from None
            # Workers on a cluster work in their own node's directory: the driver's may not exist there.
            specs = [{**spec, "cwd": ""} for spec in specs]
        else:
            # Ray runs its workers at niceness 15 by default, under the driver: beside any other busy
            # process (a second training, a test) the trainings, which are the whole work, then get a
            # few percent of a core (a 300-step training took minutes). The user's setting wins.
            os.environ.setdefault(RAY_WORKER_NICENESS, "0")
            ray.init(num_cpus=cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        # A task whose worker or node is lost runs again elsewhere (Ray retries only such system
        # failures, never an error of the job itself); run_job then continues the lost run from its
        # last resumable checkpoint (lost_attempt).
        task = ray.remote(num_cpus=threads, max_retries=MAX_RAY_RETRIES)(_ray_job)
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
