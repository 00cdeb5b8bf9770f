"""Samples per second of ``pdl.fit`` on 1 and 2 processes (DistributedDataParallel, gloo, CPU).

Three runs of the same training (Fashion-MNIST subset, lecture 03's MLP, SGD with momentum,
the same data order), each in its own process tree:

1. one process with torch's default thread count, batch 2b: what a student runs;
2. one process with one thread, batch 2b: the per-process baseline;
3. ``torchrun --nproc-per-node 2``: two processes with one thread each (torchrun's default
   OMP_NUM_THREADS=1), batch b per process, so every step again sees 2b samples.

It prints the training samples per second of each (epochs after the first, which warms up),
the ratios, a sentence on what they mean on this machine, and the equality check: the weights
of run 3 against run 2 (same samples in every step; DDP averages the two ranks' gradients).

    python benchmarks/ddp_scaling.py [--epochs 4] [--train-size 12000] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

import pdl
from pdl.data import fashion_mnist_tensors, tensor_loader

SEED = 0


def worker(args: argparse.Namespace) -> None:
    """One run: under torchrun when WORLD_SIZE is set, else a single process."""
    pdl.seed_everything(SEED)
    x, y = fashion_mnist_tensors("train", flatten=True, limit=args.train_size)
    x_val, y_val = fashion_mnist_tensors("test", flatten=True, limit=2000)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:
        # fit splits this loader with a DistributedSampler seeded with the generator's seed.
        train_loader = tensor_loader(
            x,
            y,
            batch_size=args.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(SEED),
        )
    else:
        # The order the 2 ranks see together: DistributedSampler's permutation, seed + epoch.
        # Batches are sliced from the tensors in one go, as tensor_loader (and its split) does.
        dataset = tensor_loader(x, y).dataset
        order = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=SEED)
        train_loader = DataLoader(
            dataset,
            sampler=BatchSampler(order, 2 * args.batch_size, drop_last=False),
            batch_size=None,
        )
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    history = pdl.fit(
        model, train_loader, tensor_loader(x_val, y_val, batch_size=1000),
        loss_fn=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        epochs=args.epochs, device="cpu", progress=False,
    )  # fmt: skip
    if pdl.distributed.is_main_process():
        timed = history["seconds"][1:] or history["seconds"]  # the first epoch warms up
        result = {
            "processes": processes,
            "threads_per_process": torch.get_num_threads(),
            "samples_per_second": len(x) * len(timed) / sum(timed),
            "val_loss": history["val_loss"][-1],
        }
        torch.save(model.state_dict(), args.out / "weights.pt")
        (args.out / "result.json").write_text(json.dumps(result))


def launch(
    args: argparse.Namespace, processes: int, threads: int | None
) -> tuple[dict, torch.Tensor]:
    """Run ``worker`` in a fresh process tree; return its result and final weights."""
    out = Path(tempfile.mkdtemp(prefix="ddp_scaling_"))
    env = {**os.environ, "PDL_DEVICE": "cpu"}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    options = ["--worker", "--out", str(out), "--epochs", str(args.epochs),
               "--train-size", str(args.train_size), "--batch-size", str(args.batch_size)]  # fmt: skip
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(processes),
            __file__,
            *options,
        ]
    else:
        command = [sys.executable, __file__, *options]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result = json.loads((out / "result.json").read_text())
    weights = torch.load(out / "weights.pt", weights_only=True)
    return result, torch.cat([w.flatten() for w in weights.values()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument(
        "--batch-size", type=int, default=64, help="per process in the 2-process run"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    b = args.batch_size
    print(f"Fashion-MNIST MLP 784-256-10, SGD, {args.train_size} images, {args.epochs} epochs "
          f"(samples/s over epochs 2..{args.epochs}); {cores} CPU cores, load average {load:.1f} at the start")  # fmt: skip
    runs = {
        "1 process, default threads": launch(args, 1, None),
        "1 process, 1 thread": launch(args, 1, 1),
        "2 processes, 1 thread each": launch(args, 2, 1),
    }
    batches = {1: f"batch {2 * b}", 2: f"batch {b} x 2"}
    for name, (result, _) in runs.items():
        print(f"  {name:<28} ({result['threads_per_process']} thread(s), {batches[result['processes']]:<12}) "
              f"{result['samples_per_second']:8.0f} samples/s   val loss {result['val_loss']:.4f}")  # fmt: skip

    (one_default, _), (one_thread, w_one), (two, w_two) = runs.values()
    vs_thread = two["samples_per_second"] / one_thread["samples_per_second"]
    vs_default = two["samples_per_second"] / one_default["samples_per_second"]
    threads_gain = one_default["samples_per_second"] / one_thread["samples_per_second"]
    n = one_default["threads_per_process"]
    print(f"2 processes / 1 process with 1 thread:         {vs_thread:.2f}x (ideal: 2x)")
    print(f"2 processes / 1 process with {n} threads:        {vs_default:.2f}x")

    def verdict(ratio: float) -> str:
        if ratio > 1.1:
            return f"{ratio:.2f}x faster than"
        if ratio < 1 / 1.1:
            return f"{1 / ratio:.2f}x slower than"
        return "about as fast as"

    sentences = [
        f"With one thread per process, 2 processes were {verdict(vs_thread)} 1; the ideal is 2x, reached only "
        "if each process has a core to itself and the gradient all-reduce after every step costs nothing.",
        f"Compared with 1 process using its default {n} threads, they were {verdict(vs_default)} that process.",
    ]
    if threads_gain < 1 / 1.1:
        sentences.append(
            f"Most of that gap is about threads, not processes: in one process, 1 thread was {1 / threads_gain:.2f}x "
            f"faster than {n} here (on a busy machine threads that wait for each other lose more than they gain)."
        )
    elif threads_gain > 1.1:
        sentences.append(
            f"In one process {n} threads were {threads_gain:.2f}x faster than 1: the threads already use the "
            "cores that a second process would need."
        )
    sentences.append(
        f"This machine has {cores} cores shared with other programs (load average {load:.1f} at the start), for "
        "which the processes compete: these ratios say what DDP costs and gains on this CPU, not what it "
        "gives with one GPU (or one machine) per process."
    )
    print(" ".join(sentences))
    difference = (w_two - w_one).abs().max().item()
    same = difference <= 1e-5
    print(
        f"Equality check: weights after 2 processes x batch {b} vs 1 process x batch {2 * b} on the same "
        f"order: max |difference| = {difference:.2e} ({'within' if same else 'NOT within'} 1e-5)"
    )
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
