"""Make tests/data/mlflow-<version>-store/: a small tracking store (two runs with params, tags, metric
histories and an artifact; a registered model with a version, a tag and an alias) written by the installed
MLflow, for the test that upgrades a store made by an older MLflow and finds all of it afterwards.

Made once per MLflow release the project pinned (``python tests/data/make_old_store.py`` in a venv with that
mlflow, mlflow-skinny and mlflow-tracing): 3.16.1 (an older schema than the pinned 3.17.2's) and 3.17.2 (the
schema 3.18.0's migrations upgrade). Artifact locations are written under the placeholder root below; the
test copies the store and points them at the copy.
"""

import shutil
import sys
from pathlib import Path

import mlflow
from importlib.metadata import version as package_version
from mlflow.tracking import MlflowClient

ROOT = Path("/tmp/harness-old-store-fixture")  # placeholder the test rewrites
OUT = Path(__file__).parent / f"mlflow-{package_version('mlflow')}-store"


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    uri = f"sqlite:///{ROOT / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.create_experiment("old-store", artifact_location=(ROOT / "artifacts").as_uri())
    run_ids = []
    for seed in (0, 1):
        with mlflow.start_run(experiment_id=experiment, run_name=f"sac_her_FetchReach-v4_seed{seed}") as run:
            mlflow.log_params({"seed": seed, "gamma": 0.95, "net_arch": "[256, 256]"})
            mlflow.set_tags({"harness.kind": "train", "harness.her": "true", "harness.env": "FetchReach-v4"})
            for step in range(0, 5000, 1000):
                mlflow.log_metric("eval/success_rate", min(1.0, step / 4000 + 0.1 * seed), step=step)
            mlflow.log_text(f"checkpoint of seed {seed}\n", "checkpoint/notes.txt")
            run_ids.append(run.info.run_id)
    client.create_registered_model("ch04-sac-her-FetchReach-v4", description="the old store's champion")
    version = client.create_model_version(
        "ch04-sac-her-FetchReach-v4", f"runs:/{run_ids[1]}/checkpoint", run_id=run_ids[1], tags={"eval_success_rate": "1.0"}
    )
    client.set_registered_model_alias("ch04-sac-her-FetchReach-v4", "champion", version.version)
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.copytree(ROOT, OUT)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size} bytes) from mlflow {package_version('mlflow')}")


if __name__ == "__main__":
    sys.exit(main())
