"""Later weeks: the best HER policy in the MLflow Model Registry, and loading a policy from anywhere.

``harness register --env FetchPush-v4`` picks the best evaluated HER training run of that env (by
``eval/success_rate``, ties by ``eval/mean_return``), logs its policy as an ``mlflow.pyfunc`` model
(plain weights, normalization statistics as JSON and ``meta.json``; the pyfunc as code, so loading
it unpickles nothing), registers it as ``ch04-<algo>-her-<env>`` and points the alias ``champion`` at
it when it beats the current champion.

``load_policy(uri)`` returns the SB3 model for a checkpoint path, a run id, a ``runs:/`` URI or a
``models:/`` URI, ready for ``predict``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import accounts, stores, tracking
from harness.accounts import OWN_RUNS_ONLY, AcceptedAccounts
from harness.errors import HarnessError, warn
from harness.atomic_files import scratch_directory
from harness.run_schema import (
    ALGO_TAG,
    ENV_TAG,
    EVALUATED_TAG,
    EVAL_EPISODES_TAG,
    GIT_COMMIT_TAG,
    HER_TAG,
    KIND_TAG,
    RunIdentity,
    SOURCE_CREATED_BY_TAG,
    SOURCE_RUN_ID_TAG,
)

CHAMPION = "champion"
POLICY_ARTIFACT = "policy"


def model_name(algo: str, env_id: str) -> str:
    return f"ch04-{algo}-her-{env_id}"


class SB3Policy(mlflow.pyfunc.PythonModel):
    """An SB3 checkpoint as an MLflow pyfunc: ``predict({"observation": ..., "achieved_goal": ...,
    "desired_goal": ...})`` returns deterministic actions for raw env observations: one action for a
    single observation (each value 1-D, as ``env.reset()`` gives it), one row per observation for
    a batch (each value 2-D, rows aligned). Observation normalization, if the run used it, is applied."""

    # The input schema is the explicit signature given at log time; without this MLflow inspects
    # predict's type hints and warns on every import that there are none.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from harness.checkpoints import WEIGHTS_ARTIFACT, load_weights

        self.policy = load_weights(Path(context.artifacts[WEIGHTS_ARTIFACT]), "the registered model")
        self.shapes = {key: space.shape for key, space in self.policy.model.observation_space.spaces.items()}

    def predict(self, context, model_input, params=None):
        obs, single = as_observation_batch(model_input, self.shapes)
        actions, _ = self.policy.model.predict(self.policy.normalize(obs), deterministic=True)
        return actions[0] if single else actions


def as_observation_batch(model_input, shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], bool]:
    """(batch with a leading row axis, whether the input was a single observation), or a ValueError
    that names the key and shape at fault and what is expected."""
    if not isinstance(model_input, dict) or set(model_input) != set(shapes):
        got = sorted(model_input) if isinstance(model_input, dict) else type(model_input).__name__
        raise ValueError(f"expected a dict with keys {sorted(shapes)}, got {got}")
    obs = {key: np.asarray(model_input[key], dtype=np.float64) for key in shapes}
    first = next(iter(shapes))
    single = obs[first].ndim == len(shapes[first])
    rows = None if single else obs[first].shape[0]
    for key, shape in shapes.items():
        expected = shape if single else (rows, *shape)
        if obs[key].shape != expected:
            raise ValueError(
                f"'{key}' has shape {obs[key].shape}; expected {expected} "
                f"({'one observation' if single else f'{rows} observations, as {first!r} has'})"
            )
    return ({key: value[None] for key, value in obs.items()} if single else obs), single


def load_policy(uri: str):
    """The SB3 model behind a checkpoint path, run id, ``runs:/`` or ``models:/`` URI."""
    from harness.models import load_checkpoint

    return load_checkpoint(uri).model


def signature_for(env_id: str):
    """One named input per key of Fetch's dict observation, and float32 actions.

    The inputs are declared with MLflow's shape-free spec (``Tensor('object', (-1,))``): a precise
    ``(-1, n)`` float spec would make MLflow reject a single observation (shape ``(n,)``) before
    ``predict`` sees it. ``SB3Policy.predict`` checks shapes itself against the policy's observation
    space; the exact shapes are in the model's metadata (``observation_shapes``)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from harness.envs import make_env

    env = make_env(env_id)
    obs_space, action_dim = env.observation_space, env.action_space.shape[0]
    env.close()
    inputs = Schema([TensorSpec(np.dtype(object), (-1,), key) for key in obs_space.spaces])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, action_dim))])
    return ModelSignature(inputs=inputs, outputs=outputs), obs_space


