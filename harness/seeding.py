"""One seeding function: every random stream of a run derives from the config's seed."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch. Envs and the action space are seeded by SB3 from the same
    seed (``model = SAC(..., seed=seed)`` and ``make_vec_env(seed=seed)``); evaluation episodes
    use their own fixed reset seeds so every model is scored on the same episodes."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_state() -> dict:
    """The state of every global generator a training draws from (HER's goal sampling and DDPG's
    exploration use numpy's, SAC's policy sampling torch's), for a resumable checkpoint."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_random_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
