"""Self-checks for lecture 08 (from model to application): export, timing, quantization.

- ``check_export_onnx(fn)``: ``fn(model, example, path)`` exports ``model`` to ONNX at ``path``
  and returns the largest absolute difference between ONNX Runtime's and PyTorch's outputs.
- ``check_measure_latency(fn)``: ``fn(run, warmup, repeats)`` returns the median time of one
  call of ``run`` in seconds, after ``warmup`` untimed calls.
- ``check_quantize_int8(fn)``: ``fn(float_path, int8_path, images, labels)`` quantizes the ONNX
  model to int8 and returns ``(float_accuracy, int8_accuracy)``.

ONNX and ONNX Runtime (the ``app`` extra) are imported inside the checks, so ``import pdl``
works without them.
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pdl.checks.core import as_number, call_safely, exercise, report, unpack

__all__ = ["check_export_onnx", "check_measure_latency", "check_quantize_int8"]

# What float32 allows between two runtimes that order their sums differently.
ONNX_TOLERANCE = 1e-4


def _number(value: Any) -> float | None:
    """A float from a Python number, a one-element tensor or a NumPy scalar/array; None otherwise."""
    if (
        isinstance(value, (np.generic, np.ndarray))
        and np.size(value) == 1
        and np.issubdtype(np.asarray(value).dtype, np.number)
    ):
        return float(np.asarray(value).reshape(()))
    return as_number(value)


def _session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# --------------------------------------------------------------------------------------
# Export to ONNX and verify against PyTorch
# --------------------------------------------------------------------------------------


@exercise
def check_export_onnx(fn: Callable, *, seed: int = 0) -> bool:
    """Check ``fn(model, example, path) -> float``: export to ONNX, verify with ONNX Runtime.

    ``model`` is a small CNN with dropout, handed over in train mode (as a training loop
    leaves it); ``example`` is a batch of 4 images. The file at ``path`` must be valid ONNX,
    accept other batch sizes, compute what the model computes in eval mode, and the returned
    number must be the largest absolute difference on ``example``.

    Example:
        >>> def export_and_verify(model, example, path):
        ...     model.eval()
        ...     torch.onnx.export(model, (example,), path, dynamic_shapes=({0: torch.export.Dim("batch")},),
        ...                       verbose=False, dynamo=True)
        ...     import onnxruntime
        ...     session = onnxruntime.InferenceSession(path)
        ...     got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
        ...     with torch.no_grad():
        ...         return float(abs(got - model(example).numpy()).max())
        >>> check_export_onnx(export_and_verify)  # doctest: +SKIP
        ✅ export to ONNX and verify: correct
        True
    """
    import onnx

    from pdl.models import ExamplesCNN

    title = "export to ONNX and verify"
    generator = torch.Generator().manual_seed(seed)
    with (
        torch.random.fork_rng()
    ):  # its random initial weights: leave the notebook's generator alone
        torch.manual_seed(seed)
        model = ExamplesCNN(channels=(4, 8), hidden=16)
    model.train()  # how a training loop leaves it: dropout active
    example = torch.randn(4, 1, 28, 28, generator=generator)
    other = torch.randn(7, 1, 28, 28, generator=generator)
    with tempfile.TemporaryDirectory(prefix="pdl-check-") as folder:
        path = Path(folder) / "model.onnx"
        with torch.random.fork_rng():  # a train-mode forward pass would draw dropout masks
            result, error = call_safely(fn, model, example, str(path))
        if error:
            return report(title, error)
        if not path.is_file():
            return report(
                title, f"nothing was written to path ({path.name}): pass it to torch.onnx.export"
            )
        try:
            onnx.checker.check_model(str(path))
            session = _session(path)
        except Exception as problem:  # noqa: BLE001 - any reason the file is unusable
            return report(
                title,
                f"the file at path is not a valid ONNX model ({type(problem).__name__}: {problem})",
            )
        model.eval()
        with torch.no_grad():
            expected, expected_other = model(example).numpy(), model(other).numpy()
        try:
            got = _run(session, example.numpy())
        except Exception as problem:  # noqa: BLE001
            return report(
                title, f"ONNX Runtime cannot run the exported model on example ({problem})"
            )
        try:
            got_other = _run(session, other.numpy())
        except Exception as problem:  # noqa: BLE001
            if "dimension" in str(problem).lower():
                return report(
                    title,
                    "the exported model only accepts the example's batch size 4, not 7: make the "
                    "batch dimension dynamic, dynamic_shapes=({0: torch.export.Dim('batch')},)",
                )
            return report(
                title, f"ONNX Runtime cannot run the exported model on a batch of 7 ({problem})"
            )
        largest = float(np.abs(got_other - expected_other).max())
        if largest > ONNX_TOLERANCE:
            return report(
                title,
                f"the exported model's outputs differ from the model's (eval mode) by {largest:.3g}: "
                "export the model you were given, in eval mode",
            )
        return report(title, _reported_difference_problem(result, got, expected))


def _reported_difference_problem(result: Any, got: np.ndarray, expected: np.ndarray) -> str | None:
    difference = np.abs(got - expected)
    actual = float(difference.max())
    reported = _number(result)
    if reported is None:
        return f"return the largest absolute difference as one number (a float), got {type(result).__name__}"
    if abs(reported - actual) <= 1e-9 + 0.05 * actual:  # the same arrays, maybe summed in float64
        return None
    if reported == 0.0:
        return (
            "you reported 0, but the outputs differ by a little: compare ONNX Runtime's output with PyTorch's, "
            "not one of them with itself"
        )
    if reported > 1e-3:
        return (
            f"you reported {reported:.3g}, but in eval mode the difference is {actual:.2g}: your PyTorch "
            "outputs came from train mode (dropout active); call model.eval() before exporting and comparing"
        )
    if abs(reported - float(difference.mean())) <= 0.05 * float(difference.mean()):
        return "you reported the mean absolute difference; report the largest one, .max(): that is what a tolerance bounds"
    return f"you reported {reported:.3g}, but the largest absolute difference on example is {actual:.3g}"


# --------------------------------------------------------------------------------------
# Measuring a latency: warm-up, repeats, median
# --------------------------------------------------------------------------------------


class _Workload:
    """A function whose calls take planned times: slow first calls (like a cold cache or a
    compilation), then steady calls with one slow outlier. It records how long each call took."""

    def __init__(self, warmup: int, timed_ms: list[float], warmup_ms: float = 80.0) -> None:
        self.plan = [warmup_ms] * warmup + timed_ms
        self.durations: list[float] = []

    def __call__(self) -> None:
        start = time.perf_counter()
        planned = self.plan[min(len(self.durations), len(self.plan) - 1)]
        time.sleep(planned / 1e3)
        self.durations.append(time.perf_counter() - start)


@exercise
def check_measure_latency(fn: Callable) -> bool:
    """Check ``fn(run, warmup, repeats) -> seconds``: the median of ``repeats`` timed calls after ``warmup``.

    ``run`` here is a function whose first calls are slow (a cold start), and one of whose
    timed calls is an outlier (another program took the CPU). The answer must be the median
    time per call in seconds, within what the clock and the machine allow.

    Example:
        >>> import statistics, timeit
        >>> def measure_latency(run, warmup, repeats):
        ...     for _ in range(warmup):
        ...         run()
        ...     return statistics.median(timeit.repeat(run, repeat=repeats, number=1))
        >>> check_measure_latency(measure_latency)
        ✅ measure a latency: correct
        True
    """
    title = "measure a latency"
    warmup, timed_ms = 5, [10.0, 30.0, 10.0, 20.0, 150.0, 20.0, 20.0]
    repeats = len(timed_ms)
    workload = _Workload(warmup, timed_ms)
    result, error = call_safely(fn, workload, warmup, repeats)
    if error:
        return report(title, error)
    calls = len(workload.durations)
    if calls != warmup + repeats:
        return report(
            title,
            f"run was called {calls} times; expected warmup + repeats = {warmup} + {repeats}: "
            "first the untimed warm-up calls, then one timed call per repeat",
        )
    seconds = _number(result)
    if seconds is None:
        return report(
            title, f"return the median time in seconds as one number, got {type(result).__name__}"
        )
    timed = workload.durations[warmup:]
    median = statistics.median(timed)

    def near(
        value: float,
    ) -> bool:  # the clock, Python's overhead and a busy machine: ~15 % or 3 ms
        return abs(seconds - value) <= max(0.15 * value, 3e-3)

    if near(median):
        return report(title, None)
    hints = [
        (
            1e3 * median,
            "you returned milliseconds; return seconds (divide by 1000 at printing time, not here)",
        ),
        (
            statistics.mean(timed),
            "you returned the mean: one slow call (the outlier) pulls it up; take the median, "
            "statistics.median(times)",
        ),
        (
            sum(timed),
            "you returned the total time of the timed calls; return the median time of one call",
        ),
        (
            min(timed),
            "you returned the fastest call; the task asks for the median, what a typical call costs",
        ),
        (
            statistics.median(workload.durations[:repeats]),
            "you timed the warm-up calls: call run `warmup` times "
            "without timing, then time the next `repeats` calls",
        ),
        (
            statistics.median(workload.durations),
            "you timed the warm-up calls too: leave them out of the times",
        ),
    ]
    for value, hint in hints:
        if near(value):
            return report(title, hint)
    return report(
        title, f"you returned {seconds:.4g} s; the median of the timed calls is {median:.4g} s"
    )


# --------------------------------------------------------------------------------------
# Dynamic int8 quantization and its accuracy cost
# --------------------------------------------------------------------------------------


def _float_model(
    path: Path,
    generator: np.random.Generator,
    features: int = 32,
    hidden: int = 64,
    classes: int = 10,
) -> None:
    """A small two-layer classifier written directly as an ONNX graph (no export needed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = generator.normal(0, features**-0.5, (features, hidden)).astype(np.float32)
    w2 = generator.normal(0, hidden**-0.5, (hidden, classes)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(a, name)
        for a, name in [
            (w1, "w1"),
            (np.zeros(hidden, np.float32), "b1"),
            (w2, "w2"),
            (np.zeros(classes, np.float32), "b2"),
        ]
    ]
    nodes = [
        helper.make_node("MatMul", ["images", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # what ONNX Runtime 1.18 and later read
    onnx.save(model, str(path))


def _accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    return float((_run(_session(path), images).argmax(1) == labels).mean())


def _has_8bit_weights(path: Path) -> bool:
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path))
    return any(
        init.data_type in (TensorProto.INT8, TensorProto.UINT8) for init in model.graph.initializer
    )


@exercise
def check_quantize_int8(fn: Callable, *, seed: int = 0) -> bool:
    """Check ``fn(float_path, int8_path, images, labels) -> (float_accuracy, int8_accuracy)``.

    The float32 model at ``float_path`` is a small ONNX classifier; ``images`` ``(N, 32)`` and
    ``labels`` ``(N,)`` are tensors. The file at ``int8_path`` must hold 8-bit weights, the
    float file must stay unchanged, and both accuracies (fractions) must be those of the two files.

    Example:
        >>> def quantize_and_evaluate(float_path, int8_path, images, labels):
        ...     from onnxruntime import InferenceSession
        ...     from onnxruntime.quantization import QuantType, quantize_dynamic
        ...     quantize_dynamic(float_path, int8_path, weight_type=QuantType.QInt8)
        ...     accuracies = []
        ...     for path in (float_path, int8_path):
        ...         session = InferenceSession(path)
        ...         logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
        ...         accuracies.append(float((logits.argmax(1) == labels.numpy()).mean()))
        ...     return tuple(accuracies)
        >>> check_quantize_int8(quantize_and_evaluate)
        ✅ quantize to int8 and measure the accuracy: correct
        True
    """
    title = "quantize to int8 and measure the accuracy"
    generator = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="pdl-check-") as folder:
        float_path, int8_path = Path(folder) / "model.onnx", Path(folder) / "model_int8.onnx"
        _float_model(float_path, generator)
        images = generator.normal(size=(2000, 32)).astype(np.float32)
        labels = _run(_session(float_path), images).argmax(1)
        noisy = generator.random(len(labels)) < 0.2  # a fifth mislabelled: accuracy below 1
        labels[noisy] = generator.integers(0, 10, int(noisy.sum()))
        digest = hashlib.sha256(float_path.read_bytes()).hexdigest()

        result, error = call_safely(
            fn, str(float_path), str(int8_path), torch.from_numpy(images), torch.from_numpy(labels)
        )
        if error:
            return report(title, error)
        if hashlib.sha256(float_path.read_bytes()).hexdigest() != digest:
            return report(
                title,
                "the float model at float_path was changed: write the quantized model to int8_path",
            )
        if not int8_path.is_file():
            return report(
                title,
                "nothing was written to int8_path: quantize_dynamic(float_path, int8_path, ...)",
            )
        if not _has_8bit_weights(int8_path):
            return report(
                title,
                "the model at int8_path has no 8-bit weights: it is not quantized; use "
                "quantize_dynamic(float_path, int8_path, weight_type=QuantType.QInt8)",
            )
        values, problem = unpack(result, ("float_accuracy", "int8_accuracy"))
        if problem:
            return report(title, problem)
        reported = [_number(v) for v in values]
        if None in reported:
            return report(
                title, "return two numbers, (float_accuracy, int8_accuracy), e.g. 0.81 for 81 %"
            )
        float_accuracy, int8_accuracy = (
            _accuracy(float_path, images, labels),
            _accuracy(int8_path, images, labels),
        )
        return report(
            title, _accuracy_problem(reported, float_accuracy, int8_accuracy, len(labels))
        )


def _accuracy_problem(
    reported: list[float], float_accuracy: float, int8_accuracy: float, n: int
) -> str | None:
    def same(a: float, b: float) -> bool:
        return abs(a - b) <= 0.5 / n  # half a sample

    got_float, got_int8 = reported
    if same(got_float, float_accuracy) and same(got_int8, int8_accuracy):
        return None
    if max(reported) > 1:
        return "accuracies are fractions between 0 and 1 (0.81, not 81): the change in points is 100 x their difference"
    if (
        float_accuracy != int8_accuracy
        and same(got_float, int8_accuracy)
        and same(got_int8, float_accuracy)
    ):
        return "the two accuracies are swapped: return (float_accuracy, int8_accuracy)"
    if float_accuracy != int8_accuracy and same(got_int8, float_accuracy):
        return (
            "your int8 accuracy is the float model's: evaluate a session of the file at int8_path"
        )
    return (
        f"you returned ({got_float:.4f}, {got_int8:.4f}); on these images the float model's accuracy is "
        f"{float_accuracy:.4f} and the int8 model's {int8_accuracy:.4f}: argmax over the classes (axis 1), "
        "compared with labels"
    )
