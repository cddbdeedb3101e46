"""Stage 5b: the comparison as a reader gets it: the chapter's table, the plots, the markdown, the JSON
and the compare run that publishes them (``harness compare``, and every pipeline's report).

The runs and the statistics come from :mod:`harness.comparison`; this module only renders and publishes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import mlflow
import numpy as np

from harness import stores, tracking
from harness.accounts import OWN_RUNS_ONLY, AcceptedAccounts
from harness.comparison import (
    CONDITIONS,
    ROWS,
    Curve,
    TableRow,
    collect_runs,
    compare_metrics,
    comparison_path,
    condition_key,
    episodes_of,
    learning_curve,
    newest_evaluated_algo,
    run_provenance,
    seed_statistics,
)
from harness.credentials import redact
from harness.errors import HarnessError
from harness.evaluation import floor_run
from harness.run_schema import (
    ALGO_TAG,
    CLEAR_SEPARATION_TAG,
    ENV_TAG,
    KIND_TAG,
    PARENT_RUN_ID_TAG,
    SEEDS_TAG,
    SEPARATION_TAG_PREFIX,
    SEPARATION_TEST_TAG,
    WARNINGS_TAG,
)
from harness.reporting import Table, new_figure, publish_report, save_figure
from harness.statistics import Separation, Summary, summarize


def format_cell(row: TableRow, summary: Summary) -> str:
    if summary.ci95 is None:
        return row.fmt_mean(summary.mean)
    return f"{row.fmt_mean(summary.mean)} +/- {row.fmt_ci(summary.ci95)}"


def chapter_table(summaries: dict[str, dict[bool, Summary]]) -> Table:
    """The chapter's table: ``Metric | No-HER | HER | Delta``, values as mean +/- 95% CI."""
    rows = []
    for row in ROWS:
        no_her, her = summaries[row.metric][False], summaries[row.metric][True]
        rows.append([row.label, format_cell(row, no_her), format_cell(row, her), row.fmt_delta(her.mean - no_her.mean)])
    return Table(["Metric", "No-HER", "HER", "Delta"], rows, widths=(25, 20, 20, 12))


def plot_success_curve(ax, curve: Curve, label: str, color=None, x: str = "steps") -> None:
    """One learning curve (IQM eval success vs env steps, or vs wall-clock minutes) with its band."""
    xs = curve.steps if x == "steps" else curve.minutes
    if len(xs):
        ax.plot(xs, curve.center, color=color, label=label)
        ax.fill_between(xs, np.clip(curve.low, 0, 1), np.clip(curve.high, 0, 1), color=color, alpha=0.2)
    if x == "steps" and len(xs) and xs.max() >= 10_000:
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:.0f}k"))
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("env steps" if x == "steps" else "wall-clock minutes")
    ax.set_ylabel("eval success rate")


def plot_floor(ax, floor: dict | None) -> None:
    if floor is not None:
        ax.axhline(
            floor["success_rate"],
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"do-nothing floor {100 * floor['success_rate']:.1f}%",
        )


def plot_comparison(env_id: str, found: dict[bool, list], statistics: dict, path: Path) -> None:
    """Final success per seed with the IQM and its bootstrap CI; eval success vs env steps and vs
    wall-clock (IQM over seeds, bootstrap band); the do-nothing floor as a dashed line."""
    fig, (left, middle, right) = new_figure(3, 15)
    colors = {False: "tab:gray", True: "tab:blue"}
    for x, (label, her) in enumerate(CONDITIONS):
        condition = statistics["conditions"][condition_key(her)]
        values = condition["success"]
        left.scatter([x] * len(values), values, color=colors[her], alpha=0.6, label=f"{label} seeds")
        low, high = condition["iqm_ci95"] or (condition["iqm"], condition["iqm"])
        left.errorbar(
            [x + 0.15],
            [condition["iqm"]],
            yerr=[[condition["iqm"] - low], [high - condition["iqm"]]],
            fmt="o",
            color="black",
            capsize=6,
        )
        curve = learning_curve([r.info.run_id for r in found[her]])
        plot_success_curve(middle, curve, label=label, color=colors[her])
        plot_success_curve(right, curve, label=label, color=colors[her], x="minutes")
    for ax in (left, middle, right):
        plot_floor(ax, statistics["floor"])
    left.set_xticks([0, 1], [label for label, _ in CONDITIONS])
    left.set_xlim(-0.5, 1.5)
    left.set_ylim(-0.05, 1.05)
    left.set_ylabel("final eval success rate")
    left.set_title("Per seed (dots), IQM ± bootstrap 95% CI (black)")
    middle.set_title("Eval success during training, IQM ± 95% CI")
    right.set_title("... against wall-clock")
    middle.legend()
    save_figure(fig, path, f"{env_id}: HER vs no-HER")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _interval(ci, scale: float = 100.0, fmt: str = "{:.1f}") -> str:
    return "" if ci is None else " [" + ", ".join(fmt.format(scale * v) for v in ci) + "]"


