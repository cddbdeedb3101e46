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
