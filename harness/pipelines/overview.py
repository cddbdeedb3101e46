"""Pipeline stage 3, the live overview: one line per job, read from the MLflow store while workers run."""

from __future__ import annotations

from collections.abc import Sequence

from harness import tracking
from harness.run_schema import EVALUATED_TAG
from harness.pipelines.plan import Planned


def overview(planned: Sequence[Planned], parent_run_id: str, experiment_ids: Sequence[str]) -> str:
    """One line per job: reused / queued / running (steps, steps/s, ETA) / done (eval success)."""
    children = tracking.child_runs(parent_run_id, experiment_ids, kind="train")
    by_name = {r.info.run_name: r for r in children}  # oldest first: the newest attempt wins
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
        elif run is not None and run.data.tags.get(EVALUATED_TAG) == "true":
            lines.append(f"  {name:<42} done     eval success {100 * run.data.metrics.get('eval/success_rate', 0):.0f}%")
        else:
            lines.append(f"  {name:<42} {'evaluating' if run is not None or item.action == 'evaluate' else 'queued'}")
    return "\n".join(lines)
