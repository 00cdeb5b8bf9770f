"""How much faster can the trained Fashion-MNIST CNN answer? Every inference path, as ratios in one run.

The model is lecture 05's CNN (``pdl.models.ExamplesCNN``, 1.2 M parameters), trained here
with ``pdl.fit``. Each path is timed at batch 1 (latency) and at a large batch (throughput)
with ``torch.utils.benchmark.Timer`` (warm-up, blocks of calls, the median), in several
interleaved rounds so that a change in the machine's load hits every path alike; the
median over the rounds is reported, relative to eager float32 in eval mode under no_grad:

- eager: train mode with autograd; ``eval()`` + ``no_grad`` (the reference); ``inference_mode``;
  ``channels_last``; ``torch.compile`` (its first calls, the compilation, are reported apart);
- batch-norm folding, on the same CNN with batch norm after each conv (``pdl.batchnorm``);
- ONNX Runtime: float32, and dynamic int8 quantization (``onnxruntime.quantization``) of all
  layers or only of the linear ones, with the accuracy of each on the 10,000 test images.

Targets (lecture 08): the best path has >= 3x the throughput of eager float32 at the large
batch, and int8 costs <= 1 point of test accuracy. Both are checked and printed, as is every
path that is slower than the reference. ONNX Runtime and PyTorch get the same number of threads.

    python benchmarks/inference.py [--epochs 1] [--train-limit N] [--batch 256] [--rounds 3] [--threads T]
                                   [--no-compile]
"""

import argparse
import copy
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

import pdl
from pdl.batchnorm import fold_batchnorms
from pdl.models import ExamplesCNN

# torch.utils.benchmark loads torch's C++-extension helper, whose "No CUDA runtime is found"
# note on import is irrelevant here: quiet that one logger first.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

