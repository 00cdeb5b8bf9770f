"""How much does pdl.fit cost over a minimal hand-written loop?

Same model, data, seed and epochs through ``pdl.fit`` (progress bar off) and through the
plainest loop that does the same work (train, then the validation loss, every epoch).
The two are run alternately, several times, in one process; the script prints each
time, the median ratio fit/hand, and checks both reach the same final validation loss.

    python benchmarks/fit_overhead.py [--repeats 5] [--epochs 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import pdl
from pdl.data import fashion_mnist_tensors, tensor_loader


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def hand_written(train_loader, val_loader, epochs: int) -> tuple[float, float]:
    """The loop of lecture 03, with nothing extra: returns (seconds, final validation loss)."""
    pdl.seed_everything(0)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        running = 0.0
        for inputs, targets in train_loader:
            loss = loss_fn(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item() * len(targets)  # fit tracks the epoch loss too
        model.eval()
        val_loss, n = 0.0, 0
        with torch.inference_mode():
            for inputs, targets in val_loader:
                val_loss += loss_fn(model(inputs), targets).item() * len(targets)
                n += len(targets)
    return time.perf_counter() - started, val_loss / n


def with_fit(train_loader, val_loader, epochs: int) -> tuple[float, float]:
    pdl.seed_everything(0)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    history = pdl.fit(
        model,
        train_loader,
        val_loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        epochs=epochs,
        device="cpu",
        progress=False,
    )
    return time.perf_counter() - started, history["val_loss"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    x_train, y_train = fashion_mnist_tensors("train", flatten=True)
    x_val, y_val = fashion_mnist_tensors("test", flatten=True)
    train_loader = tensor_loader(x_train, y_train, batch_size=64, shuffle=True)
    val_loader = tensor_loader(x_val, y_val, batch_size=1000)
    print(
        f"Fashion-MNIST MLP 784-256-10, Adam, batch 64, {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats (alternating)"
    )

    hand_written(train_loader, val_loader, 1)  # warm-up: first-touch allocations, lazy init
    fit_times, hand_times, ratios = [], [], []
    for repeat in range(args.repeats):
        hand_seconds, hand_loss = hand_written(train_loader, val_loader, args.epochs)
        fit_seconds, fit_loss = with_fit(train_loader, val_loader, args.epochs)
        hand_times.append(hand_seconds)
        fit_times.append(fit_seconds)
        ratios.append(fit_seconds / hand_seconds)
        print(
            f"repeat {repeat + 1}: hand {hand_seconds:.2f}s  fit {fit_seconds:.2f}s  "
            f"ratio {ratios[-1]:.3f}  val loss hand {hand_loss:.6f} fit {fit_loss:.6f}"
        )
        if abs(hand_loss - fit_loss) > 1e-5:
            raise SystemExit(f"the two loops disagree: val loss {hand_loss} vs {fit_loss}")
    # The median of the paired ratios resists a slow outlier on either side; the ratio of the
    # best times compares each loop at its least disturbed.
    print(
        f"median ratio fit/hand {statistics.median(ratios):.3f}, best times hand {min(hand_times):.2f}s "
        f"fit {min(fit_times):.2f}s (ratio {min(fit_times) / min(hand_times):.3f}); goal <= 1.03; "
        "same final loss: yes"
    )


if __name__ == "__main__":
    main()
