"""pdl.batchnorm against PyTorch: outputs, running statistics and gradients to 1e-5."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pdl.batchnorm import (
    BatchNorm,
    batch_norm,
    batch_norm_statistics,
    fold_batchnorm,
    fold_batchnorms,
)

TOL = 1e-5

# (input shape, the PyTorch layer that handles it)
CASES = [
    ((32, 6), nn.BatchNorm1d),
    ((16, 6, 10), nn.BatchNorm1d),
    ((8, 6, 5, 7), nn.BatchNorm2d),
]


def _pair(shape, torch_cls, **kwargs):
    """Our layer and PyTorch's, with the same random gamma/beta so that they matter."""
    ours, theirs = BatchNorm(shape[1], **kwargs), torch_cls(shape[1], **kwargs)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 2.0)
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _batch(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    # Channels with different means and scales, as real activations have.
    scale = torch.rand(shape[1], generator=generator) * 4 + 0.5
    shift = torch.randn(shape[1], generator=generator) * 3
    x = torch.randn(shape, generator=generator)
    return x * scale.reshape(1, -1, *[1] * (len(shape) - 2)) + shift.reshape(
        1, -1, *[1] * (len(shape) - 2)
    )


def _forward_backward(layer, x, upstream):
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    y = layer(x)
    (y * upstream).sum().backward()  # a non-uniform upstream gradient, so every term shows
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("shape, torch_cls", CASES, ids=["N,C", "N,C,L", "N,C,H,W"])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_matches_pytorch_in_train_then_eval_mode(shape, torch_cls, momentum):
    ours, theirs = _pair(shape, torch_cls, momentum=momentum)
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(99))
    for step in range(4):  # several batches: the running statistics accumulate
        x = _batch(shape, seed=step)
        for got, expected in zip(
            _forward_backward(ours, x, upstream),
            _forward_backward(theirs, x, upstream),
            strict=True,
        ):
            torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, atol=TOL, rtol=TOL)
        torch.testing.assert_close(ours.running_var, theirs.running_var, atol=TOL, rtol=TOL)
        assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == step + 1

    ours.eval()
    theirs.eval()
    x = _batch(shape, seed=100)
    for got, expected in zip(
        _forward_backward(ours, x, upstream), _forward_backward(theirs, x, upstream), strict=True
    ):
        torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
    # Eval mode reads the running statistics and never changes them.
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, atol=TOL, rtol=TOL)
    assert ours.num_batches_tracked.item() == 4


def test_running_variance_is_the_unbiased_estimate():
    x = torch.tensor([[1.0], [2.0], [3.0], [6.0]])  # biased variance 3.5, unbiased 14/3
    bn = BatchNorm(1, momentum=1.0)  # momentum 1: the running values become the batch's
    bn(x)
    assert bn.running_mean.item() == pytest.approx(3.0)
    assert bn.running_var.item() == pytest.approx(14 / 3)


def test_eval_mode_output_of_a_sample_does_not_depend_on_its_batch():
    bn = BatchNorm(4)
    for seed in range(3):
        bn(_batch((64, 4), seed))
    bn.eval()
    sample = _batch((1, 4), seed=7)
    alone = bn(sample)
    in_a_batch = bn(torch.cat([sample, _batch((9, 4), seed=8)]))[:1]
    torch.testing.assert_close(alone, in_a_batch)
    # In training mode the same sample's output changes with its neighbours.
    bn.train()
    assert not torch.allclose(
        bn(torch.cat([sample, _batch((9, 4), seed=8)]))[:1],
        bn(torch.cat([sample, _batch((9, 4), seed=9)]))[:1],
    )


def test_batch_of_one_raises_in_training_like_pytorch():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(torch.randn(1, 3))
    BatchNorm(3).eval()(torch.randn(1, 3))  # fine in eval mode


def test_gamma_and_beta_can_undo_the_normalization():
    x = _batch((50, 3), seed=1)
    mean, var = batch_norm_statistics(x)
    torch.testing.assert_close(
        batch_norm(x, gamma=torch.sqrt(var + 1e-5), beta=mean), x, atol=TOL, rtol=TOL
    )


