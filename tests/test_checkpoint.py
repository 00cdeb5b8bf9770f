"""pdl.checkpoint: atomic writes, safe loading, exact random state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import pdl.checkpoint as checkpoint
from pdl.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)


def test_round_trip_loads_with_plain_weights_only_torch_load(tmp_path):
    model = nn.Linear(3, 2)
    path = save_checkpoint({"model": model.state_dict(), "epoch": 4, "rng": rng_state()}, tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)  # no pdl needed to read it
    assert state["epoch"] == 4
    assert torch.equal(state["model"]["weight"], model.weight.detach())


def test_interrupted_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)

    def half_written_then_ctrl_c(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the temporary file...
        raise KeyboardInterrupt  # ...then the user presses Ctrl-C

    monkeypatch.setattr(checkpoint.torch, "save", half_written_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_process_killed_mid_write_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL (no clean-up at all) while a large checkpoint is being rewritten in a loop."""
    path = tmp_path / "last.pt"
    writer = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, torch\n"
            "from pdl.checkpoint import save_checkpoint\n"
            "big = torch.randn(8_000_000)  # 32 MB: each write takes a while\n"
            "for i in range(1000):\n"
            "    save_checkpoint({'epoch': i, 'w': big}, sys.argv[1])\n"
        ), str(path)],
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert path.exists(), "the writer never produced a checkpoint"
        # Wait until a temporary file exists: the next write is under way.
        while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait()
    state = load_checkpoint(path)
    assert state["w"].numel() == 8_000_000


def test_corrupt_and_missing_checkpoints_raise_clear_errors(tmp_path):
    good = save_checkpoint({"epoch": 1, "w": torch.ones(100)}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated, corrupt or was not written by torch.save"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="No checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"holds a list, not a dict \(a checkpoint or a state_dict\)"):
        load_checkpoint(tmp_path / "list.pt")


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": nn.Linear(2, 2)}, path)  # a whole module: loading it would run pickle code
    with pytest.raises(CheckpointError, match="Could not read"):
        load_checkpoint(path)


def test_rng_state_round_trip_covers_python_numpy_torch_and_a_generator(tmp_path):
    import random

    import numpy as np

    generator = torch.Generator().manual_seed(7)
    state = rng_state(generator)
    path = save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=generator).item())
    restore_rng_state(load_checkpoint(path)["rng"], generator)
    second = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=generator).item())
    assert first == second


def test_no_leftover_temporary_files_after_many_saves(tmp_path):
    for i in range(5):
        save_checkpoint({"epoch": i}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == ["last.pt"]
