"""The HER harness: MLflow-tracked SAC with and without Hindsight Experience Replay on Fetch tasks."""


def load_policy(uri: str):
    """The SB3 model behind a checkpoint path, run id, ``runs:/`` or ``models:/`` URI, ready for ``predict``."""
    from harness.registry import load_policy as _load_policy

    return _load_policy(uri)
