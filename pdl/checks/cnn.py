"""Self-checks for lecture 05, part 1: convolution (the output size, a convolution by hand, a conv block).

Each check runs your code on fresh inputs next to PyTorch's own answer (a real convolution,
``F.conv2d``, ``F.max_pool2d``), prints one line (a success line, or what is wrong and why)
and returns True/False. The lecture's other checks are in ``pdl.checks.datasets`` (your own
``Dataset``) and ``pdl.checks.dropout`` (dropout by hand, and where it goes).

- ``check_conv_output_size(fn)``: ``fn(size, kernel_size, stride=1, padding=0)``, the
  output-size formula, against the shapes ``nn.Conv2d`` produces.
- ``check_conv2d(fn)``: ``fn(x, weight, bias=None, stride=1, padding=0)``, a 2-D convolution
  by hand, against ``F.conv2d``.
- ``check_conv_block(fn)``: ``fn(in_channels, out_channels)``, conv 3x3 (size kept), ReLU, 2x2 max-pool.

Checks that run random code (layer initialization) do so inside ``torch.random.fork_rng()``,
so the notebook's random numbers are the same with or without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pdl.checks.core import as_number, call_safely, close, compare_tensors, exercise, report

__all__ = ["check_conv2d", "check_conv_block", "check_conv_output_size"]

CONV_TOL = {"atol": 1e-5, "rtol": 1e-4}  # sums of up to C_in * k * k float32 products


# --------------------------------------------------------------------------------------
# The output-size formula
# --------------------------------------------------------------------------------------

# (size, kernel_size, stride, padding): the examples CNN, "same" padding, strides that leave
# a remainder (where floor matters), a pooling layer, ResNet's stem, a kernel as big as the image.
_SIZE_CASES = [
    (28, 3, 1, 0), (28, 3, 1, 1), (28, 5, 2, 2), (7, 3, 2, 0), (32, 4, 3, 1),
    (24, 2, 2, 0), (224, 7, 2, 3), (5, 5, 1, 0), (10, 3, 3, 2),
]  # fmt: skip


def _torch_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """The output size PyTorch itself produces: a real convolution on a blank image."""
    image = torch.zeros(1, 1, size, size)
    kernel = torch.zeros(1, 1, kernel_size, kernel_size)
    return F.conv2d(image, kernel, stride=stride, padding=padding).shape[-1]


# The classic wrong formulas, each with what to say when a student's answers follow it.
_SIZE_MISTAKES: list[tuple[Callable[[int, int, int, int], int], str]] = [
    (
        lambda n, k, s, p: (n + 2 * p - k) // s,
        "off by one: the formula ends in + 1 (a kernel as large as the padded input still fits once)",
    ),
    (
        lambda n, k, s, p: (n + p - k) // s + 1,
        "padding is added on both sides of the image: + 2 * padding",
    ),
    (
        lambda n, k, s, p: n + 2 * p - k + 1,
        "the stride is missing: divide (size + 2 * padding - kernel_size) by the stride",
    ),
    (lambda n, k, s, p: (n - k) // s + 1, "the padding is missing: + 2 * padding"),
    (
        lambda n, k, s, p: -(-(n + 2 * p - k) // s) + 1,
        "round down, not up: a window that would run past the padded edge is not used (floor division, //)",
    ),
    (
        lambda n, k, s, p: (n + 2 * p - k + 1) // s,
        "+ 1 comes after the division by the stride: (size + 2 * padding - kernel_size) // stride + 1",
    ),
]


@exercise
def check_conv_output_size(fn: Callable) -> bool:
    """Check ``fn(size, kernel_size, stride=1, padding=0) -> int``: the side of a conv's output.

    The reference is PyTorch itself: each case runs a real ``F.conv2d`` on a blank
    ``size x size`` image and reads the output's shape. The formula is
    ``(size + 2 * padding - kernel_size) // stride + 1``.

    Example:
        >>> check_conv_output_size(lambda size, kernel_size, stride=1, padding=0:
        ...                        (size + 2 * padding - kernel_size) // stride + 1)
        ✅ conv output size: correct
        True
    """
    title = "conv output size"
    results, values = [], []
    for size, k, s, p in _SIZE_CASES:
        case = f"size={size}, kernel_size={k}, stride={s}, padding={p}"
        result, error = call_safely(fn, size, k, stride=s, padding=p)
        if error:
            return report(title, f"{case}: {error}")
        value = as_number(result)
        if value is None:
            return report(title, f"{case}: return a whole number, got {type(result).__name__}")
        results.append(result)
        values.append(value)
    for (size, k, s, p), result, value in zip(_SIZE_CASES, results, values, strict=True):
        case = f"size={size}, kernel_size={k}, stride={s}, padding={p}"
        expected = _torch_output_size(size, k, s, p)
        if value == expected and not isinstance(result, float):
            continue
        if isinstance(result, float):
            return report(
                title,
                f"{case}: got {result!r}, a float; a size is a whole number: the division "
                "rounds down, use // (or math.floor)",
            )
        # Which wrong formula did the answers follow? Judge on all the cases, not just this one.
        hint = next(
            (
                hint
                for formula, hint in _SIZE_MISTAKES
                if all(formula(*c) == v for c, v in zip(_SIZE_CASES, values, strict=True))
            ),
            None,
        )
        return report(
            title,
            f"{case}: got {value:g}, nn.Conv2d gives {expected}" + (f"; {hint}" if hint else ""),
        )
    return report(title, None)


# --------------------------------------------------------------------------------------
# A 2-D convolution by hand
# --------------------------------------------------------------------------------------


def _conv_cases(
    generator: torch.Generator,
) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None, int, int]]:
    """(description, x, weight, bias, stride, padding): small, non-square, several channels."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return [
        (
            "3 input channels, 4 filters of 3x3, with bias",
            randn(2, 3, 6, 7),
            randn(4, 3, 3, 3),
            randn(4),
            1,
            0,
        ),
        ("stride=2, padding=1", randn(2, 3, 7, 6), randn(4, 3, 3, 3), randn(4), 2, 1),
        ("a 2x3 kernel, no bias, padding=2", randn(1, 2, 5, 5), randn(3, 2, 2, 3), None, 1, 2),
    ]


