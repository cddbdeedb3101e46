"""Stage 5: compare HER and no-HER over seeds, from what MLflow knows (never local files).

For each condition (no-HER, HER) and seed, the newest FINISHED training run tagged
``harness.evaluated=true`` is taken; its final ``eval/*`` metrics are summarized over seeds
(mean, std, 95% CI with Student's t) and printed in the chapter's table format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from harness import tracking
from harness.checkpoints import write_json_atomically
from harness.errors import HarnessError
from harness.evaluation import RESULTS_DIR
from harness.statistics import Summary, summarize

CONDITIONS = (("No-HER", False), ("HER", True))


@dataclass(frozen=True)
class TableRow:
    label: str
    metric: str
    fmt_mean: Callable[[float], str]
    fmt_ci: Callable[[float], str]
    fmt_delta: Callable[[float], str]


ROWS = (
    TableRow("Success Rate", "eval/success_rate", lambda m: f"{100 * m:.1f}%", lambda c: f"{100 * c:.1f}%",
             lambda d: f"{100 * d:+.1f}%"),
    TableRow("Return (mean)", "eval/mean_return", lambda m: f"{m:.2f}", lambda c: f"{c:.2f}", lambda d: f"{d:+.2f}"),
    TableRow("Final Distance", "eval/final_distance", lambda m: f"{m:.4f}", lambda c: f"{c:.3f}", lambda d: f"{d:+.3f}"),
)


def newest_evaluated_run(tags: dict[str, str], experiment_ids: Sequence[str]):
    """The newest FINISHED training run that ``harness eval`` scored and that has ``tags`` (None: none)."""
    tags = {"harness.kind": "train", "harness.evaluated": "true", **tags}
    runs = MlflowClient().search_runs(
        experiment_ids,
        filter_string=tracking.tag_filter(tags) + " and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def find_evaluated_runs(env_id: str, her: bool, seed: int, algo: str, experiment_ids: Sequence[str]):
    """The newest evaluated training run of (env, her, seed, algo), as a list of at most one."""
    run = newest_evaluated_run({"harness.env": env_id, "harness.her": str(her).lower(), "harness.seed": str(seed),
                                "harness.algo": algo}, experiment_ids)
    return [run] if run else []


def newest_evaluated_algo(env_id: str, experiment_ids: Sequence[str]) -> str | None:
    """The algo of the newest finished, evaluated training run for ``env_id`` (None: there is none)."""
    run = newest_evaluated_run({"harness.env": env_id}, experiment_ids)
    return run.data.tags.get("harness.algo") if run else None


def collect_runs(env_id: str, seeds: Sequence[int], algo: str, experiment: str | None) -> dict[bool, list]:
    """One run per (condition, seed), or one error line naming every missing (env, her, seed)."""
    ids = tracking.experiment_ids(experiment)
    found: dict[bool, list] = {False: [], True: []}
    missing = []
    for _, her in CONDITIONS:
        for seed in seeds:
            runs = find_evaluated_runs(env_id, her, seed, algo, ids)
            if runs:
                found[her].append(runs[0])
            else:
                missing.append(f"(env={env_id}, her={str(her).lower()}, seed={seed})")
    if missing:
        raise HarnessError(
            f"no finished, evaluated {algo} training run for {', '.join(missing)} in {mlflow.get_tracking_uri()}; "
            "train it (harness train) and evaluate it (harness eval) first"
        )
    return found


def format_cell(row: TableRow, summary: Summary) -> str:
    if summary.ci95 is None:
        return row.fmt_mean(summary.mean)
    return f"{row.fmt_mean(summary.mean)} +/- {row.fmt_ci(summary.ci95)}"


def format_table(summaries: dict[str, dict[bool, Summary]]) -> str:
    """The chapter's table: ``Metric | No-HER | HER | Delta``, values as mean +/- 95% CI."""
    lines = [f"{'Metric':<25} | {'No-HER':>20} | {'HER':>20} | {'Delta':>12}", "-" * 85]
    for row in ROWS:
        no_her, her = summaries[row.metric][False], summaries[row.metric][True]
        delta = row.fmt_delta(her.mean - no_her.mean)
        lines.append(f"{row.label:<25} | {format_cell(row, no_her):>20} | {format_cell(row, her):>20} | {delta:>12}")
    return "\n".join(lines)