def _reached(entry: dict[str, Any], key: str, fmt) -> str:
    values = entry[key]
    per_seed = ", ".join("never" if v is None else fmt(v) for v in values)
    center = entry[f"{key}_iqm"]
    reached = sum(v is not None for v in values)
    if reached == 0:
        return "never"
    if center is None:
        return f"{reached} of {len(values)} seeds ({per_seed})"
    return f"{fmt(center)} ({per_seed})"


def statistics_markdown(stats_report: dict[str, Any], separation_result: Separation) -> str:
    """The statistics after the chapter's table, as markdown (the report, the run's note and the console)."""
    conditions, floor, tests = stats_report["conditions"], stats_report["floor"], stats_report["tests"]
    seeds = conditions["her"]["seeds"]
    lines = [
        "Per seed (final eval success, deterministic episodes):",
        "",
        "| Condition | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---" * (len(seeds) + 1) + "|",
    ]
    for label, her in CONDITIONS:
        lines.append(f"| {label} | " + " | ".join(_pct(v) for v in conditions[condition_key(her)]["success"]) + " |")
    if floor is not None:
        lines += [
            "",
            f"Do-nothing floor of {stats_report['env_id']}: {_pct(floor['success_rate'])} (zero actions on the "
            f"same {floor['n_episodes']} episodes; floor run {floor['run_id']}).",
        ]
    steps = lambda v: f"{v / 1000:.0f}k" if v >= 10_000 else f"{v:.0f}"  # noqa: E731 - a one-line formatter
    minutes = lambda v: f"{v:.1f}"  # noqa: E731 - a one-line formatter
    lines += ["", "| Statistic | No-HER | HER |", "|---|---|---|"]
    rows = [
        ("IQM success [bootstrap 95% CI over seeds]", lambda c: f"{_pct(c['iqm'])}{_interval(c['iqm_ci95'])}"),
        (
            "Pooled episodes [Wilson 95% CI]",
            lambda c: (
                f"{c['pooled_successes']}/{c['pooled_episodes']} = "
                f"{_pct(c['pooled_successes'] / c['pooled_episodes'] if c['pooled_episodes'] else None)}"
                f"{_interval(c['pooled_wilson_ci95'])}"
            ),
        ),
        ("Env steps to 50% (IQM; per seed)", lambda c: _reached(c["to_50"], "steps", steps)),
        ("Env steps to 90% (IQM; per seed)", lambda c: _reached(c["to_90"], "steps", steps)),
        ("Minutes to 90% (IQM; per seed)", lambda c: _reached(c["to_90"], "minutes", minutes)),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | {cell(conditions['no_her'])} | {cell(conditions['her'])} |")
    welch = "n/a" if tests["welch_p"] is None else f"{tests['welch_p']:.2g}"
    smallest = 1 / math.comb(
        len(conditions["her"]["success"]) + len(conditions["no_her"]["success"]), len(conditions["her"]["success"])
    )
    lines += [
        "",
        f"HER > no-HER, one-sided p-values: Welch's t {welch}; Mann-Whitney U {tests['mann_whitney_p']:.2g}"
        f" (its smallest possible value with these seeds is {smallest:.2g}). Probability of improvement "
        f"{tests['probability_of_improvement']:.2f}{_interval(tests['probability_of_improvement_ci95'], 1, '{:.2f}')}.",
        "",
        f"**Clear separation: {'yes' if separation_result.clear else 'no'}**",
        "",
    ]
    for criterion, value, met in separation_result.criteria():
        lines.append(f"- {'yes' if met else 'NO'}: {criterion}: {value}")
    lines.append(f"- ideally > 70 points: {'yes' if separation_result.ideal else 'no'}")
    for warning in stats_report["warnings"]:
        lines += ["", f"Warning: {warning}"]
    return "\n".join(lines)


def compare(
    env_id: str,
    seeds: Sequence[int],
    algo: str | None = None,
    experiment: str | None = None,
    accepted: AcceptedAccounts = OWN_RUNS_ONLY,
) -> dict[str, Any]:
    """``harness compare``: the table, ``results/ch04_<env>_comparison.json`` and a compare run.
    ``algo`` None: the algo of the newest evaluated training run for the env (the ``fast`` preset
    trains Push with ddpg, the chapter with sac). On a server with accounts, of this account's runs and
    those ``accepted`` only (harness.accounts); the JSON names who made each run used."""
    if not seeds:
        raise HarnessError("--seeds is empty; give a comma-separated list such as 0,1,2")
    stores.prepare_store(create=False)
    if algo is None:
        algo = newest_evaluated_algo(env_id, tracking.experiment_ids(experiment), accepted)
        if algo is None:
            raise HarnessError(
                f"no finished, evaluated training run for {env_id} in {mlflow.get_tracking_uri()}; "
                "train it (harness train) and evaluate it (harness eval) first"
            )
    found = collect_runs(env_id, seeds, algo, experiment, accepted)
    return report_comparison(env_id, seeds, found, algo, experiment)


def report_comparison(
    env_id: str,
    seeds: Sequence[int],
    found: dict[bool, list],
    algo: str = "sac",
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Summarize the given runs (one per seed and condition): table, statistics and verdict, JSON,
    plot and a compare run (a child of ``parent_run_id`` in a pipeline)."""
    summaries = {
        row.metric: {her: summarize([r.data.metrics[row.metric] for r in found[her]]) for _, her in CONDITIONS} for row in ROWS
    }
    table = chapter_table(summaries)
    all_runs = found[False] + found[True]
    floor = floor_run(env_id, max(episodes_of(r) for r in all_runs), all_runs[0].info.experiment_id)
    statistics, verdict = seed_statistics(env_id, seeds, found, floor)
    details = statistics_markdown(statistics, verdict)
    report = {
        "env_id": env_id,
        "algo": algo,
        "seeds": list(seeds),
        "tracking_uri": redact(mlflow.get_tracking_uri()),
        "conditions": {
            condition_key(her): {
                "run_ids": [r.info.run_id for r in found[her]],
                "runs": [run_provenance(r) for r in found[her]],
                "per_seed": {row.metric: [r.data.metrics[row.metric] for r in found[her]] for row in ROWS},
                "summary": {row.metric: summaries[row.metric][her].to_dict() for row in ROWS},
            }
            for _, her in CONDITIONS
        },
        "delta": {row.metric: summaries[row.metric][True].mean - summaries[row.metric][False].mean for row in ROWS},
        "statistics": statistics,
        "clear_separation": verdict.clear,
        "warnings": statistics["warnings"],
        "table": table.text(),
        "details": details,
    }
    json_path = comparison_path(env_id)
    png_path = json_path.with_suffix(".png")
    plot_comparison(env_id, found, statistics, png_path)
    markdown = table.markdown() + "\n\n" + details

    tags = {
        KIND_TAG: "compare",
        ENV_TAG: env_id,
        ALGO_TAG: algo,
        SEEDS_TAG: ",".join(str(s) for s in seeds),
        CLEAR_SEPARATION_TAG: "yes" if verdict.clear else "no",
        SEPARATION_TEST_TAG: verdict.test,
    }
    for criterion in ("large", "significant", "consistent"):
        tags[f"{SEPARATION_TAG_PREFIX}{criterion}"] = "yes" if getattr(verdict, criterion) else "no"
    if statistics["warnings"]:
        tags[WARNINGS_TAG] = " | ".join(statistics["warnings"])
    if parent_run_id:
        tags[PARENT_RUN_ID_TAG] = parent_run_id
    with tracking.tracked_run(f"compare_{algo}_{env_id}", tags, experiment) as run:
        report["compare_run_id"] = run.info.run_id
        title = f"{env_id}: {algo.upper()} without and with HER"
        report.update(publish_report(json_path.with_suffix(""), title, markdown, png_path, report))
        tracking.log_metrics_at(run.info.run_id, compare_metrics(report, verdict), 0)
    report["results_file"] = str(json_path)
    report["plot_file"] = str(png_path)
    report["markdown_table"] = table.markdown()
    report["markdown"] = markdown
    return report
