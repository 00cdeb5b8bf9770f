"""pdl.checks.autograd: each check passes a correct solution and explains the typical wrong ones."""

from __future__ import annotations

import pytest
import torch

from pdl.checks import (
    autograd,
    check_sigmoid_function,
    check_training_loop,
    check_two_layer_backward,
)

# Answers no check can expect: each must be judged (one line, a failure), never crash the check.
NONSENSE = {
    "returns None": lambda *args, **kwargs: None,
    "returns a string": lambda *args, **kwargs: "an answer",
    "returns a float64 tensor": lambda *args, **kwargs: torch.zeros(2, 3, dtype=torch.float64),
    "returns a tuple of Nones": lambda *args, **kwargs: (None, None, None, None),
    "raises ValueError": lambda *args, **kwargs: (_ for _ in ()).throw(ValueError("a bug")),
    "is not callable": 42,
    "is a Module class": torch.nn.Linear,
}


@pytest.mark.parametrize("answer", NONSENSE, ids=list(NONSENSE))
@pytest.mark.parametrize("name", autograd.__all__)
def test_a_nonsense_answer_is_judged_not_raised(capsys, name, answer):
    assert getattr(autograd, name)(NONSENSE[answer]) is False
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and out.startswith("❌"), out
    assert "could not judge" not in out, f"{name} crashed on an answer that {answer}: {out}"


def test_checks_leave_the_global_random_state_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(check_two_layer_backward, lambda *a: backward(*a))
    leaves_global_rng_alone(check_sigmoid_function, make_sigmoid(lambda s, g: g * s * (1 - s)))
    leaves_global_rng_alone(check_training_loop, loop)


# --------------------------------------------------------------------------------------
# check_two_layer_backward
# --------------------------------------------------------------------------------------


def backward(x, y, w1, b1, w2, b2, *, factor=2.0, mask=True, bias_sum=True, transpose=False):
    """The correct backward pass, with switches for the classic mistakes."""
    h = x @ w1 + b1
    h_relu = h.clamp(min=0)
    grad_y_pred = factor * (h_relu @ w2 + b2 - y)
    grad_w2 = grad_y_pred.T @ h_relu if transpose else h_relu.T @ grad_y_pred
    grad_h = grad_y_pred @ w2.T
    if mask:
        grad_h = grad_h * (h > 0)
    grad_b1 = grad_h.sum(0) if bias_sum else grad_h
    return x.T @ grad_h, grad_b1, grad_w2, grad_y_pred.sum(0)


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_two_layer_backward_correct(capsys):
    assert check_two_layer_backward(backward) is True
    assert last_line(capsys) == "✅ two-layer backward: correct"


def test_two_layer_backward_pytorchs_own(capsys):
    def with_autograd(x, y, w1, b1, w2, b2):
        params = [t.clone().requires_grad_() for t in (w1, b1, w2, b2)]
        loss = ((x @ params[0] + params[1]).relu() @ params[2] + params[3] - y).pow(2).sum()
        return torch.autograd.grad(loss, params)

    assert check_two_layer_backward(with_autograd) is True


def test_two_layer_backward_missing_factor_two(capsys):
    assert check_two_layer_backward(lambda *a: backward(*a, factor=1.0)) is False
    assert "half the expected value" in last_line(capsys)


def test_two_layer_backward_missing_relu_mask(capsys):
    assert check_two_layer_backward(lambda *a: backward(*a, mask=False)) is False
    out = last_line(capsys)
    assert out.startswith("❌ two-layer backward: grad_w1 ignores the ReLU")


def test_two_layer_backward_bias_not_summed(capsys):
    assert check_two_layer_backward(lambda *a: backward(*a, bias_sum=False)) is False
    out = last_line(capsys)
    assert "grad_b1 has shape (8, 6), expected (6,)" in out and ".sum(dim=0)" in out


def test_two_layer_backward_transposed(capsys):
    assert check_two_layer_backward(lambda *a: backward(*a, transpose=True)) is False
    assert "grad_w2 has shape (3, 6), the transpose of the expected (6, 3)" in last_line(capsys)


def test_two_layer_backward_wrong_return_and_stub(capsys):
    assert check_two_layer_backward(lambda *a: backward(*a)[:2]) is False
    assert (
        "return a tuple (grad_w1, grad_b1, grad_w2, grad_b2), got tuple of length 2"
        in last_line(capsys)
    )

    def stub(x, y, w1, b1, w2, b2):
        raise NotImplementedError

    assert check_two_layer_backward(stub) is False
    assert "not attempted yet" in last_line(capsys)


