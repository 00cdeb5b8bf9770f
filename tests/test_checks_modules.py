"""pdl.checks.modules: each check passes a correct solution (and PyTorch's own function where
one exists) and names the typical wrong ones, without raising."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from pdl.checks import check_accuracy, check_cross_entropy, check_product_block, check_train_step


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------
# check_product_block
# --------------------------------------------------------------------------------------


class ProductBlock(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.left = nn.Linear(in_features, out_features)
        self.right = nn.Linear(in_features, out_features)

    def forward(self, x):
        return self.left(x) * self.right(x)


def test_product_block_correct(capsys):
    assert check_product_block(ProductBlock) is True
    assert last_line(capsys) == "✅ ProductBlock: correct"


def test_product_block_leaves_global_rng_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(
        check_product_block, ProductBlock
    )  # its nn.Linear layers draw random weights


def test_product_block_adds_instead_of_multiplying(capsys):
    class Sum(ProductBlock):
        def forward(self, x):
            return self.left(x) + self.right(x)

    assert check_product_block(Sum) is False
    assert "added; multiply them" in last_line(capsys)


def test_product_block_reports_a_float64_output(capsys):
    # Recognising "added instead of multiplied" used to raise on a dtype other than float32.
    class Double(ProductBlock):
        def forward(self, x):
            return (self.left(x) * self.right(x)).double()

    assert check_product_block(Double) is False
    assert "output has dtype torch.float64, expected torch.float32" in last_line(capsys)


def test_product_block_forgets_super_init(capsys):
    class NoSuper(nn.Module):
        def __init__(self, in_features, out_features):
            self.left = nn.Linear(in_features, out_features)

    assert check_product_block(NoSuper) is False
    assert "call super().__init__() first" in last_line(capsys)


def test_product_block_layers_in_a_plain_list(capsys):
    class PlainList(nn.Module):
        def __init__(self, in_features, out_features):
            super().__init__()
            self.layers = [
                nn.Linear(in_features, out_features),
                nn.Linear(in_features, out_features),
            ]

        def forward(self, x):
            return self.layers[0](x) * self.layers[1](x)

    assert check_product_block(PlainList) is False
    out = last_line(capsys)
    assert "the block has no parameters" in out and "nn.ModuleList" in out


def test_product_block_wrong_parameter_count(capsys):
    class OneLayer(nn.Module):
        def __init__(self, in_features, out_features):
            super().__init__()
            self.left = nn.Linear(in_features, out_features)

        def forward(self, x):
            return self.left(x) ** 2

    assert check_product_block(OneLayer) is False
    assert "has 32 parameters, expected 64" in last_line(capsys)


def test_product_block_uses_the_same_layer_twice(capsys):
    class Shared(ProductBlock):
        def forward(self, x):
            return self.left(x) * self.left(x)

    assert check_product_block(Shared) is False
    assert "output is wrong at index" in last_line(capsys)


# --------------------------------------------------------------------------------------
# check_cross_entropy
# --------------------------------------------------------------------------------------


def stable(logits, targets):
    log_probs = logits - logits.logsumexp(dim=1, keepdim=True)
    return -log_probs[torch.arange(len(targets)), targets].mean()


def naive(logits, targets):
    probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    return -probs[torch.arange(len(targets)), targets].log().mean()


def test_cross_entropy_correct(capsys):
    assert check_cross_entropy(stable) is True
    assert last_line(capsys) == "✅ cross-entropy: correct"
    assert (
        check_cross_entropy(lambda logits, targets: F.nll_loss(F.log_softmax(logits, 1), targets))
        is True
    )
    assert check_cross_entropy(F.cross_entropy) is True  # PyTorch's own


def test_cross_entropy_indexing_and_double_softmax(failing):
    def every_target(
        logits, targets
    ):  # log_probs[:, targets]: an (N, N) table, not one entry per row
        return -(logits - logits.logsumexp(dim=1, keepdim=True))[:, targets].mean()

    def softmax_twice(logits, targets):
        return stable(logits.softmax(dim=1), targets)

    failing(
        check_cross_entropy, every_target, "log_probs[:, targets]", "torch.arange(len(targets))"
    )
    failing(check_cross_entropy, softmax_twice, "softmax was applied twice")


def test_cross_entropy_in_place_edit_of_the_logits(failing):
    def in_place(logits, targets):
        logits -= logits.logsumexp(dim=1, keepdim=True)
        return -logits[torch.arange(len(targets)), targets].mean()

    failing(check_cross_entropy, in_place, "changed its input logits in place")


def test_cross_entropy_stub_is_not_attempted(failing):
    def stub(logits, targets):
        raise NotImplementedError

    failing(check_cross_entropy, stub, "not attempted yet")


def test_cross_entropy_naive_overflows(capsys):
    assert check_cross_entropy(naive) is False
    out = last_line(capsys)
    assert out.startswith("❌ cross-entropy: large logits") and "logsumexp" in out


def test_cross_entropy_typical_mistakes(capsys):
    assert check_cross_entropy(lambda lo, t: -stable(lo, t)) is False
    assert "sign is flipped" in last_line(capsys)
    assert check_cross_entropy(lambda lo, t: stable(lo, t) * len(t)) is False
    assert "the sum over the batch" in last_line(capsys)
    assert (
        check_cross_entropy(lambda lo, t: -(lo.softmax(1)[torch.arange(len(t)), t]).mean()) is False
    )
    assert "takes the log" in last_line(capsys)
    assert check_cross_entropy(lambda lo, t: F.cross_entropy(lo, t, reduction="none")) is False
    assert "one loss per sample" in last_line(capsys)


# --------------------------------------------------------------------------------------
# check_train_step
# --------------------------------------------------------------------------------------


def step(
    model, inputs, targets, loss_fn, optimizer, *, train=True, zero=True, update=True, item=True
):
    if train:
        model.train()
    loss = loss_fn(model(inputs), targets)
    if zero:
        optimizer.zero_grad()
    loss.backward()
    if update:
        optimizer.step()
    return loss.item() if item else loss


def test_train_step_correct(capsys):
    assert check_train_step(step) is True
    assert last_line(capsys) == "✅ train_step: correct"


def test_train_step_missing_zero_grad(capsys):
    assert check_train_step(lambda *a: step(*a, zero=False)) is False
    assert "the old gradients were added to the new ones" in last_line(capsys)


def test_train_step_missing_step(capsys):
    assert check_train_step(lambda *a: step(*a, update=False)) is False
    assert "the parameters did not change: call optimizer.step()" in last_line(capsys)


def test_train_step_left_in_eval_mode(capsys):
    assert check_train_step(lambda *a: step(*a, train=False)) is False
    assert "the model trained in eval mode" in last_line(capsys)
    assert check_train_step(lambda *a: step(*a, train=False, zero=False)) is False
    assert last_line(capsys).startswith("❌ train_step: two mistakes")


def test_train_step_zero_grad_between_backward_and_step(capsys):
    def late_zero(model, inputs, targets, loss_fn, optimizer):
        model.train()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()
        return loss.item()

    assert check_train_step(late_zero) is False
    assert "the parameters did not change" in last_line(capsys)


def test_train_step_returns_tensor(capsys):
    assert check_train_step(lambda *a: step(*a, item=False)) is False
    assert "return loss.item()" in last_line(capsys)


def test_train_step_swapped_loss_arguments(failing):
    # PyTorch answers loss_fn(targets, outputs) with its own NotImplementedError ("not implemented
    # for 'Long'"): an attempt with a mistake, never "not attempted".
    def swapped(model, inputs, targets, loss_fn, optimizer):
        model.train()
        loss = loss_fn(targets, model(inputs))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    out = failing(check_train_step, swapped, "arguments swapped", "loss_fn(model(inputs), targets)")
    assert out.startswith("\u274c") and "not attempted" not in out


def test_train_step_forgotten_backward(failing):
    def no_backward(model, inputs, targets, loss_fn, optimizer):
        model.train()
        loss = loss_fn(model(inputs), targets)
        optimizer.step()  # steps with the stale gradients of an earlier pass
        return loss.item()

    failing(check_train_step, no_backward, "left over from before", "loss.backward()")


def test_train_step_stub_and_a_crash(failing):
    def stub(model, inputs, targets, loss_fn, optimizer):
        raise NotImplementedError

    def typo(model, inputs, targets, loss_fn, optimizer):
        return loss_fn(model(inputs), targets).itme()

    failing(check_train_step, stub, "not attempted yet")
    failing(check_train_step, typo, "your code raised AttributeError")


def test_train_step_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_train_step(step)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------------------
# check_accuracy
# --------------------------------------------------------------------------------------


def test_accuracy_correct(capsys):
    assert check_accuracy(lambda lo, t: (lo.argmax(1) == t).float().mean()) is True
    assert last_line(capsys) == "✅ accuracy: correct"
    # torchmetrics' functional accuracy averages over all samples ("micro") by default: accepted.
    assert (
        check_accuracy(
            lambda lo, t: torchmetrics.functional.accuracy(lo, t, task="multiclass", num_classes=4)
        )
        is True
    )


def test_accuracy_compares_the_largest_score_not_its_position(failing):
    # The largest probability (or score) is never equal to a class index: 0, and not "integer division".
    def softmax_max(logits, targets):
        return (logits.softmax(dim=1).max(dim=1).values == targets).float().mean().item()

    def score_max(logits, targets):
        return (logits.max(dim=1).values == targets).float().mean()

    for fn in (softmax_max, score_max):
        out = failing(check_accuracy, fn, "compared the largest score", "argmax(dim=1)")
        assert "integer division" not in out


def test_accuracy_max_returns_a_pair(failing):
    failing(
        check_accuracy,
        lambda lo, t: (lo.max(dim=1) == t).float().mean(),
        "returns a pair (values, indices)",
    )
    failing(
        check_accuracy, lambda lo, t: lo.max(dim=1) == t, "return one number, got bool", ".indices"
    )


def test_accuracy_macro_average(failing):
    def macro(logits, targets):
        return torchmetrics.functional.classification.multiclass_accuracy(
            logits, targets, num_classes=4
        )

    failing(check_accuracy, macro, "macro average", "average='micro'")


def test_accuracy_typical_mistakes(capsys):
    assert check_accuracy(lambda lo, t: 100 * (lo.argmax(1) == t).float().mean().item()) is False
    assert "a percentage" in last_line(capsys)
    assert check_accuracy(lambda lo, t: (lo.argmax(1) == t).sum().item()) is False
    assert "the number of correct samples" in last_line(capsys)
    assert check_accuracy(lambda lo, t: (lo.argmax(1) == t).sum().item() // len(t)) is False
    assert "integer division" in last_line(capsys)
    assert check_accuracy(lambda lo, t: (lo.argmax(0) == t).float().mean()) is False
    assert "logits.argmax(dim=1)" in last_line(capsys)
    assert check_accuracy(lambda lo, t: lo.argmax(1) == t) is False
    assert "return one number" in last_line(capsys)


# --------------------------------------------------------------------------------------
# All four: odd answers are judged, never a crash of the check itself
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check", [check_product_block, check_cross_entropy, check_train_step, check_accuracy]
)
@pytest.mark.parametrize(
    "answer",
    [
        None,
        42,
        lambda *args: None,
        lambda *args: "0.5",
        lambda *args: (1.0, 2.0),
        lambda *args: torch.zeros(3, dtype=torch.float64),
    ],
    ids=[
        "None",
        "a number",
        "returns None",
        "returns a string",
        "returns a tuple",
        "returns a float64 vector",
    ],
)
def test_odd_answers_are_judged_without_crashing(check, answer, failing):
    out = failing(check, answer)
    assert "could not judge" not in out, out  # the check's own error, caught by @exercise


def test_the_checks_leave_the_global_random_state_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(check_cross_entropy, stable)
    leaves_global_rng_alone(check_train_step, step)
    leaves_global_rng_alone(check_accuracy, lambda lo, t: (lo.argmax(1) == t).float().mean())
