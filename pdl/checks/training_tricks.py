"""Self-checks for lecture 04 (training tricks): preprocessing, initialization, momentum.

Each check runs your code on fresh random inputs next to a reference, prints one line (a
success line, or what is wrong and a hint why) and returns True/False.

- ``check_standardize(fn)``: ``fn(train, test)`` standardizes images per channel with the
  *training* set's statistics.
- ``check_kaiming_init(fn)``: ``fn(layer)`` gives an ``nn.Linear`` Kaiming (He) weights for ReLU.
- ``check_sgd_momentum(fn)``: ``fn(param, grad, velocity, lr, momentum)`` is one step of SGD
  with momentum, compared with ``torch.optim.SGD(momentum=...)`` step by step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from pdl.checks.core import (
    NOT_ATTEMPTED,
    call_safely,
    close,
    compare_tensors,
    exercise,
    report,
    unpack,
)

__all__ = ["check_kaiming_init", "check_sgd_momentum", "check_standardize"]


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


_DIMS = (0, 2, 3)  # per channel: over the images and their pixels
_TOL = {"atol": 1e-4, "rtol": 1e-4}


def _standardized_both_ways(
    x: torch.Tensor, dims: tuple[int, ...] = _DIMS, statistics_of: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` standardized with the mean and std over ``dims`` of ``statistics_of`` (default: ``x``).

    Two answers, both accepted: the std that divides by n (``correction=0``) and by n - 1 (``1``).
    """
    source = x if statistics_of is None else statistics_of
    mean = source.mean(dim=dims, keepdim=True)
    return tuple((x - mean) / source.std(dim=dims, keepdim=True, correction=c) for c in (0, 1))


@exercise
def check_standardize(fn: Callable, *, seed: int = 0) -> bool:
    """Check ``fn(train, test) -> (train_standardized, test_standardized)`` for ``(N, C, H, W)`` images.

    Each channel must get its own mean and standard deviation, computed over the training
    images and all their pixels (dims 0, 2, 3), and the *same* numbers must be used for the
    test images. Either standard deviation (divide by n or by n - 1) is accepted. ``seed``
    seeds the check's own generator for the images.

    Example:
        >>> def standardize(train, test):
        ...     mean = train.mean(dim=(0, 2, 3), keepdim=True)
        ...     std = train.std(dim=(0, 2, 3), keepdim=True)
        ...     return (train - mean) / std, (test - mean) / std
        >>> check_standardize(standardize)
        ✅ standardize per channel: correct
        True
    """
    title = "standardize per channel"
    generator = torch.Generator().manual_seed(seed)
    channel_mean = torch.tensor([0.5, 0.2, 0.8]).reshape(1, 3, 1, 1)
    channel_std = torch.tensor([0.3, 0.05, 0.15]).reshape(1, 3, 1, 1)
    # Pixels also differ in brightness (a centre brighter than the border), as in real photos.
    pixel_shift = torch.linspace(-0.1, 0.1, 36).reshape(1, 1, 6, 6)
    train = torch.randn(40, 3, 6, 6, generator=generator) * channel_std + channel_mean + pixel_shift
    test = (
        torch.randn(12, 3, 6, 6, generator=generator) * channel_std
        + channel_mean
        + pixel_shift
        + 0.1
    )

    given_train, given_test = train.clone(), test.clone()
    result, error = call_safely(fn, given_train, given_test)
    if error:
        if "must match the size of tensor" in error:
            error += (
                " (keep the reduced dimensions: train.mean(dim=(0, 2, 3), keepdim=True) has shape "
                "(1, C, 1, 1), which broadcasts against (N, C, H, W))"
            )
        return report(title, error)
    # Judged as lecture 01 judges it: a function that returns new tensors leaves its inputs alone.
    for name, given, original in (("train", given_train, train), ("test", given_test, test)):
        if not torch.equal(given, original):
            return report(
                title,
                f"your function changed its input {name} in place (e.g. {name} -= mean or "
                f"{name}.sub_(mean)): the caller's images change too, and calling it twice "
                f"standardizes them twice. Compute new tensors: ({name} - mean) / std",
            )
    pair, problem = unpack(result, ("train_standardized", "test_standardized"))
    if problem:
        return report(title, problem)
    got_train, got_test = pair

    def matches(
        got: object, want: torch.Tensor
    ) -> bool:  # unlike close(), insists on the dtype too
        return compare_tensors(got, want, **_TOL) is None

    expected_train = _standardized_both_ways(train)
    expected_test = _standardized_both_ways(test, statistics_of=train)
    if not any(matches(got_train, want) for want in expected_train):
        return report(
            title,
            _standardize_hint(got_train, train)
            or compare_tensors(
                got_train, expected_train[1], name="the standardized training images", **_TOL
            ),
        )
    if not any(matches(got_test, want) for want in expected_test):
        if any(matches(got_test, own) for own in _standardized_both_ways(test)):
            return report(
                title,
                "the test images were standardized with their own statistics: use the training "
                "set's mean and std (the test set stands for data you have not seen yet)",
            )
        return report(
            title,
            compare_tensors(
                got_test, expected_test[1], name="the standardized test images", **_TOL
            ),
        )
    return report(title, None)


