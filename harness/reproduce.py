"""`harness reproduce RUN_ID`: re-make a training run from its MLflow record and say whether it came out the same.

The record is what every training run logs: the resolved config (``config.json``), the git commit
and whether the tree was dirty (then its diff, ``git.diff``), the package versions, the CPU and the
torch threads. Reproducing a run:

1. reads that record and finds the code: this checkout when its code version is the run's, else a
   temporary git worktree at the run's commit with the run's diff applied (only with ``--apply-diff``:
   without it the diff is printed and the re-make refused, since anyone who can log a run can write it;
   a binary patch is always refused). A commit on no branch or tag of this checkout is shown and run
   only with ``--any-commit``: a run can name any commit object the repository holds;
2. trains the same config with that code (its own ``harness train``, in a temporary directory, against
   this tracking store), optionally only the first ``steps`` env steps; the new run is then tagged
   ``harness.kind=reproduce`` and ``harness.reproduces=<run id>`` (so ``compare`` and ``register``,
   which read training runs, never take it for one);
3. evaluates it on the run's evaluation episodes (whole re-makes of evaluated runs);
4. compares every metric the two runs share (the eval learning curve, SB3's training metrics, the
   final evaluation) at matching env steps. **identical**: every value equal, bit for bit.
   **equivalent**: not identical, but the final success is inside the seed-to-seed spread of that
   config (other seeds in the store) or, without two other seeds, inside the 95% Wilson interval of
   the run's evaluation. **different**: neither. The first env step where the curves part, and what
   differs in the environment (package versions, CPU, torch threads), are named.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from harness import stores, tracking
from harness.config import FIELD_NAMES, TrainConfig, config_from_dict
from harness.errors import HarnessError
from harness.atomic_files import make_scratch_directory
from harness.run_schema import (
    ALGO_TAG,
    CODE_VERSION_TAG,
    CPU_CAPABILITY_TAG,
    CPU_TAG,
    DEVICE_TAG,
    ENV_TAG,
    EVALUATED_TAG,
    EVAL_EPISODES_TAG,
    FIRST_DIFFERENCE_STEP_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    HER_TAG,
    KIND_TAG,
    NATIVE_BF16_TAG,
    NOTE_TAG,
    PRECISION_TAG,
    REPRODUCES_TAG,
    RunIdentity,
    SEED_TAG,
    TORCH_THREADS_TAG,
    VERDICT_TAG,
    VERSION_TAG_PREFIX,
)
from harness.provenance import DIFF_ARTIFACT, PROJECT_ROOT, code_version
from harness.statistics import wilson_interval

VERDICTS = ("identical", "equivalent", "different")
# What a reproduction compares beside the eval curve: SB3's training metrics (same keys, same steps).
COMPARED_PREFIXES = ("eval/", "train/", "rollout/")
# Wall-clock readings among them (eval/minutes_to_50, _90) differ on every run; their env-step
# counterparts (eval/steps_to_*) are compared.
WALL_CLOCK_METRICS = ("eval/minutes_to_",)
# What the arithmetic ran on: a reproduction on another CPU class may resolve precision 'auto' differently.
ENVIRONMENT_TAGS = (CPU_TAG, CPU_CAPABILITY_TAG, NATIVE_BF16_TAG, PRECISION_TAG, TORCH_THREADS_TAG, DEVICE_TAG)


@dataclass(frozen=True)
class Record:
    """What a training run logged about how it was made."""

    run: Any
    config: TrainConfig
    logged: dict[str, Any]
    """``config.json`` as the run logged it: the fields its code knew."""
    commit: str
    dirty: bool | None
    code_version: str

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def read_record(run_id: str) -> Record:
    run = tracking.get_run(run_id)
    tags = run.data.tags
    if tags.get(KIND_TAG) != "train":
        raise HarnessError(
            f"run {run_id} is a {tags.get(KIND_TAG, 'non-harness')} run; reproduce re-makes training runs (harness.kind=train)"
        )
    if run.info.status != "FINISHED":
        raise HarnessError(
            f"run {run_id} is {run.info.status}, not FINISHED: there is no finished run to compare "
            "with (an interrupted run resumes with the same harness train command)"
        )
    try:
        logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json")
    except Exception:
        raise HarnessError(f"run {run_id} has no config.json artifact: not made by harness train") from None
    config = config_from_dict({k: v for k, v in logged.items() if k in FIELD_NAMES})
    dirty = {"true": True, "false": False}.get(tags.get(GIT_DIRTY_TAG, "unknown"))
    return Record(run, config, logged, tags.get(GIT_COMMIT_TAG, "unknown"), dirty, tags.get(CODE_VERSION_TAG, ""))


def _git(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=120)


class NeedsApproval(HarnessError):
    """Re-making the run means running code the store names but this checkout does not vouch for: its
    logged diff (``--apply-diff``) or a commit on no branch or tag (``--any-commit``). ``shown`` is that
    code, control characters escaped, for the user to read first."""

    def __init__(self, message: str, shown: str):
        super().__init__(message)
        self.shown = shown


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab written as an escape (``\\x1b``), so
    that a terminal shows what is there: an ANSI sequence cannot move the cursor and hide a line."""
    return "".join(ch if ch in "\n\t" or ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _on_a_branch_or_tag(commit: str) -> bool:
    """Part of this checkout's history: reachable from HEAD (a detached checkout too) or from a branch or tag."""
    if _git("merge-base", "--is-ancestor", commit, "HEAD").returncode == 0:
        return True
    listed = _git("for-each-ref", "--contains", commit, "--count=1", "refs/heads", "refs/tags", "refs/remotes")
    return listed.returncode == 0 and bool(listed.stdout.strip())


def patched_files(record: Record, diff: str, workdir: Path) -> list[str]:
    """Every file the logged diff touches, as git itself reads the patch (not from its ``+++`` lines, which
    a binary or rename patch does not have); a binary patch is refused: nobody can read it first."""
    patch = workdir / DIFF_ARTIFACT
    patch.write_text(diff if diff.endswith("\n") else diff + "\n")  # provenance strips git's last newline
    listed = _git("apply", "--numstat", str(patch), cwd=workdir)
    if listed.returncode != 0:
        reason = (listed.stderr.strip().splitlines() or ["git apply failed"])[-1]
        raise HarnessError(f"the {DIFF_ARTIFACT} run {record.run_id} logged is not a patch git can read: {printable(reason)}")
    rows = [line.split("\t", 2) for line in listed.stdout.splitlines() if line.count("\t") >= 2]
    binary = [name for added, removed, name in rows if added == "-" or removed == "-"]
    if binary or "GIT binary patch" in diff:
        raise HarnessError(
            f"the {DIFF_ARTIFACT} run {record.run_id} logged changes binary file(s) "
            f"({printable(', '.join(binary[:3]) or 'a GIT binary patch')}), which nobody can read before running; "
            "refusing to re-make it (harness train logs text diffs only)"
        )
    return [printable(name) for _, _, name in rows]


def code_tree(record: Record, workdir: Path, apply_diff: bool = False, any_commit: bool = False) -> Path:
    """The code the run was made with: this checkout if it is that code, else a worktree at its commit
    (plus its logged diff, only with ``apply_diff``: anyone who can log to the store can write that
    artifact, and the re-made training runs it). A commit on no branch or tag of this checkout (one a
    planted ``git commit-tree`` made, say) is run only with ``any_commit``."""
    if record.code_version and record.code_version == code_version():
        return PROJECT_ROOT
    if record.commit == "unknown":
        raise HarnessError(
            f"run {record.run_id} recorded no git commit (made outside a git checkout); it cannot be re-made from its code"
        )
    if _git("cat-file", "-e", f"{record.commit}^{{commit}}").returncode != 0:
        raise HarnessError(
            f"commit {record.commit[:12]} of run {record.run_id} is not in this repository "
            f"({PROJECT_ROOT}); fetch it (git fetch --unshallow, or from the repository it came from)"
        )
    if not any_commit and not _on_a_branch_or_tag(record.commit):
        raise NeedsApproval(
            f"commit {record.commit[:12]} of run {record.run_id} is on no branch or tag of this checkout "
            "(above: what it changes); re-making the run runs it; read it, then pass --any-commit to run it",
            printable(_git("log", "-1", "--stat", "--no-color", record.commit).stdout),
        )
    diff = None
    if record.dirty:
        try:
            diff = mlflow.artifacts.load_text(f"runs:/{record.run_id}/{DIFF_ARTIFACT}")
        except Exception:
            raise HarnessError(
                f"run {record.run_id} was made from a tree with uncommitted changes and logged no "
                f"{DIFF_ARTIFACT} (runs from before the harness logged it): its code cannot be "
                "re-made exactly"
            ) from None
    if diff:
        files = patched_files(record, diff, workdir)
        if not apply_diff:
            raise NeedsApproval(
                f"run {record.run_id} was made from commit {record.commit[:12]} plus uncommitted "
                f"changes; re-making it runs its logged {DIFF_ARTIFACT} (above: {len(files)} file(s), "
                f"{', '.join(files[:3])}{', ...' if len(files) > 3 else ''}), which anyone who "
                "can log to this store could have written; read it, then pass --apply-diff to run it",
                printable(diff),
            )
    tree = workdir / "code"
    added = _git("worktree", "add", "--detach", str(tree), record.commit)
    if added.returncode != 0:
        raise HarnessError(f"git worktree add failed: {added.stderr.strip().splitlines()[-1]}")
    if diff:
        applied = _git("apply", "--whitespace=nowarn", str(workdir / DIFF_ARTIFACT), cwd=tree)
        if applied.returncode != 0:
            raise HarnessError(
                f"the diff run {record.run_id} logged does not apply to commit {record.commit[:12]}: "
                f"{printable(applied.stderr.strip().splitlines()[-1])}"
            )
    return tree


def remove_workdir(workdir: Path) -> None:
    """The temporary directory and the worktree in it, also when making it failed half-way."""
    if (workdir / "code").exists():
        _git("worktree", "remove", "--force", str(workdir / "code"))
    shutil.rmtree(workdir, ignore_errors=True)
    _git("worktree", "prune")


def _cli(tree: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """That code's own ``harness`` CLI, against this tracking store (attached to ``mlflow run``'s run if any)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "MLFLOW_TRACKING_URI": stores.absolute_tracking_uri()}
    proc = subprocess.run([sys.executable, "-m", "entry_points.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise HarnessError(f"re-running `harness {args[0]}` with the run's code failed: {last}")
    return proc


def train_arguments(record: Record, steps: int, experiment: str) -> list[str]:
    """``harness train`` options that resolve to exactly the run's config: every field its code knew set
    explicitly, so a preset edited since cannot change it; the run's torch thread count."""
    config = record.config
    threads = record.run.data.tags.get(TORCH_THREADS_TAG, "1")
    args = [
        "train",
        "--env",
        config.env_id,
        "--preset",
        config.preset,
        "--her",
        str(config.her).lower(),
        "--seed",
        str(config.seed),
        "--total-steps",
        str(steps),
        "--experiment",
        experiment,
        "--threads",
        threads,
        "--no-progress",
    ]
    for name, value in record.logged.items():
        if name in ("env_id", "preset", "her", "seed", "total_steps"):
            continue
        args += ["--set", f"{name}={json.dumps(value) if isinstance(value, (list, bool)) else value}"]
    return args


def reproduce(run_id: str, steps: int | None = None, apply_diff: bool = False, any_commit: bool = False) -> dict[str, Any]:
    """Re-make ``run_id`` (the first ``steps`` env steps, or all of it) and compare; see the module docstring.
    A run made from uncommitted changes is re-made only with ``apply_diff``, one from a commit on no branch
    or tag only with ``any_commit`` (:class:`NeedsApproval`)."""
    stores.prepare_store(create=False)
    record = read_record(run_id)
    total = record.config.total_steps
    if steps is not None and not 0 < steps <= total:
        raise HarnessError(f"--steps must be between 1 and the run's total_steps ({total}), got {steps}")
    steps = steps or total
    first = first_compared_step(record.run) if steps < total else None
    if steps < total and (first is None or steps < first):
        raise HarnessError(
            f"nothing to compare at --steps {steps}: run {run_id} logged "
            + ("no eval/, train/ or rollout/ metric" if first is None else f"its first metric at env step {first}")
            + ("" if first is None else f"; give --steps {first} or more")
        )
    client = MlflowClient()
    experiment = client.get_experiment(record.run.info.experiment_id).name
    identity = RunIdentity.of(record.config)
    workdir = make_scratch_directory("reproduce")
    tree = PROJECT_ROOT
    try:
        tree = code_tree(record, workdir, apply_diff, any_commit)
        # Under `mlflow run -e reproduce` the training attaches to that run, in that run's experiment.
        tags = {KIND_TAG: "train", **identity.search_tags()}
        before = {r.info.run_id for r in tracking.search_runs(tags, tracking.experiment_ids(None))}
        _cli(tree, train_arguments(record, steps, experiment), workdir)
        made = [r for r in tracking.search_runs(tags, tracking.experiment_ids(None)) if r.info.run_id not in before]
        if len(made) != 1:
            raise HarnessError(
                f"the re-made training of run {run_id} could not be told apart in the store "
                f"({len(made)} new runs of {identity.name}); was another one started meanwhile?"
            )
        new = made[0]
        new_id = new.info.run_id
        # From here on it is a reproduction, never a training run that compare or register could take.
        client.set_tag(new_id, KIND_TAG, "reproduce")
        client.set_tag(new_id, REPRODUCES_TAG, run_id)
        episodes = record.run.data.tags.get(EVAL_EPISODES_TAG)
        if steps == total and episodes:
            _cli(
                tree,
                ["eval", "--ckpt", str(workdir / "checkpoints" / f"{new.info.run_name}.zip"), "--n-episodes", episodes],
                workdir,
            )
    finally:
        remove_workdir(workdir)
    comparison = compare_runs(record.run, client.get_run(new_id), steps)
    comparison.update(verdict_of(record, comparison, steps == total))
    comparison.update(
        {
            "run_id": run_id,
            "reproduction_run_id": new_id,
            "steps": steps,
            "code": "this checkout"
            if tree == PROJECT_ROOT
            else f"worktree at {record.commit[:12]}" + (" + its logged diff" if record.dirty else ""),
        }
    )
    log_verdict(new_id, comparison)
    return comparison


def compare_runs(original, new, up_to_step: int) -> dict[str, Any]:
    """Every metric both runs logged (eval/*, train/*, rollout/*; not wall-clock ones) at every env step
    <= ``up_to_step``."""
    client = MlflowClient()
    keys = sorted(
        k
        for k in set(original.data.metrics) & set(new.data.metrics)
        if k.startswith(COMPARED_PREFIXES) and not k.startswith(WALL_CLOCK_METRICS)
    )
    rows, first_difference = [], None
    for key in keys:
        a = _by_step(client.get_metric_history(original.info.run_id, key), up_to_step)
        b = _by_step(client.get_metric_history(new.info.run_id, key), up_to_step)
        common = sorted(set(a) & set(b))
        differing = [step for step in common if a[step] != b[step]]
        if differing and (first_difference is None or differing[0] < first_difference):
            first_difference = differing[0]
        rows.append(
            {
                "metric": key,
                "steps_compared": len(common),
                "steps_differing": len(differing),
                "first_difference": differing[0] if differing else None,
                "original_last": a[common[-1]][-1] if common else None,
                "reproduction_last": b[common[-1]][-1] if common else None,
            }
        )
    environment = {}
    for key in sorted(set(original.data.tags) | set(new.data.tags)):
        if key.startswith(VERSION_TAG_PREFIX) or key in ENVIRONMENT_TAGS:
            was, now = original.data.tags.get(key), new.data.tags.get(key)
            if was != now:
                environment[key.removeprefix("harness.")] = {"original": was, "reproduction": now}
    return {"metrics": rows, "first_difference_step": first_difference, "environment_differences": environment}


def first_compared_step(run) -> int | None:
    """The first env step at which ``run`` logged a metric that a reproduction compares (None: none)."""
    client = MlflowClient()
    steps = [
        metric.step
        for key in run.data.metrics
        if key.startswith(COMPARED_PREFIXES) and not key.startswith(WALL_CLOCK_METRICS)
        for metric in client.get_metric_history(run.info.run_id, key)
    ]
    return min(steps, default=None)


def _by_step(history, up_to_step: int) -> dict[int, list[float]]:
    values: dict[int, list[float]] = {}
    for metric in sorted(history, key=lambda m: (m.step, m.timestamp)):
        if metric.step <= up_to_step:
            values.setdefault(metric.step, []).append(metric.value)
    return values


def verdict_of(record: Record, comparison: dict[str, Any], whole: bool) -> dict[str, Any]:
    """identical / equivalent / different, and the yardstick used for 'equivalent'."""
    compared = [row for row in comparison["metrics"] if row["steps_compared"]]
    if compared and all(row["steps_differing"] == 0 for row in compared):
        return {"verdict": "identical", "yardstick": "every compared value equal"}
    success = next((row for row in compared if row["metric"] == "eval/success_rate"), None)
    if success is None or success["reproduction_last"] is None:
        return {"verdict": "different", "yardstick": "no eval/success_rate at a common step to judge equivalence by"}
    new_value = success["reproduction_last"]
    others = seed_spread(record) if whole else []
    if len(others) >= 2:
        low, high = min(others), max(others)
        inside, yardstick = low <= new_value <= high, f"other seeds of this config: {low:.2f}-{high:.2f}"
    else:
        episodes = int(record.run.data.tags.get(EVAL_EPISODES_TAG) or record.config.eval_episodes)
        low, high = wilson_interval(round(success["original_last"] * episodes), episodes)
        inside, yardstick = low <= new_value <= high, f"95% Wilson interval of {episodes} episodes: {low:.2f}-{high:.2f}"
    return {"verdict": "equivalent" if inside else "different", "yardstick": yardstick}


def seed_spread(record: Record) -> list[float]:
    """Final eval success of the other seeds of the same config (same hash but for the seed)."""
    identity = RunIdentity.of(record.config)
    tags = {
        KIND_TAG: "train",
        EVALUATED_TAG: "true",
        ENV_TAG: identity.env_id,
        ALGO_TAG: identity.algo,
        HER_TAG: str(identity.her).lower(),
    }
    values = []
    for run in tracking.search_runs(tags, [record.run.info.experiment_id], status="FINISHED"):
        if run.info.run_id == record.run_id or run.data.tags.get(SEED_TAG) == str(record.config.seed):
            continue
        try:
            other = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/config.json")
        except Exception:
            continue
        if {**other, "seed": record.config.seed} == record.config.to_dict():
            values.append(run.data.metrics["eval/success_rate"])
    return values


def markdown(comparison: dict[str, Any]) -> str:
    parted = comparison["first_difference_step"]
    lines = [
        f"# Reproduction of run {comparison['run_id']}: **{comparison['verdict']}**",
        "",
        f"{comparison['steps']} env steps re-made with {comparison['code']}; {comparison['yardstick']}."
        + ("" if parted is None else f" The curves part at env step {parted}."),
        "",
        "| metric | steps compared | steps differing | first difference | original (last) | reproduction (last) |",
        "|---|---|---|---|---|---|",
    ]
    for row in comparison["metrics"]:
        lines.append(
            f"| {row['metric']} | {row['steps_compared']} | {row['steps_differing']} | "
            f"{row['first_difference'] if row['first_difference'] is not None else '-'} | "
            f"{_fmt(row['original_last'])} | {_fmt(row['reproduction_last'])} |"
        )
    if comparison["environment_differences"]:
        lines += [
            "",
            "What differs in the environment: "
            + "; ".join(
                f"{key}: {v['original']} -> {v['reproduction']}" for key, v in comparison["environment_differences"].items()
            ),
        ]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def log_verdict(run_id: str, comparison: dict[str, Any]) -> None:
    client = MlflowClient()
    text = markdown(comparison)
    comparison["markdown"] = text
    client.set_tag(run_id, VERDICT_TAG, comparison["verdict"])
    if comparison["first_difference_step"] is not None:
        client.set_tag(run_id, FIRST_DIFFERENCE_STEP_TAG, str(comparison["first_difference_step"]))
    client.set_tag(run_id, NOTE_TAG, text)
    client.log_text(run_id, text, "reproduce.md")
    client.log_dict(run_id, {k: v for k, v in comparison.items() if k != "markdown"}, "reproduce.json")
