"""Stage 5: compare HER and no-HER over seeds, from what MLflow knows (never local files).

For each condition (no-HER, HER) and seed, the newest FINISHED training run tagged
``harness.evaluated=true`` is taken; its final ``eval/*`` metrics are summarized over seeds
(mean, std, 95% CI with Student's t) and printed in the chapter's table format. Then come the
statistics of :mod:`harness.statistics` (per seed, IQM with bootstrap intervals, pooled-episode
Wilson intervals, tests of HER > no-HER, probability of improvement), the env's do-nothing floor
(a ``harness.kind=floor`` run, measured once per env) and the chapter's "clear separation" verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from harness import stores, tracking
from harness.credentials import redact
from harness.errors import HarnessError
from harness.evaluation import RESULTS_DIR, floor_run, threshold_metrics
from harness.identity import (
    ALGO_TAG,
    CLEAR_SEPARATION_TAG,
    CODE_VERSION_TAG,
    CPU_CAPABILITY_TAG,
    CPU_TAG,
    ENV_TAG,
    EVALUATED_TAG,
    EVAL_EPISODES_TAG,
    KIND_TAG,
    PARENT_RUN_ID_TAG,
    PRECISION_TAG,
    PRESET_TAG,
    RunIdentity,
    SEED_TAG,
    SEEDS_TAG,
    SEPARATION_TAG_PREFIX,
    SEPARATION_TEST_TAG,
    TOTAL_STEPS_TAG,
    VARIANT_TAG,
    WARNINGS_TAG,
)
from harness.reporting import Table, new_figure, publish_report, save_figure
from harness.statistics import (
    Separation,
    Summary,
    bootstrap_interval,
    iqm,
    iqm_interval,
    mann_whitney_p_value,
    pooled_successes,
    probability_of_improvement,
    separation,
    summarize,
    wilson_interval,
)

CONDITIONS = (("No-HER", False), ("HER", True))


@dataclass(frozen=True)
class TableRow:
    label: str
    metric: str
    fmt_mean: Callable[[float], str]
    fmt_ci: Callable[[float], str]
    fmt_delta: Callable[[float], str]
    valid: Callable[[float], bool] = math.isfinite
    accepted: str = "a finite number"


ROWS = (
    TableRow(
        "Success Rate",
        "eval/success_rate",
        lambda m: f"{100 * m:.1f}%",
        lambda c: f"{100 * c:.1f}%",
        lambda d: f"{100 * d:+.1f}%",
        lambda v: 0.0 <= v <= 1.0,  # False for NaN too
        "a share between 0 and 1",
    ),
    TableRow("Return (mean)", "eval/mean_return", lambda m: f"{m:.2f}", lambda c: f"{c:.2f}", lambda d: f"{d:+.2f}"),
    TableRow(
        "Final Distance",
        "eval/final_distance",
        lambda m: f"{m:.4f}",
        lambda c: f"{c:.3f}",
        lambda d: f"{d:+.3f}",
        lambda v: 0.0 <= v < math.inf,
        "a finite distance >= 0",
    ),
)


def newest_evaluated_algo(env_id: str, experiment_ids: Sequence[str]) -> str | None:
    """The algo of the newest finished, evaluated training run for ``env_id`` (None: there is none)."""
    run = tracking.newest_evaluated_run({ENV_TAG: env_id}, experiment_ids)
    return run.data.tags.get(ALGO_TAG) if run else None


def collect_runs(env_id: str, seeds: Sequence[int], algo: str, experiment: str | None) -> dict[bool, list]:
    """One run per (condition, seed), or one error line naming every missing (env, her, seed)."""
    ids = tracking.experiment_ids(experiment)
    found: dict[bool, list] = {False: [], True: []}
    missing = []
    for _, her in CONDITIONS:
        for seed in seeds:
            # The chapter's runs only: an ablation variant of the same (env, algo, her, seed) is not one.
            run = next(
                (
                    r
                    for r in tracking.search_runs(
                        {KIND_TAG: "train", EVALUATED_TAG: "true", **RunIdentity(env_id, algo, her, seed).search_tags()},
                        ids,
                        status="FINISHED",
                    )
                    if not r.data.tags.get(VARIANT_TAG)
                ),
                None,
            )
            if run is not None:
                found[her].append(run)
            else:
                missing.append(f"(env={env_id}, her={str(her).lower()}, seed={seed})")
    for run in found[False] + found[True]:
        lacking = [row.metric for row in ROWS if row.metric not in run.data.metrics]
        if lacking:  # tagged evaluated, its scores gone (deleted or never written): the table cannot be made
            raise HarnessError(
                f"training run {run.info.run_id} ({run.info.run_name}) is marked evaluated but has no "
                f"{', '.join(lacking)}; evaluate it again: harness eval --ckpt runs:/{run.info.run_id}/checkpoint"
            )
        for row in ROWS:
            value = run.data.metrics[row.metric]
            if not row.valid(value):  # written by hand or by another tool: a table of it would mean nothing
                raise HarnessError(
                    f"training run {run.info.run_id} ({run.info.run_name}) has {row.metric} = {value}, which no "
                    f"evaluation gives ({row.accepted}); evaluate it again: harness eval --ckpt runs:/{run.info.run_id}"
                )
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


def chapter_table(summaries: dict[str, dict[bool, Summary]]) -> Table:
    """The chapter's table: ``Metric | No-HER | HER | Delta``, values as mean +/- 95% CI."""
    rows = []
    for row in ROWS:
        no_her, her = summaries[row.metric][False], summaries[row.metric][True]
        rows.append([row.label, format_cell(row, no_her), format_cell(row, her), row.fmt_delta(her.mean - no_her.mean)])
    return Table(["Metric", "No-HER", "HER", "Delta"], rows, widths=(25, 20, 20, 12))


