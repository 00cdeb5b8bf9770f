"""Self-checks for lecture 02 (autograd): a backward pass by hand, a custom Function, a loop.

Each check builds fresh inputs (not the notebook's), computes the reference answer with
autograd, calls your code, and prints one line: a success line, or the first thing that is
wrong, with a hint where the mistake is a common one (a missing factor 2, a missing ReLU
mask, gradients that pile up because nobody zeroed them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pdl.checks.core import call_safely, close, compare_tensors, exercise, report, unpack

__all__ = ["check_sigmoid_function", "check_training_loop", "check_two_layer_backward"]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


_GRAD_TOL = {"atol": 1e-4, "rtol": 1e-4}  # float32 gradients by different but correct formulas


def _changed_inputs(
    names: Sequence[str], before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]
) -> str | None:
    """Name the first input a student's function modified in place, or None."""
    for name, old, new in zip(names, before, after, strict=True):
        if not torch.equal(old, new.detach()):
            return f"your function changed its input {name} in place; work on new tensors instead"
    return None


# --------------------------------------------------------------------------------------
# Exercise: the backward pass of the two-layer net (with biases) by hand
# --------------------------------------------------------------------------------------


def _two_layer_inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, d_in, h, d_out = 8, 5, 6, 3  # small and all different, so a transposed result shows
    return {
        "x": torch.randn(n, d_in, generator=g),
        "y": torch.randn(n, d_out, generator=g),
        "w1": torch.randn(d_in, h, generator=g),
        "b1": torch.randn(h, generator=g),
        "w2": torch.randn(h, d_out, generator=g),
        "b2": torch.randn(d_out, generator=g),
    }


