"""Self-checks for lecture 03 (nn.Module and the training loop).

A custom Module, cross-entropy by hand, one training step, an accuracy function. Each
check runs your code on fresh inputs next to a reference and prints one line; for the
classic mistakes (a forgotten ``super().__init__()``, a missing ``zero_grad``, a model
left in eval mode, the loss's arguments swapped, the largest score compared with the
labels, a percentage instead of a fraction) the line says what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pdl.checks.core import as_number, call_safely, close, compare_tensors, exercise, report

__all__ = ["check_accuracy", "check_cross_entropy", "check_product_block", "check_train_step"]


def _near(a: float, b: float, tol: float = 1e-5) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


# --------------------------------------------------------------------------------------
# Exercise: a custom Module with two parallel linear layers, multiplied
# --------------------------------------------------------------------------------------


@exercise
def check_product_block(block_class: Any) -> bool:
    """Check ``ProductBlock(in_features, out_features)``: two parallel ``nn.Linear``, outputs multiplied.

    For an input ``x`` of shape ``(N, in_features)`` the block returns
    ``linear_a(x) * linear_b(x)`` (element-wise), shape ``(N, out_features)``. The check
    builds the block with fresh sizes, counts its parameters, finds its two linear layers
    and compares the output with their product.

    Example:
        >>> class ProductBlock(nn.Module):
        ...     def __init__(self, in_features, out_features):
        ...         super().__init__()
        ...         self.a = nn.Linear(in_features, out_features)
        ...         self.b = nn.Linear(in_features, out_features)
        ...     def forward(self, x):
        ...         return self.a(x) * self.b(x)
        >>> check_product_block(ProductBlock)
        ✅ ProductBlock: correct
        True
    """
    title = "ProductBlock"
    d_in, d_out, n = 7, 4, 5
    with (
        torch.random.fork_rng()
    ):  # nn.Linear draws its initial weights from the notebook's generator
        block, error = call_safely(block_class, d_in, d_out)
    if error:
        if "before Module.__init__() call" in error:
            error += " (call super().__init__() first thing in your __init__)"
        return report(title, f"ProductBlock({d_in}, {d_out}): {error}")
    if not isinstance(block, nn.Module):
        return report(
            title,
            f"ProductBlock({d_in}, {d_out}) should be an nn.Module, got {type(block).__name__}",
        )

    expected_count = 2 * (d_in * d_out + d_out)
    count = sum(p.numel() for p in block.parameters())
    if count == 0:
        return report(
            title,
            "the block has no parameters: assign the layers as attributes (self.a = nn.Linear(...)); "
            "layers kept in a plain Python list are invisible to .parameters(), use nn.ModuleList",
        )
    if count != expected_count:
        return report(
            title,
            f"ProductBlock({d_in}, {d_out}) has {count} parameters, expected {expected_count} "
            f"(two nn.Linear({d_in}, {d_out}), each {d_in}*{d_out} weights + {d_out} biases)",
        )
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 2 or any((m.in_features, m.out_features) != (d_in, d_out) for m in linears):
        found = ", ".join(f"Linear({m.in_features}, {m.out_features})" for m in linears) or "none"
        return report(
            title, f"expected two nn.Linear({d_in}, {d_out}) inside the block, found {found}"
        )

    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(6))
    out, error = call_safely(block, x)
    if error:
        return report(title, f"forward: {error}")
    with torch.no_grad():
        a, b = linears[0](x), linears[1](x)
    if close(out, a + b, atol=1e-5, rtol=1e-5):
        return report(
            title, "the outputs of the two layers were added; multiply them element-wise (a * b)"
        )
    problem = compare_tensors(out, a * b, name="output", atol=1e-5, rtol=1e-4)
    return report(title, problem)


# --------------------------------------------------------------------------------------
# Exercise: multi-class cross-entropy by hand
# --------------------------------------------------------------------------------------


@exercise
def check_cross_entropy(cross_entropy_fn: Callable) -> bool:
    """Check a hand-written cross-entropy: ``cross_entropy_fn(logits, targets)`` -> mean loss.

    ``logits`` is ``(N, C)`` raw scores, ``targets`` is ``(N,)`` class indices; the result is
    the mean over the batch of ``-log softmax(logits)[i, targets[i]]``, a 0-d tensor, as
    ``F.cross_entropy`` computes it. It is also tried on very large logits, where a naive
    ``exp`` overflows.

    Example:
        >>> def cross_entropy(logits, targets):
        ...     log_probs = logits - logits.logsumexp(dim=1, keepdim=True)
        ...     return -log_probs[torch.arange(len(targets)), targets].mean()
        >>> check_cross_entropy(cross_entropy)
        ✅ cross-entropy: correct
        True
    """
    title = "cross-entropy"
    g = torch.Generator().manual_seed(7)
    cases = [
        ("ordinary logits", torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)),
        (
            "large logits (scores around +-500)",
            300 * torch.randn(6, 5, generator=g),
            torch.randint(0, 5, (6,), generator=g),
        ),
    ]
    for case, logits, targets in cases:
        logits_before = logits.clone()
        got, error = call_safely(cross_entropy_fn, logits, targets)
        if error:
            return report(title, f"{case}: {error}")
        if not torch.equal(logits, logits_before):
            return report(
                title,
                "your function changed its input logits in place (e.g. logits -= ...): the "
                "caller's scores change too; compute new tensors, logits - logits.logsumexp(...)",
            )
        expected = F.cross_entropy(logits, targets)
        if not isinstance(got, torch.Tensor):
            return report(
                title,
                f"return a 0-d tensor (so that it can be backpropagated), got {type(got).__name__}",
            )
        if got.shape == targets.shape:
            return report(
                title,
                f"got one loss per sample, shape {tuple(got.shape)}; average them over the batch (.mean())",
            )
        if got.numel() == 1 and not torch.isfinite(got).all():
            return report(
                title,
                f"{case}: got {got.item()}: exp() overflows for large scores. Compute log-probabilities "
                "stably: logits - logits.logsumexp(dim=1, keepdim=True) (or subtract the row maximum first)",
            )
        if got.numel() == 1:
            value, want = got.item(), expected.item()
            log_probs = F.log_softmax(logits, dim=1)[torch.arange(len(targets)), targets]
            if _near(value, -want):
                return report(
                    title,
                    "the sign is flipped: the loss is the NEGATIVE log-likelihood, -log p(target)",
                )
            if _near(value, want * len(targets)):
                return report(
                    title, f"got the sum over the batch ({value:.4g}); take the mean ({want:.4g})"
                )
            if _near(value, -log_probs.exp().mean().item()):
                return report(
                    title, "you averaged -p(target); the loss takes the log: -log p(target)"
                )
            if _near(value, -F.log_softmax(logits, dim=1)[:, targets].mean().item()):
                return report(
                    title,
                    "log_probs[:, targets] picks, for every sample, the scores of all N targets "
                    "(an (N, N) table); pick one entry per sample: "
                    "log_probs[torch.arange(len(targets)), targets]",
                )
            if _near(value, F.cross_entropy(logits.softmax(dim=1), targets).item()):
                return report(
                    title,
                    "softmax was applied twice: take the log-softmax of the logits themselves, "
                    "not of probabilities",
                )
        problem = compare_tensors(
            got.reshape(()) if got.numel() == 1 else got,
            expected,
            name=f"loss ({case})",
            atol=1e-4,
            rtol=1e-4,
        )
        if problem:
            return report(title, problem)
    return report(title, None)


# --------------------------------------------------------------------------------------
# Exercise: one training step
# --------------------------------------------------------------------------------------


def _step_setup() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    """A small model with dropout (so train/eval mode matters), left as an evaluation leaves it:
    in eval mode, with stale gradients from an earlier backward pass."""
    with torch.random.fork_rng():
        torch.manual_seed(8)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
        inputs, targets = torch.randn(32, 6), torch.randint(0, 3, (32,))
        stale = torch.randn(32, 6)
        F.cross_entropy(model(stale), targets).backward()  # gradients left over
    model.eval()  # as after an evaluation loop
    return model, torch.optim.SGD(model.parameters(), lr=0.5), inputs, targets


def _parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


_STEP_SEED = 9  # the dropout mask: the same for your step and the reference


class _RecordingLoss(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` that also remembers what it was called with, to name a swapped call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, Any]] = []

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls.append((input, target))
        return super().forward(input, target)


def _swapped(loss_fn: _RecordingLoss) -> bool:
    """True when the loss got the targets first: ``loss_fn(targets, outputs)``.

    Class indices are integers, model outputs are floats: an integer first argument is the targets.
    """
    return any(
        isinstance(first, torch.Tensor) and not first.is_floating_point()
        for first, _ in loss_fn.calls
    )


def _student_step(train_step: Callable) -> tuple[torch.Tensor, Any, str | None, bool]:
    """Run the student's step from the usual state: (parameters after it, its result, its error, swapped?)."""
    model, optimizer, inputs, targets = _step_setup()
    loss_fn = _RecordingLoss()
    with torch.random.fork_rng():
        torch.manual_seed(_STEP_SEED)
        result, error = call_safely(train_step, model, inputs, targets, loss_fn, optimizer)
    return _parameters(model), result, error, _swapped(loss_fn)