def test_state_dict_has_pytorch_names_and_wrong_shapes_are_explained():
    assert set(BatchNorm(3).state_dict()) == set(nn.BatchNorm2d(3).state_dict())
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3\)"):
        BatchNorm(3)(torch.randn(4, 5))


def test_without_affine_there_are_no_parameters():
    bn = BatchNorm(3, affine=False)
    assert list(bn.parameters()) == []
    torch.testing.assert_close(
        bn(_batch((20, 3), 0)),
        nn.BatchNorm1d(3, affine=False)(_batch((20, 3), 0)),
        atol=TOL,
        rtol=TOL,
    )


# --------------------------------------------------------------------------------------
# Folding
# --------------------------------------------------------------------------------------


def _trained_bn(channels, bn_cls=nn.BatchNorm2d):
    """A batch norm with non-trivial running statistics and gamma/beta, in eval mode."""
    bn = bn_cls(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.2, 3.0)
    return bn.eval()


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.Conv2d(4, 8, 5, stride=2, groups=2, bias=False),
        nn.Conv2d(3, 6, 1),
    ],
    ids=["bias", "no bias", "strided grouped", "1x1"],
)
@pytest.mark.parametrize("bn_cls", [nn.BatchNorm2d, BatchNorm])
def test_fold_batchnorm_equals_conv_then_bn(conv, bn_cls):
    torch.manual_seed(0)
    bn = _trained_bn(conv.out_channels, bn_cls)
    before = copy.deepcopy(conv.state_dict())
    folded = fold_batchnorm(conv, bn)
    x = torch.randn(4, conv.in_channels, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), atol=TOL, rtol=TOL)
    assert isinstance(folded, nn.Conv2d) and folded.bias is not None
    assert (folded.stride, folded.padding, folded.groups) == (
        conv.stride,
        conv.padding,
        conv.groups,
    )
    for key, value in conv.state_dict().items():  # the original conv is untouched
        assert torch.equal(value, before[key])


def test_fold_batchnorm_after_real_training_statistics():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16)
    for _ in range(20):
        bn(conv(torch.randn(32, 1, 12, 12) * 3 + 1))
    bn.eval()
    x = torch.randn(8, 1, 12, 12) * 3 + 1
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(conv, bn)(x), bn(conv(x)), atol=TOL, rtol=TOL)


def test_fold_batchnorm_into_a_bfloat16_conv_keeps_the_conv_dtype():
    # A bias-free bfloat16 conv with a float32 batch norm (e.g. a model cast to bfloat16 but
    # for its norms): the folded conv, bias included, must be bfloat16 to run at all.
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, bias=False).to(torch.bfloat16)
    bn = _trained_bn(8)
    folded = fold_batchnorm(conv, bn)
    assert folded.weight.dtype == folded.bias.dtype == torch.bfloat16
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = bn(conv(x).float())
        torch.testing.assert_close(
            folded(x).float(), expected, atol=0.1, rtol=0.05
        )  # bfloat16: ~3 digits


def test_fold_batchnorm_refuses_what_it_cannot_fold():
    with pytest.raises(TypeError, match="nn.Conv2d"):
        fold_batchnorm(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="no running statistics"):
        fold_batchnorm(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="channels"):
        fold_batchnorm(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5))


def test_fold_batchnorms_folds_a_whole_stack_including_nested_blocks():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), _trained_bn(8), nn.ReLU())
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), _trained_bn(8), nn.ReLU(), block, nn.Flatten()
    ).eval()
    folded = fold_batchnorms(model)
    names = [type(m).__name__ for m in folded]
    assert names == ["Conv2d", "ReLU", "Sequential", "Flatten"]
    assert [type(m).__name__ for m in folded[2]] == ["Conv2d", "ReLU"]
    assert not folded.training
    x = torch.randn(4, 1, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=TOL, rtol=TOL)
