"""Models that later lectures reuse after an earlier one built them by hand.

- ``ExamplesCNN``: the classic convolutional network of the PyTorch examples (``mnist/main.py``),
  written out in lecture 05 and used again in lecture 08 (faster inference, an application).
"""

from __future__ import annotations

import torch
from torch import nn


class ExamplesCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool, dropout and two linear layers, for 28x28 images.

    The network of the PyTorch examples' MNIST script: ``conv(1->c1) -> ReLU -> conv(c1->c2)
    -> ReLU -> max-pool -> dropout -> linear(c2*12*12 -> hidden) -> ReLU -> dropout ->
    linear(hidden -> classes)``. It returns raw scores (logits) for ``nn.CrossEntropyLoss``;
    the examples' version ends in ``log_softmax`` for ``nn.NLLLoss``, which is the same loss.

    Example:
        >>> model = ExamplesCNN(channels=(8, 16), hidden=32)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in ExamplesCNN().parameters())  # the examples' 32/64 channels
        1199882
    """

    def __init__(
        self,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        num_classes: int = 10,
        dropout: tuple[float, float] = (0.25, 0.5),
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3),  # 28x28 -> 26x26
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3),  # 26x26 -> 24x24
            nn.ReLU(),
            nn.MaxPool2d(2),  # 24x24 -> 12x12
            nn.Dropout(dropout[0]),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 12 * 12, hidden),
            nn.ReLU(),
            nn.Dropout(dropout[1]),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
