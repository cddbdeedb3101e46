"""The project's own files agree with each other: pins, MLproject parameters and CLI options."""

import re
import subprocess
import sys
import tomllib

import click
import pytest
import yaml

from entry_points.compare import compare_command
from entry_points.eval import eval_command
from entry_points.lab import lab_command
from entry_points.pipelines import ablation_command, experiment_command, push_all_command, reach_all_command
from entry_points.reproduce import reproduce_command
from entry_points.train import train_command
from tests.conftest import PROJECT_ROOT


def test_conda_yaml_pins_the_same_dependencies_as_pyproject():
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    (pip_section,) = [d for d in conda["dependencies"] if isinstance(d, dict)]
    assert sorted(pip_section["pip"]) == sorted(pyproject["project"]["dependencies"])
    assert all("==" in dep for dep in pyproject["project"]["dependencies"])
    assert "mujoco==3.11.0" in pip_section["pip"] and "torch==2.13.0" in pip_section["pip"]


def test_every_package_is_installed_by_a_non_editable_install():
    """setuptools lists packages explicitly: a new subpackage left out would be missing from a wheel or an image."""
    listed = set(tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(PROJECT_ROOT).parts)
        for top in ("harness", "entry_points")
        for p in (PROJECT_ROOT / top).rglob("__init__.py")
    }
    found |= {".".join(p.relative_to(PROJECT_ROOT).parts) for p in (PROJECT_ROOT / "harness").rglob("presets")}
    assert found <= listed, f"packages missing from pyproject.toml's [tool.setuptools] packages: {sorted(found - listed)}"


def test_mlproject_parameters_map_onto_cli_options():
    project = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    commands = {
        "train": train_command,
        "eval": eval_command,
        "compare": compare_command,
        "her-lab": lab_command,
        "reach-all": reach_all_command,
        "push-all": push_all_command,
        "experiment": experiment_command,
        "ablation": ablation_command,
        "reproduce": reproduce_command,
    }
    for name, command in commands.items():
        entry = project["entry_points"][name]
        options = {opt for p in command.params for opt in p.opts}
        used = re.findall(r"(--[a-z0-9-]*\s?)?\{(\w+)\}", entry["command"])
        assert {param for _, param in used} == set(entry["parameters"]), name
        for option, param in used:
            if not option:  # a positional argument (reproduce's RUN_ID)
                assert param in {p.name for p in command.params if isinstance(p, click.Argument)}, f"{name}: {param}"
            elif option != "--":  # her-lab's --{mode} picks --verify or --demo
                assert option.strip() in options, f"{name}: {option}"


def test_ci_runs_the_readme_test_command():
    ci = [
        line
        for line in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ci[-1].strip() == "make test"  # CI ends by running it, with `set -e` before
    assert "set -euo pipefail" in ci
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "```bash\nmake test\n```" in readme  # the README's test command, on its own
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "-m pytest" in recipe


def test_the_readme_is_short_and_every_link_of_the_docs_resolves():
    import re

    readme = PROJECT_ROOT / "README.md"
    assert len(readme.read_text()) <= 15_000, "the README grew past 15k characters: move detail to docs/"
    pages = [readme, PROJECT_ROOT / "BENCHMARKS.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
    assert len(pages) >= 8
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_benchmarks_is_short_and_its_results_table_is_what_the_committed_compare_outputs_give():
    """BENCHMARKS.md is a reference, not a notebook (that is docs/benchmarks/history.md), and its Results
    table is rendered by bench/results.py from docs/benchmarks/data/, never typed."""
    text = (PROJECT_ROOT / "BENCHMARKS.md").read_text()
    assert len(text) <= 12_000, f"BENCHMARKS.md has {len(text)} characters: move detail to docs/benchmarks/"
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "results.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["train", "--help"],
        ["experiment", "--help"],
        ["train", "--set", "gama=0.9"],
        ["compare", "--env", "FetchPush-v4", "--seeds", "a"],
        ["ablation", "--nsg-values", "2,x"],
        ["register"],
    ],
)
def test_help_and_bad_values_answer_without_importing_torch_sb3_or_mlflow(args):
    """What makes `harness --help` take seconds is importing torch, SB3 and MLflow (several seconds of CPU);
    help and values that need no store or model are answered before any of them is imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "entry_points.cli", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert imported, proc.stderr
    assert not imported & {"torch", "stable_baselines3", "mlflow", "gymnasium"}, args


def test_every_config_field_is_a_train_option_and_an_mlproject_parameter_and_mlproject_is_generated():
    from click.testing import CliRunner

    from entry_points.mlproject import MLPROJECT, mlproject_text
    from entry_points.options import config_fields
    from entry_points.pipelines import push_all_command
    from entry_points.train import train_command
    from harness.config import field_docs

    assert MLPROJECT.read_text() == mlproject_text(), "MLproject is not what `make mlproject` writes: run it"
    spec = yaml.safe_load(MLPROJECT.read_text())["entry_points"]
    train_comment = MLPROJECT.read_text().split("  train:")[1].split("parameters:")[0]
    train_help = CliRunner().invoke(train_command, ["--help"], terminal_width=400).output
    push_help = CliRunner().invoke(push_all_command, ["--help"], terminal_width=400).output
    for field in config_fields():
        flag = "--" + field.name.replace("_", "-")
        assert flag in train_help and field_docs()[field.name].split(" ")[0] in train_help, field.name
        # not a declared parameter (mlflow run would log its placeholder as the run's param), but listed
        assert field.name not in spec["train"]["parameters"] and f" {field.name}" in train_comment, field.name
        if field.name not in ("her", "seed"):
            assert flag in push_help, field.name