def _standardize_hint(got: object, train: torch.Tensor) -> str | None:
    """Recognise training images standardized over the wrong dims, or only half standardized."""
    wrong = {
        "one mean and std for all channels together: each channel needs its own, reduce over dims (0, 2, 3)": (
            0,
            1,
            2,
            3,
        ),
        "a mean and std for every pixel: per-channel statistics reduce over the pixels too, dims (0, 2, 3)": (
            0,
        ),
        "statistics per image: compute them over the whole training set (dim 0) and the pixels (dims 2, 3)": (
            1,
            2,
            3,
        ),
    }
    for hint, dims in wrong.items():
        if any(close(got, want, **_TOL) for want in _standardized_both_ways(train, dims)):
            return f"the training images: {hint}"
    mean = train.mean(dim=_DIMS, keepdim=True)
    halves = {
        "divided by the variance: divide by the standard deviation, its square root (x.std)": [
            (train - mean) / train.var(dim=_DIMS, keepdim=True, correction=c) for c in (0, 1)
        ],
        "only centred: also divide by each channel's standard deviation": [train - mean],
        "only scaled: also subtract each channel's mean first": [
            train / train.std(dim=_DIMS, keepdim=True, correction=c) for c in (0, 1)
        ],
    }
    for hint, candidates in halves.items():
        if any(close(got, want, **_TOL) for want in candidates):
            return f"the training images were {hint}"
    return None


# --------------------------------------------------------------------------------------
# Initialization
# --------------------------------------------------------------------------------------


