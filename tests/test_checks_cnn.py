"""The lecture 05 self-checks (pdl.checks.cnn, .datasets, .dropout): they pass correct code (PyTorch's own where it exists) and explain typical mistakes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from pdl.checks.cnn import (
    _SIZE_CASES,
    _torch_output_size,
    check_conv2d,
    check_conv_block,
    check_conv_output_size,
)
from pdl.checks.datasets import check_image_dataset
from pdl.checks.dropout import check_dropout, check_dropout_placement


def passes(check, answer, capsys) -> None:
    assert check(answer) is True
    out = capsys.readouterr().out
    assert out.startswith("\u2705") and out.strip().endswith("correct"), out


# --------------------------------------------------------------------------------------
# check_conv_output_size
# --------------------------------------------------------------------------------------


def output_size(size, kernel_size, stride=1, padding=0):
    return (size + 2 * padding - kernel_size) // stride + 1


def test_output_size_accepts_the_formula_and_math_floor(capsys):
    passes(check_conv_output_size, output_size, capsys)
    passes(
        check_conv_output_size,
        lambda size, kernel_size, stride=1, padding=0: (
            math.floor((size + 2 * padding - kernel_size) / stride) + 1
        ),
        capsys,
    )


def test_output_size_reference_is_pytorch_itself():
    for size, k, s, p in _SIZE_CASES:
        conv = nn.Conv2d(1, 1, k, stride=s, padding=p)
        assert (
            conv(torch.zeros(1, 1, size, size)).shape[-1]
            == _torch_output_size(size, k, s, p)
            == output_size(size, k, s, p)
        )


def test_output_size_accepts_pytorch_measuring_its_own_output(capsys):
    def measured(size, kernel_size, stride=1, padding=0):
        return nn.Conv2d(1, 1, kernel_size, stride=stride, padding=padding)(
            torch.zeros(1, 1, size, size)
        ).shape[-1]

    passes(check_conv_output_size, measured, capsys)


def test_output_size_reports_the_stub(failing):
    def stub(size, kernel_size, stride=1, padding=0):
        raise NotImplementedError

    failing(check_conv_output_size, stub, "not attempted yet")


def test_output_size_mistakes(failing):
    failing(
        check_conv_output_size,
        lambda size, kernel_size, stride=1, padding=0: (size + 2 * padding - kernel_size) // stride,
        "off by one",
        "+ 1",
    )
    failing(
        check_conv_output_size,
        lambda size, kernel_size, stride=1, padding=0: (size + padding - kernel_size) // stride + 1,
        "both sides",
        "2 * padding",
    )
    failing(
        check_conv_output_size,
        lambda size, kernel_size, stride=1, padding=0: size + 2 * padding - kernel_size + 1,
        "stride is missing",
    )
    failing(
        check_conv_output_size,
        lambda size, kernel_size, stride=1, padding=0: (size - kernel_size) // stride + 1,
        "padding is missing",
    )
    failing(
        check_conv_output_size,
        lambda size, kernel_size, stride=1, padding=0: (
            math.ceil((size + 2 * padding - kernel_size) / stride) + 1
        ),
        "round down, not up",
    )


def test_output_size_true_division(failing):
    out = failing(
        check_conv_output_size,
        lambda size, kernel_size, stride=1, padding=0: (
            (size + 2 * padding - kernel_size) / stride + 1
        ),
        "use //",
    )
    # 26.0 is the right value but a float: the first case already says so.
    assert "size=28, kernel_size=3, stride=1" in out


def test_output_size_wrong_return_type(failing):
    failing(
        check_conv_output_size,
        lambda size, kernel_size, stride=1, padding=0: "26",
        "return a whole number",
    )


# --------------------------------------------------------------------------------------
# check_conv2d
# --------------------------------------------------------------------------------------


def conv2d_loops(x, weight, bias=None, stride=1, padding=0):
    """A student's correct answer: pad, then loop over output positions."""
    x = F.pad(x, (padding, padding, padding, padding))
    n, _, height, width = x.shape
    c_out, _, kh, kw = weight.shape
    h_out, w_out = (height - kh) // stride + 1, (width - kw) // stride + 1
    out = torch.zeros(n, c_out, h_out, w_out)
    for i in range(h_out):
        for j in range(w_out):
            rows, cols = slice(i * stride, i * stride + kh), slice(j * stride, j * stride + kw)
            window = x[:, :, rows, cols]  # (N, C_in, kh, kw)
            out[:, :, i, j] = (window.unsqueeze(1) * weight).sum(dim=(2, 3, 4))
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def test_conv2d_accepts_loops_and_pytorch(capsys):
    passes(check_conv2d, conv2d_loops, capsys)
    passes(
        check_conv2d,
        lambda x, weight, bias=None, stride=1, padding=0: F.conv2d(
            x, weight, bias, stride=stride, padding=padding
        ),
        capsys,
    )


