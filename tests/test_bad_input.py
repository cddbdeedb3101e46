"""Every bad input: one line on stderr naming the value, a non-zero exit, no traceback, no run left RUNNING."""

import signal
import subprocess
import sys
import time

import mlflow
import pytest

from tests.conftest import TINY, all_runs, clean_env, cli_in_process, run_cli

pytestmark = pytest.mark.slow  # trains, or runs the CLI end to end: `make test-quick` leaves it out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--env", "FetchPush-v9"], "unknown env 'FetchPush-v9'; the Fetch tasks are: FetchReach-v4"),
        (["train", "--env", "Pendulum-v1", "--her"], "--her needs a goal-conditioned env"),
        (
            ["train", "--env", "CarRacing-v3"],
            "env 'CarRacing-v3' cannot be built: Box2D is not installed",
        ),  # an extra not installed
        (["train", "--total-steps", "0"], "Invalid value for '--total-steps': 0 is not >= 1"),
        (["train", "--total-steps", "lots"], "Invalid value for '--total-steps': 'lots' is not an integer"),
        (["train", "--n-sampled-goal", "-1"], "Invalid value for '--n-sampled-goal': -1 is not >= 0"),
        (["train", "--goal-selection-strategy", "random"], "'random' is not one of 'future', 'final', 'episode'"),
        (["train", "--algo", "ppo"], "Invalid value for '--algo': 'ppo' is not one of 'sac', 'tqc', 'ddpg'"),
        (["train", "--set", "gamma=abc"], "gamma must be a number, got 'abc'"),
        (["train", "--set", "gama=0.9"], "unknown config key 'gama' in --set; known: algo, her,"),
        (["train", "--set", "gamma"], "--set takes KEY=VALUE, got 'gamma'"),
        (["train", "--set", "random_eps=2"], "random_eps must be in [0, 1], got 2.0"),
        (
            ["train", "--env", "FetchPush-v4", "--set", "net_arch=[1000000000000]"],
            "net_arch [1000000000000] needs about 11,511,147.0 GiB for the sac networks (weights, gradients, targets",
        ),
        (["train", "--preset", "turbo"], "Invalid value for '--preset': 'turbo' is not one of 'ch04', 'fast'"),
        (["train", "--her", "maybe"], "Invalid value for '--her': 'maybe' is not a valid boolean"),
        (["train", "--her", "--no-her"], "--her and --no-her contradict each other"),
        (
            ["train", "--her", "--total-steps", "300", "--learning-starts", "100"],  # ch04: 8 envs
            "--her with 8 env(s) needs learning_starts >= 400 (one finished 50-step episode in every env before HER "
            "can sample), got 100",
        ),
        (["eval", "--ckpt", "checkpoints/nothing.zip"], "checkpoint 'checkpoints/nothing.zip' not found; give a .zip path"),
        (["eval", "--ckpt", "corrupt.zip"], "checkpoint 'corrupt.zip' is not a readable SB3 checkpoint"),
        (["eval", "--ckpt", "0123456789abcdef0123456789abcdef"], "no MLflow run with id '0123456789abcdef0123456789abcdef'"),
        (["eval", "--ckpt", "x.zip", "--n-episodes", "0"], "Invalid value for '--n-episodes': 0 is not in the range x>=1"),
        (["compare", "--env", "FetchPush-v4", "--seeds", "0,1,2"], "mlflow.db does not exist, so nothing is logged there"),
        (["compare", "--env", "FetchPush-v4", "--seeds", "a,b"], "'a,b' is not a comma-separated list of integers"),
        (["compare", "--env", "FetchPush-v4", "--seeds", "0,0"], "'0,0' lists 0 more than once; give distinct integers"),
        (["nonsense"], "No such command 'nonsense'"),
        (["train", "--device", "gpu"], "Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda'"),
        (["train", "--threads", "100000"], "Invalid value for '--threads': 100000 is not in the range 0<=x<=1024"),
        (
            ["push-all", "--executor", "ray", "--ray-address", "head-node"],
            "--ray-address head-node is not an address; accepted: auto on a node of a running cluster, HOST:PORT",
        ),
    ],
)
def test_bad_input_is_one_clear_line(no_store, tmp_path, args, expected):
    # in this process (an exception that escaped the command would fail the test here); the test below
    # runs one refusal of each command as a user's process, where a traceback would reach the terminal
    (tmp_path / "corrupt.zip").write_bytes(b"this is not a zip file")
    one_clear_line(cli_in_process(args, tmp_path, no_store, check=False), expected, tmp_path)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--set", "gamma=abc"], "gamma must be a number, got 'abc'"),
        (["eval", "--ckpt", "corrupt.zip"], "checkpoint 'corrupt.zip' is not a readable SB3 checkpoint"),
        (["compare", "--env", "FetchPush-v4", "--seeds", "0,1,2"], "mlflow.db does not exist, so nothing is logged there"),
        (["nonsense"], "No such command 'nonsense'"),
        (
            ["push-all", "--executor", "ray", "--ray-address", "127.0.0.1:1"],
            "no Ray cluster answers at --ray-address 127.0.0.1:1 (Connection refused)",
        ),
    ],
)
def test_bad_input_is_one_clear_line_from_a_users_process(no_store, tmp_path, args, expected):
    (tmp_path / "corrupt.zip").write_bytes(b"this is not a zip file")
    one_clear_line(run_cli(args, tmp_path, no_store, check=False), expected, tmp_path)


