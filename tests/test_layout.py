"""The package reads like the life of a run: each module imports only the stages before it, never the CLI."""

import ast
from pathlib import Path

import harness

# The stages in the order a run goes through them (docs/architecture.md lists the same order).
STAGES = [
    "errors", "credentials", "identity", "provenance", "config", "envs", "seeding", "algorithms", "replay", "views", "tracking", "server",
    "checkpoints", "resume", "evaluation", "training", "statistics", "comparison",
    "pipelines.plan", "pipelines.overview", "pipelines.execute", "pipelines.report", "pipelines", "reproduce",
    "registry", "registry_model", "labs", "labs.her_relabeler",
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