SUCCESS = "eval/success_rate"
# The chapter's "Common Issues": without HER, sparse Push (and the harder tasks) stay near the
# do-nothing floor; "if success rate > 10%, something is wrong with the setup".
SPARSE_TASKS_WITHOUT_HER_LEARNING = ("FetchPush-v4", "FetchPickAndPlace-v4", "FetchSlide-v4")
NO_HER_SUSPICIOUS_SUCCESS = 0.10
CURVE_RESAMPLES = 2_000  # per evaluation step of a curve; the final values get the full 10,000


@dataclass(frozen=True)
class Curve:
    """A metric over runs at the env steps every run evaluated: IQM and its bootstrap 95% band,
    and the mean wall-clock minutes (since each run started) at which the runs got there."""

    steps: np.ndarray
    minutes: np.ndarray
    center: np.ndarray
    low: np.ndarray
    high: np.ndarray


def learning_curve(run_ids: Sequence[str], metric: str = SUCCESS) -> Curve:
    client = MlflowClient()
    values, minutes = [], []
    for run_id in run_ids:
        started = client.get_run(run_id).info.start_time
        history = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
        values.append({m.step: m.value for m in history})  # the latest value at a step wins (the final eval)
        first_logged: dict[int, float] = {}
        for m in history:  # ... but the time it was first reached is the evaluation during training
            first_logged.setdefault(m.step, (m.timestamp - started) / 60_000)
        minutes.append(first_logged)
    steps = sorted(set.intersection(*(set(v) for v in values))) if values else []
    center, low, high = [], [], []
    for step in steps:
        at_step = [v[step] for v in values]
        center.append(float(iqm(at_step)))
        band = bootstrap_interval([at_step], iqm, CURVE_RESAMPLES) or (center[-1], center[-1])
        low.append(band[0])
        high.append(band[1])
    mean_minutes = [float(np.mean([m[step] for m in minutes])) for step in steps]
    return Curve(*(np.array(a) for a in (steps, mean_minutes, center, low, high)))


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


def condition_key(her: bool) -> str:
    return "her" if her else "no_her"


def episodes_of(run) -> int:
    """How many deterministic episodes ``harness eval`` scored the run on."""
    return int(run.data.metrics.get("eval/n_episodes") or run.data.tags.get(EVAL_EPISODES_TAG) or 0)


