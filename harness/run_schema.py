"""The run schema: every tag key a harness run carries, and who a training run is (:class:`RunIdentity`).

The tag keys below are the only place a "harness." or "mlflow." key is spelled (a test checks). Seven of them
are a training run's identity: RunIdentity is the one place that turns (env, algo, HER, seed) into names and tags.

Every command that makes, finds or reports a training run goes through :class:`RunIdentity`:
``train`` names its run and checkpoint with it and tags the run with it, ``eval`` names its results
file after it and tags its eval run, ``compare``, ``register`` and the pipelines search by its tags, and the
pipeline reports look their runs up by its name. Nothing else formats a run name or builds these
tags by hand, so they cannot drift apart.

Pure data: importing it costs nothing (the CLI's ``--help`` path imports the config, which uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

# The tags a training run's identity is written to (and searched by); values are strings in MLflow.
ENV_TAG, ALGO_TAG, HER_TAG, SEED_TAG, VARIANT_TAG = (
    "harness.env",
    "harness.algo",
    "harness.her",
    "harness.seed",
    "harness.variant",
)
CONDITION_TAG = "harness.condition"  # "HER" / "no-HER": what the MLflow UI's view groups by
KIND_TAG = "harness.kind"  # train, eval, compare, pipeline, lab, floor, bench, reproduce

# Every other tag key the harness writes or searches by: the run schema in one place (a test fails
# on a "harness." or "mlflow." tag literal anywhere else in the package).
# What a training run is made of and where it ran
CONFIG_HASH_TAG = "harness.config_hash"
PRESET_TAG = "harness.preset"
N_SAMPLED_GOAL_TAG = "harness.n_sampled_goal"
TOTAL_STEPS_TAG = "harness.total_steps"
CODE_VERSION_TAG = "harness.code_version"
GIT_COMMIT_TAG, GIT_DIRTY_TAG = "harness.git_commit", "harness.git_dirty"
COMMAND_TAG, HOST_TAG, CPU_TAG = "harness.command", "harness.host", "harness.cpu"
NICENESS_TAG = "harness.niceness"  # the training process's scheduling priority (wall-clock times depend on it)
VERSION_TAG_PREFIX = "harness.version."  # + package name
PRECISION_TAG, DEVICE_TAG, TORCH_THREADS_TAG = "harness.precision", "harness.device", "harness.torch_threads"
CPU_CAPABILITY_TAG, NATIVE_BF16_TAG = "harness.cpu_capability", "harness.native_bf16"
WARNINGS_TAG = "harness.warnings"
# How it went: resumes, checkpoints and their hashes
RESUMED_FROM_STEP_TAG = "harness.resumed_from_step"
DAMAGED_CHECKPOINT_TAG = "harness.damaged_checkpoint"
RESUME_MANIFEST_SHA256_TAG = "harness.resume_sha256"  # of the artifact resume/step.json (tracking server only)
CHECKPOINT_SHA256_TAG, NORMALIZATION_SHA256_TAG = "harness.checkpoint_sha256", "harness.normalization_sha256"
META_SHA256_TAG = "harness.meta_sha256"  # of the run's meta.json artifact, as logged
# On a checkpoint's MLflow logged model: its env step, and the sha256 of each of its files (JSON)
CHECKPOINT_STEP_TAG, WEIGHTS_SHA256_TAG = "harness.step", "harness.weights_sha256"
# Evaluation
EVALUATED_TAG = "harness.evaluated"  # "true" once `harness eval` logged eval/* to the training run
EVAL_EPISODES_TAG = "harness.eval_episodes"
EVAL_RESET_SEED_TAG = "harness.eval_reset_seed"
SOURCE_RUN_ID_TAG = "harness.source_run_id"  # an eval run's (or a registered model's) training run
# The account that created a run, written by the tracking server of `harness server start --auth`
# (harness.server_auth) and refused from clients: the one tag on a shared server a writer cannot forge.
CREATED_BY_TAG = "harness.created_by"
SOURCE_CREATED_BY_TAG = "harness.source_created_by"  # on a register run: the account that made its source run
# Comparison and its verdict
SEEDS_TAG = "harness.seeds"
CLEAR_SEPARATION_TAG = "harness.clear_separation"
SEPARATION_TAG_PREFIX = "harness.separation_"  # + large / significant / consistent
SEPARATION_TEST_TAG = "harness.separation_test"
# Pipelines
PIPELINE_TAG, PIPELINE_KEY_TAG = "harness.pipeline", "harness.pipeline_key"
LEASE_TAG = "harness.lease"  # on a pipeline run: which process runs it (harness.pipelines.lease)
EXECUTOR_TAG, WORKERS_TAG, ACTIONS_TAG = "harness.executor", "harness.workers", "harness.actions"
# Reproductions
REPRODUCES_TAG, VERDICT_TAG = "harness.reproduces", "harness.verdict"
FIRST_DIFFERENCE_STEP_TAG = "harness.first_difference_step"
# MLflow's own (``mlflow.utils.mlflow_tags``; spelled here so that importing this module costs nothing)
RUN_NAME_TAG = "mlflow.runName"
PARENT_RUN_ID_TAG = "mlflow.parentRunId"
USER_TAG = "mlflow.user"  # the user the client says it is (anyone can write it: harness.accounts)
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + view id: an experiment's saved runs-page view


@dataclass(frozen=True)
class RunIdentity:
    """(env, algo, HER or not, seed), plus a variant where one experiment trains several runs of that
    same four-tuple (the n_sampled_goal ablation: ``nsg4``)."""

    env_id: str
    algo: str
    her: bool
    seed: int
    variant: str = ""

    @classmethod
    def of(cls, config: Any, variant: str = "") -> RunIdentity:
        """The identity of a training config: a :class:`~harness.config.TrainConfig` or its dict form
        (``meta.json``'s ``config``)."""
        get = config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
        return cls(get("env_id"), get("algo"), bool(get("her", False)), int(get("seed", 0)), variant)

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> RunIdentity:
        """Read back from a training or eval run's tags."""
        return cls(tags[ENV_TAG], tags[ALGO_TAG], tags[HER_TAG] == "true", int(tags[SEED_TAG]), tags.get(VARIANT_TAG, ""))

    @property
    def name(self) -> str:
        """The chapter's run and checkpoint name: ``sac_her_FetchPush-v4_seed0``, ``sac_FetchPush-v4_seed0``;
        with a variant ``sac_her_nsg4_FetchPush-v4_seed0``."""
        parts = [self.algo] + (["her"] if self.her else []) + ([self.variant] if self.variant else [])
        return f"{'_'.join(parts)}_{self.env_id}_seed{self.seed}"

    @property
    def condition(self) -> str:
        return "HER" if self.her else "no-HER"

    def search_tags(self) -> dict[str, str]:
        """The tags that find this run: what ``compare``, ``register`` and the pipelines search by."""
        tags = {ENV_TAG: self.env_id, ALGO_TAG: self.algo, HER_TAG: str(self.her).lower(), SEED_TAG: str(self.seed)}
        if self.variant:
            tags[VARIANT_TAG] = self.variant
        return tags

    def tags(self, kind: str | None = None) -> dict[str, str]:
        """The tags a run of this identity carries: :meth:`search_tags`, the condition the MLflow UI's
        view groups by, and with ``kind`` (train, eval, bench) ``harness.kind``."""
        tags = {**self.search_tags(), CONDITION_TAG: self.condition}
        return {KIND_TAG: kind, **tags} if kind is not None else tags
