"""Write MLproject: the train and pipeline entry points take every TrainConfig field as a parameter.

The fields are not declared as parameters: ``mlflow run`` logs each declared parameter as a run param,
a default of "take the preset's value" included, and MLflow params cannot be changed afterwards, so the
run's params would say "preset" where the resolved value belongs. An undeclared ``-P gamma=0.98`` is
passed on by MLflow as ``--gamma 0.98``, which the generated option takes (``_`` and ``-`` alike). Each
entry point lists the fields it takes in a comment written from TrainConfig.

``make mlproject`` (``python -m entry_points.mlproject``) rewrites the file from the fields
(:mod:`entry_points.options`); ``tests/test_packaging.py`` fails when the committed file differs.
The other entry points have no config fields and stand here as they are.
"""

from __future__ import annotations

from pathlib import Path

from entry_points.options import config_fields

MLPROJECT = Path(__file__).resolve().parent.parent / "MLproject"
HEADER = """\
name: her-harness

# Written by `make mlproject` from harness/config.py's TrainConfig (entry_points/mlproject.py): edit there.
# Every config field is a parameter of train and the pipelines (-P gamma=0.98); left out, it takes the value
# of the chosen preset (harness/presets/<preset>.yaml).
# `mlflow run . -e train -P her=true --env-manager local` from the project's venv,
# or plain `mlflow run . -e train -P her=true` with conda (conda.yaml).
# MLproject has no boolean type: `her` takes true/false/1/0/yes/no.
conda_env: conda.yaml

entry_points:
"""
PIPELINE = [("seeds", "string", '"0,1,2"'), ("preset", "string", "ch04"), ("n_eval_episodes", "int", "100")]
EXECUTION = [("workers", "int", "2"), ("executor", "string", "local")]


def pipeline(command: str, own: list, leave_out: tuple[str, ...] = ("her", "seed")) -> tuple:
    """A pipeline's entry point: its own parameters, then the pipeline's and the execution's that it does
    not redefine; every training of it is run with and without HER for each seed, so those fields are the pipeline's."""
    redefined = {name for name, _, _ in own}
    shared = [param for param in (*PIPELINE, *EXECUTION) if param[0] not in redefined]
    return (command, f"python -m entry_points.pipelines {command}", [*own, *shared], leave_out, "")


# (entry point, command, its own parameters, config fields it sets itself, fixed trailing flags)
GENERATED = [
    (
        "train",
        "python -m entry_points.train",
        [
            ("env", "string", "FetchReach-v4"),
            ("preset", "string", "ch04"),
            ("threads", "int", "0"),
            ("device", "string", "auto"),
        ],
        (),
        "--no-progress",
    ),
    pipeline("reach-all", []),
    pipeline("push-all", []),
    pipeline("experiment", [("env", "string", None)]),
    pipeline(
        "ablation",
        [("env", "string", "FetchPush-v4"), ("nsg_values", "string", '"2,4,8"'), ("seeds", "string", '"0"')],
        ("her", "seed", "n_sampled_goal"),  # --nsg-values sets n_sampled_goal
    ),
]
FIXED = """\
  eval:
    parameters:
      ckpt: {type: string}
      n_episodes: {type: int, default: 100}
    command: "python -m entry_points.eval --ckpt {ckpt} --n-episodes {n_episodes}"

  compare:
    parameters:
      env: {type: string, default: FetchReach-v4}
      seeds: {type: string, default: "0,1,2"}
      algo: {type: string, default: auto}
    command: "python -m entry_points.compare --env {env} --seeds {seeds} --algo {algo}"

  her-lab:
    parameters:
      mode: {type: string, default: verify}
      episodes: {type: int, default: 50}
      seed: {type: int, default: 0}
    command: "python -m entry_points.lab --{mode} --episodes {episodes} --seed {seed}"

  register:
    parameters:
      env: {type: string, default: FetchPush-v4}
      algo: {type: string, default: auto}
    command: "python -m entry_points.register --env {env} --algo {algo}"

  reproduce:
    parameters:
      run_id: {type: string}
      steps: {type: int, default: 0}
      apply_diff: {type: string, default: "false"}
      any_commit: {type: string, default: "false"}
    command: "python -m entry_points.reproduce {run_id} --steps {steps} --apply-diff {apply_diff} --any-commit {any_commit}"
"""


def fold(words: list[str], prefix: str, first: str = "") -> list[str]:
    """``words`` joined by spaces into lines of at most ~110 characters, each starting with ``prefix``
    (the first with ``first`` when given)."""
    lines, line = [], first or prefix
    for word in words:
        if len(line) + len(word) > 110:
            lines.append(line)
            line = prefix
        line += f" {word}"
    return [*lines, line]


def entry_point(name: str, command: str, params: list, leave_out: tuple[str, ...], trailing: str) -> str:
    fields = [field.name for field in config_fields(leave_out)]
    lines = [f"  {name}:", *fold(fields, "    #", "    # -P NAME=VALUE also takes the config fields:"), "    parameters:"]
    for param, kind, default in params:
        lines.append(f"      {param}: " + (kind if default is None else f"{{type: {kind}, default: {default}}}"))
    flags = [f"--{param.replace('_', '-')} {{{param}}}" for param, _, _ in params]
    lines += ["    command: >-", *fold([*command.split(" "), *flags, *([trailing] if trailing else [])], "     ")]
    return "\n".join(lines) + "\n"


def mlproject_text() -> str:
    return HEADER + "\n".join(entry_point(*spec) for spec in GENERATED) + "\n" + FIXED


if __name__ == "__main__":
    MLPROJECT.write_text(mlproject_text())
    print(f"wrote {MLPROJECT}")
