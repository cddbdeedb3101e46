"""Where a run came from: code version, command line, package versions and machine."""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from harness.credentials import redact
from harness.run_schema import (
    CODE_VERSION_TAG,
    COMMAND_TAG,
    CPU_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    HOST_TAG,
    NICENESS_TAG,
    VERSION_TAG_PREFIX,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DIFF_ARTIFACT = "git.diff"  # a run from a dirty tree logs its uncommitted changes under this name
TRACKED_PACKAGES = ("torch", "stable-baselines3", "sb3-contrib", "gymnasium", "gymnasium-robotics", "mujoco", "mlflow")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@lru_cache(maxsize=1)
def git_state() -> tuple[str, bool | None]:
    """(commit, dirty) of the harness checkout; ('unknown', None) outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return "unknown", None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, bool(status)


@lru_cache(maxsize=1)
def git_diff() -> str:
    """The uncommitted changes to tracked files ('' when clean): with the commit, the code a run ran."""
    return _git("diff", "HEAD") or ""


@lru_cache(maxsize=1)
def code_version() -> str:
    """The commit, plus a hash of the uncommitted diff when the tree is dirty: two runs with the
    same code version ran the same code (what a pipeline checks before reusing a run)."""
    commit, dirty = git_state()
    if not dirty:
        return commit
    return f"{commit}+dirty.{hashlib.sha1(git_diff().encode()).hexdigest()[:10]}"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line() -> str:
    return redact(" ".join(shlex.quote(arg) for arg in [Path(sys.argv[0]).name, *sys.argv[1:]]))


def provenance_tags() -> dict[str, str]:
    """Tags every run carries, under ``harness.``."""
    commit, dirty = git_state()
    tags = {
        GIT_COMMIT_TAG: commit,
        GIT_DIRTY_TAG: "unknown" if dirty is None else str(dirty).lower(),
        CODE_VERSION_TAG: code_version(),
        COMMAND_TAG: command_line(),
        CPU_TAG: cpu_model(),
        HOST_TAG: socket.gethostname(),  # which machine (Ray node) ran it: its system/* metrics are that machine's
        NICENESS_TAG: str(os.nice(0)),  # a process under others' (Ray's default for workers: 15) runs slower
    }
    tags.update({f"{VERSION_TAG_PREFIX}{name}": version for name, version in package_versions().items()})
    return tags
