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

from harness.evaluation import RESULTS_DIR
from harness.identity import NOTE_TAG, RunIdentity
from harness.statistics import summarize


def chapter_report(env_id: str, seeds: Sequence[int], algo: str) -> Callable:
    """The comparison (child run), then the markdown report on the parent run."""
    from harness.comparison import report_comparison

    def build(parent_id: str, run_ids: dict[str, str]) -> dict[str, Any]:
        client = MlflowClient()
        found = {
            her: [client.get_run(run_ids[RunIdentity(env_id, algo, her, seed).name]) for seed in seeds]
            for her in (False, True)
        }
        comparison = report_comparison(env_id, seeds, found, algo, parent_run_id=parent_id)
        md_path = RESULTS_DIR / f"ch04_{env_id.lower()}_report.md"
        plot = Path(comparison["plot_file"]).name
        lines = [
            f"# {env_id}: {algo.upper()} without and with HER, seeds {', '.join(map(str, seeds))}",
            "",
            comparison["markdown_table"],
            "",
            "Mean +/- 95% confidence interval (Student's t, n-1 degrees of freedom) over seeds; "
            "each seed scored on the same deterministic evaluation episodes.",
            "",
            comparison["details"],
            "",
            f"![eval success]({plot})",
            "",
            "| run | condition | seed | eval success | run id |",
            "|---|---|---|---|---|",
        ]
        for her in (False, True):
            for seed, run in zip(seeds, found[her], strict=True):
                lines.append(
                    f"| {run.info.run_name} | {'HER' if her else 'no-HER'} | {seed} | "
                    f"{100 * run.data.metrics['eval/success_rate']:.0f}% | {run.info.run_id} |"
                )
        md_path.write_text("\n".join(lines) + "\n")
        mlflow.log_artifact(str(md_path))
        # The pipeline run's description in the MLflow UI (rendered as markdown).
        mlflow.set_tag(NOTE_TAG, "\n".join(lines[: lines.index(f"![eval success]({plot})")]))
        mlflow.log_artifact(comparison["plot_file"])
        mlflow.log_artifact(comparison["results_file"])
        return {**comparison, "report_file": str(md_path)}

    return build


def ablation_report(env_id: str, nsg_values: Sequence[int], seeds: Sequence[int], algo: str) -> Callable:
    """Table across n_sampled_goal values (mean +/- 95% CI over seeds), then per value the seeds,
    the IQM with its bootstrap CI and the pooled episodes' Wilson CI, beside the do-nothing floor;
    JSON, plot and markdown."""

    def build(parent_id: str, run_ids: dict[str, str]) -> dict[str, Any]:
        from harness.comparison import ROWS, SUCCESS, condition_statistics, episodes_of, format_cell, learning_curve
        from harness.evaluation import floor_run

        client = MlflowClient()
        rows, curves, table = {}, {}, []
        header = f"{'n_sampled_goal':<15} | " + " | ".join(f"{row.label:>20}" for row in ROWS)
        table += [header, "-" * len(header)]
        md = ["| n_sampled_goal | " + " | ".join(row.label for row in ROWS) + " |", "|---" * (len(ROWS) + 1) + "|"]
        details = [
            "| n_sampled_goal | success per seed (" + ", ".join(map(str, seeds)) + ") | "
            "IQM [bootstrap 95% CI] | pooled episodes [Wilson 95% CI] | env steps to 90% (IQM) |",
            "|---|---|---|---|---|",
        ]
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
            table.append(f"{nsg:<15} | " + " | ".join(f"{c:>20}" for c in cells))
            md.append(f"| {nsg} | " + " | ".join(cells) + " |")
            stats = rows[nsg]["statistics"] = condition_statistics(runs, seeds)
            details.append(
                f"| {nsg} | "
                + ", ".join(f"{100 * v:.1f}%" for v in stats["success"])
                + f" | {_percent_with_interval(stats['iqm'], stats['iqm_ci95'])}"
                + f" | {stats['pooled_successes']}/{stats['pooled_episodes']} "
                + _percent_with_interval(
                    stats["pooled_successes"] / max(stats["pooled_episodes"], 1), stats["pooled_wilson_ci95"]
                )
                + " | "
                + ("not every seed" if stats["to_90"]["steps_iqm"] is None else f"{stats['to_90']['steps_iqm'] / 1000:.0f}k")
                + " |"
            )
            curves[nsg] = learning_curve(ids, SUCCESS)
        details.append(
            f"\nDo-nothing floor (zero actions, the same {floor['n_episodes']} episodes): "
            f"{100 * floor['success_rate']:.1f}% (floor run {floor['run_id']})."
        )
        stem = RESULTS_DIR / f"ch04_{env_id.lower()}_ablation_nsg"
        report = {
            "env_id": env_id,
            "seeds": list(seeds),
            "nsg_values": list(nsg_values),
            "rows": rows,
            "floor": floor,
            "table": "\n".join(table),
            "details": "\n".join(details),
        }
        from harness.checkpoints import write_json_atomically

        write_json_atomically(stem.with_suffix(".json"), report)
        _plot_ablation(env_id, nsg_values, rows, curves, floor, stem.with_suffix(".png"))
        markdown = "\n".join(md) + "\n\n" + "\n".join(details) + "\n"
        stem.with_suffix(".md").write_text(
            f"# {env_id}: HER n_sampled_goal ablation, seeds {list(seeds)}\n\n"
            + markdown
            + f"\n![ablation]({stem.name}.png)\n"
        )
        for suffix in (".json", ".png", ".md"):
            mlflow.log_artifact(str(stem.with_suffix(suffix)))
        mlflow.set_tag(NOTE_TAG, f"# {env_id}: HER n_sampled_goal ablation\n\n{markdown}")
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