def test_conv2d_accepts_unfold(capsys):
    def by_unfold(x, weight, bias=None, stride=1, padding=0):
        n, _, height, width = x.shape
        c_out, _, kh, kw = weight.shape
        columns = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (N, C_in*kh*kw, L)
        out = weight.view(c_out, -1) @ columns
        if bias is not None:
            out = out + bias.view(1, -1, 1)
        h_out, w_out = (
            (height + 2 * padding - kh) // stride + 1,
            (width + 2 * padding - kw) // stride + 1,
        )
        return out.view(n, c_out, h_out, w_out)

    passes(check_conv2d, by_unfold, capsys)


def test_conv2d_reports_the_stub(failing):
    def stub(x, weight, bias=None, stride=1, padding=0):
        raise NotImplementedError

    failing(check_conv2d, stub, "not attempted yet")


def test_conv2d_recognises_a_flipped_kernel(failing):
    failing(
        check_conv2d,
        lambda x, weight, bias=None, stride=1, padding=0: conv2d_loops(
            x, weight.flip(-2, -1), bias, stride, padding
        ),
        "flipped",
        "cross-correlation",
    )


def test_conv2d_recognises_a_missing_bias(failing):
    failing(
        check_conv2d,
        lambda x, weight, bias=None, stride=1, padding=0: conv2d_loops(
            x, weight, None, stride, padding
        ),
        "bias is missing",
    )


def test_conv2d_recognises_ignored_stride_and_padding(failing):
    failing(
        check_conv2d,
        lambda x, weight, bias=None, stride=1, padding=0: conv2d_loops(x, weight, bias, 1, padding),
        "stride=2, padding=1",
        "stride is ignored",
    )
    failing(
        check_conv2d,
        lambda x, weight, bias=None, stride=1, padding=0: conv2d_loops(x, weight, bias, stride, 0),
        "padding is ignored",
        "F.pad",
    )


def test_conv2d_recognises_one_input_channel(failing):
    failing(
        check_conv2d,
        lambda x, weight, bias=None, stride=1, padding=0: conv2d_loops(
            x[:, :1], weight[:, :1], bias, stride, padding
        ),
        "ALL input channels",
    )


# --------------------------------------------------------------------------------------
# check_image_dataset
# --------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    def __init__(self, images, labels, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]  # a 0-d tensor label is fine too


def test_dataset_accepts_a_correct_class(capsys):
    passes(check_image_dataset, ImageDataset, capsys)


def test_dataset_reports_the_stub(failing):
    class Stub(Dataset):
        def __init__(self, images, labels, transform=None):
            raise NotImplementedError

    failing(check_image_dataset, Stub, "not attempted yet")


def test_dataset_transform_applied_in_init(failing):
    class Eager(ImageDataset):
        def __init__(self, images, labels, transform=None):
            super().__init__(images, labels, None)
            if transform is not None:
                self.images = torch.stack([transform(image) for image in images])

    failing(check_image_dataset, Eager, "already ran in __init__", "__getitem__")


def test_dataset_transform_ignored(failing):
    class Ignores(ImageDataset):
        def __getitem__(self, index):
            return self.images[index], int(self.labels[index])

    failing(check_image_dataset, Ignores, "with a transform", "untransformed")