def _two_layer_autograd(t: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The reference: let autograd differentiate the forward pass."""
    params = [t[k].clone().requires_grad_() for k in ("w1", "b1", "w2", "b2")]
    w1, b1, w2, b2 = params
    y_pred = (t["x"] @ w1 + b1).clamp(min=0) @ w2 + b2
    loss = (y_pred - t["y"]).pow(2).sum()
    return list(torch.autograd.grad(loss, params))


def _two_layer_without_relu_mask(t: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The classic mistake: the gradient flows through the ReLU as if it were the identity."""
    h = t["x"] @ t["w1"] + t["b1"]
    grad_y_pred = 2 * ((h.clamp(min=0) @ t["w2"] + t["b2"]) - t["y"])
    grad_h = grad_y_pred @ t["w2"].T  # no mask
    return [t["x"].T @ grad_h, grad_h.sum(0)]


_GRAD_NAMES = ("grad_w1", "grad_b1", "grad_w2", "grad_b2")


def _diagnose_gradient(
    name: str, got: Any, expected: torch.Tensor, no_mask: torch.Tensor | None
) -> str:
    """Explain how one gradient differs from the reference."""
    if isinstance(got, torch.Tensor) and got.shape != expected.shape:
        if got.ndim == 2 and got.shape == expected.shape[::-1]:
            return (
                f"{name} has shape {tuple(got.shape)}, the transpose of the expected "
                f"{tuple(expected.shape)}: a gradient has the shape of its parameter, so check "
                "the order of the factors in the matrix product (e.g. x.T @ grad_h)"
            )
        if expected.ndim == 1 and got.ndim == 2 and got.shape[1] == expected.shape[0]:
            return (
                f"{name} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}: the bias is "
                "added to every sample, so its gradient sums over the batch (.sum(dim=0))"
            )
    if close(got, expected / 2, **_GRAD_TOL):
        return f"{name} is half the expected value: the derivative of (y_pred - y)**2 is 2 * (y_pred - y)"
    if close(got, -expected, **_GRAD_TOL):
        return f"{name} has the wrong sign: the derivative of (y_pred - y)**2 is 2 * (y_pred - y), not 2 * (y - y_pred)"
    if no_mask is not None and close(got, no_mask, **_GRAD_TOL):
        return (
            f"{name} ignores the ReLU: its gradient is 0 where the pre-activation h = x @ w1 + b1 "
            "was negative (grad_h[h < 0] = 0)"
        )
    return compare_tensors(got, expected, name=name, **_GRAD_TOL) or f"{name} is wrong"


@exercise
def check_two_layer_backward(backward_fn: Callable) -> bool:
    """Check a hand-written backward pass of the two-layer ReLU net with biases.

    ``backward_fn(x, y, w1, b1, w2, b2)`` must return ``(grad_w1, grad_b1, grad_w2, grad_b2)``,
    the gradients of ``loss = ((relu(x @ w1 + b1) @ w2 + b2 - y) ** 2).sum()``. The check
    compares them with what autograd computes on fresh random inputs.

    Example:
        >>> def backward(x, y, w1, b1, w2, b2):
        ...     h = x @ w1 + b1
        ...     h_relu = h.clamp(min=0)
        ...     grad_y_pred = 2 * (h_relu @ w2 + b2 - y)
        ...     grad_h = grad_y_pred @ w2.T
        ...     grad_h[h < 0] = 0
        ...     return x.T @ grad_h, grad_h.sum(0), h_relu.T @ grad_y_pred, grad_y_pred.sum(0)
        >>> check_two_layer_backward(backward)
        ✅ two-layer backward: correct
        True
    """
    title = "two-layer backward"
    for seed in (2, 3):  # two draws: a solution that is right by accident is unlikely to pass both
        inputs = _two_layer_inputs(seed)
        originals = [t.clone() for t in inputs.values()]
        result, error = call_safely(backward_fn, *inputs.values())  # positional: any names work
        if error:
            return report(title, error)
        grads, error = unpack(result, _GRAD_NAMES)
        if error:
            return report(title, error)
        changed = _changed_inputs(list(inputs), originals, list(inputs.values()))
        if changed:
            return report(title, changed)
        expected = _two_layer_autograd(inputs)
        no_mask = _two_layer_without_relu_mask(inputs) + [None, None]
        for name, got, want, wrong in zip(_GRAD_NAMES, grads, expected, no_mask, strict=True):
            if not isinstance(got, torch.Tensor):
                return report(title, f"{name} should be a torch.Tensor, got {type(got).__name__}")
            if not close(got, want, **_GRAD_TOL):
                return report(title, _diagnose_gradient(name, got, want, wrong))
    return report(title, None)


# --------------------------------------------------------------------------------------
# Exercise: a custom autograd.Function (a sigmoid), verified with gradcheck
# --------------------------------------------------------------------------------------


@exercise
def check_sigmoid_function(function_class: Any) -> bool:
    """Check a custom ``torch.autograd.Function`` that computes the sigmoid 1 / (1 + exp(-x)).

    Pass the class itself. The check compares its forward with ``torch.sigmoid``, its backward
    with the true vector-Jacobian product ``grad_output * s * (1 - s)``, makes sure the backward
    leaves ``grad_output`` untouched, and finally runs ``torch.autograd.gradcheck`` in double
    precision (finite differences against your backward).

    Example:
        >>> class MySigmoid(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         s = 1 / (1 + torch.exp(-x))
        ...         ctx.save_for_backward(s)
        ...         return s
        ...     @staticmethod
        ...     def backward(ctx, grad_output):
        ...         (s,) = ctx.saved_tensors
        ...         return grad_output * s * (1 - s)
        >>> check_sigmoid_function(MySigmoid)
        ✅ custom sigmoid Function (gradcheck passed): correct
        True
    """
    title = "custom sigmoid Function"
    if not (
        isinstance(function_class, type) and issubclass(function_class, torch.autograd.Function)
    ):
        return report(
            title,
            f"expected a class derived from torch.autograd.Function, got {function_class!r}; "
            "pass the class itself (MySigmoid), not MySigmoid.apply or an instance",
        )
    g = torch.Generator().manual_seed(4)
    x = (3 * torch.randn(5, 4, generator=g, dtype=torch.float64)).requires_grad_()
    s = torch.sigmoid(x.detach())

    out, error = call_safely(function_class.apply, x)
    if error:
        return report(title, f"forward: {error}")
    problem = compare_tensors(out, s, name="forward output", atol=1e-10, rtol=1e-8)
    if problem:
        return report(title, problem)
    if out.grad_fn is None:
        return report(
            title,
            "the output is not connected to the graph; return the result of forward, do not detach it",
        )

    grad_output = torch.randn(5, 4, generator=g, dtype=torch.float64)
    untouched = grad_output.clone()
    grads, error = call_safely(torch.autograd.grad, out, x, grad_output)
    if error and "not enough values to unpack" in error:
        error += " (backward unpacks ctx.saved_tensors: save what it needs in forward, ctx.save_for_backward(s))"
    if error:
        return report(title, f"backward: {error}")
    if not torch.equal(grad_output, untouched):
        return report(
            title,
            "your backward changed grad_output in place; other parts of the graph may still need "
            "it, so compute a new tensor (or clone it first)",
        )
    expected = grad_output * s * (1 - s)
    got = grads[0]
    if close(got, s * (1 - s), atol=1e-10, rtol=1e-8):
        return report(
            title,
            "backward returns the local derivative s * (1 - s) only; the chain rule multiplies "
            "it by the incoming gradient: grad_output * s * (1 - s)",
        )
    problem = compare_tensors(got, expected, name="input gradient", atol=1e-10, rtol=1e-8)
    if problem:
        return report(title, f"{problem}; the derivative of the sigmoid s is s * (1 - s)")

    try:
        # gradcheck needs double precision: finite differences in float32 are too noisy.
        torch.autograd.gradcheck(function_class.apply, (x,), eps=1e-6, atol=1e-5)
    except Exception as error:  # gradcheck raises GradcheckError with the two Jacobians
        return report(title, f"gradcheck failed: {str(error).splitlines()[0]}")
    return report(f"{title} (gradcheck passed)", None)


# --------------------------------------------------------------------------------------
# Exercise: the training loop with the missing zero_grad
# --------------------------------------------------------------------------------------


_LOOP_LEARNING_RATE = 1e-3


def _loop_inputs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(5)
    n, d_in, h, d_out = 16, 12, 8, 3
    return {
        "w1": torch.randn(d_in, h, generator=g, dtype=torch.float64).requires_grad_(),
        "w2": torch.randn(h, d_out, generator=g, dtype=torch.float64).requires_grad_(),
        "x": torch.randn(n, d_in, generator=g, dtype=torch.float64),
        "y": torch.randn(n, d_out, generator=g, dtype=torch.float64),
        "learning_rate": _LOOP_LEARNING_RATE,
        "steps": 6,
    }


def _reference_loop(w1, w2, x, y, learning_rate, steps, zeroed=("w1", "w2")) -> list[float]:
    """The loop as it should be; ``zeroed`` names the gradients it clears (a mistake leaves one out)."""
    losses = []
    for _ in range(steps):
        loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad
            for name, weight in (("w1", w1), ("w2", w2)):
                if name in zeroed:
                    weight.grad.zero_()
    return losses


def _fresh_copy(inputs: dict[str, Any], **changes: Any) -> dict[str, Any]:
    copy = {
        k: (
            v.detach().clone().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v
        )
        for k, v in inputs.items()
    }
    return copy | changes


# Wrong loops, each run from the same start, and what is wrong with them. The student's
# weights after training are compared with each one's.
_LOOP_MISTAKES = {
    "zeroes nothing": (
        {"zeroed": ()},
        "the gradients pile up: backward() adds to .grad, so every step also applies all the "
        "earlier gradients. Zero them after each update (w1.grad.zero_() or w1.grad = None)",
    ),
    "zeroes only w1": (
        {"zeroed": ("w1",)},
        "w2's gradients pile up: you zero w1.grad but not w2.grad. backward() adds into the .grad "
        "of every leaf, so zero both after each update",
    ),
    "zeroes only w2": (
        {"zeroed": ("w2",)},
        "w1's gradients pile up: you zero w2.grad but not w1.grad. backward() adds into the .grad "
        "of every leaf, so zero both after each update",
    ),
    "climbs": (
        {"learning_rate": -_LOOP_LEARNING_RATE},
        "the weights moved uphill: subtract the gradient (w1 -= learning_rate * w1.grad), do not add it",
    ),
}


def _rebinding_hint(names: list[str]) -> str:
    first = names[0]
    return (
        f"{' and '.join(names)} did not change in place: `{first} = {first} - learning_rate * {first}.grad` "
        f"binds the name {first} to a new tensor (inside no_grad a leaf with requires_grad=False that "
        f"autograd no longer tracks), so the caller's {first} never moves and the next step has no "
        f"gradient for it. Update in place: {first} -= learning_rate * {first}.grad"
    )


def _diagnose_loop_error(error: str, train_fn: Callable, inputs: dict[str, Any]) -> str:
    """Name the mistake behind an error raised by the student's loop."""
    if "leaf Variable that requires grad" in error:
        return f"{error} (update the weights inside `with torch.no_grad():`)"
    if "'NoneType' object has no attribute 'zero_'" in error:
        return (
            f"{error}: .grad is None until the first backward() fills it, so there is nothing to zero "
            "before it. Zero the gradients after each update (or set w1.grad = None)"
        )
    # A rebound name breaks only the second step: run one step alone and see what moved.
    one_step = _fresh_copy(inputs, steps=1)
    before = _fresh_copy(one_step)
    _, error_in_one_step = call_safely(train_fn, *one_step.values())
    if error_in_one_step is None:
        unchanged = [
            name
            for name in ("w1", "w2")
            if torch.equal(one_step[name].detach(), before[name].detach())
        ]
        if unchanged:
            return f"{_rebinding_hint(unchanged)} (your code then raised: {error.removeprefix('your code raised ')})"
    return error


@exercise
def check_training_loop(train_fn: Callable) -> bool:
    """Check a training loop that updates ``w1`` and ``w2`` in place with their gradients.

    ``train_fn(w1, w2, x, y, learning_rate, steps)`` runs ``steps`` steps of gradient descent
    on ``((relu(x @ w1) @ w2 - y) ** 2).sum()``, updating the leaf tensors ``w1`` and ``w2``
    in place, and returns the list of losses (one float per step, before each update).

    Example:
        >>> def train(w1, w2, x, y, learning_rate, steps):
        ...     losses = []
        ...     for _ in range(steps):
        ...         loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
        ...         losses.append(loss.item())
        ...         loss.backward()
        ...         with torch.no_grad():
        ...             w1 -= learning_rate * w1.grad
        ...             w2 -= learning_rate * w2.grad
        ...             w1.grad = None
        ...             w2.grad = None
        ...     return losses
        >>> check_training_loop(train)
        ✅ training loop: correct
        True
    """
    title = "training loop"
    inputs = _loop_inputs()
    start = _fresh_copy(inputs)
    expected = _fresh_copy(inputs)
    expected_losses = _reference_loop(**expected)

    losses, error = call_safely(train_fn, *inputs.values())
    if error:
        return report(title, _diagnose_loop_error(error, train_fn, start))
    w1, w2 = inputs["w1"], inputs["w2"]
    unchanged = [
        name for name in ("w1", "w2") if torch.equal(inputs[name].detach(), start[name].detach())
    ]
    if unchanged == ["w1", "w2"]:
        return report(
            title,
            "w1 and w2 did not change: update them in place (w1 -= learning_rate * w1.grad) inside "
            "torch.no_grad() (`w1 = w1 - ...` only rebinds a local name), and zero the gradients "
            "after the update, not between backward() and the update",
        )
    if unchanged:
        return report(title, _rebinding_hint(unchanged))
    for changes, message in _LOOP_MISTAKES.values():
        wrong = _fresh_copy(start, **changes)
        _reference_loop(**wrong)
        if close(w1, wrong["w1"], atol=1e-9, rtol=1e-9) and close(
            w2, wrong["w2"], atol=1e-9, rtol=1e-9
        ):
            return report(title, message)
    for name in ("w1", "w2"):
        problem = compare_tensors(
            inputs[name].detach(),
            expected[name].detach(),
            name=f"{name} after training",
            atol=1e-9,
            rtol=1e-9,
        )
        if problem:
            return report(title, problem)
    if not isinstance(losses, (list, tuple)) or len(losses) != inputs["steps"]:
        return report(
            title,
            f"return the list of losses, one per step ({inputs['steps']}); got {losses!r:.80}",
        )
    try:
        got = torch.tensor([float(v) for v in losses], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return report(title, "the losses should be numbers: append loss.item() at every step")
    problem = compare_tensors(
        got, torch.tensor(expected_losses, dtype=torch.float64), name="losses", atol=1e-9, rtol=1e-9
    )
    return report(title, problem and f"{problem} (record loss.item() before the update)")
