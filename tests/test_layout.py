"""The package reads like the life of a run: each module imports only the stages before it, never the CLI."""

import ast
from pathlib import Path

import harness

# The stages in the order a run goes through them (docs/architecture.md lists the same order).
STAGES = [
    "errors",
    "stop_signals",
    "library_logs",
    "atomic_files",
    "credentials",
    "run_schema",
    "provenance",
    "config",
    "envs",
    "seeding",
    "algorithms",
    "her_replay",
    "ui_views",
    "schema",
    "stores",
    "accounts",
    "tracking",
    "postgres",
    "server",
    "server_auth",
    "sb3_zip",
    "normalization",
    "checkpoints",
    "models",
    "plain_state",
    "training_state",
    "resume",
    "evaluation",
    "training",
    "statistics",
    "reporting",
    "comparison",
    "comparison_report",
    "pipelines.plan",
    "pipelines.lease",
    "pipelines.overview",
    "pipelines.execute",
    "pipelines.report",
    "pipelines",
    "reproduce",
    "registry",
    "registry_model",
    "labs",
    "labs.her_relabeler",
]
PACKAGE = Path(harness.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module this file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} if node.module == "harness" else {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_each_stage_imports_only_the_stages_before_it_and_never_the_cli():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"}
    assert sorted(modules) == sorted(STAGES), "a module was added or removed: place it in STAGES and docs/architecture.md"
    upward = []
    for name, path in modules.items():
        for imported in imports_of(path):
            if imported.split(".")[0] in ("entry_points", "click"):
                upward.append(f"{name} imports {imported}")
            elif imported.startswith("harness."):
                target = imported.removeprefix("harness.")
                while target and target not in STAGES:  # harness.pipelines.plan.Job -> pipelines.plan
                    target = target.rpartition(".")[0]
                if not target or STAGES.index(target) >= STAGES.index(name):
                    upward.append(f"{name} imports {imported}")
    assert not upward, upward


def test_tag_keys_are_spelled_only_in_the_run_schema():
    """The run schema lives in harness/run_schema.py: a "harness." or "mlflow." tag key written anywhere
    else (outside docstrings; module names such as "harness.tracking" are not tags) is an error."""
    import importlib.util

    def is_module(name: str) -> bool:
        try:
            return importlib.util.find_spec(name.rstrip(".")) is not None
        except (ImportError, ValueError):
            return False

    root = PACKAGE.parent
    offenders = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(root / "entry_points").glob("*.py"), *(root / "bench").glob("*.py")]):
        if path == PACKAGE / "run_schema.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and node.value.startswith(("harness.", "mlflow."))
                and " " not in node.value
                and not is_module(node.value)
            ):
                offenders.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
    assert offenders == [], "tag keys belong in harness/run_schema.py: " + "; ".join(offenders)


def test_mlflows_own_tag_keys_are_spelled_as_mlflow_spells_them():
    from mlflow.utils import mlflow_tags

    from harness import run_schema

    assert run_schema.RUN_NAME_TAG == mlflow_tags.MLFLOW_RUN_NAME
    assert run_schema.PARENT_RUN_ID_TAG == mlflow_tags.MLFLOW_PARENT_RUN_ID
    assert run_schema.NOTE_TAG == mlflow_tags.MLFLOW_RUN_NOTE


def test_importing_the_harness_changes_no_process_state():
    """Importing any stage sets no environment variable, logger level or matplotlib backend and registers
    no env: the CLI and the workers set what they need (quiet_library_logs, register_fetch_envs) when they
    run. The libraries are imported first, so that only what the harness itself does is seen."""
    import subprocess
    import sys

    probe = f"""
import importlib, logging, os, sys
import gymnasium, matplotlib, mlflow, stable_baselines3, torch
def state():
    loggers = {{name: getattr(lg, "level", None) for name, lg in logging.root.manager.loggerDict.items()}}
    return dict(os.environ), loggers, matplotlib.rcParams["backend"], len(gymnasium.registry), sys.stderr
before = state()
for name in {[s for s in STAGES if s != "registry_model"]!r}:  # registry_model is MLflow's models-from-code file
    importlib.import_module("harness." + name)
after = state()
new_loggers = set(after[1]) - set(before[1])
changed = {{k: (before[1][k], after[1][k]) for k in before[1] if before[1][k] != after[1][k]}}
assert before[0] == after[0], {{k: after[0].get(k) for k in set(before[0]) ^ set(after[0])}}
assert not changed and all(after[1][k] in (None, 0) for k in new_loggers), changed
assert before[2:] == after[2:], (before[2:4], after[2:4])
print("unchanged")
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "unchanged", proc.stderr[-3000:]


def test_the_commands_that_do_not_train_start_without_torch():
    """compare, register, reproduce, server and ui read and write MLflow only: importing torch and SB3 (over
    a second of a command's start, ~2 s with MLflow's store) is left to the stages that train or act."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "import entry_points.cli, harness.comparison, harness.registry, harness.reproduce, harness.server\n"
        "print(sorted(m for m in ('torch', 'stable_baselines3') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-3000:]