def test_dataset_swapped_pair_wrong_length_and_fixed_index(failing):
    class Swapped(ImageDataset):
        def __getitem__(self, index):
            image, label = super().__getitem__(index)
            return label, image

    failing(check_image_dataset, Swapped, "return (image, label)")

    class Shape(ImageDataset):
        def __len__(self):
            return self.images.shape[1]

    failing(check_image_dataset, Shape, "len(dataset) is 1, expected 7")

    class First(ImageDataset):
        def __getitem__(self, index):
            return super().__getitem__(0)

    failing(check_image_dataset, First, "dataset[3]", "wrong image")


def test_dataset_must_be_a_dataset_and_have_a_default_transform(failing):
    class Plain:
        def __init__(self, images, labels, transform=None):
            self.inner = ImageDataset(images, labels, transform)

    failing(check_image_dataset, Plain, "subclass torch.utils.data.Dataset")

    class Required(ImageDataset):
        def __init__(self, images, labels, transform):
            super().__init__(images, labels, transform)

    failing(check_image_dataset, Required, "transform=None")


# --------------------------------------------------------------------------------------
# check_conv_block
# --------------------------------------------------------------------------------------


def conv_block(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
    )


def test_conv_block_accepts_a_correct_block_in_either_order(capsys):
    passes(check_conv_block, conv_block, capsys)
    # Max-pool and ReLU commute (both are monotone), so pooling first is also correct.
    passes(
        check_conv_block,
        lambda c_in, c_out: nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()
        ),
        capsys,
    )


def test_conv_block_reports_the_stub(failing):
    def stub(c_in, c_out):
        raise NotImplementedError

    failing(check_conv_block, stub, "not attempted yet")


BLOCK_MISTAKES = {
    "padding=1 keeps H and W": lambda c_in, c_out: nn.Sequential(
        nn.Conv2d(c_in, c_out, 3), nn.ReLU(), nn.MaxPool2d(2)
    ),
    "max-pool is missing": lambda c_in, c_out: nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()
    ),
    "ReLU is missing": lambda c_in, c_out: nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(2)
    ),
    "average pooling": lambda c_in, c_out: nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)
    ),
    "expected 1 -> 4": lambda c_in, c_out: conv_block(3, c_out),  # the input channels hard-coded
    "expected 3x3": lambda c_in, c_out: nn.Sequential(
        nn.Conv2d(c_in, c_out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)
    ),
    "return an nn.Module": lambda c_in, c_out: [nn.Conv2d(c_in, c_out, 3, padding=1)],
}


@pytest.mark.parametrize("fragment", BLOCK_MISTAKES)
def test_conv_block_mistakes(failing, fragment):
    failing(check_conv_block, BLOCK_MISTAKES[fragment], fragment)


def test_conv_block_leaves_global_rng_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(check_conv_block, conv_block)  # nn.Conv2d draws its initial weights


# --------------------------------------------------------------------------------------
# check_dropout
# --------------------------------------------------------------------------------------


