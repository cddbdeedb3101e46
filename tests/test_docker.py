"""docker/: no engine runs here, so lint the files and check the exact commands dev.sh would run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

BIN = Path(sys.executable).parent
DEV_SH = PROJECT_ROOT / "docker" / "dev.sh"


def tool(name):
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    assert found, f"{name} is installed by the test extra"
    return found


def test_dockerfile_lints_clean_and_dev_sh_passes_shellcheck():
    hadolint = subprocess.run([tool("hadolint"), "docker/Dockerfile"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert hadolint.returncode == 0, hadolint.stdout + hadolint.stderr
    shellcheck = subprocess.run([tool("shellcheck"), "docker/dev.sh"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert shellcheck.returncode == 0, shellcheck.stdout


def fake_bin(tmp_path, **scripts):
    """A PATH holding only fake commands (name -> exit status) and the basics dev.sh uses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("dirname", "id", "bash"):
        os.symlink(shutil.which(name), bin_dir / name)
    for name, status in scripts.items():
        (bin_dir / name.replace("_", "-")).write_text(f"#!/bin/sh\nexit {status}\n")
        (bin_dir / name.replace("_", "-")).chmod(0o755)
    return str(bin_dir)


def dev_sh(path, *args):
    env = {"PATH": path, "HOME": "/tmp"}
    return subprocess.run(["bash", str(DEV_SH), *args], env=env, capture_output=True, text=True)


def test_dry_run_prints_the_exact_docker_commands(tmp_path):
    proc = dev_sh(fake_bin(tmp_path), "--dry-run", "harness", "push-all", "--seeds", "0,1,2")
    assert proc.returncode == 0
    build, run = proc.stdout.splitlines()
    assert build.startswith(f"docker build -t her-harness:dev -f {PROJECT_ROOT}/docker/Dockerfile {PROJECT_ROOT}")
    assert run.startswith("docker run --rm -e MUJOCO_GL=egl -e MLFLOW_TRACKING_URI=sqlite:///mlflow.db")
    assert f"-v {PROJECT_ROOT}:/workspace -w /workspace" in run
    assert run.rstrip().endswith("her-harness:dev harness push-all --seeds 0\\,1\\,2")
    assert "--gpus" not in run


def test_gpus_are_passed_through_when_present(tmp_path):
    proc = dev_sh(fake_bin(tmp_path, nvidia_smi=0), "--dry-run", "python", "-c", "print(1)")
    assert "docker run --rm --gpus all" in proc.stdout


def test_no_engine_is_said_clearly(tmp_path):
    missing = dev_sh(fake_bin(tmp_path / "a"), "harness", "--help")
    assert missing.returncode == 127 and "dev.sh: docker is not installed" in missing.stderr
    no_engine = dev_sh(fake_bin(tmp_path / "b", docker=1), "harness", "--help")
    assert no_engine.returncode == 1
    assert no_engine.stderr.strip() == (
        "dev.sh: no Docker engine is reachable (docker info failed); start one, "
        "or run the command from the venv: .venv/bin/harness --help"
    )
