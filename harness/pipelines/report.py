"""Pipeline stage 4, report: the comparison table, plot and markdown, logged to the pipeline's parent run.

A report is built by a callable ``build(parent_run_id, run_ids_by_name)`` that the pipeline calls
once every job is done; the run names come from :class:`RunIdentity`, as the jobs' did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import mlflow
from mlflow.tracking import MlflowClient

from harness.comparison import ROWS, SUCCESS, condition_statistics, episodes_of, learning_curve
from harness.comparison_report import format_cell, report_comparison
from harness.evaluation import RESULTS_DIR, floor_run
from harness.run_schema import RunIdentity
from harness.reporting import Table, new_figure, publish_report, save_figure
from harness.statistics import summarize


def chapter_report(env_id: str, seeds: Sequence[int], algo: str) -> Callable:
    """The comparison (child run), then the markdown report on the parent run."""

    def build(parent_id: str, run_ids: dict[str, str]) -> dict[str, Any]:
        client = MlflowClient()
        found = {
            her: [client.get_run(run_ids[RunIdentity(env_id, algo, her, seed).name]) for seed in seeds]
            for her in (False, True)
        }
        comparison = report_comparison(env_id, seeds, found, algo, parent_run_id=parent_id)
        body = "\n\n".join(
            [
                comparison["markdown_table"],
                "Mean +/- 95% confidence interval (Student's t, n-1 degrees of freedom) over seeds; "
                "each seed scored on the same deterministic evaluation episodes.",
                comparison["details"],
            ]
        )
        runs = Table(
            ["run", "condition", "seed", "eval success", "run id"],
            [
                [run.info.run_name, "HER" if her else "no-HER", seed, _percent(run.data.metrics[SUCCESS]), run.info.run_id]
                for her in (False, True)
                for seed, run in zip(seeds, found[her], strict=True)
            ],
        )
        title = f"{env_id}: {algo.upper()} without and with HER, seeds {', '.join(map(str, seeds))}"
        stem = RESULTS_DIR / f"ch04_{env_id.lower()}_report"
        files = publish_report(stem, title, body, Path(comparison["plot_file"]), appendix=runs.markdown())
        mlflow.log_artifact(comparison["results_file"])
        return {**comparison, **files}  # the pipeline's report replaces the comparison's own .md

    return build


def ablation_report(env_id: str, nsg_values: Sequence[int], seeds: Sequence[int], algo: str) -> Callable:
    """Table across n_sampled_goal values (mean +/- 95% CI over seeds), then per value the seeds,
    the IQM with its bootstrap CI and the pooled episodes' Wilson CI, beside the do-nothing floor;
    JSON, plot and markdown."""

    def build(parent_id: str, run_ids: dict[str, str]) -> dict[str, Any]:
        client = MlflowClient()
        rows, curves, table_rows, detail_rows = {}, {}, [], []
        runs_by_nsg = {
            nsg: [client.get_run(run_ids[RunIdentity(env_id, algo, True, seed, f"nsg{nsg}").name]) for seed in seeds]
            for nsg in nsg_values
        }
        all_runs = [run for runs in runs_by_nsg.values() for run in runs]
        floor = floor_run(env_id, max(episodes_of(r) for r in all_runs), all_runs[0].info.experiment_id)
        for nsg, runs in runs_by_nsg.items():
            ids = [r.info.run_id for r in runs]
            cells, rows[nsg] = [], {"run_ids": ids}
            for row in ROWS:
                summary = summarize([r.data.metrics[row.metric] for r in runs])
                rows[nsg][row.metric] = summary.to_dict()
                cells.append(format_cell(row, summary))  # as compare's table writes a cell
            table_rows.append([nsg, *cells])
            stats = rows[nsg]["statistics"] = condition_statistics(runs, seeds)
            pooled = stats["pooled_successes"] / max(stats["pooled_episodes"], 1)
            to_90 = stats["to_90"]["steps_iqm"]
            detail_rows.append(
                [
                    nsg,
                    ", ".join(f"{100 * v:.1f}%" for v in stats["success"]),
                    _percent_with_interval(stats["iqm"], stats["iqm_ci95"]),
                    f"{stats['pooled_successes']}/{stats['pooled_episodes']} "
                    + _percent_with_interval(pooled, stats["pooled_wilson_ci95"]),
                    "not every seed" if to_90 is None else f"{to_90 / 1000:.0f}k",
                ]
            )
            curves[nsg] = learning_curve(ids, SUCCESS)
        table = Table(["n_sampled_goal", *(row.label for row in ROWS)], table_rows, widths=(15, *(20 for _ in ROWS)))
        details = Table(
            [
                "n_sampled_goal",
                "success per seed (" + ", ".join(map(str, seeds)) + ")",
                "IQM [bootstrap 95% CI]",
                "pooled episodes [Wilson 95% CI]",
                "env steps to 90% (IQM)",
            ],
            detail_rows,
        ).markdown() + (
            f"\n\nDo-nothing floor (zero actions, the same {floor['n_episodes']} episodes): "
            f"{100 * floor['success_rate']:.1f}% (floor run {floor['run_id']})."
        )
        stem = RESULTS_DIR / f"ch04_{env_id.lower()}_ablation_nsg"
        report = {
            "env_id": env_id,
            "seeds": list(seeds),
            "nsg_values": list(nsg_values),
            "rows": rows,
            "floor": floor,
            "table": table.text(),
            "details": details,
        }
        _plot_ablation(env_id, nsg_values, rows, curves, floor, stem.with_suffix(".png"))
        title = f"{env_id}: HER n_sampled_goal ablation, seeds {', '.join(map(str, seeds))}"
        files = publish_report(stem, title, table.markdown() + "\n\n" + details, stem.with_suffix(".png"), report)
        return {**report, **files}

    return build


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def _percent_with_interval(value: float, interval) -> str:
    return f"{100 * value:.1f}%" + ("" if interval is None else f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]")


def _plot_ablation(env_id, nsg_values, rows, curves, floor, path: Path) -> None:
    from harness.comparison_report import plot_floor, plot_success_curve

    fig, (left, right) = new_figure(2, 11)
    for x, nsg in enumerate(nsg_values):
        stats = rows[nsg]["statistics"]
        left.scatter([x] * len(stats["success"]), stats["success"], color="tab:blue", alpha=0.5)
        low, high = stats["iqm_ci95"] or (stats["iqm"], stats["iqm"])
        left.errorbar(
            [x + 0.15], [stats["iqm"]], yerr=[[stats["iqm"] - low], [high - stats["iqm"]]], fmt="o", color="black", capsize=6
        )
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
