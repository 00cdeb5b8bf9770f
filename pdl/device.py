"""Where the computation runs, in what precision, and how to make it repeatable.

Everything device-related lives here so that the rest of pdl (and the notebooks) never
has to write ``if torch.cuda.is_available()`` again:

- ``get_device()`` picks CUDA, then Apple MPS, then the CPU (``PDL_DEVICE`` forces one).
- ``precision_policy()`` decides mixed precision in one place: which autocast dtype, and
  whether fp16 needs a ``torch.amp.GradScaler``.
- ``seed_everything()`` makes runs repeatable; ``to_device()`` moves nested batches.
- ``environment_report()`` is what ``python -m pdl doctor`` prints.
"""

from __future__ import annotations

import os
import platform
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DEVICE_ENV_VAR = "PDL_DEVICE"


def get_device(prefer: torch.device | str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple MPS, then the CPU.

    ``prefer`` (or the environment variable ``PDL_DEVICE``) forces a choice, e.g.
    ``"cpu"`` to compare timings, or ``"cuda:1"`` for a second GPU. Asking for a device
    that is not there is an error, not a silent fallback.

    Example:
        >>> get_device("cpu")
        device(type='cpu')
    """
    from_environment = prefer is None and bool(os.environ.get(DEVICE_ENV_VAR))
    choice = prefer if prefer is not None else os.environ.get(DEVICE_ENV_VAR)
    if not choice:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    asked = (
        f"{DEVICE_ENV_VAR}={choice!r} (an environment variable)"
        if from_environment
        else f"device {choice!r}"
    )
    unset = f"; or unset {DEVICE_ENV_VAR} to let pdl choose" if from_environment else ""
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"{asked} is not a device: use 'cpu', 'cuda', 'cuda:1' or 'mps'{unset}."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"{asked} was requested but CUDA is not available here: use 'cpu'{unset}."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RuntimeError(
                f"{asked} was requested but this machine has {count} CUDA device(s): "
                f"{', '.join(f'cuda:{i}' for i in range(count))}; use one of them{unset}."
            )
    if device.type == "mps" and not _mps_available():
        raise RuntimeError(
            f"{asked} was requested but Apple MPS is not available here: use 'cpu'{unset}."
        )
    return device


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


@dataclass(frozen=True)
class PrecisionPolicy:
    """How one device trains: the autocast dtype (None = plain fp32) and whether fp16 needs a scaler.

    The training loop has one path for every precision: ``torch.autocast(device_type,
    dtype=policy.dtype, enabled=policy.enabled)`` around the forward pass and the loss, and a
    ``policy.make_scaler()``, a ``torch.amp.GradScaler`` that is switched off (it passes
    everything straight through) unless fp16 needs it.
    """

    device_type: str
    dtype: torch.dtype | None  # None means "no autocast": everything stays float32

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def needs_scaler(self) -> bool:
        # fp16 has a narrow exponent range: small gradients underflow to zero unless the loss
        # is scaled up first. bf16 has float32's range, so it needs no scaler.
        return self.dtype == torch.float16

    def autocast(self) -> torch.autocast:
        """The autocast context of this policy (switched off when there is nothing to cast).

        Example:
            >>> policy = precision_policy(torch.device("cpu"))
            >>> with policy.autocast():
            ...     y = torch.ones(2, 2) @ torch.ones(2, 2)
            >>> y.dtype
            torch.float32
        """
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def make_scaler(self) -> torch.amp.GradScaler:
        """A fresh ``torch.amp.GradScaler``, enabled only when fp16 needs one.

        A disabled scaler is a no-op object: ``scale(loss)`` returns the loss, ``step(optimizer)``
        calls ``optimizer.step()``, so the loop needs no ``if`` for it.

        Example:
            >>> precision_policy(torch.device("cpu")).make_scaler().is_enabled()
            False
        """
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)

    def __str__(self) -> str:
        if not self.enabled:
            return f"{self.device_type}: float32 (no autocast)"
        scaling = " + GradScaler" if self.needs_scaler else ""
        return f"{self.device_type}: autocast {str(self.dtype).removeprefix('torch.')}{scaling}"


_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_policy(device: torch.device | str, precision: str = "auto") -> PrecisionPolicy:
    """Choose mixed precision for ``device``: ``precision`` is "auto", "fp32", "bf16" or "fp16".

    What "auto" picks, and why:

    - CUDA: bf16 autocast on GPUs with native bf16 (compute capability 8.0 and up: A100, RTX 30xx
      and newer): as fast as fp16 and with float32's exponent range, so no gradient scaler.
      Older GPUs (Colab's T4 is 7.5, a V100 7.0) get fp16 + GradScaler: there bf16 is only
      emulated and slow, although ``torch.cuda.is_bf16_supported()`` says True (it counts
      emulation), so pdl asks for the compute capability instead.
    - CPU: plain float32. On CPUs without native bf16 instructions (most laptops, and the
      machines this course was measured on) bf16 autocast is 8-130x *slower* than float32.
      Ask for "bf16" explicitly if you know your CPU has AMX/AVX512-BF16.
    - Apple MPS: plain float32. Recent PyTorch can autocast on MPS ("fp16", "bf16" on
      macOS 14+), but gradient scaling on MPS only works in recent releases and the speed-up
      varies, so it is opt-in.

    Example:
        >>> str(precision_policy("cpu"))
        'cpu: float32 (no autocast)'
        >>> str(precision_policy("cpu", "bf16"))
        'cpu: autocast bfloat16'
    """
    device = torch.device(device)
    if precision not in ("auto", *_PRECISIONS):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', not {precision!r}")
    if precision != "auto":
        return PrecisionPolicy(device.type, _PRECISIONS[precision])
    if device.type == "cuda":
        native_bf16 = torch.cuda.get_device_capability(device) >= (8, 0)
        return PrecisionPolicy("cuda", torch.bfloat16 if native_bf16 else torch.float16)
    return PrecisionPolicy(device.type, None)


def seed_everything(seed: int = 0, deterministic: bool | None = None) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so that a run can be repeated.

    ``deterministic=True`` also asks PyTorch for deterministic kernels (cuDNN included).
    That can be slower, and an operation with no deterministic implementation then raises
    an error instead of silently varying. On the CPU, seeding alone already makes a
    single-process run repeatable. ``deterministic=False`` switches them off again; the
    default (None) leaves the setting as it is, whoever chose it.

    Example:
        >>> seed_everything(0); a = torch.rand(2)
        >>> seed_everything(0); b = torch.rand(2)
        >>> torch.equal(a, b)
        True
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CPU and every CUDA/MPS device
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic (see the PyTorch
        # "Reproducibility" notes); it must be set before the first cuBLAS call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif deterministic is False:
        torch.use_deterministic_algorithms(False)


def to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move every tensor in a (nested) batch to ``device``; other values pass through.

    Handles tensors, tuples, lists, dicts and named tuples, as DataLoaders yield them.
    ``non_blocking=True`` lets a copy from pinned memory overlap with GPU work.

    Example:
        >>> batch = {"x": torch.zeros(2), "meta": ["a", "b"], "y": (torch.ones(1), 3)}
        >>> moved = to_device(batch, "cpu")
        >>> moved["y"][1], moved["meta"]
        (3, ['a', 'b'])
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device, non_blocking) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def environment_report(device: torch.device | str | None = None) -> dict[str, str]:
    """Collect the facts that matter when a student asks "why is it slow / not working?".

    Example:
        >>> report = environment_report("cpu")
        >>> report["device"], "torch" in report
        ('cpu', True)
    """
    import torchvision  # imported here: only the report needs it

    device = torch.device(device) if device is not None else get_device()
    from pdl import __version__

    report = {
        "pdl": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu threads": str(torch.get_num_threads()),
        "cuda available": str(torch.cuda.is_available()),
        "mps available": str(_mps_available()),
        "device": str(device),
        "precision (auto)": str(precision_policy(device)),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report["gpu"] = props.name
        report["gpu memory"] = f"{props.total_memory / 2**30:.1f} GiB"
        report["compute capability"] = f"{props.major}.{props.minor}"
        report["cuda version"] = str(torch.version.cuda)
    return report


def print_environment(device: torch.device | str | None = None) -> None:
    """Print ``environment_report()`` as an aligned table (what ``python -m pdl doctor`` shows).

    Example:
        >>> print_environment("cpu")  # doctest: +ELLIPSIS
        pdl ...
    """
    report = environment_report(device)
    width = max(len(key) for key in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