REFERENCE = "eager, eval() + no_grad"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--train-limit", type=int, default=None, help="train on the first N images (default: all)"
    )
    parser.add_argument("--batch", type=int, default=256, help="the large batch, for throughput")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument(
        "--min-run-time", type=float, default=0.5, help="seconds per path, batch and round"
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="leave out torch.compile (slow to compile)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="threads for PyTorch and ONNX Runtime alike (default: %(default)s)",
    )
    args = parser.parse_args()
    threads = args.threads
    torch.set_num_threads(threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0  # not on Windows
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {threads} threads, "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    )
    if load > (os.cpu_count() or 1):
        print(
            "the machine is busy: other programs share the cores, so the timings are pessimistic and noisy "
            "(above all at batch 1 with several threads)"
        )

    x_train, y_train = pdl.data.fashion_mnist_tensors("train", limit=args.train_limit)
    x_test, y_test = pdl.data.fashion_mnist_tensors("test")
    pdl.seed_everything(0)
    model = train(ExamplesCNN(), x_train, y_train, args.epochs)
    bn_model = train(cnn_with_batchnorm(), x_train, y_train, args.epochs)
    folded = fold_batchnorms(bn_model)
    with torch.inference_mode():
        fold_difference = (folded(x_test[:512]) - bn_model.eval()(x_test[:512])).abs().max().item()
    print(f"batch-norm folding changes the outputs by at most {fold_difference:.1e}")

    folder = Path(tempfile.mkdtemp(prefix="pdl-inference-"))
    files = export_and_quantize(model, folder)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # the same cores as PyTorch
    sessions = {
        name: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in files.items()
    }

    accuracies = {"PyTorch float32": accuracy(lambda x: predict_torch(model, x), x_test, y_test)}
    for name, session in sessions.items():
        accuracies[name] = accuracy(
            lambda x, s=session: s.run(None, {"images": x.numpy()})[0], x_test, y_test
        )
    with torch.inference_mode():
        onnx_difference = np.abs(
            sessions["ONNX Runtime float32"].run(None, {"images": x_test[:512].numpy()})[0]
            - model.eval()(x_test[:512]).numpy()
        ).max()
    print(
        f"ONNX Runtime vs PyTorch: outputs differ by at most {onnx_difference:.1e} (tolerance 1e-4)"
    )

    paths = inference_paths(model, bn_model, folded, sessions, compile_model=not args.no_compile)
    batches = {"latency": x_test[:1], "throughput": x_test[: args.batch]}
    compile_seconds = warm_up(paths, batches)
    times = {name: {kind: [] for kind in batches} for name in paths}
    for _ in range(args.rounds):
        for name, make in paths.items():
            for kind, x in batches.items():
                times[name][kind].append(seconds_per_call(make(x), args.min_run_time, threads))
    median = {
        name: {kind: statistics.median(values) for kind, values in by_kind.items()}
        for name, by_kind in times.items()
    }
    report(median, args.batch, accuracies, compile_seconds, files)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    started = time.perf_counter()
    loader = pdl.data.tensor_loader(
        x, y, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    pdl.fit(
        model,
        loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        epochs=epochs,
        device="cpu",
        progress=False,
    )
    print(
        f"trained {type(model).__name__ if not isinstance(model, nn.Sequential) else 'CNN with batch norm'} "
        f"for {epochs} epoch(s) on {len(x):,} images in {time.perf_counter() - started:.0f} s"
    )
    return model.eval()


def cnn_with_batchnorm(channels: tuple[int, int] = (32, 64), hidden: int = 128) -> nn.Sequential:
    """ExamplesCNN with a batch norm after each convolution (the convs then need no bias)."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(1, c1, 3, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
        ),
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 12 * 12, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, 10),
        ),
    )


def export_and_quantize(model: nn.Module, folder: Path) -> dict[str, Path]:
    float_path = folder / "cnn.onnx"
    torch.onnx.export(
        model.eval(),
        (torch.zeros(2, 1, 28, 28),),
        float_path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    prepared = folder / "cnn_prepared.onnx"
    quant_pre_process(
        str(float_path), str(prepared)
    )  # shape inference and graph clean-up, as ORT recommends
    files = {"ONNX Runtime float32": float_path}
    for name, op_types in [
        ("ONNX Runtime int8, all layers", None),
        ("ONNX Runtime int8, linear layers", ["MatMul", "Gemm"]),
    ]:
        files[name] = folder / f"cnn_int8_{'all' if op_types is None else 'linear'}.onnx"
        quantize_dynamic(
            str(prepared),
            str(files[name]),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=op_types,
        )
    return files


def predict_torch(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).numpy()


def accuracy(run: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, y: torch.Tensor) -> float:
    predictions = np.concatenate([run(batch).argmax(1) for batch in x.split(1000)])
    return float((predictions == y.numpy()).mean())


def eager(
    net: nn.Module, context: Callable = torch.no_grad, memory_format=torch.contiguous_format
) -> Callable:
    """make(x) for an eager PyTorch path: a zero-argument call running ``net`` on ``x``."""

    def make(x):
        x = x.contiguous(memory_format=memory_format)

        def run():
            with context():
                net(x)

        return run

    return make


def onnx_runtime(session: onnxruntime.InferenceSession) -> Callable:
    """make(x) for an ONNX Runtime session: a zero-argument call running it on ``x``."""
    return lambda x: lambda: session.run(None, {"images": x.numpy()})


def inference_paths(
    model, bn_model, folded, sessions, *, compile_model: bool
) -> dict[str, Callable]:
    """name -> make(x): a function that returns a zero-argument call running the path on ``x``."""
    training = copy.deepcopy(model).train()
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    paths = {
        "eager, train mode with autograd": eager(training, context=torch.enable_grad),
        REFERENCE: eager(model),
        "eager, inference_mode": eager(model, torch.inference_mode),
        "eager, inference_mode, channels_last": eager(
            last, torch.inference_mode, torch.channels_last
        ),
    }
    if compile_model:
        compiled = torch.compile(last)
        paths["torch.compile, channels_last"] = eager(
            compiled, torch.inference_mode, torch.channels_last
        )
    paths["CNN + batch norm, eager"] = eager(bn_model, torch.inference_mode)
    paths["CNN + batch norm, folded"] = eager(folded, torch.inference_mode)
    for name, session in sessions.items():
        paths[name] = onnx_runtime(session)
    return paths


def warm_up(paths: dict[str, Callable], batches: dict[str, torch.Tensor]) -> dict[str, float]:
    """Call every path a few times first; returns how long torch.compile's first call took per batch."""
    compile_seconds = {}
    for name, make in paths.items():
        for kind, x in batches.items():
            run = make(x)
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # inductor's notes about the missing GPU
                run()
            if "compile" in name:
                compile_seconds[kind] = time.perf_counter() - started
            run()
            run()
    return compile_seconds


def seconds_per_call(run: Callable[[], object], min_run_time: float, threads: int) -> float:
    timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def report(median, batch, accuracies, compile_seconds, files) -> None:
    reference = median[REFERENCE]
    print(
        f"\n{'path':38} {'batch 1: ms':>11} {'speed-up':>9} {f'batch {batch}: img/s':>18} {'speed-up':>9}"
    )
    for name, m in median.items():
        print(
            f"{name:38} {1e3 * m['latency']:11.3f} {reference['latency'] / m['latency']:8.2f}x "
            f"{batch / m['throughput']:18,.0f} {reference['throughput'] / m['throughput']:8.2f}x"
        )
    print(
        f"(speed-up: relative to '{REFERENCE}', eager float32; > 1 is faster; the median of the rounds; "
        f"load average {os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0:.1f} after timing)"
    )
    if compile_seconds:
        print(
            "torch.compile's first call (compilation): "
            + ", ".join(
                f"{seconds:.1f} s at batch {1 if kind == 'latency' else batch}"
                for kind, seconds in compile_seconds.items()
            )
        )
    per_image = reference["latency"] / (reference["throughput"] / batch)  # > 1: batching pays
    if per_image >= 1.1:
        verdict = f"an image takes {per_image:.1f}x less time in a batch of {batch} than alone"
    elif per_image <= 1 / 1.1:
        verdict = f"batching did not pay here: an image took {1 / per_image:.1f}x as long in a batch of {batch} as alone"
    else:
        verdict = f"an image takes about as long in a batch of {batch} as alone ({per_image:.2f}x)"
    print(
        f"batch size (eager float32): {verdict}; and every image in a batch waits for the whole "
        "batch (latency)"
    )

    print(
        "\ntest accuracy (10,000 images): "
        + ", ".join(f"{k} {v:.4f}" for k, v in accuracies.items())
    )
    base = accuracies["ONNX Runtime float32"]
    for name, path in files.items():
        if "int8" in name:
            print(
                f"{name}: accuracy change {100 * (accuracies[name] - base):+.2f} points, file "
                f"{path.stat().st_size / 1e6:.2f} MB vs {files['ONNX Runtime float32'].stat().st_size / 1e6:.2f} MB"
            )

    bn, folded = median["CNN + batch norm, eager"], median["CNN + batch norm, folded"]
    print(
        f"batch-norm folding: {bn['latency'] / folded['latency']:.2f}x at batch 1, "
        f"{bn['throughput'] / folded['throughput']:.2f}x at batch {batch} (folded vs unfolded CNN with batch norm)"
    )
    # The paths of the same CNN (the batch-norm CNN is another architecture; train mode is no inference).
    optimized = {
        name: m
        for name, m in median.items()
        if not name.startswith(("eager, train", "CNN + batch norm")) and name != REFERENCE
    }
    best = min(optimized, key=lambda name: optimized[name]["throughput"])
    best_ratio = reference["throughput"] / optimized[best]["throughput"]
    slower = [
        f"{name} ({reference[kind] / m[kind]:.2f}x at batch {1 if kind == 'latency' else batch})"
        for name, m in median.items()
        for kind in ("latency", "throughput")
        if m[kind] > reference[kind]
    ]
    print("\nslower than the reference: " + ("; ".join(slower) if slower else "none"))
    print(
        f"target: the best path >= 3x the throughput of eager float32 at batch {batch}: {best}, "
        f"{best_ratio:.2f}x: {'met' if best_ratio >= 3 else 'NOT met'}"
    )
    cost = max(0.0, max((base - accuracies[name]) * 100 for name in files if "int8" in name))
    print(
        f"target: int8 costs <= 1 point of test accuracy: it costs at most {cost:.2f} points: "
        f"{'met' if cost <= 1 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