def _conv_hint(got: torch.Tensor, x, weight, bias, stride: int, padding: int) -> str | None:
    """Recognise the classic mistakes of a hand-written convolution by recomputing them."""
    candidates = {
        "the kernel is flipped: that is the convolution of the maths books, but nn.Conv2d "
        "computes a cross-correlation, the kernel slid over the image as it is": F.conv2d(
            x, weight.flip(-2, -1), bias, stride=stride, padding=padding
        ),
        "the bias is missing: add bias[c_out] to every position of output channel c_out": F.conv2d(
            x, weight, None, stride=stride, padding=padding
        ),
        "only input channel 0 was used: each output sums over ALL input channels "
        "(x[n, :, window] * weight[c_out]).sum()": F.conv2d(
            x[:, :1], weight[:, :1], bias, stride=stride, padding=padding
        ),
    }
    for hint, wrong in candidates.items():
        if (bias is not None or "bias" not in hint) and close(got, wrong, **CONV_TOL):
            return hint
    return None


def _conv_shape_hint(shape: tuple[int, ...], x, weight, stride: int, padding: int) -> str | None:
    def side(size: int, k: int, s: int, p: int) -> int:
        return (size + 2 * p - k) // s + 1

    (height, width), (kh, kw) = x.shape[-2:], weight.shape[-2:]
    if stride != 1 and shape[-2:] == (side(height, kh, 1, padding), side(width, kw, 1, padding)):
        return "the stride is ignored: move the window `stride` pixels at a time (output index i reads input row i * stride)"
    if padding and shape[-2:] == (side(height, kh, stride, 0), side(width, kw, stride, 0)):
        return f"the padding is ignored: pad the input with {padding} zero(s) on every side first, F.pad(x, (p, p, p, p))"
    if len(shape) == 4 and shape[1] == x.shape[1] != weight.shape[0]:
        return "the output needs one channel per filter: weight.shape[0] channels, not as many as the input has"
    return None


