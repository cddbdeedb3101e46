"""`harness reproduce`: re-make a run from its record, with this checkout or a worktree at its commit, and compare."""

import subprocess
import sys

import mlflow
import pytest

from harness.provenance import PROJECT_ROOT
from tests.conftest import TINY, all_runs, clean_env, cli_in_process, run_cli

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny HER training of FetchReach-v4, evaluated on 4 episodes."""
    cwd = tmp_path_factory.mktemp("reproduce")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    cli_in_process(["train", "--her", "--seed", "3", "--threads", "1", *TINY], cwd, uri)
    cli_in_process(["eval", "--ckpt", "checkpoints/sac_her_FetchReach-v4_seed3.zip", "--n-episodes", "4"], cwd, uri)
    mlflow.set_tracking_uri(uri)
    (run,) = [r for r in all_runs() if r.data.tags.get("harness.kind") == "train"]
    yield cwd, uri, run
    mlflow.set_tracking_uri(None)


def test_a_run_reproduces_identically_on_the_same_machine(trained):
    cwd, uri, original = trained
    proc = run_cli(["reproduce", original.info.run_id], cwd, uri, timeout=600)
    assert f"# Reproduction of run {original.info.run_id}: **identical**" in proc.stdout
    (copy,) = [r for r in all_runs() if r.data.tags.get("harness.kind") == "reproduce"]
    assert copy.data.tags["harness.reproduces"] == original.info.run_id
    assert copy.data.tags["harness.verdict"] == "identical" and "harness.first_difference_step" not in copy.data.tags
    report = mlflow.artifacts.load_dict(f"runs:/{copy.info.run_id}/reproduce.json")
    compared = {row["metric"]: row for row in report["metrics"]}
    # the eval learning curve, the final evaluation on the same 4 episodes, and SB3's losses
    assert compared["eval/success_rate"]["steps_compared"] == 2 and compared["eval/n_episodes"]["original_last"] == 4
    assert compared["train/critic_loss"]["steps_compared"] >= 1 and compared["train/actor_loss"]["steps_differing"] == 0
    assert copy.data.metrics["train/critic_loss"] == original.data.metrics["train/critic_loss"]
    assert report["environment_differences"] == {}
    # compare and register read training runs: the reproduction is not one of them
    assert [r.info.run_id for r in all_runs() if r.data.tags.get("harness.kind") == "train"] == [original.info.run_id]


def test_the_comparison_names_a_different_precision_and_cpu_class(trained):
    """A reproduction on another CPU class: precision 'auto' may resolve differently there, and the
    report says so beside the curves."""
    from harness.reproduce import compare_runs

    _, _, original = trained
    elsewhere = mlflow.MlflowClient().get_run(original.info.run_id)
    other_class = "AVX512" if original.data.tags["harness.cpu_capability"] == "AVX2" else "AVX2"
    native = original.data.tags["harness.native_bf16"]
    elsewhere.data.tags.update(
        {
            "harness.precision": "bf16" if native == "false" else "fp32",
            "harness.cpu_capability": other_class,
            "harness.native_bf16": "true" if native == "false" else "false",
        }
    )
    differences = compare_runs(original, elsewhere, 300)["environment_differences"]
    assert set(differences) == {"precision", "cpu_capability", "native_bf16"}
    assert differences["cpu_capability"] == {
        "original": original.data.tags["harness.cpu_capability"],
        "reproduction": other_class,
    }


def test_steps_re_makes_only_the_start(trained):
    cwd, uri, original = trained
    proc = run_cli(["reproduce", original.info.run_id, "--steps", "150"], cwd, uri, timeout=600)
    assert "**identical**" in proc.stdout and "150 env steps re-made" in proc.stdout
    newest = max((r for r in all_runs() if r.data.tags.get("harness.kind") == "reproduce"), key=lambda r: r.info.start_time)
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(newest.info.run_id, "eval/success_rate")]
    assert steps == [150]  # trained and evaluated up to 150 only; not scored on the final episodes
    bad = run_cli(["reproduce", original.info.run_id, "--steps", "301"], cwd, uri, check=False)
    assert (
        bad.returncode == 1
        and bad.stderr.strip() == "harness: error: --steps must be between 1 and the run's total_steps (300), got 301"
    )


def worktrees() -> list[str]:
    listed = subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "list"], capture_output=True, text=True)
    return listed.stdout.strip().splitlines()


def test_a_run_from_a_dirty_tree_reproduces_from_its_commit_and_diff(tmp_path, store):
    """Trained by a clone with an uncommitted change; reproduced here, in a worktree at that commit + the diff."""
    repo, work = tmp_path / "repo", tmp_path / "work"
    before = worktrees()
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(repo)], check=True, timeout=120)
    with open(repo / "harness" / "seeding.py", "a") as source:
        source.write("\n# an uncommitted change\n")
    work.mkdir()
    env = {**clean_env(store), "PYTHONPATH": str(repo)}
    trained = subprocess.run(
        [sys.executable, "-m", "entry_points.cli", "train", "--seed", "4", "--threads", "1", *TINY],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    (original,) = all_runs()
    assert original.data.tags["harness.git_dirty"] == "true"
    diff = mlflow.artifacts.load_text(f"runs:/{original.info.run_id}/git.diff")
    assert "+# an uncommitted change" in diff
    commit = original.data.tags["harness.git_commit"][:12]
    # the diff is code anyone who can log a run could have written: shown, and run only when asked for
    refused = run_cli(["reproduce", original.info.run_id], tmp_path, store, check=False)
    assert refused.returncode == 1 and "+# an uncommitted change" in refused.stdout
    assert refused.stderr.strip().splitlines() == [
        f"harness: error: run {original.info.run_id} was made from commit {commit} plus uncommitted changes; re-making "
        "it runs its logged git.diff (above: 1 file(s), harness/seeding.py), which anyone who can log to this store "
        "could have written; read it, then pass --apply-diff to run it"
    ]
    assert len(all_runs()) == 1
    proc = run_cli(["reproduce", original.info.run_id, "--apply-diff"], tmp_path, store, timeout=600)
    assert f"re-made with worktree at {commit} + its logged diff" in proc.stdout and "**identical**" in proc.stdout
    assert worktrees() == before  # the temporary worktree is gone


def recorded_run(tags: dict) -> str:
    """A finished training run's record, made by hand: its config and the given provenance tags."""
    from harness.config import resolve_config

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("records") or client.get_experiment(client.create_experiment("records"))
    run = client.create_run(experiment.experiment_id, tags={"harness.kind": "train", **tags})
    client.log_dict(run.info.run_id, resolve_config("fast", "FetchReach-v4", {"total_steps": 300}).to_dict(), "config.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_what_cannot_be_reproduced_is_one_line(store, tmp_path):
    missing = recorded_run({"harness.git_commit": "f" * 40, "harness.git_dirty": "false", "harness.code_version": "f" * 40})
    proc = run_cli(["reproduce", missing], tmp_path, store, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"harness: error: commit ffffffffffff of run {missing} is not in this repository ({PROJECT_ROOT}); "
        "fetch it (git fetch --unshallow, or from the repository it came from)"
    ]
    head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = recorded_run({"harness.git_commit": head, "harness.git_dirty": "true", "harness.code_version": head + "+dirty.0"})
    proc = run_cli(["reproduce", dirty], tmp_path, store, check=False)
    assert proc.returncode == 1 and "was made from a tree with uncommitted changes and logged no git.diff" in proc.stderr
    proc = run_cli(["reproduce", "0" * 32], tmp_path, store, check=False)
    assert proc.returncode == 1 and "no MLflow run with id '00000000000000000000000000000000'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nothing_to_compare_at_a_budget_before_the_first_metric_is_said_before_training(store, tmp_path):
    run_id = recorded_run({"harness.git_commit": "f" * 40, "harness.git_dirty": "false", "harness.code_version": "f" * 40})
    mlflow.MlflowClient().log_metric(run_id, "eval/success_rate", 0.5, step=150)
    proc = cli_in_process(["reproduce", run_id, "--steps", "100"], tmp_path, store, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"harness: error: nothing to compare at --steps 100: run {run_id} logged its first metric at env step 150; "
        "give --steps 150 or more"
    ]
    assert len(all_runs()) == 1  # nothing was trained


def git(*args, cwd=PROJECT_ROOT) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_a_commit_on_no_branch_or_tag_is_shown_and_run_only_with_any_commit(store, tmp_path):
    """A run can name any commit object the repository holds, such as one `git commit-tree` made with no
    ref: it is shown (escaped) and refused; --any-commit goes on to the next check."""
    planted = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", "planted \x1b[2Kcommit"],
        capture_output=True,
        text=True,
        check=True,
        env={
            **clean_env(store),
            "GIT_AUTHOR_NAME": "x",
            "GIT_AUTHOR_EMAIL": "x@x",
            "GIT_COMMITTER_NAME": "x",
            "GIT_COMMITTER_EMAIL": "x@x",
        },
    ).stdout.strip()
    run_id = recorded_run({"harness.git_commit": planted, "harness.git_dirty": "true", "harness.code_version": planted})
    refused = cli_in_process(["reproduce", run_id], tmp_path, store, check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"harness: error: commit {planted[:12]} of run {run_id} is on no branch or tag of this checkout (above: what "
        "it changes); re-making the run runs it; read it, then pass --any-commit to run it"
    ]
    assert f"commit {planted}" in refused.stdout and "planted \\x1b[2Kcommit" in refused.stdout
    assert "\x1b" not in refused.stdout
    passed = cli_in_process(["reproduce", run_id, "--any-commit"], tmp_path, store, check=False)
    assert passed.returncode == 1 and "uncommitted changes and logged no git.diff" in passed.stderr
    assert len(all_runs()) == 1


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    """Diffs against HEAD, made by git in a clone: an edit hiding code behind ANSI escapes, a deletion
    (no '+++ b/' line), and a binary file."""
    repo = tmp_path_factory.mktemp("patches") / "repo"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(repo)], check=True, timeout=120)
    with open(repo / "harness" / "seeding.py", "a") as source:
        source.write("import os; os.system('true')  # \x1b[1G\x1b[2K+# a harmless comment\n")
    (repo / "harness" / "labs" / "__init__.py").unlink()
    text = git("diff", "HEAD", cwd=repo)
    (repo / "harness" / "blob.bin").write_bytes(bytes(range(256)))
    git("add", "-N", "harness/blob.bin", cwd=repo)
    binary = git("diff", "HEAD", "--binary", cwd=repo)
    return {"text": text, "binary": binary}


