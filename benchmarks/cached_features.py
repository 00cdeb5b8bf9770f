"""How much faster is a linear probe on cached features than on images through the frozen backbone?

Both ways train the same linear head (same initial weights, AdamW, same batches in the same
order) on the same images (ants/bees, the evaluation transform, no augmentation) for the same
number of epochs, with ``pdl.fit``:

- **through the backbone**: every epoch decodes and transforms each image and runs the frozen
  backbone on it, then the head;
- **cached**: ``pdl.features.cached_features`` runs the backbone once (timed), then each epoch
  is the head on a tensor of feature vectors.

It prints the seconds per epoch of each, the ratio, the total for the whole run including the
one-off extraction, and checks that both ways end with the same head.

    python benchmarks/cached_features.py [--epochs 3] [--image-size 128] [--limit 244]

The default backbone is the offline mirror's ImageNet MobileNetV2 (``PDL_DATA_MIRROR``);
``--backbone resnet18 --weights DEFAULT`` works where torchvision's weights can be downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import pdl
from pdl.features import cached_features, feature_extractor
from pdl.weights import build_backbone, preprocessing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default="data:weights/mobilenet_v2_imagenet_features.pth")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training images"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    device = pdl.get_device()
    prep = preprocessing(args.backbone, args.weights, args.image_size)
    images, _ = pdl.data.hymenoptera_datasets(train_transform=prep.eval, val_transform=prep.eval)
    if args.limit is not None:
        images = torch.utils.data.Subset(images, range(min(args.limit, len(images))))
    model = build_backbone(args.backbone, args.weights, num_classes=2)
    extractor = feature_extractor(model).to(
        memory_format=torch.channels_last
    )  # as cached_features runs it
    print(
        f"{args.backbone}, {len(images)} images at {args.image_size} px, batch {args.batch_size}, "
        f"{args.epochs} epochs, device {device}, {torch.get_num_threads()} threads"
    )

    # 1. Through the frozen backbone: the extractor stays in eval mode inside the Sequential.
    with torch.inference_mode():
        dim = extractor(
            images[0][0].unsqueeze(0).contiguous(memory_format=torch.channels_last)
        ).shape[1]
    torch.manual_seed(0)
    head = nn.Linear(dim, 2)
    # Shuffled as pdl.data.tensor_loader shuffles the features below: the same generator seed
    # gives the same batches in the same order. Workers are not persistent, so that the loader
    # draws its worker seed from the generator every epoch, as tensor_loader does.
    workers = pdl.data.default_num_workers()
    loader = torch.utils.data.DataLoader(
        images, batch_size=args.batch_size, shuffle=True, num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    slow = train_head(nn.Sequential(extractor, head), head, loader, args, device)

    # 2. Cached: extract once, then epochs over the feature vectors.
    # This process has not cached anything yet and no cache_dir is given: the backbone runs.
    started = time.perf_counter()
    cached = cached_features(model, images, batch_size=args.batch_size, device=device)
    extract_seconds = time.perf_counter() - started
    torch.manual_seed(0)
    cached_head = nn.Linear(dim, 2)  # the same initial weights as `head`
    feature_loader = pdl.data.tensor_loader(
        cached.features, cached.labels, batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    fast = train_head(cached_head, cached_head, feature_loader, args, device)

    slow_epoch, fast_epoch = statistics.median(slow["seconds"]), statistics.median(fast["seconds"])
    slow_total, fast_total = sum(slow["seconds"]), extract_seconds + sum(fast["seconds"])
    print(
        "through the frozen backbone, seconds per epoch: "
        + ", ".join(f"{s:.3f}" for s in slow["seconds"])
    )
    print(
        "cached features, seconds per epoch:             "
        + ", ".join(f"{s:.4f}" for s in fast["seconds"])
    )
    print(
        f"feature extraction, once: {extract_seconds:.2f} s ({len(images) / extract_seconds:.1f} images/s)"
    )
    print(
        f"speedup per epoch (median): {slow_epoch / fast_epoch:,.0f}x  ({slow_epoch:.3f} s vs {fast_epoch:.4f} s)"
    )
    print(
        f"whole run of {args.epochs} epochs, extraction included: {slow_total:.1f} s vs {fast_total:.1f} s, "
        f"{slow_total / fast_total:.2f}x; caching pays off from "
        f"{extract_seconds / max(slow_epoch - fast_epoch, 1e-9):.2f} epochs on"
    )
    difference = (cached_head.weight.detach().cpu() - head.weight.detach().cpu()).abs().max().item()
    print(f"same head both ways: max |difference| of the trained weights {difference:.2e}")
    if difference > 1e-3:
        raise SystemExit(
            "the two ways trained different heads: the comparison is not like for like"
        )


def train_head(model: nn.Module, head: nn.Linear, loader, args, device) -> pdl.History:
    """The same pdl.fit call for both ways; only ``head`` is given to the optimizer."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-4)
    return pdl.fit(
        model,
        loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        epochs=args.epochs,
        device=device,
        progress=False,
    )


if __name__ == "__main__":
    main()
