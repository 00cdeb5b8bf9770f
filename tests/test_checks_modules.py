"""pdl.checks.modules: each check passes a correct solution and explains the typical wrong ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    leaves_global_rng_alone(check_product_block, ProductBlock)  # its nn.Linear layers draw random weights


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
            self.layers = [nn.Linear(in_features, out_features), nn.Linear(in_features, out_features)]

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
    assert check_cross_entropy(lambda logits, targets: F.nll_loss(F.log_softmax(logits, 1), targets)) is True


def test_cross_entropy_naive_overflows(capsys):
    assert check_cross_entropy(naive) is False
    out = last_line(capsys)
    assert out.startswith("❌ cross-entropy: large logits") and "logsumexp" in out


def test_cross_entropy_typical_mistakes(capsys):
    assert check_cross_entropy(lambda lo, t: -stable(lo, t)) is False
    assert "sign is flipped" in last_line(capsys)
    assert check_cross_entropy(lambda lo, t: stable(lo, t) * len(t)) is False
    assert "the sum over the batch" in last_line(capsys)
    assert check_cross_entropy(lambda lo, t: -(lo.softmax(1)[torch.arange(len(t)), t]).mean()) is False
    assert "takes the log" in last_line(capsys)
    assert check_cross_entropy(lambda lo, t: F.cross_entropy(lo, t, reduction="none")) is False
    assert "one loss per sample" in last_line(capsys)


# --------------------------------------------------------------------------------------
# check_train_step
# --------------------------------------------------------------------------------------


def step(model, inputs, targets, loss_fn, optimizer, *, train=True, zero=True, update=True, item=True):
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