def dirty_record(diff: str) -> str:
    head = git("rev-parse", "HEAD")
    run_id = recorded_run({"harness.git_commit": head, "harness.git_dirty": "true", "harness.code_version": head + "+dirty.1"})
    mlflow.MlflowClient().log_text(run_id, diff, "git.diff")
    return run_id


def test_the_diff_shown_before_apply_diff_hides_nothing(store, tmp_path, patches):
    run_id = dirty_record(patches["text"])
    refused = cli_in_process(["reproduce", run_id], tmp_path, store, check=False)
    assert refused.returncode == 1 and "\x1b" not in refused.stdout
    assert "import os; os.system('true')  # \\x1b[1G\\x1b[2K+# a harmless comment" in refused.stdout
    (line,) = refused.stderr.strip().splitlines()
    assert "re-making it runs its logged git.diff (above: 2 file(s), harness/labs/__init__.py, harness/seeding.py)" in line


def test_a_binary_patch_is_refused_even_with_apply_diff(store, tmp_path, patches):
    run_id = dirty_record(patches["binary"])
    refused = cli_in_process(["reproduce", run_id, "--apply-diff"], tmp_path, store, check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        f"harness: error: the git.diff run {run_id} logged changes binary file(s) (harness/blob.bin), which nobody "
        "can read before running; refusing to re-make it (harness train logs text diffs only)"
    ]
    assert len(all_runs()) == 1


