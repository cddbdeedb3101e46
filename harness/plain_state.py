"""State written as plain data, read back without running anything: JSON for the structure, ``.npz`` for arrays.

A resumable checkpoint holds the training's state (generators, envs mid-episode, the replay buffer, the
normalization statistics, SB3's last observations). Pickled, a checkpoint fetched from a tracking server could
run whatever code a writer put in it; here it is a JSON tree whose leaves are JSON values or references to
arrays in an ``.npz`` that numpy reads with ``allow_pickle=False``. What the tree can hold: dicts with string
keys, lists, tuples, deques, None, bool, int (any size), float, str, numpy arrays and scalars (their dtype
kept, so sums continue bit for bit) and CPU torch tensors. Anything else is refused when writing, so a state
that cannot be read back is never written.
"""

from __future__ import annotations

import collections
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# Markers of the non-JSON values in the tree (a dict with one of these keys is never a plain dict here).
ARRAY, SCALAR, SCALARS, TENSOR, TUPLE, DEQUE = "__array__", "__scalar__", "__scalars__", "__tensor__", "__tuple__", "__deque__"
MARKERS = {ARRAY, SCALAR, SCALARS, TENSOR, TUPLE, DEQUE}


class NotPlainState(ValueError):
    """A value the tree cannot hold, or a file that is not such a tree."""


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    def stash(array: np.ndarray) -> str:
        if array.dtype == object:
            raise NotPlainState("an array of Python objects")
        name = f"a{len(arrays)}"
        arrays[name] = array
        return name

    if isinstance(value, np.generic):  # before the Python types: np.float64 is a float
        return {SCALAR: stash(np.asarray(value))}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return {ARRAY: stash(value)}
    if type(value).__module__.startswith("torch") and type(value).__name__ == "Tensor":
        return {TENSOR: stash(value.detach().cpu().numpy())}
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value) or MARKERS & set(value):
            raise NotPlainState(f"a dict with keys {sorted(map(repr, value))[:5]}")
        return {key: _encode(item, arrays) for key, item in value.items()}
    if isinstance(value, collections.deque):
        return {DEQUE: [_encode(item, arrays) for item in value], "maxlen": value.maxlen}
    if isinstance(value, tuple):
        return {TUPLE: [_encode(item, arrays) for item in value]}
    if isinstance(value, list):
        # Many numpy scalars of one dtype (a Monitor's rewards): one array, read back as numpy scalars.
        if len(value) > 1 and all(isinstance(item, np.generic) for item in value):
            dtypes = {item.dtype for item in value}
            if len(dtypes) == 1:
                return {SCALARS: stash(np.asarray(value))}
        return [_encode(item, arrays) for item in value]
    raise NotPlainState(f"a {type(value).__module__}.{type(value).__qualname__}")


def _decode(node: Any, arrays) -> Any:
    if isinstance(node, list):
        return [_decode(item, arrays) for item in node]
    if not isinstance(node, dict):
        return node
    if SCALAR in node:
        return arrays[node[SCALAR]][()]
    if ARRAY in node:
        return arrays[node[ARRAY]]
    if SCALARS in node:
        return list(arrays[node[SCALARS]])
    if TENSOR in node:
        import torch

        return torch.from_numpy(np.array(arrays[node[TENSOR]]))
    if TUPLE in node:
        return tuple(_decode(item, arrays) for item in node[TUPLE])
    if DEQUE in node:
        return collections.deque((_decode(item, arrays) for item in node[DEQUE]), maxlen=node["maxlen"])
    return {key: _decode(item, arrays) for key, item in node.items()}


def write(state: Any, json_path: Path, arrays_path: Path) -> None:
    """``state`` as ``json_path`` (the tree) and ``arrays_path`` (its arrays, an uncompressed ``.npz``)."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(state, arrays)
    with open(arrays_path, "wb") as f:
        np.savez(f, **arrays)
    json_path.write_text(json.dumps(tree))


def read(json_path: Path, arrays_path: Path) -> Any:
    """The state :func:`write` wrote; :class:`NotPlainState` for files that are not one (nothing is unpickled:
    numpy refuses object arrays, the tree is JSON)."""
    try:
        tree = json.loads(json_path.read_text())
        with np.load(arrays_path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        return _decode(tree, arrays)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise NotPlainState(f"{type(exc).__name__}: {exc}") from None
