"""Self-checks for lecture 05 (convolutional networks, your own Dataset, regularization).

Each check runs your code on fresh inputs next to PyTorch's own answer (a real convolution,
``F.conv2d``, ``F.max_pool2d``), prints one line (a success line, or what is wrong and why)
and returns True/False.

- ``check_conv_output_size(fn)``: ``fn(size, kernel_size, stride=1, padding=0)``, the
  output-size formula, against the shapes ``nn.Conv2d`` produces.
- ``check_conv2d(fn)``: ``fn(x, weight, bias=None, stride=1, padding=0)``, a 2-D convolution
  by hand, against ``F.conv2d``.
- ``check_image_dataset(cls)``: ``cls(images, labels, transform=None)``, a ``Dataset`` subclass.
- ``check_conv_block(fn)``: ``fn(in_channels, out_channels)``, conv 3x3 (size kept), ReLU, 2x2 max-pool.
- ``check_dropout(cls)``: ``cls(p)``, inverted dropout by hand, in training and in eval mode.
- ``check_dropout_placement(fn)``: ``fn(in_features, hidden, num_classes, p)``, a classifier
  head with dropout in the right place.

Checks that run random code (your dropout, a transform, layer initialization) do so inside
``torch.random.fork_rng()``, so the notebook's random numbers are the same with or without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pdl.checks.core import as_number, call_safely, close, compare_tensors, exercise, report, unpack

__all__ = [
    "check_conv2d",
    "check_conv_block",
    "check_conv_output_size",
    "check_dropout",
    "check_dropout_placement",
    "check_image_dataset",
]

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
# Your own Dataset
# --------------------------------------------------------------------------------------


class _CountingTransform:
    """A transform that doubles the image and adds 1, and counts how often it was called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return image * 2 + 1