def first_reached(run, threshold: float) -> tuple[int, float | None] | None:
    """(env steps, minutes since the run started) at which the run's evaluation during training
    first read ``threshold`` or more; None: never. Runs trained before the harness logged
    ``eval/steps_to_<pct>`` get the same rule applied to their learning curve."""
    steps_key, minutes_key = threshold_metrics(threshold)
    if steps_key in run.data.metrics:
        return int(run.data.metrics[steps_key]), run.data.metrics.get(minutes_key)
    if run.info.end_time is None:
        return None
    history = MlflowClient().get_metric_history(run.info.run_id, SUCCESS)
    # Only evaluations during training: the final `harness eval` is logged after the run ended.
    during = sorted((m.step, m.timestamp) for m in history if m.timestamp <= run.info.end_time and m.value >= threshold)
    if not during:
        return None
    step, timestamp = during[0]
    return int(step), (timestamp - run.info.start_time) / 60_000


def time_to_threshold(runs: Sequence, threshold: float) -> dict[str, Any]:
    """Per seed env steps and minutes to ``threshold``, and their IQM where every seed got there."""
    reached = [first_reached(run, threshold) for run in runs]
    steps = [r[0] if r else None for r in reached]
    minutes = [r[1] if r else None for r in reached]
    everyone = all(r is not None for r in reached)
    return {
        "threshold": threshold,
        "steps": steps,
        "minutes": minutes,
        "steps_iqm": float(iqm(steps)) if everyone else None,
        "minutes_iqm": float(iqm(minutes)) if everyone and None not in minutes else None,
    }


def condition_statistics(runs: Sequence, seeds: Sequence[int]) -> dict[str, Any]:
    success = [r.data.metrics[SUCCESS] for r in runs]
    episodes = [episodes_of(r) for r in runs]
    successes = pooled_successes(success, episodes)
    return {
        "seeds": list(seeds),
        "run_ids": [r.info.run_id for r in runs],
        "success": success,
        "episodes": episodes,
        "iqm": float(iqm(success)),
        "iqm_ci95": iqm_interval(success),
        "pooled_successes": successes,
        "pooled_episodes": sum(episodes),
        "pooled_wilson_ci95": wilson_interval(successes, sum(episodes)) if sum(episodes) else None,
        "to_50": time_to_threshold(runs, 0.5),
        "to_90": time_to_threshold(runs, 0.9),
    }


def seed_statistics(
    env_id: str, seeds: Sequence[int], found: dict[bool, list], floor: dict | None
) -> tuple[dict[str, Any], Separation]:
    """Everything past the chapter's table: per condition, the tests, the verdict and the warnings."""
    conditions = {condition_key(her): condition_statistics(found[her], seeds) for _, her in CONDITIONS}
    her, no_her = conditions["her"], conditions["no_her"]
    verdict = separation(her["success"], no_her["success"], her["episodes"], no_her["episodes"])
    warnings = []
    if env_id in SPARSE_TASKS_WITHOUT_HER_LEARNING and np.mean(no_her["success"]) > NO_HER_SUSPICIOUS_SUCCESS:
        floor_text = f" (its do-nothing floor is {100 * floor['success_rate']:.1f}%)" if floor else ""
        warnings.append(
            f"no-HER reached {100 * np.mean(no_her['success']):.1f}% on sparse {env_id}{floor_text}: above "
            f"{100 * NO_HER_SUSPICIOUS_SUCCESS:.0f}% something is wrong with the setup (the chapter's Common Issues): "
            "check the env is the sparse one and the reward is -1 for failure, 0 for success"
        )
    return {
        "env_id": env_id,
        "conditions": conditions,
        "floor": floor,
        "tests": {
            "welch_p": verdict.p_value if verdict.test.startswith("Welch") else None,
            "mann_whitney_p": mann_whitney_p_value(her["success"], no_her["success"]),
            "p_value": verdict.p_value,
            "test": verdict.test,
            "probability_of_improvement": float(probability_of_improvement(her["success"], no_her["success"])),
            "probability_of_improvement_ci95": bootstrap_interval(
                [her["success"], no_her["success"]], probability_of_improvement
            ),
        },
        "separation": verdict.to_dict(),
        "warnings": warnings,
    }, verdict


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


