"""Stage 5: compare HER and no-HER over seeds, from what MLflow knows (never local files).

For each condition (no-HER, HER) and seed, the newest FINISHED training run tagged
``harness.evaluated=true`` is taken; its final ``eval/*`` metrics are summarized over seeds
(mean, std, 95% CI with Student's t) and printed in the chapter's table format. Then come the
statistics of :mod:`harness.statistics` (per seed, IQM with bootstrap intervals, pooled-episode
Wilson intervals, tests of HER > no-HER, probability of improvement), the env's do-nothing floor
(a ``harness.kind=floor`` run, measured once per env) and the chapter's "clear separation" verdict.
This module finds the runs and computes; :mod:`harness.comparison_report` renders and publishes.
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

from harness import accounts, tracking
from harness.accounts import OWN_RUNS_ONLY, AcceptedAccounts
from harness.errors import HarnessError, warn
from harness.evaluation import RESULTS_DIR, threshold_metrics
from harness.run_schema import (
    ALGO_TAG,
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
    TOTAL_STEPS_TAG,
    VARIANT_TAG,
)
from harness.statistics import (
    Separation,
    bootstrap_interval,
    iqm,
    iqm_interval,
    mann_whitney_p_value,
    pooled_successes,
    probability_of_improvement,
    separation,
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


def newest_evaluated_algo(
    env_id: str, experiment_ids: Sequence[str], accepted: AcceptedAccounts = OWN_RUNS_ONLY
) -> str | None:
    """The algo of the newest finished, evaluated training run for ``env_id`` that this account may use
    (None: there is none)."""
    tags = {KIND_TAG: "train", EVALUATED_TAG: "true", ENV_TAG: env_id}
    runs = tracking.search_runs(tags, experiment_ids, status="FINISHED", max_results=tracking.SEARCH_PAGE)
    usable = accounts.usable_runs(runs, accepted)[0]
    return usable[0].data.tags.get(ALGO_TAG) if usable else None


def collect_runs(
    env_id: str, seeds: Sequence[int], algo: str, experiment: str | None, accepted: AcceptedAccounts = OWN_RUNS_ONLY
) -> dict[bool, list]:
    """One run per (condition, seed), or one error line naming every missing (env, her, seed). On a server
    with accounts, the newest run this account made (or one ``accepted`` made): harness.accounts."""
    ids = tracking.experiment_ids(experiment)
    found: dict[bool, list] = {False: [], True: []}
    missing, left_out = [], {}
    for _, her in CONDITIONS:
        for seed in seeds:
            # The chapter's runs only: an ablation variant of the same (env, algo, her, seed) is not one.
            candidates = [
                r
                for r in tracking.search_runs(
                    {KIND_TAG: "train", EVALUATED_TAG: "true", **RunIdentity(env_id, algo, her, seed).search_tags()},
                    ids,
                    status="FINISHED",
                )
                if not r.data.tags.get(VARIANT_TAG)
            ]
            usable, others = accounts.usable_runs(candidates, accepted)
            for maker, count in others.items():
                left_out[maker] = left_out.get(maker, 0) + count
            if usable:
                found[her].append(usable[0])
            else:
                missing.append(f"(env={env_id}, her={str(her).lower()}, seed={seed})")
    if left_out:
        warn(accounts.left_out_line(left_out))
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
            f"no finished, evaluated {algo} training run{' made by this account' if left_out else ''} for "
            f"{', '.join(missing)} in {mlflow.get_tracking_uri()}; "
            "train it (harness train) and evaluate it (harness eval) first"
        )
    return found


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
    # Only evaluations during training (the final `harness eval` is logged after the run ended), and at each
    # step the latest: a resumed run redid the steps after its checkpoint, and its first reading there is void.
    latest = {m.step: m for m in sorted(history, key=lambda m: m.timestamp) if m.timestamp <= run.info.end_time}
    reached = sorted(step for step, m in latest.items() if m.value >= threshold)
    if not reached:
        return None
    return int(reached[0]), (latest[reached[0]].timestamp - run.info.start_time) / 60_000


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


def comparison_path(env_id: str) -> Path:
    return RESULTS_DIR / f"ch04_{env_id.lower()}_comparison.json"


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
        **accounts.makers(run),  # the server's stamp (harness.created_by) and the user the client claimed
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