@exercise
def check_kaiming_init(fn: Callable, *, seed: int = 0) -> bool:
    """Check ``fn(layer)``: it re-initializes an ``nn.Linear`` in place for a ReLU network.

    Weights: zero mean and standard deviation ``sqrt(2 / fan_in)`` (normal or uniform, both
    fine); bias: zero. Tried on ``nn.Linear(1000, 400)``, whose 400,000 weights pin the
    standard deviation down to about 0.1%. ``seed`` seeds the global generator that your
    code draws from during the check; the notebook's random state is restored afterwards.

    Example:
        >>> check_kaiming_init(lambda layer: (nn.init.kaiming_normal_(layer.weight, nonlinearity="relu"),
        ...                                   nn.init.zeros_(layer.bias)))
        ✅ Kaiming initialization: correct
        True
    """
    title = "Kaiming initialization"
    fan_in, fan_out = 1000, 400
    # The student's code draws from the global generator: seed it for a repeatable check, but
    # inside fork_rng, so that the notebook's own random state is restored afterwards.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = nn.Linear(fan_in, fan_out)
        original_weight, original_bias = layer.weight, layer.bias
        before = layer.weight.detach().clone()
        _, error = call_safely(fn, layer)
    in_place = (
        "change the values of the existing parameters in place: with torch.no_grad(): "
        "layer.weight.normal_(...) (or nn.init.*_)"
    )
    if error:
        if "cannot assign" in error:
            error += f" (layer.weight must stay the same nn.Parameter: {in_place})"
        elif "leaf Variable that requires grad" in error:
            error += " (wrap the in-place calls in `with torch.no_grad():`: initialization is not a step to differentiate)"
        return report(title, error)
    if not isinstance(layer.weight, nn.Parameter) or not isinstance(layer.bias, nn.Parameter):
        return report(title, f"layer.weight and layer.bias must stay nn.Parameters: {in_place}")
    if layer.weight is not original_weight or layer.bias is not original_bias:
        which = "layer.weight" if layer.weight is not original_weight else "layer.bias"
        return report(
            title,
            f"{which} was replaced by a new nn.Parameter: an optimizer (or anything else) that "
            f"already holds the old one would never see it. The task says in place: {in_place}",
        )
    weight = layer.weight.detach()
    if torch.equal(weight, before):
        return report(
            title,
            "the weights did not change: change layer.weight in place (nothing needs to be returned)",
        )
    std, mean = weight.std().item(), weight.mean().item()
    target = math.sqrt(2 / fan_in)
    if abs(mean) > 0.05 * target:
        return report(title, f"the weights have mean {mean:.4g}; they should be centred at zero")
    if abs(std / target - 1) > 0.03:
        known = {
            "sqrt(1 / fan_in): that is LeCun's fan-in initialization (for tanh-like units); ReLU zeroes half "
            "of its inputs, so Kaiming doubles the variance": math.sqrt(1 / fan_in),
            "sqrt(2 / (fan_in + fan_out)): that is Glorot's (Xavier) initialization, the average of fan-in and "
            "fan-out; for ReLU use sqrt(2 / fan_in)": math.sqrt(2 / (fan_in + fan_out)),
            "sqrt(2 / fan_out): fan_in is the number of inputs, layer.in_features (weight.shape[1])": math.sqrt(
                2 / fan_out
            ),
            "2 / fan_in: that is the variance; normal_(mean, std) takes the standard deviation, sqrt(2 / fan_in)": 2
            / fan_in,
            "sqrt(2 / fan_in) / sqrt(3): uniform_(-b, b) has std b / sqrt(3); a uniform Kaiming init uses "
            "b = sqrt(6 / fan_in)": math.sqrt(2 / fan_in) / math.sqrt(3),
            "1 / sqrt(3 fan_in): PyTorch's default for nn.Linear, so the layer was re-initialized with "
            "nn.Linear's own rule (reset_parameters); Kaiming for ReLU is sqrt(2 / fan_in)": math.sqrt(
                1 / (3 * fan_in)
            ),
        }
        for hint, value in known.items():
            if abs(std / value - 1) < 0.03:
                return report(
                    title, f"the weights' std is {std:.4g}, which is {hint} (expected {target:.4g})"
                )
        return report(
            title,
            f"the weights' std is {std:.4g}, expected sqrt(2 / fan_in) = {target:.4g} for fan_in = {fan_in}",
        )
    if layer.bias.detach().abs().max().item() != 0.0:
        return report(title, "set the bias to zero")
    return report(title, None)


# --------------------------------------------------------------------------------------
# SGD with momentum
# --------------------------------------------------------------------------------------

_LR, _MOMENTUM, _STEPS = 0.1, 0.9, 5