class InvertedDropout(nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training:
            return x
        mask = (torch.rand_like(x) >= self.p).float()
        return x * mask / (1 - self.p)


def test_dropout_accepts_hand_written_and_pytorchs(capsys):
    passes(check_dropout, InvertedDropout, capsys)
    passes(check_dropout, nn.Dropout, capsys)


def test_dropout_reports_the_stub(failing):
    class Stub(nn.Module):
        def __init__(self, p=0.5):
            super().__init__()

        def forward(self, x):
            raise NotImplementedError

    failing(check_dropout, Stub, "not attempted yet")


def test_dropout_without_scaling(failing):
    class NoScale(InvertedDropout):
        def forward(self, x):
            return x * (torch.rand_like(x) >= self.p) if self.training else x

    failing(check_dropout, NoScale, "not scaled", "1 - p")


def test_dropout_old_style_eval_scaling(failing):
    class OldStyle(InvertedDropout):
        def forward(self, x):
            return (
                x * (torch.rand_like(x) >= self.p) / (1 - self.p)
                if self.training
                else x * (1 - self.p)
            )

    failing(check_dropout, OldStyle, "eval mode", "unchanged")


def test_dropout_p_as_keep_probability(failing):
    class Keep(InvertedDropout):
        def forward(self, x):
            return x * (torch.rand_like(x) < self.p) / self.p if self.training else x

    failing(check_dropout, Keep, "probability of DROPPING")


def test_dropout_still_dropping_in_eval_mode(failing):
    class AlwaysOn(InvertedDropout):
        def forward(self, x):
            return F.dropout(x, self.p)  # training=True by default

    failing(check_dropout, AlwaysOn, "eval mode", "training=self.training")


def test_dropout_never_dropping_and_fixed_masks(failing):
    class Identity(InvertedDropout):
        def forward(self, x):
            return x

    failing(check_dropout, Identity, "nothing was dropped", "self.training")

    class FixedMask(InvertedDropout):
        def forward(self, x):
            if not self.training:
                return x
            g = torch.Generator().manual_seed(0)
            return x * (torch.rand(x.shape, generator=g) >= self.p) / (1 - self.p)

    failing(check_dropout, FixedMask, "new random mask on every call")


def test_dropout_must_stay_in_the_graph(failing):
    class Detached(InvertedDropout):
        def forward(self, x):
            return super().forward(x).detach()

    failing(check_dropout, Detached, "not connected to autograd")


def test_dropout_leaves_global_rng_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(check_dropout, InvertedDropout)
    leaves_global_rng_alone(check_dropout, nn.Dropout)


# --------------------------------------------------------------------------------------
# check_dropout_placement
# --------------------------------------------------------------------------------------


def head(n_in, hidden, n_out, p):
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, n_out)
    )


def test_placement_accepts_the_right_head(capsys):
    passes(check_dropout_placement, head, capsys)
    # Dropout before the ReLU gives the same function (ReLU(m * x) = m * ReLU(x) for m >= 0).
    passes(
        check_dropout_placement,
        lambda n_in, hidden, n_out, p: nn.Sequential(
            nn.Linear(n_in, hidden), nn.Dropout(p), nn.ReLU(), nn.Linear(hidden, n_out)
        ),
        capsys,
    )


def test_placement_accepts_a_custom_module_with_functional_dropout_layer(capsys):
    class Head(nn.Module):
        def __init__(self, n_in, hidden, n_out, p):
            super().__init__()
            self.fc1, self.drop, self.fc2 = (
                nn.Linear(n_in, hidden),
                InvertedDropout(p),
                nn.Linear(hidden, n_out),
            )

        def forward(self, x):
            return self.fc2(self.drop(torch.relu(self.fc1(x))))

    passes(check_dropout_placement, Head, capsys)


def test_placement_reports_the_stub(failing):
    def stub(n_in, hidden, n_out, p):
        raise NotImplementedError

    failing(check_dropout_placement, stub, "not attempted yet")


def test_placement_mistakes(failing):
    failing(
        check_dropout_placement,
        lambda n_in, hidden, n_out, p: nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out), nn.Dropout(p)
        ),
        "after the last layer",
        "class scores",
    )
    failing(
        check_dropout_placement,
        lambda n_in, hidden, n_out, p: nn.Sequential(
            nn.Dropout(p), nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
        ),
        "input features only",
    )
    failing(
        check_dropout_placement,
        lambda n_in, hidden, n_out, p: nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
        ),
        "no dropout layer ran",
    )
    failing(
        check_dropout_placement,
        lambda n_in, hidden, n_out, p: head(n_in, hidden, n_out, 0.5),
        "expected p=0.4",
    )


def test_placement_eval_mode_must_be_deterministic(failing):
    class AlwaysOnDropout(InvertedDropout):
        def forward(self, x):
            return F.dropout(x, self.p)  # ignores eval()

    failing(
        check_dropout_placement,
        lambda n_in, hidden, n_out, p: nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), AlwaysOnDropout(p), nn.Linear(hidden, n_out)
        ),
        "eval mode two calls differ",
    )


@pytest.mark.parametrize(
    "check, answer",
    [
        (check_dropout_placement, head),
        (check_image_dataset, ImageDataset),
        (check_conv2d, conv2d_loops),
        (check_conv_output_size, output_size),
    ],
)
def test_the_other_checks_leave_global_rng_alone(leaves_global_rng_alone, check, answer):
    leaves_global_rng_alone(check, answer)
