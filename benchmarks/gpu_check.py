"""On a CUDA GPU: what do pdl.fit's GPU options buy? Throughput ratios measured in one run.

Four comparisons, each against the same baseline (ResNet-18 on random 3x``--image-size``
images in memory, SGD, batch ``--batch-size``, ``pdl.fit`` with ``precision="fp32"``):

1. **precision "auto"** (bf16 on compute capability >= 8.0, else fp16 + GradScaler) vs float32;
2. **channels_last** memory format for the model and the images vs the default layout;
3. **pinned memory + non_blocking copies** (images in page-locked CPU memory; ``fit`` copies
   with ``non_blocking=True``) vs pageable memory, with the batches starting on the CPU;
4. **torch.compile** (the first epoch, which compiles, is reported apart) vs eager.

It prints images per second for each and the ratio to the baseline, plus the GPU, its compute
capability and the policy "auto" chose. Without a CUDA device it says so and exits 0.

    python benchmarks/gpu_check.py [--epochs 3] [--batches 20] [--batch-size 64] [--image-size 160]

Status: written and run on the CPU-only course machines, where it takes the "no CUDA" exit;
the CUDA path has not been run yet (no GPU was available): treat its numbers as unverified
until someone runs it on one (Colab's T4, say) and checks that it completes.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torchvision
from torch import nn

import pdl


class ChannelsLast(nn.Module):
    """Put each batch in channels_last layout before the model (the model is converted too)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.contiguous(memory_format=torch.channels_last))


def batches(args, *, pinned: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same random images every time (seeded), on the CPU, pinned or not."""
    generator = torch.Generator().manual_seed(0)
    data = []
    for _ in range(args.batches):
        images = torch.randn(
            args.batch_size, 3, args.image_size, args.image_size, generator=generator
        )
        labels = torch.randint(0, 10, (args.batch_size,), generator=generator)
        data.append((images.pin_memory(), labels.pin_memory()) if pinned else (images, labels))
    return data


def images_per_second(
    args, *, precision="fp32", channels_last=False, pinned=False, compile_model=False
):
    """Median images/s over the epochs after the first (the first warms up cuDNN, or compiles)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    if channels_last:
        model = ChannelsLast(model)
    model = model.cuda()
    if compile_model:
        model = torch.compile(model)
    data = batches(args, pinned=pinned)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    history = pdl.fit(model, data, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=args.epochs + 1,
                      device="cuda", precision=precision, progress=False)  # fmt: skip
    torch.cuda.synchronize()
    seconds = history["seconds"]
    per_epoch = args.batches * args.batch_size
    return per_epoch / statistics.median(seconds[1:]), seconds[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=int, default=3, help="measured epochs (one warm-up epoch more)"
    )
    parser.add_argument("--batches", type=int, default=20, help="batches per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile comparison"
    )
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("No CUDA device here: this benchmark measures GPU options only, so there is nothing to measure. "
              "Run it on a machine with an NVIDIA GPU (e.g. Colab: Runtime > Change runtime type > GPU).")  # fmt: skip
        return 0

    properties = torch.cuda.get_device_properties(0)
    print(f"{properties.name}, compute capability {properties.major}.{properties.minor}, "
          f"torch {torch.__version__}; precision 'auto' here: {pdl.precision_policy('cuda')}")  # fmt: skip
    print(
        f"ResNet-18, {args.batch_size} x 3 x {args.image_size} x {args.image_size} random images, "
        f"{args.batches} batches per epoch, median of {args.epochs} epochs after a warm-up epoch\n"
    )

    baseline, _ = images_per_second(args)
    print(f"{'baseline: fp32, default layout, pageable memory, eager':58} {baseline:9.0f} images/s")
    variants = {
        "precision='auto' (mixed precision)": {"precision": "auto"},
        "channels_last": {"channels_last": True},
        "pinned memory + non_blocking copies": {"pinned": True},
    }
    if not args.no_compile:
        variants["torch.compile"] = {"compile_model": True}
    for name, options in variants.items():
        speed, first_epoch = images_per_second(args, **options)
        note = (
            f"  (first epoch {first_epoch:.1f} s: compiling)" if "compile_model" in options else ""
        )
        print(f"{name:58} {speed:9.0f} images/s  {speed / baseline:5.2f}x the baseline{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