def test_two_layer_backward_in_place_change_of_an_input(capsys):
    def in_place(x, y, w1, b1, w2, b2):
        grads = backward(x, y, w1, b1, w2, b2)
        w1.zero_()
        return grads

    assert check_two_layer_backward(in_place) is False
    assert "changed its input w1 in place" in last_line(capsys)


# --------------------------------------------------------------------------------------
# check_sigmoid_function
# --------------------------------------------------------------------------------------


def make_sigmoid(backward_body):
    class Sigmoid(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            s = 1 / (1 + torch.exp(-x))
            ctx.save_for_backward(s)
            return s

        @staticmethod
        def backward(ctx, grad_output):
            (s,) = ctx.saved_tensors
            return backward_body(s, grad_output)

    return Sigmoid


def test_sigmoid_function_correct(capsys):
    assert check_sigmoid_function(make_sigmoid(lambda s, g: g * s * (1 - s))) is True
    assert last_line(capsys) == "✅ custom sigmoid Function (gradcheck passed): correct"


def test_sigmoid_function_pytorchs_own(capsys):
    class TorchSigmoid(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            s = torch.sigmoid(x)
            ctx.save_for_backward(s)
            return s

        @staticmethod
        def backward(ctx, grad_output):
            (s,) = ctx.saved_tensors
            return torch.ops.aten.sigmoid_backward(grad_output, s)  # PyTorch's own derivative

    assert check_sigmoid_function(TorchSigmoid) is True


def test_sigmoid_function_forgets_to_save(capsys):
    class Unsaved(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.sigmoid(x)

        @staticmethod
        def backward(ctx, grad_output):
            (s,) = ctx.saved_tensors
            return grad_output * s * (1 - s)

    assert check_sigmoid_function(Unsaved) is False
    assert "ctx.save_for_backward(s)" in last_line(capsys)


def test_sigmoid_function_forgets_the_chain_rule(capsys):
    assert check_sigmoid_function(make_sigmoid(lambda s, g: s * (1 - s))) is False
    assert "multiplies it by the incoming gradient" in last_line(capsys)


def test_sigmoid_function_wrong_derivative(capsys):
    assert check_sigmoid_function(make_sigmoid(lambda s, g: g * s)) is False
    out = last_line(capsys)
    assert out.startswith("❌ custom sigmoid Function: input gradient is wrong at index")
    assert "the derivative of the sigmoid s is s * (1 - s)" in out


def test_sigmoid_function_modifies_grad_output(capsys):
    assert check_sigmoid_function(make_sigmoid(lambda s, g: g.mul_(s * (1 - s)))) is False
    assert "changed grad_output in place" in last_line(capsys)


def test_sigmoid_function_wrong_forward_and_not_a_class(capsys):
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.tanh(x)

        @staticmethod
        def backward(ctx, grad_output):
            return grad_output

    assert check_sigmoid_function(Wrong) is False
    assert "forward output is wrong at index" in last_line(capsys)
    assert check_sigmoid_function(torch.sigmoid) is False
    assert "expected a class derived from torch.autograd.Function" in last_line(capsys)


# --------------------------------------------------------------------------------------
# check_training_loop
# --------------------------------------------------------------------------------------


def loop(
    w1,
    w2,
    x,
    y,
    learning_rate,
    steps,
    *,
    zero=("w1", "w2"),
    zero_first=False,
    rebind=(),
    losses_as_items=True,
):
    """The correct loop, with switches for the classic mistakes: which gradients are zeroed and
    when (``zero_first``: before backward, where the first .grad is still None), and which
    weights are rebound (``w = w - ...``, a new tensor) instead of updated in place."""
    weights = {"w1": w1, "w2": w2}
    losses = []
    for _ in range(steps):
        if zero_first:
            for name in zero:
                weights[name].grad.zero_()
        loss = (x.mm(weights["w1"]).clamp(min=0).mm(weights["w2"]) - y).pow(2).sum()
        losses.append(loss.item() if losses_as_items else loss)
        loss.backward()
        with torch.no_grad():
            for name, weight in weights.items():
                if name in rebind:
                    weights[name] = weight - learning_rate * weight.grad
                else:
                    weight -= learning_rate * weight.grad
        if not zero_first:
            for name in zero:
                weights[name].grad.zero_()
    return losses


def test_training_loop_correct(capsys):
    assert check_training_loop(loop) is True
    assert last_line(capsys) == "✅ training loop: correct"


def test_training_loop_missing_zero_grad(capsys):
    assert check_training_loop(lambda *a: loop(*a, zero=())) is False
    assert "the gradients pile up" in last_line(capsys)


def test_training_loop_rebinds_instead_of_updating(capsys):
    def rebinding(w1, w2, x, y, learning_rate, steps):
        for _ in range(steps):
            loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
            loss.backward()
            with torch.no_grad():
                w1 = (w1 - learning_rate * w1.grad).requires_grad_()
                w2 = (w2 - learning_rate * w2.grad).requires_grad_()
        return []

    assert check_training_loop(rebinding) is False
    assert "w1 and w2 did not change" in last_line(capsys)


def test_training_loop_update_outside_no_grad(capsys):
    def outside(w1, w2, x, y, learning_rate, steps):
        loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
        loss.backward()
        w1 -= learning_rate * w1.grad
        return [loss.item()]

    assert check_training_loop(outside) is False
    out = last_line(capsys)
    assert "your code raised RuntimeError" in out and "torch.no_grad()" in out


def test_training_loop_wrong_losses(capsys):
    def shifted(w1, w2, x, y, learning_rate, steps):
        losses = loop(w1, w2, x, y, learning_rate, steps)
        return losses[1:] + [0.0]

    assert check_training_loop(shifted) is False
    assert "losses is wrong at index (0,)" in last_line(capsys)


def test_training_loop_pytorchs_own_optimizer(capsys):
    def with_sgd(w1, w2, x, y, learning_rate, steps):
        optimizer = torch.optim.SGD([w1, w2], lr=learning_rate)
        losses = []
        for _ in range(steps):
            loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return losses

    assert check_training_loop(with_sgd) is True


def test_training_loop_zeroes_before_the_first_backward(capsys):
    # .grad is None until the first backward(): w1.grad.zero_() there raises AttributeError.
    assert check_training_loop(lambda *a: loop(*a, zero_first=True)) is False
    out = last_line(capsys)
    assert "AttributeError" in out and ".grad is None until the first backward()" in out


def test_training_loop_rebinds_inside_no_grad(capsys):
    # The second step fails (RuntimeError: no grad_fn): the hint names the rebinding, not the error alone.
    assert check_training_loop(lambda *a: loop(*a, zero=(), rebind=("w1", "w2"))) is False
    out = last_line(capsys)
    assert "w1 and w2 did not change in place" in out and "w1 -= learning_rate * w1.grad" in out
    assert "requires_grad=False" in out and "RuntimeError" in out


def test_training_loop_rebinds_only_w1(capsys):
    # w1's new tensor has no .grad at the second step: a TypeError, explained as the rebinding.
    assert check_training_loop(lambda *a: loop(*a, zero=("w2",), rebind=("w1",))) is False
    out = last_line(capsys)
    assert out.startswith("❌ training loop: w1 did not change in place") and "TypeError" in out


def test_training_loop_zeroes_only_w1(capsys):
    # The bug is in w2 (its gradients pile up), although both weights end up wrong.
    assert check_training_loop(lambda *a: loop(*a, zero=("w1",))) is False
    out = last_line(capsys)
    assert "w2's gradients pile up" in out and "not w2.grad" in out


def test_training_loop_zeroes_only_w2(capsys):
    assert check_training_loop(lambda *a: loop(*a, zero=("w2",))) is False
    assert "w1's gradients pile up" in last_line(capsys)


def test_training_loop_adds_the_gradient(capsys):
    def climbs(w1, w2, x, y, learning_rate, steps):
        return loop(w1, w2, x, y, -learning_rate, steps)

    assert check_training_loop(climbs) is False
    assert "moved uphill" in last_line(capsys)


def test_training_loop_zeroes_between_backward_and_update(capsys):
    def zero_too_early(w1, w2, x, y, learning_rate, steps):
        for _ in range(steps):
            loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
            loss.backward()
            w1.grad.zero_()
            w2.grad.zero_()
            with torch.no_grad():
                w1 -= learning_rate * w1.grad
                w2 -= learning_rate * w2.grad
        return []

    assert check_training_loop(zero_too_early) is False
    assert "not between backward() and the update" in last_line(capsys)