def one_clear_line(proc, expected: str, work) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert all(r.info.status != "RUNNING" for r in all_runs())
    assert not (work / "checkpoints").exists()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: the terminal was closed
def test_sigterm_or_sighup_marks_the_run_killed(store, tmp_path, stop):
    proc = subprocess.Popen(
        [sys.executable, "-m", "entry_points.cli", "train", *TINY, "--total-steps", "100000"],
        cwd=tmp_path,
        env=clean_env(store),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: under nohup (inherited SIG_IGN) the harness rightly keeps ignoring SIGHUP
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = all_runs() if (tmp_path / "mlflow.db").exists() else []
        if runs and mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "eval/success_rate"):
            break  # training is under way
        time.sleep(0.5)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "Traceback" not in stderr
    (run,) = all_runs()
    assert run.info.status == "KILLED"
    assert stderr.strip().splitlines()[-1] == f"harness: terminated; MLflow run {run.info.run_id} was marked KILLED"


def test_an_error_inside_training_marks_the_run_failed(store, tmp_path, monkeypatch):
    from harness.config import resolve_config
    from harness.training import train

    def broken_learn(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr("stable_baselines3.SAC.learn", broken_learn)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(resolve_config("fast", "FetchReach-v4", {"total_steps": 100}))
    (run,) = all_runs()
    assert run.info.status == "FAILED"


def test_device_cuda_without_a_gpu_is_one_line_before_any_store_or_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli(["train", "--device", "cuda", *TINY], tmp_path, uri, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"harness: error: --device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False; "
        f"torch {torch.__version__}); accepted on this machine: auto, cpu"
    ]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("uri", ["sqlite:///:memory:", "sqlite://", "sqlite:///file::memory:?cache=shared"])
def test_a_store_held_in_memory_is_refused_before_any_work(tmp_path, uri):
    for args in (["train", *TINY], ["compare", "--env", "FetchReach-v4"]):
        proc = run_cli(args, tmp_path, uri, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"harness: error: tracking store {uri} is held in memory and vanishes when this command exits, with "
            "every run logged to it; point MLFLOW_TRACKING_URI at a sqlite:///path/mlflow.db file or a tracking server"
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ui_on_a_taken_port_is_one_line_and_prints_no_links(store, tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_cli(["ui", "--port", str(port)], tmp_path, store, check=False, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"harness: error: port {port} on 127.0.0.1 is taken (Address already in use); choose another --port"
    ]
    assert "http://" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("stop", ["SIGHUP", "SIGTERM", "SIGKILL"])
def test_ui_stopped_or_its_terminal_closed_leaves_no_server_on_the_port(store, tmp_path, stop):
    """A closed terminal sends SIGHUP to its foreground job: the MLflow server under `harness ui` must go
    with it (uvicorn alone takes SIGHUP as "reload" and keeps the port). SIGKILL (kill -9) leaves harness
    ui no moment to act: the server, told by the kernel that its parent died, goes by itself."""
    import os
    import socket

    from tests.conftest import PROJECT_ROOT

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**clean_env(store), "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "entry_points.cli", "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's job: its own process group
        # as from a terminal: under nohup (inherited SIG_IGN) SIGHUP is rightly ignored
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )

    def listening() -> bool:
        with socket.socket() as client:
            return client.connect_ex(("127.0.0.1", port)) == 0

    deadline = time.time() + 120
    while not listening():
        assert proc.poll() is None and time.time() < deadline, "harness ui did not start serving"
        time.sleep(0.5)
    os.killpg(proc.pid, getattr(signal, stop))
    _, stderr = proc.communicate(timeout=60)
    if stop == "SIGKILL":
        deadline = time.time() + 30
        while listening() and time.time() < deadline:
            time.sleep(0.5)
        assert proc.returncode == -9 and not listening()
        return
    assert proc.returncode == 143 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "harness: terminated; no MLflow run was open"
    assert not listening()  # nothing left serving on the port


def evaluated_pair(her_scores: dict[str, float] | None) -> dict[bool, str]:
    """A finished, evaluated no-HER and HER training run of FetchReach-v4, seed 0, made by hand: the no-HER
    run with plain scores, the HER run with ``her_scores`` (None: its scores are gone)."""
    from harness import tracking
    from harness.run_schema import RunIdentity

    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment(tracking.DEFAULT_EXPERIMENT)
    plain = {"eval/success_rate": 0.1, "eval/mean_return": -45.0, "eval/final_distance": 0.1}
    run_ids = {}
    for her in (False, True):
        identity = RunIdentity("FetchReach-v4", "sac", her, 0)
        run = client.create_run(
            experiment_id, run_name=identity.name, tags={**identity.tags("train"), "harness.evaluated": "true"}
        )
        scores = plain if not her else {} if her_scores is None else {**plain, **her_scores}
        for key, value in scores.items():
            client.log_metric(run.info.run_id, key, value, step=300)
        client.set_terminated(run.info.run_id, "FINISHED")
        run_ids[her] = run.info.run_id
    return run_ids


def test_compare_names_an_evaluated_run_whose_scores_are_gone_and_writes_nothing(store, tmp_path):
    """A run tagged evaluated without its eval metrics (deleted, or a crash between tag and metrics):
    one line naming the run and how to score it again, before any result file is written."""
    run_ids = evaluated_pair(None)  # the no-HER run keeps its scores; the HER run lost them
    proc = run_cli(["compare", "--env", "FetchReach-v4", "--seeds", "0"], tmp_path, store, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"harness: error: training run {run_ids[True]} (sac_her_FetchReach-v4_seed0) is marked evaluated but has no "
        f"eval/success_rate, eval/mean_return, eval/final_distance; evaluate it again: "
        f"harness eval --ckpt runs:/{run_ids[True]}/checkpoint"
    ]
    assert not (tmp_path / "results").exists()
    assert sorted(r.info.run_id for r in all_runs()) == sorted(run_ids.values())  # no compare run was made


def test_sigterm_during_eval_is_one_line_and_leaves_no_downloaded_checkpoint(store, tmp_path):
    """SIGTERM while `harness eval --ckpt runs:/...` is rolling episodes out (before anything is logged):
    one line, exit 143, the temporary download removed, the results file not written. SIGKILL leaves the
    download (nothing runs on a SIGKILL): the next command that downloads removes it."""
    cli_in_process(["train", "--her", *TINY], tmp_path, store)
    (run,) = all_runs()
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    def eval_stopped_by(stop, after_s: float):
        proc = subprocess.Popen(
            [sys.executable, "-m", "entry_points.cli", "eval", "--ckpt", run.info.run_id, "--n-episodes", "100000"],
            cwd=tmp_path,
            env={**clean_env(store), "TMPDIR": str(scratch)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline and not list(scratch.glob("harness-ckpt-*/**/*.zip")):
            time.sleep(0.2)
        time.sleep(after_s)
        proc.send_signal(stop)
        stderr = proc.communicate(timeout=60)[1]
        return proc.returncode, stderr

    code, stderr = eval_stopped_by(signal.SIGTERM, after_s=3)  # the episodes are running
    assert code == 143 and "Traceback" not in stderr
    assert stderr.strip().splitlines() == ["harness: terminated; no MLflow run was open"]
    assert not list(scratch.glob("harness-ckpt-*"))
    assert not list(tmp_path.glob("results/*.json"))  # the folder is checked for writing up front
    assert all(r.info.status == "FINISHED" for r in all_runs())
    eval_stopped_by(signal.SIGKILL, after_s=0)  # the download is there: the checkpoint is being loaded
    (left,) = scratch.glob("harness-ckpt-*")
    downloaded = {p.name for p in left.rglob("*") if p.is_file()}  # meta.json comes second: killed before it, or not
    assert "sac_her_FetchReach-v4_seed0.zip" in downloaded and downloaded <= {"meta.json", "sac_her_FetchReach-v4_seed0.zip"}
    proc = subprocess.run(
        [sys.executable, "-m", "entry_points.cli", "eval", "--ckpt", run.info.run_id, "--n-episodes", "1"],
        cwd=tmp_path,
        env={**clean_env(store), "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and not list(scratch.glob("harness-*"))  # the stale download is gone, its own too


@pytest.mark.parametrize("value", [float("nan"), 5.0, -1.0])
def test_compare_names_a_run_whose_success_rate_no_evaluation_gives(store, tmp_path, value):
    """An evaluated run whose eval/success_rate was written by hand (NaN, 5.0, -1.0): one line naming the
    run and the value, no compare run, no result file."""
    run_ids = evaluated_pair({"eval/success_rate": value})
    proc = cli_in_process(["compare", "--env", "FetchReach-v4", "--seeds", "0"], tmp_path, store, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"harness: error: training run {run_ids[True]} (sac_her_FetchReach-v4_seed0) has eval/success_rate = {value}, "
        f"which no evaluation gives (a share between 0 and 1); evaluate it again: harness eval --ckpt runs:/{run_ids[True]}"
    ]
    assert not (tmp_path / "results").exists()
    assert sorted(r.info.run_id for r in all_runs()) == sorted(run_ids.values())
