"""Saving and loading training state safely.

A checkpoint is a plain dict of ``state_dict``s, numbers and tensors, so it loads with
``torch.load(path, weights_only=True)``: no pickled code runs when you open a file someone
sent you. It is written *atomically*: first to a temporary file next to the target, flushed
to disk, then renamed over the old file. A crash or Ctrl-C in the middle of ``save`` leaves
the previous checkpoint as it was.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a pdl checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically; return the path.

    Example:
        >>> import tempfile, torch.nn as nn
        >>> folder = tempfile.mkdtemp()
        >>> p = save_checkpoint({"model": nn.Linear(2, 1).state_dict()}, f"{folder}/last.pt")
        >>> sorted(load_checkpoint(p)["model"])
        ['bias', 'weight']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lives in the same folder: os.replace is only atomic within one
    # file system.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp_name, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise ``CheckpointError`` if it is unusable.

    Example:
        >>> load_checkpoint("/nonexistent.pt")
        Traceback (most recent call last):
        ...
        pdl.checkpoint.CheckpointError: No checkpoint at /nonexistent.pt
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise CheckpointError(
            f"Could not read the checkpoint {path} ({path.stat().st_size} bytes): it is truncated, "
            f"corrupt or was not written by torch.save. ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a dict (a checkpoint or a state_dict)")
    return state


# --------------------------------------------------------------------------------------
# Random number generator state: what makes a resumed run continue exactly
# --------------------------------------------------------------------------------------


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Capture the Python, NumPy and torch RNG states (and ``generator``'s, if given).

    Stored so that a resumed run shuffles and drops out exactly like an uninterrupted one.
    Everything is kept as tensors, lists and numbers so the checkpoint stays
    ``weights_only``-loadable.

    Example:
        >>> state = rng_state(); a = torch.rand(1)
        >>> restore_rng_state(state); torch.equal(a, torch.rand(1))
        True
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what ``rng_state`` captured.

    Example:
        >>> restore_rng_state(rng_state())
    """
    random.setstate(state["python"])  # torch.save keeps the nested tuples setstate wants
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])

