"""pdl.device: device choice, precision policy, seeding, batches, the doctor report."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pdl.device import environment_report, get_device, precision_policy, seed_everything, to_device


def test_get_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("PDL_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert get_device() == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert get_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cuda")


def test_environment_variable_forces_a_device(monkeypatch):
    monkeypatch.setenv("PDL_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("PDL_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="'cuda' was requested but CUDA is not available"):
        get_device()


def test_precision_policy_per_device(monkeypatch):
    cpu = precision_policy("cpu")
    assert cpu.dtype is None and not cpu.enabled and cpu.make_scaler() is None
    assert precision_policy("mps").dtype is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision_policy("cuda").dtype == torch.bfloat16 and not precision_policy("cuda").needs_scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    old_gpu = precision_policy("cuda")
    assert old_gpu.dtype == torch.float16 and old_gpu.needs_scaler
    assert precision_policy("cpu", "bf16").dtype == torch.bfloat16
    assert precision_policy("cuda", "fp32").dtype is None
    with pytest.raises(ValueError, match="precision must be"):
        precision_policy("cpu", "half")


def test_autocast_changes_matmul_dtype_only_when_enabled():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with precision_policy("cpu").autocast():
        assert (a @ b).dtype == torch.float32
    with precision_policy("cpu", "bf16").autocast():
        assert (a @ b).dtype == torch.bfloat16
    policy = precision_policy("cpu", "fp16")
    assert isinstance(policy.make_scaler(), torch.amp.GradScaler)
    assert "GradScaler" in str(policy)


def test_seed_everything_repeats_python_numpy_and_torch():
    import random

    import numpy as np

    seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(3)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
    seed_everything(3, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    seed_everything(3)
    assert not torch.are_deterministic_algorithms_enabled()


def test_to_device_moves_nested_batches_and_keeps_types():
    from collections import namedtuple

    Pair = namedtuple("Pair", "x y")
    batch = {"images": torch.zeros(2), "pair": Pair(torch.ones(1), [torch.ones(2), "label"]), "n": 3}
    moved = to_device(batch, torch.device("meta"))
    assert moved["images"].device.type == "meta"
    assert isinstance(moved["pair"], Pair) and moved["pair"].x.device.type == "meta"
    assert moved["pair"].y[0].device.type == "meta" and moved["pair"].y[1] == "label"
    assert moved["n"] == 3


def test_environment_report_and_doctor_command():
    report = environment_report("cpu")
    assert report["torch"] == torch.__version__ and report["device"] == "cpu"
    assert report["precision (auto)"] == "cpu: float32 (no autocast)"
    out = subprocess.run([sys.executable, "-m", "pdl", "doctor"], capture_output=True, text=True, check=True).stdout
    assert f"torch             {torch.__version__}" in out
    assert "data root" in out
