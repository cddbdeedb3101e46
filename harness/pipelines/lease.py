"""Pipeline stage 1b, lease: one attempt at a pipeline at a time per tracking store.

A pipeline's parent run carries a lease (tag ``harness.lease``: host, pid, directory, when renewed),
renewed every :data:`RENEW_S` seconds by a thread while the pipeline lives. Another copy of the same
pipeline (same key) on the same store, from any directory or machine, finds it and refuses in one
line, instead of taking the first one's live trainings for abandoned ones. A lease is free once its
holder is gone: on the same host, its process no longer runs; elsewhere, it was not renewed for
:data:`EXPIRES_S` seconds.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from harness import accounts, tracking
from harness.errors import HarnessError
from harness.atomic_files import process_alive
from harness.run_schema import LEASE_TAG, PIPELINE_KEY_TAG

RENEW_S = 15.0
EXPIRES_S = 90.0  # six renewals missed: a machine that stopped, a network that split


def holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "cwd": str(Path.cwd())}


def live_holder(run) -> dict[str, Any] | None:
    """Who holds the lease on a pipeline run, if it is another process that still lives (None: free). A run
    that ended (FINISHED, FAILED, KILLED) holds none: its process let go of it."""
    if run.info.status != "RUNNING":
        return None
    try:
        lease = json.loads(run.data.tags.get(LEASE_TAG, ""))
        host, pid, renewed = lease["host"], int(lease["pid"]), float(lease["renewed"])
    except (ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname():
        return lease if pid != os.getpid() and process_alive(pid) else None
    return lease if time.time() - renewed < EXPIRES_S else None


def refuse_if_held(kind: str, key: str, ours=None) -> None:
    """A HarnessError naming the holder when another living process holds a lease on an unfinished run of
    this pipeline. With ``ours`` (this attempt's run, its lease taken): only runs started before it count,
    so that of two copies started at the same moment the first goes on and the second stops."""
    runs = tracking.search_runs({PIPELINE_KEY_TAG: key}, tracking.experiment_ids(None), unfinished=True)
    # Another account's attempt holds no lease over this one: their runs are never taken up here (plan.own).
    for run in accounts.usable_runs(runs, accounts.OWN_RUNS_ONLY)[0]:
        if ours is not None and (run.info.start_time, run.info.run_id) >= (ours.info.start_time, ours.info.run_id):
            continue
        lease = live_holder(run)
        if lease is not None:
            raise HarnessError(
                f"this {kind} pipeline (key {key}) is already running on this store: pipeline run "
                f"{run.info.run_id}, pid {lease['pid']} on {lease['host']} in {lease['cwd']} (lease renewed "
                f"{max(0, time.time() - float(lease['renewed'])):.0f} s ago); wait for it, or stop it"
            )


class Lease:
    """Holds the lease on run ``run_id`` while the ``with`` block runs: set at once, renewed by a thread."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, name="pipeline-lease", daemon=True)

    def renew(self) -> None:
        MlflowClient().set_tag(self.run_id, LEASE_TAG, json.dumps({**holder(), "renewed": time.time()}))

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                self.renew()
            except Exception:  # a store briefly busy: the next renewal, well inside EXPIRES_S, will do
                pass

    def __enter__(self) -> Lease:
        self.renew()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
