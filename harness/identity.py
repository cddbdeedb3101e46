"""Who a training run is: the one place that turns (env, algo, HER, seed) into names and tags.

Every command that makes, finds or reports a training run goes through :class:`RunIdentity`:
``train`` names its run and checkpoint with it and tags the run with it, ``eval`` names its results
file after it and tags its eval run, ``compare``, ``register`` and the pipelines search by its tags, and the
pipeline reports look their runs up by its name. Nothing else formats a run name or builds these
tags by hand, so they cannot drift apart.

Pure data: importing it costs nothing (the CLI's ``--help`` path imports the config, which uses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# The tags a training run's identity is written to (and searched by); values are strings in MLflow.
ENV_TAG, ALGO_TAG, HER_TAG, SEED_TAG, VARIANT_TAG = ("harness.env", "harness.algo", "harness.her", "harness.seed",
                                                      "harness.variant")
CONDITION_TAG = "harness.condition"  # "HER" / "no-HER": what the MLflow UI's view groups by
KIND_TAG = "harness.kind"


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