def _problem(generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """A small regression: initial [weight, bias] of a linear layer, inputs and targets."""
    x = torch.randn(32, 4, generator=generator)
    y = x @ torch.randn(4, 3, generator=generator) + 0.5
    params = [torch.randn(3, 4, generator=generator) * 0.5, torch.zeros(3)]
    return params, x, y


def _gradients(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    weight, bias = (p.detach().requires_grad_(True) for p in params)
    loss = nn.functional.mse_loss(x @ weight.T + bias, y)
    return list(torch.autograd.grad(loss, [weight, bias]))


def _torch_trajectory(params, x, y) -> list[list[torch.Tensor]]:
    """Parameters after each step of torch.optim.SGD(momentum=...): the reference."""
    with (
        torch.random.fork_rng()
    ):  # its random initial weights are overwritten: leave the notebook's generator alone
        model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(params[0])
        model.bias.copy_(params[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=_LR, momentum=_MOMENTUM)
    trajectory = []
    for _ in range(_STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        trajectory.append([model.weight.detach().clone(), model.bias.detach().clone()])
    return trajectory


def _rule_trajectory(rule: Callable, params, x, y) -> list[list[torch.Tensor]]:
    """Parameters after each step of a hand-written (possibly wrong) update rule."""
    params = [p.clone() for p in params]
    velocities = [torch.zeros_like(p) for p in params]
    trajectory = []
    for _ in range(_STEPS):
        grads = _gradients(params, x, y)
        for i, grad in enumerate(grads):
            params[i], velocities[i] = rule(params[i], grad, velocities[i])
        trajectory.append([p.clone() for p in params])
    return trajectory


_KNOWN_MISTAKES: dict[str, Callable] = {
    "the velocity is not carried over: this is plain SGD. Keep velocity = momentum * velocity + grad "
    "and return it, so that the next step can use it": lambda p, g, v: (p - _LR * g, v),
    "PyTorch's velocity is momentum * velocity + grad, without a (1 - momentum) factor on the gradient": lambda p, g, v: (
        p - _LR * (_MOMENTUM * v + (1 - _MOMENTUM) * g),
        _MOMENTUM * v + (1 - _MOMENTUM) * g,
    ),
    "the step uses the old velocity: first update velocity = momentum * velocity + grad, then step with it": lambda p, g, v: (
        p - _LR * v,
        _MOMENTUM * v + g,
    ),
    "the gradient must be subtracted (go downhill): param - lr * velocity": lambda p, g, v: (
        p + _LR * (_MOMENTUM * v + g),
        _MOMENTUM * v + g,
    ),
}


@exercise
def check_sgd_momentum(fn: Callable, *, seed: int = 0) -> bool:
    """Check ``fn(param, grad, velocity, lr, momentum) -> (new_param, new_velocity)`` against PyTorch.

    A linear regression is trained for five steps twice: with ``torch.optim.SGD(lr=0.1,
    momentum=0.9)``, and with your update applied to each parameter (starting from zero
    velocity). The parameters must agree after every step. PyTorch's form is
    ``v = momentum * v + grad; param = param - lr * v``; the textbook form
    ``v = momentum * v - lr * grad; param = param + v`` takes the same steps and passes too.
    ``seed`` seeds the check's own generator for the regression problem.

    Example:
        >>> def step(param, grad, velocity, lr, momentum):
        ...     velocity = momentum * velocity + grad
        ...     return param - lr * velocity, velocity
        >>> check_sgd_momentum(step)
        ✅ SGD with momentum: correct
        True
    """
    title = "SGD with momentum"
    generator = torch.Generator().manual_seed(seed)
    params, x, y = _problem(generator)
    expected = _torch_trajectory(params, x, y)

    current = [p.clone() for p in params]
    velocities = [torch.zeros_like(p) for p in params]
    for step in range(1, _STEPS + 1):
        grads = _gradients(current, x, y)
        for i, name in enumerate(("weight", "bias")):
            result, error = call_safely(
                fn, current[i].clone(), grads[i].clone(), velocities[i].clone(), _LR, _MOMENTUM
            )
            if error:
                where = "" if error == NOT_ATTEMPTED else f"step {step}, {name}: "
                return report(title, where + error)
            pair, problem = unpack(result, ("new_param", "new_velocity"))
            if problem:
                return report(title, problem)
            new_param, new_velocity = pair
            problem = compare_tensors(
                new_param,
                expected[step - 1][i],
                name=f"the {name} after step {step}",
                atol=1e-5,
                rtol=1e-4,
            )
            if problem is None and not isinstance(new_velocity, torch.Tensor):
                problem = f"the velocity should be a tensor, got {type(new_velocity).__name__}"
            if problem is not None:
                return report(
                    title,
                    _momentum_hint(new_param, step, i, params, x, y)
                    or _first_step_hint(problem, step),
                )
            current[i], velocities[i] = new_param.detach(), new_velocity.detach()
    return report(title, None)


def _momentum_hint(got: object, step: int, index: int, params, x, y) -> str | None:
    if not isinstance(got, torch.Tensor):
        return None  # not worth replaying the known mistakes
    for hint, rule in _KNOWN_MISTAKES.items():
        wrong = _rule_trajectory(rule, params, x, y)[step - 1][index]
        if close(got, wrong, atol=1e-5, rtol=1e-4):
            return f"step {step}: {hint}"
    return None


def _first_step_hint(problem: str, step: int) -> str:
    if step == 1:
        return problem + " (with zero velocity the first step is simply param - lr * grad)"
    return problem
