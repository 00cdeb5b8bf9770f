"""pdl.checkpoint: atomic writes, safe loading, exact random state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import pdl.checkpoint as checkpoint
from pdl.checkpoint import (
    CheckpointError,
    load_checkpoint,
    prepare_checkpoint_dir,
    remove_stale_temporary_files,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)


def test_round_trip_loads_with_plain_weights_only_torch_load(tmp_path):
    model = nn.Linear(3, 2)
    path = save_checkpoint(
        {"model": model.state_dict(), "epoch": 4, "rng": rng_state()}, tmp_path / "c.pt"
    )
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
        while (
            not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) and time.time() < deadline
        ):
            time.sleep(0.01)
        time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait()
    state = load_checkpoint(path)
    assert state["w"].numel() == 8_000_000
    # The killed write may have left its temporary file; the next run in the folder removes it
    # once nothing has written to it for a minute (here: aged by hand).
    for leftover in tmp_path.glob(".last.pt.*.tmp"):
        os.utime(leftover, (0, 0))
    remove_stale_temporary_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_corrupt_and_missing_checkpoints_raise_clear_errors(tmp_path):
    good = save_checkpoint({"epoch": 1, "w": torch.ones(100)}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        CheckpointError, match=r"truncated, corrupt or was not written by torch.save"
    ):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="No checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(
        CheckpointError, match=r"holds a list, not a dict \(a checkpoint or a state_dict\)"
    ):
        load_checkpoint(tmp_path / "list.pt")


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": nn.Linear(2, 2)}, path)  # a whole module: loading it would run pickle code
    with pytest.raises(CheckpointError, match="Refused to load .*not a plain tensor file"):
        load_checkpoint(path)


def test_rng_state_round_trip_covers_python_numpy_torch_and_a_generator(tmp_path):
    import random

    import numpy as np

    generator = torch.Generator().manual_seed(7)
    state = rng_state(generator)
    path = save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    first = (
        random.random(),
        np.random.rand(),
        torch.rand(1).item(),
        torch.rand(1, generator=generator).item(),
    )
    restore_rng_state(load_checkpoint(path)["rng"], generator)
    second = (
        random.random(),
        np.random.rand(),
        torch.rand(1).item(),
        torch.rand(1, generator=generator).item(),
    )
    assert first == second


def test_no_leftover_temporary_files_after_many_saves(tmp_path):
    for i in range(5):
        save_checkpoint({"epoch": i}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == ["last.pt"]


def test_ctrl_c_during_the_write_is_held_until_the_file_is_complete(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
    real_save = checkpoint.torch.save

    def save_with_ctrl_c(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives while the bytes are being written
        time.sleep(0.01)  # Python runs signal handlers between bytecodes: give it the chance
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):  # delivered after the write, not inside torch.save
        save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 2  # complete and in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_files_get_the_usual_permissions_not_0600(tmp_path):
    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert path.stat().st_mode == reference.stat().st_mode
    assert path.stat().st_mode & 0o044  # readable by group and others with the usual umask 022


def test_a_pickle_that_runs_code_is_refused_and_the_message_never_suggests_loading_it_anyway(
    tmp_path,
):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": {"weight": torch.zeros(1)}, "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(error.value)
    assert "not a plain tensor file" in message and "save model.state_dict()" in message
    assert "truncated" not in message and "weights_only=False" not in message
    assert not marker.exists()


def test_garbage_is_reported_as_damaged_not_as_unsafe(tmp_path):
    (tmp_path / "noise.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        CheckpointError, match="truncated, corrupt or was not written by torch.save"
    ) as error:
        load_checkpoint(tmp_path / "noise.pt")
    assert "weights_only=False" not in str(error.value)
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path / "folder.pt")


def test_only_stale_temporary_files_of_pdl_naming_are_removed(tmp_path):
    names = {
        ".last.pt.3f9a0c12.tmp": True, ".best.pt.deadbeef.tmp": True, ".features-0f1e.pt.00000000.tmp": True,
        ".last.pt.3f9a0c1.tmp": False, ".last.pt.3F9A0C12.tmp": False, ".last.ckpt.3f9a0c12.tmp": False,
        "last.pt.3f9a0c12.tmp": False, ".last.pt.3f9a0c12.tmp.bak": False, "notes.tmp": False,
        ".last.pt.k3j4h5g6.tmp": False, ".best.pt.a_b_c_d_.tmp": False,  # not token_hex's letters: not ours
    }  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (0, 0))
    (tmp_path / ".last.pt.d0000000.tmp").mkdir()  # a folder is never a temporary file of ours
    removed = {p.name for p in remove_stale_temporary_files(tmp_path)}
    assert removed == {name for name, ours in names.items() if ours}
    (tmp_path / ".last.pt.fe5a0000.tmp").write_bytes(b"x")  # another run writing right now
    assert remove_stale_temporary_files(tmp_path) == []


def test_a_checkpoint_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(NotADirectoryError, match="checkpoint_dir .*runs is a file, not a folder"):
        prepare_checkpoint_dir(tmp_path / "runs")
    with pytest.raises(IsADirectoryError, match="it is a folder; give a file name such as"):
        save_checkpoint({}, tmp_path)
