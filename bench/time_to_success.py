"""Time to success: wall-clock and env steps until a run's eval success first reaches 50% and 90%.

Reads the ``eval/success_rate`` learning curves that training logs to MLflow (the periodic
deterministic evaluation, ``eval_freq`` env steps apart), so it measures runs that already
exist, finished or still running:

    python bench/time_to_success.py --env FetchPush-v4 --preset fast   # the fast preset's SAC (--algo ddpg: the paper's DDPG)
    python bench/time_to_success.py --run-id <id> --run-id <id>

Wall-clock is counted from the run's start to the timestamp of the evaluation that first reached
the threshold; it includes evaluation and checkpoint time. ``--plot`` writes success vs
wall-clock minutes for the runs shown, one line per run, the thresholds dashed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import tracking
from harness.comparison import first_reached
from harness.errors import HarnessError
from harness.run_schema import ALGO_TAG, ENV_TAG, HER_TAG, KIND_TAG, PRESET_TAG, SEED_TAG

METRIC = "eval/success_rate"


def success_curve(run_id: str) -> list[tuple[int, float, float]]:
    """(env step, minutes since the run started, success rate), in step order."""
    client = MlflowClient()
    run = client.get_run(run_id)
    history = sorted(client.get_metric_history(run_id, METRIC), key=lambda m: (m.step, m.timestamp))
    if run.info.end_time:  # `harness eval` scores logged to a run after it ended are not on its learning curve
        history = [m for m in history if m.timestamp <= run.info.end_time]
    return [(m.step, (m.timestamp - run.info.start_time) / 60_000, m.value) for m in history]


def find_runs(env_id: str, algo: str, preset: str | None, her: bool, experiment: str | None) -> list:
    tags = {KIND_TAG: "train", ENV_TAG: env_id, ALGO_TAG: algo, HER_TAG: str(her).lower()}
    if preset:
        tags[PRESET_TAG] = preset
    return tracking.search_runs(tags, tracking.experiment_ids(experiment), order_by=("attributes.start_time ASC",))


def report(runs, thresholds: list[float]) -> list[dict]:
    rows = []
    for run in runs:
        curve = success_curve(run.info.run_id)
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "seed": run.data.tags.get(SEED_TAG),
            "status": run.info.status,
            "steps_evaluated": curve[-1][0] if curve else 0,
            "minutes_so_far": round(curve[-1][1], 1) if curve else 0.0,
            "last_success": curve[-1][2] if curve else None,
            "best_success": max((v for _, _, v in curve), default=None),
        }
        for threshold in thresholds:
            hit = first_reached(run, threshold)  # the rule compare uses: evaluations during training
            key = f"{round(100 * threshold)}%"
            row[f"steps_to_{key}"] = hit[0] if hit else None
            row[f"minutes_to_{key}"] = round(hit[1], 1) if hit and hit[1] is not None else None
        rows.append(row)
    return rows


def print_table(rows: list[dict], thresholds: list[float]) -> None:
    keys = [f"{round(100 * t)}%" for t in thresholds]
    header = f"{'run':34} {'seed':>4} {'status':9} {'steps':>8} {'min':>6} {'last':>6} {'best':>6}"
    header += "".join(f" {'steps@' + k:>11} {'min@' + k:>8}" for k in keys)
    click.echo(header)
    for r in rows:
        line = (
            f"{r['run_name'][:34]:34} {r['seed'] or '-':>4} {r['status']:9} {r['steps_evaluated']:>8} "
            f"{r['minutes_so_far']:>6.1f} {_pct(r['last_success']):>6} {_pct(r['best_success']):>6}"
        )
        for k in keys:
            steps, minutes = r[f"steps_to_{k}"], r[f"minutes_to_{k}"]
            line += f" {steps if steps is not None else 'never':>11} {minutes if minutes is not None else '-':>8}"
        click.echo(line)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def plot(runs, path: Path, title: str, thresholds: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        curve = success_curve(run.info.run_id)
        # the preset's budget tells apart runs of one name made under different preset versions
        steps = run.data.params.get("total_steps")
        budget = f", {int(steps) // 1000}k steps" if steps else ""
        label = f"{run.info.run_name} ({run.data.tags.get(PRESET_TAG)}{budget})"
        ax.plot([m for _, m, _ in curve], [100 * v for _, _, v in curve], label=label)
    for threshold in thresholds:
        ax.axhline(100 * threshold, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("wall-clock minutes since the run started")
    ax.set_ylabel("eval success rate (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@click.command()
@click.option("--env", "env_id", default="FetchPush-v4", show_default=True)
@click.option("--algo", default="sac", show_default=True, help="harness.algo tag of the runs.")
@click.option("--preset", default=None, help="harness.preset tag of the runs [default: any].")
@click.option("--her/--no-her", default=True, show_default=True)
@click.option("--run-id", "run_ids", multiple=True, help="Measure these runs instead of searching by tags.")
@click.option("--experiment", default=None, help="MLflow experiment [default: all].")
@click.option("--thresholds", default="0.5,0.9", show_default=True)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write success vs wall-clock to this PNG.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(env_id, algo, preset, her, run_ids, experiment, thresholds, plot_path, json_path):
    """Print, per run, the env steps and minutes until eval success first reached each threshold."""
    try:
        levels = [float(t) for t in thresholds.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"'{thresholds}' is not a comma-separated list of numbers", param_hint="--thresholds"
        ) from None
    try:
        if run_ids:
            runs = [tracking.get_run(r) for r in run_ids]
        else:
            runs = find_runs(env_id, algo, preset, her, experiment)
    except HarnessError as exc:
        raise click.ClickException(str(exc)) from None
    if not runs:
        raise click.ClickException(f"no training runs match env={env_id} algo={algo} preset={preset} her={her}")
    rows = report(runs, levels)
    print_table(rows, levels)
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2) + "\n")
    if plot_path:
        env_ids = sorted({run.data.tags.get(ENV_TAG, env_id) for run in runs})
        plot(runs, plot_path, f"{', '.join(env_ids)}: eval success vs wall-clock (dashed: thresholds)", levels)
        click.echo(f"plot: {plot_path}")


if __name__ == "__main__":
    main()
