"""What the tests of pdl.transfer, pdl.weights and pdl.features share: two architectures, built offline."""

from __future__ import annotations

import torch
from torch import nn

from pdl.weights import build_backbone

ARCHS = ["resnet18", "mobilenet_v2"]
MIRROR_WEIGHTS = (
    "data:weights/mobilenet_v2_imagenet_features.pth"  # the offline mirror's ImageNet features
)
HEAD_SIZES = {
    "resnet18": (512, "fc"),
    "mobilenet_v2": (1280, "classifier"),
}  # features into the head, its name


def make(arch: str, num_classes: int | None = 2) -> nn.Module:
    """``arch`` with random weights (seeded), its head replaced for ``num_classes``."""
    torch.manual_seed(0)
    return build_backbone(arch, None, num_classes=num_classes, verbose=False)