@exercise
def check_conv2d(fn: Callable) -> bool:
    """Check ``fn(x, weight, bias=None, stride=1, padding=0)``: a 2-D convolution by hand.

    ``x`` is ``(N, C_in, H, W)``, ``weight`` is ``(C_out, C_in, kH, kW)``, ``bias`` is
    ``(C_out,)`` or None; the result must equal ``F.conv2d(x, weight, bias, stride, padding)``
    (what ``nn.Conv2d`` computes), shape ``(N, C_out, H_out, W_out)``.

    Example:
        >>> check_conv2d(lambda x, weight, bias=None, stride=1, padding=0:
        ...              F.conv2d(x, weight, bias, stride=stride, padding=padding))
        ✅ conv2d by hand: correct
        True
    """
    title = "conv2d by hand"
    for case, x, weight, bias, stride, padding in _conv_cases(torch.Generator().manual_seed(5)):
        result, error = call_safely(
            fn,
            x.clone(),
            weight.clone(),
            None if bias is None else bias.clone(),
            stride=stride,
            padding=padding,
        )
        if error:
            return report(title, f"{case}: {error}")
        expected = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        problem = compare_tensors(result, expected, name="the output", **CONV_TOL)
        if problem is None:
            continue
        hint = None
        if isinstance(result, torch.Tensor):
            if result.shape != expected.shape:
                hint = _conv_shape_hint(tuple(result.shape), x, weight, stride, padding)
            else:
                hint = _conv_hint(result.detach().float(), x, weight, bias, stride, padding)
        return report(title, f"{case}: {hint or problem}")
    return report(title, None)


# --------------------------------------------------------------------------------------
# A conv block
# --------------------------------------------------------------------------------------


@exercise
def check_conv_block(fn: Callable) -> bool:
    """Check ``fn(in_channels, out_channels) -> nn.Module``: conv 3x3 (size kept), ReLU, 2x2 max-pool.

    For an input ``(N, in_channels, H, W)`` the block returns ``(N, out_channels, H // 2, W // 2)``:
    ``max_pool2d(relu(conv2d(x, padding=1)), 2)``, compared with the block's own conv weights.

    Example:
        >>> check_conv_block(lambda c_in, c_out: nn.Sequential(
        ...     nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
        ✅ conv block: correct
        True
    """
    title = "conv block"
    generator = torch.Generator().manual_seed(12)
    for c_in, c_out, size in ((3, 5, 8), (1, 4, 9)):
        # nn.Conv2d draws its initial weights from the global generator
        with torch.random.fork_rng():
            block, error = call_safely(fn, c_in, c_out)
        if error:
            return report(title, f"conv_block({c_in}, {c_out}): {error}")
        problem = _check_block(
            block, c_in, c_out, torch.randn(2, c_in, size, size, generator=generator)
        )
        if problem:
            return report(title, f"conv_block({c_in}, {c_out}): {problem}")
    return report(title, None)


def _check_block(block: Any, c_in: int, c_out: int, x: torch.Tensor) -> str | None:
    if not isinstance(block, nn.Module):
        return f"return an nn.Module (e.g. nn.Sequential(...)), got {type(block).__name__}"
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1:
        return f"expected one nn.Conv2d in the block, found {len(convs)}"
    conv = convs[0]
    if (conv.in_channels, conv.out_channels) != (c_in, c_out):
        return f"the conv maps {conv.in_channels} -> {conv.out_channels} channels, expected {c_in} -> {c_out}"
    if conv.kernel_size != (3, 3):
        return f"the conv's kernel is {conv.kernel_size}, expected 3x3 (kernel_size=3)"
    got, error = call_safely(block, x)
    if error:
        return f"calling the block: {error}"
    side = x.shape[-1]
    expected_shape = (x.shape[0], c_out, side // 2, side // 2)
    if not isinstance(got, torch.Tensor):
        return f"the block should return a tensor, got {type(got).__name__}"
    if tuple(got.shape) != expected_shape:
        shape = tuple(got.shape)
        if shape[-1] == (side - 2) // 2:
            return (
                f"output {shape}, expected {expected_shape}: the 3x3 conv shrank the image by 2; "
                "padding=1 keeps H and W, so that only the pooling halves them"
            )
        if shape[-1] in (side, side - 2):
            return f"output {shape}, expected {expected_shape}: the 2x2 max-pool is missing (nn.MaxPool2d(2) halves H and W)"
        return f"output shape {shape}, expected {expected_shape}"
    with torch.no_grad():
        features = F.conv2d(x, conv.weight, conv.bias, padding=1)
        expected = F.max_pool2d(F.relu(features), 2)
        if close(got, F.max_pool2d(features, 2), **CONV_TOL):
            return "the output has negative values: the ReLU is missing (conv -> ReLU -> max-pool)"
        if close(got, F.avg_pool2d(F.relu(features), 2), **CONV_TOL):
            return "that is average pooling; the block uses max pooling (nn.MaxPool2d(2))"
    return compare_tensors(got.detach(), expected, name="the output", **CONV_TOL)