def comparison_path(env_id: str) -> Path:
    return RESULTS_DIR / f"ch04_{env_id.lower()}_comparison.json"


def compare(env_id: str, seeds: Sequence[int], algo: str | None = None, experiment: str | None = None) -> dict[str, Any]:
    """``harness compare``: the table, ``results/ch04_<env>_comparison.json`` and a compare run.
    ``algo`` None: the algo of the newest evaluated training run for the env (the ``fast`` preset
    trains Push with ddpg, the chapter with sac)."""
    if not seeds:
        raise HarnessError("--seeds is empty; give a comma-separated list such as 0,1,2")
    stores.prepare_store(create=False)
    if algo is None:
        algo = newest_evaluated_algo(env_id, tracking.experiment_ids(experiment))
        if algo is None:
            raise HarnessError(
                f"no finished, evaluated training run for {env_id} in {mlflow.get_tracking_uri()}; "
                "train it (harness train) and evaluate it (harness eval) first"
            )
    found = collect_runs(env_id, seeds, algo, experiment)
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


def run_provenance(run) -> dict[str, Any]:
    """How one compared training was made and what it cost: what a reader of the results needs to say which
    code, budget and CPU a figure is for (``bench/results.py`` renders BENCHMARKS.md from it)."""
    tags, metrics = run.data.tags, run.data.metrics
    wall = metrics.get("time/wall_time_s")
    return {
        "run_id": run.info.run_id,
        "seed": int(tags[SEED_TAG]) if tags.get(SEED_TAG, "").isdigit() else None,
        "preset": tags.get(PRESET_TAG),
        "total_steps": int(tags[TOTAL_STEPS_TAG]) if tags.get(TOTAL_STEPS_TAG, "").isdigit() else None,
        "minutes": round(wall / 60, 1) if wall is not None else None,
        "code_version": tags.get(CODE_VERSION_TAG),
        "cpu": tags.get(CPU_TAG),
        "cpu_capability": tags.get(CPU_CAPABILITY_TAG),
        "precision": tags.get(PRECISION_TAG),
        "parent_run_id": tags.get(PARENT_RUN_ID_TAG),
    }


def compare_metrics(report: dict[str, Any], verdict: Separation) -> dict[str, float]:
    """What the compare run records as metrics (MLflow compares runs by these)."""
    metrics = {}
    for row in ROWS:
        name = row.metric.split("/")[-1]
        for _, her in CONDITIONS:
            metrics[f"{condition_key(her)}/{name}_mean"] = report["conditions"][condition_key(her)]["summary"][row.metric][
                "mean"
            ]
        metrics[f"delta/{name}"] = report["delta"][row.metric]
    statistics = report["statistics"]
    for key, condition in statistics["conditions"].items():
        metrics[f"{key}/success_iqm"] = condition["iqm"]
        for bound, value in zip(("low", "high"), condition["iqm_ci95"] or (), strict=False):
            metrics[f"{key}/success_iqm_ci95_{bound}"] = value
        for bound, value in zip(("low", "high"), condition["pooled_wilson_ci95"] or (), strict=False):
            metrics[f"{key}/pooled_success_wilson_{bound}"] = value
        for threshold in ("to_50", "to_90"):
            for unit in ("steps", "minutes"):
                if condition[threshold][f"{unit}_iqm"] is not None:
                    metrics[f"{key}/{unit}_{threshold}_iqm"] = condition[threshold][f"{unit}_iqm"]
    if statistics["floor"] is not None:
        metrics["floor/success_rate"] = statistics["floor"]["success_rate"]
    tests = statistics["tests"]
    metrics["test/p_value"] = tests["p_value"]
    metrics["test/mann_whitney_p"] = tests["mann_whitney_p"]
    if tests["welch_p"] is not None:
        metrics["test/welch_p"] = tests["welch_p"]
    metrics["test/probability_of_improvement"] = tests["probability_of_improvement"]
    metrics["separation/difference_points"] = verdict.difference_points
    for criterion in ("large", "significant", "consistent", "clear"):
        metrics[f"separation/{criterion}"] = float(getattr(verdict, criterion))
    return metrics
