#!/usr/bin/env bash
# Run a command inside the harness container, as the chapter does:
#   bash docker/dev.sh python -m harness.labs.her_relabeler --verify
#   bash docker/dev.sh harness push-all --seeds 0,1,2
# The repository is mounted at /workspace (so ./mlflow.db, checkpoints/, results/ and runs/ stay on
# the host), GPUs are passed through when nvidia-smi finds one, MUJOCO_GL=egl.
#   --dry-run   print the docker commands instead of running them
#   --rebuild   build the image even if it exists
set -euo pipefail

IMAGE="${HARNESS_IMAGE:-her-harness:dev}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry_run=false
rebuild=false
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=true; shift ;;
    --rebuild) rebuild=true; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || set -- harness --help

gpu_args=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu_args=(--gpus all)
fi
tty_args=()
if [ -t 0 ] && [ -t 1 ]; then
  tty_args=(-it)
fi
env_args=(-e MUJOCO_GL=egl -e "MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}")

build_cmd=(docker build -t "$IMAGE" -f "$REPO/docker/Dockerfile" "$REPO")
run_cmd=(docker run --rm "${tty_args[@]}" "${gpu_args[@]}" "${env_args[@]}"
         -v "$REPO:/workspace" -w /workspace --user "$(id -u):$(id -g)" -e HOME=/tmp "$IMAGE" "$@")

if $dry_run; then
  printf '%q ' "${build_cmd[@]}"; printf '   # only when the image is missing or --rebuild\n'
  printf '%q ' "${run_cmd[@]}"; printf '\n'
  exit 0
fi

if ! command -v docker >/dev/null 2>&1; then
  echo "dev.sh: docker is not installed; install Docker, or run the same command from the venv: .venv/bin/$*" >&2
  exit 127
fi
if ! docker info >/dev/null 2>&1; then
  echo "dev.sh: no Docker engine is reachable (docker info failed); start one, or run the command from the venv: .venv/bin/$*" >&2
  exit 1
fi
if $rebuild || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  "${build_cmd[@]}"
fi
exec "${run_cmd[@]}"
