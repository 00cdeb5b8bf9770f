"""Self-checks for lecture 05, part 3: dropout by hand (training vs eval mode), and where it goes.

- ``check_dropout(cls)``: ``cls(p)``, inverted dropout by hand, in training and in eval mode.
- ``check_dropout_placement(fn)``: ``fn(in_features, hidden, num_classes, p)``, a classifier
  head with dropout in the right place.

Checks that run your random code do so inside ``torch.random.fork_rng()``, so the notebook's
random numbers are the same with or without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pdl.checks.core import call_safely, close, compare_tensors, exercise, report

__all__ = ["check_dropout", "check_dropout_placement"]


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