def test_wall_clock_metrics_are_not_compared(store):
    from harness.reproduce import compare_runs

    client = mlflow.MlflowClient()
    experiment = client.create_experiment("pair")
    runs = []
    for minutes in (1.03, 0.96):  # the same training, timed twice
        run = client.create_run(experiment)
        for step, success in ((2000, 0.2), (4000, 0.6)):
            client.log_metric(run.info.run_id, "eval/success_rate", success, step=step)
        client.log_metric(run.info.run_id, "eval/steps_to_50", 4000, step=4000)
        client.log_metric(run.info.run_id, "eval/minutes_to_50", minutes, step=4000)
        runs.append(client.get_run(run.info.run_id))
    comparison = compare_runs(runs[0], runs[1], up_to_step=4000)
    assert [row["metric"] for row in comparison["metrics"]] == ["eval/steps_to_50", "eval/success_rate"]
    assert comparison["first_difference_step"] is None


def test_reproducing_a_planted_run_runs_none_of_its_checkpoint(trained, tmp_path):
    """The run's checkpoint zip has every pickled entry replaced by one that would create a marker (its sha256
    tag made to match, as a second account could): reproduce re-makes and compares the run, running nothing of
    it. (Last in this module: the shared run's checkpoint stays planted.)"""
    from tests.test_faults import plant_code_in_every_serialized_entry

    cwd, uri, original = trained
    marker = tmp_path / "code-ran"
    plant_code_in_every_serialized_entry(original, marker)
    proc = run_cli(["reproduce", original.info.run_id, "--steps", "150"], cwd, uri, timeout=600)
    assert "**identical**" in proc.stdout and not marker.exists()