def best_her_run(env_id: str, algo: str | None = None, accepted: AcceptedAccounts = OWN_RUNS_ONLY):
    """The finished, evaluated HER training run with the best eval success (ties: return); of any algo if None.
    Of this account's runs (and those ``accepted``) only, on a server with accounts (harness.accounts)."""
    tags = {KIND_TAG: "train", ENV_TAG: env_id, HER_TAG: "true", EVALUATED_TAG: "true"}
    if algo is not None:
        tags[ALGO_TAG] = algo
    runs, left_out = accounts.usable_runs(
        tracking.search_runs(
            tags,
            tracking.experiment_ids(None),
            status="FINISHED",
            max_results=tracking.SEARCH_PAGE,
            order_by=("metrics.`eval/success_rate` DESC", "metrics.`eval/mean_return` DESC"),
        ),
        accepted,
    )
    if left_out:
        warn(accounts.left_out_line(left_out))
    if not runs:
        raise HarnessError(
            f"no finished, evaluated {algo + ' ' if algo else ''}HER training run for {env_id} in "
            f"{mlflow.get_tracking_uri()}{' made by this account' if left_out else ''}; "
            "train and evaluate one first (harness train --her, harness eval)"
        )
    return runs[0]


def _is_better(candidate: dict[str, float], current: dict[str, float]) -> bool:
    key = ("eval/success_rate", "eval/mean_return")
    return tuple(candidate[k] for k in key) > tuple(current[k] for k in key)


def best_checkpoint_model(env_id: str, algo: str | None = None, accepted: AcceptedAccounts = OWN_RUNS_ONLY):
    """The checkpoint logged model (of a finished HER training) with the best eval success (ties: return), of
    a run this account may use (harness.accounts)."""
    from harness.models import CHECKPOINT_KIND

    tags = {KIND_TAG: CHECKPOINT_KIND, ENV_TAG: env_id, HER_TAG: "true", **({ALGO_TAG: algo} if algo else {})}
    models = mlflow.search_logged_models(
        experiment_ids=tracking.experiment_ids(None),
        filter_string=" AND ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items()),
        order_by=[
            {"field_name": "metrics.eval/success_rate", "ascending": False},
            {"field_name": "metrics.eval/mean_return", "ascending": False},
        ],
        output_format="list",
    )
    left_out: dict[str, int] = {}
    for model in models:
        run = tracking.find_run(model.source_run_id)
        if run is not None and run.info.status == "FINISHED" and {m.key for m in model.metrics or []} >= set(EVAL_KEYS):
            if not accounts.usable_runs([run], accepted)[0]:
                maker = accounts.made_by(run) or "?"
                left_out[maker] = left_out.get(maker, 0) + 1
                continue
            if left_out:
                warn(accounts.left_out_line(left_out))
            return model, run
    if left_out:
        warn(accounts.left_out_line(left_out))
    raise HarnessError(
        f"no checkpoint logged model of a finished {algo + ' ' if algo else ''}HER training for {env_id} in "
        f"{mlflow.get_tracking_uri()}; train one with periodic evaluations (harness train --her; --keep-checkpoints)"
    )


EVAL_KEYS = ("eval/success_rate", "eval/mean_return", "eval/final_distance")


