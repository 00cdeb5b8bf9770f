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
    with pytest.raises(
        RuntimeError,
        match=r"PDL_DEVICE='cuda' \(an environment variable\) was requested but CUDA is not available",
    ):
        get_device()


def test_a_device_name_that_is_not_one_names_where_it_came_from(monkeypatch):
    monkeypatch.setenv("PDL_DEVICE", "banana")
    with pytest.raises(
        ValueError,
        match=r"PDL_DEVICE='banana' \(an environment variable\) is not a device: .*unset PDL_DEVICE",
    ):
        get_device()
    with pytest.raises(ValueError, match=r"device 'gpu' is not a device: use 'cpu', 'cuda'"):
        get_device("gpu")


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        RuntimeError,
        match=r"device 'cuda:3' was requested but this machine has 1 CUDA device\(s\): cuda:0",
    ):
        get_device("cuda:3")
    assert get_device("cuda:0") == torch.device("cuda:0")


def test_precision_policy_per_device(monkeypatch):
    cpu = precision_policy("cpu")
    assert cpu.dtype is None and not cpu.enabled and not cpu.make_scaler().is_enabled()
    assert precision_policy("mps").dtype is None
    assert precision_policy("cpu", "bf16").dtype == torch.bfloat16
    assert precision_policy("cuda", "fp32").dtype is None
    with pytest.raises(ValueError, match="precision must be"):
        precision_policy("cpu", "half")


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16),  # A100, RTX 30xx, H100
     ((7, 5), torch.float16), ((7, 0), torch.float16), ((6, 1), torch.float16)],  # T4 (Colab), V100, P100
)  # fmt: skip
def test_auto_precision_on_cuda_follows_the_compute_capability(monkeypatch, capability, dtype):
    # A T4 "supports" bf16 only by emulation (torch.cuda.is_bf16_supported() says True there):
    # pdl must pick fp16 + GradScaler. Simulated: there is no GPU on the test machines.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    policy = precision_policy("cuda")
    assert policy.dtype == dtype and policy.needs_scaler == (dtype == torch.float16)
    assert ("GradScaler" in str(policy)) == (dtype == torch.float16)


def test_autocast_changes_matmul_dtype_only_when_enabled():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with precision_policy("cpu").autocast():
        assert (a @ b).dtype == torch.float32
    with precision_policy("cpu", "bf16").autocast():
        assert (a @ b).dtype == torch.bfloat16
    policy = precision_policy("cpu", "fp16")
    assert policy.make_scaler().is_enabled()
    assert (
        not precision_policy("cpu").make_scaler().is_enabled()
    )  # a pass-through object, never None
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
    seed_everything(3)  # leaves the setting alone
    assert torch.are_deterministic_algorithms_enabled()
    seed_everything(3, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_to_device_moves_nested_batches_and_keeps_types():
    from collections import namedtuple

    Pair = namedtuple("Pair", "x y")
    batch = {
        "images": torch.zeros(2),
        "pair": Pair(torch.ones(1), [torch.ones(2), "label"]),
        "n": 3,
    }
    moved = to_device(batch, torch.device("meta"))
    assert moved["images"].device.type == "meta"
    assert isinstance(moved["pair"], Pair) and moved["pair"].x.device.type == "meta"
    assert moved["pair"].y[0].device.type == "meta" and moved["pair"].y[1] == "label"
    assert moved["n"] == 3


def test_environment_report_and_doctor_command():
    report = environment_report("cpu")
    assert report["torch"] == torch.__version__ and report["device"] == "cpu"
    assert report["precision (auto)"] == "cpu: float32 (no autocast)"
    out = subprocess.run(
        [sys.executable, "-m", "pdl", "doctor"], capture_output=True, text=True, check=True
    ).stdout
    assert f"torch             {torch.__version__}" in out
    assert "data root" in out
