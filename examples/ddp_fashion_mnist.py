"""Fashion-MNIST on several processes: ``pdl.fit`` with DistributedDataParallel under torchrun.

    torchrun --nproc-per-node 2 examples/ddp_fashion_mnist.py --epochs 2 --train-size 12000
    python examples/ddp_fashion_mnist.py --epochs 2 --train-size 12000    # the same, one process

torchrun starts the script once per process (a *rank*) and tells each one its rank and the
number of processes through environment variables. Every rank runs all of this file:
it builds the same model and the same loaders, and ``pdl.fit`` does the distributed part.
It joins the process group, wraps the model in ``DistributedDataParallel`` (which averages the
gradients in every ``backward()``), and gives each rank its share of the data. With N
processes and ``--batch-size 64`` one optimizer step therefore sees 64 * N images. Only
rank 0 prints and writes files; ``evaluate`` and ``predict`` must run on every rank.

On a CPU the processes share its cores (torchrun gives each one thread), so expect no speed-up
on a laptop: ``benchmarks/ddp_scaling.py`` measures it. On a machine with N GPUs use
``--nproc-per-node N``: each rank takes the GPU ``LOCAL_RANK`` (that path is unverified on the
course machines, which have no GPU).

Rank 0 prints four lines: the set-up (processes, backend, batches), the final validation
accuracy and loss, the accuracy recomputed from ``predict``, and the seconds. ``--result-json
PATH`` writes the same numbers for a notebook to show: processes, backend, device, epochs,
train_size, batch_size_per_process, batch_size_per_step, val_size, val_accuracy, val_loss,
predict_accuracy, seconds, samples_per_second.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import pdl
from pdl.data import fashion_mnist_tensors, tensor_loader
from pdl.metrics import classification_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--train-size", type=int, default=12000, help="training images (60000: all)"
    )
    parser.add_argument(
        "--val-size", type=int, default=10000, help="test images to validate on (10000: all)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="per process: one step sees this x processes"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="cpu (gloo), or cuda (nccl, one GPU per process)"
    )
    parser.add_argument(
        "--checkpoint-dir", default=None, help="write last.pt and best.pt here (rank 0)"
    )
    parser.add_argument(
        "--result-json", default=None, help="write the final numbers here as JSON (rank 0)"
    )
    args = parser.parse_args()

    pdl.seed_everything(args.seed)  # the same seed on every rank: the same model, the same shuffles
    x_train, y_train = fashion_mnist_tensors("train", flatten=True, limit=args.train_size)
    x_val, y_val = fashion_mnist_tensors("test", flatten=True, limit=args.val_size)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))  # lecture 03's MLP

    started = time.perf_counter()
    history = pdl.fit(
        model,
        tensor_loader(x_train, y_train, batch_size=args.batch_size, shuffle=True),
        tensor_loader(x_val, y_val, batch_size=1000),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=args.lr),
        epochs=args.epochs,
        device=args.device,
        metrics=classification_metrics(10),
        checkpoint_dir=args.checkpoint_dir,
    )
    seconds = time.perf_counter() - started

    # After fit `model` holds the trained weights on every rank; predict splits the test images
    # between the ranks and gives every rank all the outputs back, in order.
    outputs, targets = pdl.predict(model, tensor_loader(x_val, y_val, batch_size=1000))
    accuracy = (outputs.argmax(1) == targets).float().mean().item()

    processes = pdl.distributed.get_world_size()
    backend = torch.distributed.get_backend() if pdl.distributed.is_distributed() else None
    result = {
        "processes": processes,
        "backend": backend,
        "device": args.device,
        "epochs": len(history),
        "train_size": len(x_train),
        "batch_size_per_process": args.batch_size,
        "batch_size_per_step": args.batch_size * processes,
        "val_size": len(x_val),
        "val_accuracy": history["val_accuracy"][-1],
        "val_loss": history["val_loss"][-1],
        "predict_accuracy": accuracy,
        "seconds": seconds,
        # per second of the epochs (training and validation), without fit's set-up
        "samples_per_second": len(x_train) * len(history) / sum(history["seconds"]),
    }
    if pdl.distributed.is_main_process():
        print(
            f"{processes} process{'es' if processes > 1 else ''} ({backend + ', ' if backend else ''}{args.device}), batch "
            f"{args.batch_size} per process = {result['batch_size_per_step']} per step, "
            f"{len(x_train)} training images, {len(history)} epochs"
        )
        print(
            f"validation on {len(x_val)} test images: accuracy {result['val_accuracy']:.4f}, loss {result['val_loss']:.4f}"
        )
        print(f"accuracy recomputed from predict(): {accuracy:.4f}")
        print(
            f"fit took {seconds:.1f} s; its epochs (validation included) went through "
            f"{result['samples_per_second']:.0f} training images per second"
        )
        if args.result_json:
            with open(args.result_json, "w") as f:
                json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