def register(
    env_id: str | None = None,
    algo: str | None = None,
    run_id: str | None = None,
    best_checkpoint: bool = False,
    accepted: AcceptedAccounts = OWN_RUNS_ONLY,
) -> dict[str, Any]:
    """Register the best (or the given) evaluated HER run, of ``algo`` or (None) of any algo, or with
    ``best_checkpoint`` the best checkpoint logged model across runs and steps; move ``champion`` only if
    it is better. On a server with accounts, only this account's runs (and those ``accepted``) are used."""
    from harness.checkpoints import WEIGHTS_ARTIFACT, WEIGHTS_HASH_TAG, export_weights
    from harness.models import load_checkpoint

    stores.prepare_store(create=False)
    source_model = None
    if best_checkpoint:
        source_model, run = best_checkpoint_model(env_id, algo, accepted)
    elif run_id:
        run = tracking.get_run(run_id)
        accounts.check_usable(run, accepted)
    else:
        run = best_her_run(env_id, algo, accepted)
    tags = run.data.tags
    if tags.get(KIND_TAG) != "train" or (source_model is None and tags.get(EVALUATED_TAG) != "true"):
        raise HarnessError(
            f"run {run.info.run_id} is not an evaluated training run; "
            f"evaluate it first (harness eval --ckpt {run.info.run_id})"
        )
    identity = RunIdentity.from_tags(tags)
    env_id, algo = identity.env_id, identity.algo
    if not identity.her:
        raise HarnessError(f"run {run.info.run_id} is not a HER run; the registry holds HER models (ch04-<algo>-her-<env>)")
    if source_model is not None:
        metrics = {m.key: m.value for m in source_model.metrics if m.key in EVAL_KEYS}
        loaded = load_checkpoint(f"models:/{source_model.model_id}")  # its files checked against their sha256
    else:
        metrics = {k: run.data.metrics[k] for k in EVAL_KEYS}
        loaded = load_checkpoint(run.info.run_id)  # its files checked against the sha256 the run recorded
    name = model_name(algo, env_id)
    meta = loaded.meta
    made = accounts.made_by(run)  # the server's stamp of the account that made the source run (None: no stamp)
    with scratch_directory("register") as tmp:
        weights = Path(tmp) / WEIGHTS_ARTIFACT
        hashes = export_weights(loaded, weights)
        signature, obs_space = signature_for(env_id)
        example = {key: np.zeros((1, *space.shape)) for key, space in obs_space.spaces.items()}
        with tracking.tracked_run(
            f"register_{name}",
            {
                KIND_TAG: "register",
                ENV_TAG: env_id,
                SOURCE_RUN_ID_TAG: run.info.run_id,
                **({SOURCE_CREATED_BY_TAG: made} if made else {}),
            },
        ):
            info = mlflow.pyfunc.log_model(
                name=POLICY_ARTIFACT,
                python_model=str(Path(__file__).with_name("registry_model.py")),
                artifacts={WEIGHTS_ARTIFACT: str(weights)},
                signature=signature,
                input_example=example,
                metadata={"observation_shapes": {k: list(v.shape) for k, v in obs_space.spaces.items()}},
                code_paths=[str(Path(__file__).resolve().parent)],
                pip_requirements=_requirements(),
            )
    client = MlflowClient()
    version = mlflow.register_model(info.model_uri, name)
    version_tags = {
        "source_run_id": run.info.run_id,
        **({"source_created_by": made} if made else {}),
        "config": json.dumps(meta.get("config", {}), sort_keys=True),
        WEIGHTS_HASH_TAG: json.dumps(hashes, sort_keys=True),
        **{k.replace("/", "_"): str(v) for k, v in metrics.items()},
    }
    if source_model is not None:
        version_tags |= {"source_model_id": source_model.model_id, "source_step": str(int(loaded.model.num_timesteps))}
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    # The version's page in the MLflow UI shows this description first: where the model came from.
    description = version_description(run, metrics, meta)
    client.update_model_version(name, version.version, description=description)

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        current = None
    moved = current is None or _is_better(metrics, champion_metrics(current, metrics))
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        client.update_registered_model(
            name, description=f"Champion (`models:/{name}@{CHAMPION}`): version {version.version}. {description}"
        )
    return {
        "name": name,
        "version": version.version,
        "source_run_id": run.info.run_id,
        "source_created_by": made,
        "source_model_id": source_model.model_id if source_model is not None else None,
        "source_step": int(loaded.model.num_timesteps),
        "metrics": metrics,
        "champion_moved": moved,
        "previous_champion": current.version if current else None,
        "uri": f"models:/{name}@{CHAMPION}",
    }


def version_description(run, metrics: dict[str, float], meta: dict[str, Any]) -> str:
    """Markdown for a model version's page: its source run, how it scored, and the config that made it."""
    from harness import ui_views

    config = meta.get("config", {})
    identity = RunIdentity.from_tags(run.data.tags)
    link = ui_views.url(ui_views.ui_base(mlflow.get_tracking_uri()), run.info.experiment_id, run_id=run.info.run_id)
    shown = ("preset", "total_steps", "n_envs", "batch_size", "gamma", "learning_rate", "n_sampled_goal", "held_object_start")
    episodes = run.data.tags.get(EVAL_EPISODES_TAG, "?")
    lines = [
        f"**{identity.algo.upper()} + HER on {identity.env_id}, seed {identity.seed}**, from training run "
        f"[{run.info.run_name}]({link}) (`{run.info.run_id}`).",
        "",
        f"Deterministic evaluation on {episodes} episodes: success **{100 * metrics['eval/success_rate']:.1f}%**, "
        f"return {metrics['eval/mean_return']:.2f}, final distance {metrics['eval/final_distance']:.4f}.",
        "",
        "| config | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {config[key]} |" for key in shown if key in config]
    lines += [
        "",
        f"Code: commit `{run.data.tags.get(GIT_COMMIT_TAG, '?')}`; full config in the version's "
        "`config` tag and the run's `config.json`.",
    ]
    return "\n".join(lines)


def champion_metrics(current, metrics: dict[str, float]) -> dict[str, float]:
    """The current champion's eval metrics, from the tags registration put on its version."""
    try:
        return {k: float(current.tags[k.replace("/", "_")]) for k in metrics}
    except (KeyError, ValueError):
        raise HarnessError(
            f"the champion, version {current.version} of {current.name}, has no eval_* tags to compare "
            "with (not registered by harness register); move the alias by hand "
            "(MlflowClient().set_registered_model_alias)"
        ) from None


def _requirements() -> list[str]:
    """The pinned dependencies the harness itself installs (so loading never guesses versions)."""
    from importlib import metadata

    names = (
        "torch",
        "stable-baselines3",
        "sb3-contrib",
        "gymnasium",
        "gymnasium-robotics",
        "mujoco",
        "mlflow",
        "numpy",
        "cloudpickle",
    )
    pins = []
    for dist in names:
        try:
            version = metadata.version(dist).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
        pins.append(f"{dist}=={version}")
    return pins