def _reference_step(
    *, train_mode: bool = True, zero_grad: bool = True, backward: bool = True
) -> tuple[torch.Tensor, float]:
    """A step from the same state, right or with a known mistake: (parameters after it, loss)."""
    model, optimizer, inputs, targets = _step_setup()
    with torch.random.fork_rng():
        torch.manual_seed(_STEP_SEED)
        model.train(train_mode)
        loss = nn.CrossEntropyLoss()(model(inputs), targets)
        if zero_grad:
            optimizer.zero_grad()
        if backward:
            loss.backward()
        optimizer.step()
    return _parameters(model), loss.item()


@exercise
def check_train_step(train_step: Callable) -> bool:
    """Check ``train_step(model, inputs, targets, loss_fn, optimizer)``: one full training step.

    It must put the model in training mode, compute the loss, zero the old gradients,
    backpropagate, update the parameters, and return the loss as a Python float. The check
    hands it a model with dropout that is still in eval mode and still holds gradients from
    an earlier pass, as a real loop would after an evaluation, and compares the parameters
    after the step with a reference step from the same state.

    Example:
        >>> def train_step(model, inputs, targets, loss_fn, optimizer):
        ...     model.train()
        ...     loss = loss_fn(model(inputs), targets)
        ...     optimizer.zero_grad()
        ...     loss.backward()
        ...     optimizer.step()
        ...     return loss.item()
        >>> check_train_step(train_step)
        ✅ train_step: correct
        True
    """
    title = "train_step"
    got, result, error, swapped = _student_step(train_step)
    if swapped:
        return report(
            title,
            "the loss got its arguments swapped, loss_fn(targets, outputs): PyTorch's losses "
            "take the model's outputs first, then the targets, loss_fn(model(inputs), targets)"
            + (f" ({error})" if error else ""),
        )
    if error:
        return report(title, error)
    expected, expected_loss = _reference_step()
    if not torch.allclose(got, expected, atol=1e-6, rtol=1e-5):
        start = _parameters(_step_setup()[0])
        hints = [
            (
                torch.equal(got, start),
                "the parameters did not change: call optimizer.step() after "
                "loss.backward() (and zero the gradients before backward(), not between backward() and step())",
            ),
            (
                torch.allclose(got, _reference_step(zero_grad=False)[0], atol=1e-6, rtol=1e-5),
                "the old gradients were added to the new ones: call optimizer.zero_grad() before "
                "loss.backward(), so a step never depends on what happened before it",
            ),
            (
                torch.allclose(
                    got, _reference_step(zero_grad=False, backward=False)[0], atol=1e-6, rtol=1e-5
                ),
                "the step used only the gradients left over from before, not this batch's: call "
                "optimizer.zero_grad(), then loss.backward(), then optimizer.step()",
            ),
            (
                torch.allclose(got, _reference_step(train_mode=False)[0], atol=1e-6, rtol=1e-5),
                "the model trained in eval mode (dropout was off): call model.train() at the start, "
                "the model may come straight from an evaluation",
            ),
            (
                torch.allclose(
                    got, _reference_step(train_mode=False, zero_grad=False)[0], atol=1e-6, rtol=1e-5
                ),
                "two mistakes: the model stayed in eval mode (call model.train()) and the old gradients "
                "were not zeroed (call optimizer.zero_grad() before loss.backward())",
            ),
        ]
        for matched, hint in hints:
            if matched:
                return report(title, hint)
        return report(
            title,
            compare_tensors(got, expected, name="parameters after the step", atol=1e-6, rtol=1e-5),
        )
    if isinstance(result, torch.Tensor):
        return report(
            title, "return loss.item(), a Python float: the loss tensor keeps its whole graph alive"
        )
    value = as_number(result)
    if value is None:
        return report(
            title, f"return the loss as a float (loss.item()), got {type(result).__name__}"
        )
    if not _near(value, expected_loss):
        return report(
            title,
            f"returned loss {value:.6g}, expected {expected_loss:.6g} (the loss computed in this step)",
        )
    return report(title, None)


