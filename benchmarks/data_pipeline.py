"""Fashion-MNIST: one epoch from in-memory tensors vs through the per-sample torchvision pipeline.

The per-sample pipeline is what real image datasets need: index -> PIL image -> transforms
-> collate, for every one of the 60,000 samples. Fashion-MNIST fits in memory as one
tensor, so ``pdl.data.fashion_mnist_tensors`` + ``tensor_loader`` skip all of that.
This script measures both, in one run, for reading the data alone and for a training
epoch of the lecture-03 MLP, and prints the ratios.

    python benchmarks/data_pipeline.py [--workers 0] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torchvision.transforms import v2

import pdl
from pdl.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    fashion_mnist_dataset,
    fashion_mnist_tensors,
    make_loader,
    tensor_loader,
)


def read_epoch(loader) -> float:
    started = time.perf_counter()
    for inputs, _ in loader:
        inputs.sum()  # touch the batch
    return time.perf_counter() - started


def train_epoch(loader) -> float:
    pdl.seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    pdl.train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, device="cpu")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers for the per-sample pipeline"
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    x, y = fashion_mnist_tensors("train")
    in_memory = tensor_loader(x, y, batch_size=64, shuffle=True)
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([FASHION_MNIST_MEAN], [FASHION_MNIST_STD]),
        ]
    )
    per_sample = make_loader(
        fashion_mnist_dataset("train", transform=transform),
        batch_size=64,
        shuffle=True,
        num_workers=args.workers,
    )
    print(
        f"Fashion-MNIST train (60,000 images), batch 64, {torch.get_num_threads()} threads, "
        f"per-sample pipeline with {per_sample.num_workers} worker(s), {args.repeats} repeats"
    )

    for name, measure in (("read one epoch", read_epoch), ("train one epoch (MLP)", train_epoch)):
        fast = [measure(in_memory) for _ in range(args.repeats)]
        slow = [measure(per_sample) for _ in range(args.repeats)]
        fast_s, slow_s = statistics.median(fast), statistics.median(slow)
        print(
            f"{name:<22} in-memory {fast_s:6.2f}s   per-sample {slow_s:6.2f}s   "
            f"per-sample / in-memory = {slow_s / fast_s:.1f}x"
        )


if __name__ == "__main__":
    main()