def _label(value: Any) -> int | None:
    """A label as an int: a Python int or a one-element integer tensor; None otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


@exercise
def check_image_dataset(cls: Any) -> bool:
    """Check ``cls(images, labels, transform=None)``: a ``torch.utils.data.Dataset`` subclass.

    ``len(dataset)`` is the number of images; ``dataset[i]`` returns the pair
    ``(image, label)`` of sample ``i``, the image passed through ``transform`` (when one is
    given) at that moment, so that random augmentation is drawn anew each time. It must
    also work in a ``DataLoader``.

    Example:
        >>> class ImageDataset(Dataset):
        ...     def __init__(self, images, labels, transform=None):
        ...         self.images, self.labels, self.transform = images, labels, transform
        ...     def __len__(self):
        ...         return len(self.images)
        ...     def __getitem__(self, index):
        ...         image = self.images[index]
        ...         if self.transform is not None:
        ...             image = self.transform(image)
        ...         return image, int(self.labels[index])
        >>> check_image_dataset(ImageDataset)
        ✅ your Dataset: correct
        True
    """
    # a random transform, and DataLoader's worker seed, use the global generator
    with torch.random.fork_rng():
        return report("your Dataset", _check_dataset_class(cls))


def _check_dataset_class(cls: Any) -> str | None:
    generator = torch.Generator().manual_seed(11)
    images = torch.rand(7, 1, 5, 5, generator=generator)
    labels = torch.tensor([3, 0, 9, 1, 4, 4, 2])
    name = getattr(cls, "__name__", type(cls).__name__)

    dataset, error = call_safely(cls, images.clone(), labels.clone())
    if error:
        hint = " (give transform a default: transform=None)" if "transform" in error else ""
        return f"{name}(images, labels) without a transform: {error}{hint}"
    if not isinstance(dataset, Dataset):
        return f"{name} should subclass torch.utils.data.Dataset, got a {type(dataset).__name__}"
    length, error = call_safely(len, dataset)
    if error:
        return f"len(dataset): {error} (define __len__)"
    if length != len(images):
        return (
            f"len(dataset) is {length}, expected {len(images)}, the number of images "
            "(len(self.images) counts along the first dimension)"
        )
    for index in (0, 3, 6):
        problem = _check_item(dataset, index, images[index], int(labels[index]))
        if problem:
            return f"without a transform, {problem}"

    transform = _CountingTransform()
    dataset, error = call_safely(cls, images.clone(), labels.clone(), transform=transform)
    if error:
        return f"{name}(images, labels, transform=...): {error}"
    if transform.calls:
        return (
            "the transform already ran in __init__: call it in __getitem__, on the one image "
            "asked for, so random augmentation is drawn anew every time it is loaded"
        )
    for index in (1, 5):
        problem = _check_item(
            dataset, index, images[index] * 2 + 1, int(labels[index]), untransformed=images[index]
        )
        if problem:
            return f"with a transform, {problem}"
    if transform.calls != 2:
        return f"two items were loaded but the transform ran {transform.calls} times: once per item"

    loader = DataLoader(dataset, batch_size=4)
    batches, error = call_safely(lambda: [(tuple(x.shape), tuple(y.shape)) for x, y in loader])
    if error:
        return f"a DataLoader over your dataset failed: {error}"
    if batches != [((4, 1, 5, 5), (4,)), ((3, 1, 5, 5), (3,))]:
        return (
            f"a DataLoader(batch_size=4) gave batches {batches}, expected images (4, 1, 5, 5) "
            "and labels (4,), then (3, 1, 5, 5) and (3,)"
        )
    return None


def _check_item(
    dataset: Dataset,
    index: int,
    image: torch.Tensor,
    label: int,
    untransformed: torch.Tensor | None = None,
) -> str | None:
    item, error = call_safely(dataset.__getitem__, index)
    if error:
        return f"dataset[{index}]: {error}"
    pair, problem = unpack(item, ("image", "label"))
    if problem:
        return f"dataset[{index}]: {problem}"
    got_image, got_label = pair
    if (
        _label(got_image) is not None
        and isinstance(got_label, torch.Tensor)
        and got_label.ndim >= 2
    ):
        return f"dataset[{index}] returned (label, image); return (image, label), in that order"
    if untransformed is not None and close(got_image, untransformed):
        return f"dataset[{index}] returned the image untransformed: apply self.transform in __getitem__"
    if not close(got_image, image):
        if isinstance(got_image, torch.Tensor) and got_image.shape == image.shape:
            return f"dataset[{index}] returned the wrong image: use the index, self.images[index]"
        return f"dataset[{index}]: " + (
            compare_tensors(got_image, image, name="the image") or "wrong image"
        )
    if _label(got_label) != label:
        return (
            f"dataset[{index}] returned label {got_label!r}, expected {label} (self.labels[index])"
        )
    return None


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


# --------------------------------------------------------------------------------------
# Dropout by hand: training and eval mode
# --------------------------------------------------------------------------------------

_DROP_P = 0.3


@exercise
def check_dropout(cls: Any) -> bool:
    """Check ``cls(p)``: an ``nn.Module`` doing inverted dropout, like ``nn.Dropout(p)``.

    In training mode each element is zeroed with probability ``p`` (a new mask on every call)
    and the kept ones are divided by ``1 - p``, so the expected output equals the input; in
    eval mode (after ``.eval()``, ``self.training`` is False) the input comes back unchanged.
    The check runs in its own random stream, and asks the gradient to flow through the mask.

    Example:
        >>> check_dropout(nn.Dropout)
        ✅ dropout: correct
        True
    """
    title = "dropout"
    # the masks come from the global generator: keep the notebook's untouched
    with torch.random.fork_rng():
        torch.manual_seed(13)
        problem = _check_dropout_module(cls)
    return report(title, problem)


def _check_dropout_module(cls: Any) -> str | None:
    p = _DROP_P
    layer, error = call_safely(cls, p)
    if error:
        return f"creating it with p={p}: {error}"
    if not isinstance(layer, nn.Module):
        return f"{getattr(cls, '__name__', cls)}(p) should be an nn.Module (it must follow train()/eval()), got {type(layer).__name__}"
    x = torch.rand(400, 250) + 0.5  # 100,000 values between 0.5 and 1.5, none of them 0
    layer.train()
    out, error = call_safely(layer, x.clone().requires_grad_(True))
    if error:
        return f"in training mode: {error}"
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        return f"in training mode: return a tensor of the input's shape {tuple(x.shape)}"
    out = out.detach()
    dropped = (out == 0).float().mean().item()
    kept = out != 0
    if dropped < 0.01:
        return (
            "in training mode nothing was dropped: zero each element with probability p when "
            "self.training is True (train() sets it, eval() clears it)"
        )
    if abs(dropped - (1 - p)) < 0.02:
        return f"{dropped:.0%} of the elements were zeroed with p={p}: p is the probability of DROPPING an element, not of keeping it"
    if abs(dropped - p) > 0.02:
        return f"{dropped:.1%} of the elements were zeroed, expected about p = {p:.0%} (each one independently)"
    ratio = out[kept] / x[kept]
    if torch.allclose(ratio, torch.ones_like(ratio)):
        return (
            "the kept elements are not scaled: divide them by (1 - p) (inverted dropout), so the "
            "expected output equals the input and eval mode needs no correction"
        )
    if torch.allclose(ratio, torch.full_like(ratio, 1 - p)):
        return (
            "the kept elements were multiplied by (1 - p); inverted dropout divides them by (1 - p)"
        )
    if not torch.allclose(ratio, torch.full_like(ratio, 1 / (1 - p)), rtol=1e-5):
        return f"the kept elements should be x / (1 - p) = x * {1 / (1 - p):.4g}; got ratios from {ratio.min():.4g} to {ratio.max():.4g}"
    again, _ = call_safely(layer, x)
    if isinstance(again, torch.Tensor) and torch.equal(again.detach() == 0, out == 0):
        return "two calls dropped exactly the same elements: draw a new random mask on every call"

    leaf = x.clone().requires_grad_(True)
    with torch.random.fork_rng():
        result, _ = call_safely(layer, leaf)
    if not isinstance(result, torch.Tensor) or not result.requires_grad:
        return "the output is not connected to autograd: compute it from x with torch operations (x * mask / (1 - p))"
    _, error = call_safely(lambda: result.sum().backward())
    if error or leaf.grad is None:
        return f"backward through your dropout failed: {error or 'no gradient reached the input'}"
    mask = (result.detach() != 0).float()
    if not torch.allclose(leaf.grad, mask / (1 - p), rtol=1e-5):
        return (
            "the gradient should be mask / (1 - p): don't detach the mask's scaling from the graph"
        )

    layer.eval()
    out, error = call_safely(layer, x.clone())
    if error:
        return f"in eval mode: {error}"
    if isinstance(out, torch.Tensor) and out.shape == x.shape:
        out = out.detach()
        if close(out, x * (1 - p)):
            return (
                "in eval mode the input was multiplied by (1 - p): that is the old, non-inverted dropout; "
                "with the 1 / (1 - p) scaling in training, eval mode returns x unchanged"
            )
        if (out == 0).any():
            return (
                "in eval mode elements were still dropped: when not self.training return x unchanged "
                "(F.dropout drops by default: pass training=self.training)"
            )
    return compare_tensors(out, x, name="the eval-mode output (it should be the input, unchanged)")


# --------------------------------------------------------------------------------------
# Where dropout goes: a classifier head
# --------------------------------------------------------------------------------------


def _execution_order(model: nn.Module, x: torch.Tensor) -> tuple[list[nn.Module], Any, str | None]:
    """The leaf modules in the order ``model(x)`` calls them, the output, and an error."""
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [
        m.register_forward_hook(lambda module, args, output: order.append(module)) for m in leaves
    ]
    try:
        out, error = call_safely(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return order, out, error


def _is_dropout(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.dropout._DropoutNd)
        or "dropout" in type(module).__name__.lower()
    )


@exercise
def check_dropout_placement(fn: Callable) -> bool:
    """Check ``fn(in_features, hidden, num_classes, p) -> nn.Module``: a classifier head with dropout.

    The head maps ``(N, in_features)`` features to ``(N, num_classes)`` class scores through one
    hidden layer: ``Linear -> ReLU -> Dropout(p) -> Linear``. Dropout belongs on the hidden
    units: not on the class scores after the last layer. In eval mode the head must be
    deterministic and equal to the same layers without dropout.

    Example:
        >>> check_dropout_placement(lambda n_in, hidden, n_out, p: nn.Sequential(
        ...     nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, n_out)))
        ✅ where dropout goes: correct
        True
    """
    title = "where dropout goes"
    n_in, hidden, n_out, p = 12, 32, 5, 0.4
    # layer initialization and dropout masks use the global generator
    with torch.random.fork_rng():
        torch.manual_seed(14)
        problem = _check_head(fn, n_in, hidden, n_out, p)
    return report(title, problem)


def _check_head(fn: Callable, n_in: int, hidden: int, n_out: int, p: float) -> str | None:
    head, error = call_safely(fn, n_in, hidden, n_out, p)
    if error:
        return f"head({n_in}, {hidden}, {n_out}, p={p}): {error}"
    if not isinstance(head, nn.Module):
        return f"return an nn.Module (e.g. nn.Sequential(...)), got {type(head).__name__}"
    x = torch.randn(64, n_in)
    head.train()
    order, out, error = _execution_order(head, x)
    if error:
        return f"calling the head: {error}"
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (64, n_out):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"the head should map (64, {n_in}) to (64, {n_out}) class scores, got {shape}"
    linears = [i for i, m in enumerate(order) if isinstance(m, nn.Linear)]
    drops = [i for i, m in enumerate(order) if _is_dropout(m)]
    if len(linears) != 2:
        return f"expected two nn.Linear layers (input -> hidden -> classes), found {len(linears)}"
    if not drops:
        return "no dropout layer ran: add nn.Dropout(p) on the hidden units"
    if drops[-1] > linears[-1]:
        return (
            "dropout runs after the last layer, on the class scores: that zeroes whole scores at random; "
            "put it on the hidden units, between the hidden layer and the output layer"
        )
    if not any(linears[0] < i < linears[-1] for i in drops):
        return (
            "dropout runs on the input features only; the task puts it on the hidden units, between "
            "the hidden layer and the output layer"
        )
    rates = {getattr(order[i], "p", p) for i in drops}
    if rates != {p}:
        return f"the dropout probability is {', '.join(map(str, sorted(rates, key=str)))}, expected p={p} (use the argument)"
    again, _ = call_safely(head, x)
    if isinstance(again, torch.Tensor) and torch.equal(again, out):
        return "in training mode two calls gave the same scores: is the dropout really applied to the hidden units?"

    head.eval()
    first, error = call_safely(head, x)
    if error:
        return f"in eval mode: {error}"
    second, _ = call_safely(head, x)
    if not (
        isinstance(first, torch.Tensor)
        and isinstance(second, torch.Tensor)
        and torch.equal(first, second)
    ):
        return "in eval mode two calls differ: eval() must switch dropout off (use nn.Dropout, or check self.training)"
    layer1, layer2 = order[linears[0]], order[linears[-1]]
    with torch.no_grad():
        expected = layer2(torch.relu(layer1(x)))
    return compare_tensors(
        first.detach(),
        expected,
        name="the eval-mode output (the layers without dropout)",
        atol=1e-5,
        rtol=1e-4,
    )