# --------------------------------------------------------------------------------------
# Exercise: accuracy
# --------------------------------------------------------------------------------------


@exercise
def check_accuracy(accuracy_fn: Callable) -> bool:
    """Check ``accuracy_fn(logits, targets)``: the fraction (0..1) of samples classified correctly.

    ``logits`` is ``(N, C)``, ``targets`` is ``(N,)`` class indices; a Python float or a
    one-element tensor is accepted.

    Example:
        >>> def accuracy(logits, targets):
        ...     return (logits.argmax(dim=1) == targets).float().mean().item()
        >>> check_accuracy(accuracy)
        ✅ accuracy: correct
        True
    """
    title = "accuracy"
    g = torch.Generator().manual_seed(10)
    n, c = 50, 4  # N != C, so an argmax over the wrong dimension cannot pass
    logits = torch.randn(n, c, generator=g)
    targets = torch.randint(0, c, (n,), generator=g)
    targets[:30] = logits[:30].argmax(dim=1)  # 60-80% correct, not a trivial 25%
    expected = (logits.argmax(dim=1) == targets).float().mean().item()

    result, error = call_safely(accuracy_fn, logits.clone(), targets.clone())
    if error:
        if "must match the size" in error or "size of tensor" in error:
            error += " (take the argmax over the class dimension: logits.argmax(dim=1))"
        elif "'bool' object" in error:
            error += _MAX_PAIR
        return report(title, error)
    value = as_number(result)
    if value is None:
        shape = f" of shape {tuple(result.shape)}" if isinstance(result, torch.Tensor) else ""
        hint = _MAX_PAIR if isinstance(result, bool) else ""
        return report(title, f"return one number, got {type(result).__name__}{shape}{hint}")
    if _near(value, expected):
        return report(title, None)
    if _near(value, 100 * expected):
        return report(
            title,
            f"got {value:.4g}, a percentage; return a fraction between 0 and 1 ({expected:.4g})",
        )
    if _near(value, expected * n):
        return report(
            title,
            f"got {value:.4g}, the number of correct samples; divide by the number of samples ({n})",
        )
    per_class = [(logits.argmax(dim=1)[targets == k] == k).float().mean().item() for k in range(c)]
    if _near(value, sum(per_class) / c):
        return report(
            title,
            f"got {value:.4g}, the accuracy of each class averaged (a macro average, torchmetrics' "
            "default for MulticlassAccuracy); the exercise wants the fraction of all samples "
            f"classified correctly ({expected:.4g}, average='micro')",
        )
    if value == 0 and expected > 0:
        # Two mistakes give 0 here; on logits where every prediction is right only one still gives 0.
        all_right, _ = call_safely(accuracy_fn, logits.clone(), logits.argmax(dim=1))
        if as_number(all_right) == 1.0:
            return report(
                title,
                "got 0, but 1 when every prediction is right: integer division? "
                "Divide as floats: (predictions == targets).float().mean()",
            )
        return report(
            title,
            "got 0 even when every prediction is right: you compared the largest score (or "
            "probability) with the class indices. The predicted class is the *position* of "
            "the largest score: logits.argmax(dim=1) == targets",
        )
    return report(title, f"got {value:.6g}, expected {expected:.6g}")


_MAX_PAIR = (
    " (logits.max(dim=1) returns a pair (values, indices): the predicted classes are its "
    ".indices, or simply logits.argmax(dim=1))"
)