def markdown_table(summaries: dict[str, dict[bool, Summary]]) -> str:
    lines = ["| Metric | No-HER | HER | Delta |", "|--------|--------|-----|-------|"]
    for row in ROWS:
        no_her, her = summaries[row.metric][False], summaries[row.metric][True]
        cells = [format_cell(row, no_her), format_cell(row, her), row.fmt_delta(her.mean - no_her.mean)]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def learning_curve(run_ids: Sequence[str], metric: str = "eval/success_rate") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% CI band of ``metric`` over runs, at the steps every run logged it."""
    client = MlflowClient()
    per_run = []
    for run_id in run_ids:
        history = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
        per_run.append({m.step: m.value for m in history})  # the latest value at a step wins
    steps = sorted(set.intersection(*(set(h) for h in per_run))) if per_run else []
    means, bands = [], []
    for step in steps:
        summary = summarize([h[step] for h in per_run])
        means.append(summary.mean)
        bands.append(summary.ci95 or 0.0)
    return np.array(steps), np.array(means), np.array(bands)


def plot_success_curve(ax, steps, mean, band, label: str, color=None) -> None:
    """One learning curve (mean eval success vs env steps) with its 95% CI band, clipped to [0, 1]."""
    if len(steps):
        ax.plot(steps, mean, color=color, label=label)
        ax.fill_between(steps, np.clip(mean - band, 0, 1), np.clip(mean + band, 0, 1), color=color, alpha=0.2)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval success rate")


def save_figure(fig, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(env_id: str, found: dict[bool, list], path: Path) -> None:
    """Left: final success per seed with mean and 95% CI; right: eval success vs env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {False: "tab:gray", True: "tab:blue"}
    for x, (label, her) in enumerate(CONDITIONS):
        values = [r.data.metrics["eval/success_rate"] for r in found[her]]
        summary = summarize(values)
        left.scatter([x] * len(values), values, color=colors[her], alpha=0.6, label=f"{label} seeds")
        left.errorbar([x + 0.15], [summary.mean], yerr=[[summary.ci95 or 0.0]], fmt="o", color="black", capsize=6)
        plot_success_curve(right, *learning_curve([r.info.run_id for r in found[her]]), label=label, color=colors[her])
    left.set_xticks([0, 1], [label for label, _ in CONDITIONS])
    left.set_ylim(-0.05, 1.05)
    left.set_ylabel("final eval success rate")
    left.set_title("Per seed (dots), mean ± 95% CI (black)")
    right.set_title("Eval success during training, mean ± 95% CI")
    right.legend()
    save_figure(fig, path, f"{env_id}: HER vs no-HER")


def comparison_path(env_id: str) -> Path:
    return RESULTS_DIR / f"ch04_{env_id.lower()}_comparison.json"


def compare(env_id: str, seeds: Sequence[int], algo: str | None = None, experiment: str | None = None) -> dict[str, Any]:
    """``harness compare``: the table, ``results/ch04_<env>_comparison.json`` and a compare run.
    ``algo`` None: the algo of the newest evaluated training run for the env (the ``fast`` preset
    trains Push with ddpg, the chapter with sac)."""
    if not seeds:
        raise HarnessError("--seeds is empty; give a comma-separated list such as 0,1,2")
    if algo is None:
        algo = newest_evaluated_algo(env_id, tracking.experiment_ids(experiment))
        if algo is None:
            raise HarnessError(f"no finished, evaluated training run for {env_id} in {mlflow.get_tracking_uri()}; "
                               "train it (harness train) and evaluate it (harness eval) first")
    found = collect_runs(env_id, seeds, algo, experiment)
    return report_comparison(env_id, seeds, found, algo, experiment)


def report_comparison(env_id: str, seeds: Sequence[int], found: dict[bool, list], algo: str = "sac",
                      experiment: str | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    """Summarize the given runs (one per seed and condition): table, JSON, plot and a compare run
    (a child of ``parent_run_id`` in a pipeline)."""
    summaries = {
        row.metric: {her: summarize([r.data.metrics[row.metric] for r in found[her]]) for _, her in CONDITIONS}
        for row in ROWS
    }
    table = format_table(summaries)
    report = {
        "env_id": env_id,
        "algo": algo,
        "seeds": list(seeds),
        "tracking_uri": mlflow.get_tracking_uri(),
        "conditions": {
            ("her" if her else "no_her"): {
                "run_ids": [r.info.run_id for r in found[her]],
                "per_seed": {row.metric: [r.data.metrics[row.metric] for r in found[her]] for row in ROWS},
                "summary": {row.metric: summaries[row.metric][her].to_dict() for row in ROWS},
            }
            for _, her in CONDITIONS
        },
        "delta": {row.metric: summaries[row.metric][True].mean - summaries[row.metric][False].mean for row in ROWS},
        "table": table,
    }
    json_path = comparison_path(env_id)
    png_path = json_path.with_suffix(".png")
    write_json_atomically(json_path, report)
    plot_comparison(env_id, found, png_path)

    tags = {"harness.kind": "compare", "harness.env": env_id, "harness.algo": algo,
            "harness.seeds": ",".join(str(s) for s in seeds)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with tracking.tracked_run(f"compare_{algo}_{env_id}", tags, experiment) as run:
        mlflow.log_text(markdown_table(summaries) + "\n", "comparison.md")
        mlflow.log_artifact(str(json_path))
        mlflow.log_artifact(str(png_path))
        metrics = {}
        for row in ROWS:
            name = row.metric.split("/")[-1]
            for label, her in CONDITIONS:
                metrics[f"{'her' if her else 'no_her'}/{name}_mean"] = summaries[row.metric][her].mean
            metrics[f"delta/{name}"] = report["delta"][row.metric]
        tracking.log_metrics_at(run.info.run_id, metrics, 0)
        report["compare_run_id"] = run.info.run_id
    report["results_file"] = str(json_path)
    report["plot_file"] = str(png_path)
    report["markdown_table"] = markdown_table(summaries)
    return report
