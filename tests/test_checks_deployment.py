"""The lecture 08 self-checks: they pass correct code and explain typical mistakes."""

from __future__ import annotations

import shutil
import statistics
import time
import timeit

import numpy as np
import onnxruntime
import pytest
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from pdl.checks.deployment import check_export_onnx, check_measure_latency, check_quantize_int8

BATCH = ({0: torch.export.Dim("batch")},)  # the first input's dimension 0 may vary


def ort_outputs(path, x: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


# --------------------------------------------------------------------------------------
# check_export_onnx: one export of a small CNN takes a few seconds, so the student's
# exports are shared where the mistake is in what they report, not in the file
# --------------------------------------------------------------------------------------


def export_and_verify(model, example, path, *, dynamic=True, eval_mode=True, report="max"):
    """A correct student solution, with switches for the typical mistakes."""
    if eval_mode:
        model.eval()
    torch.onnx.export(
        model,
        (example,),
        path,
        dynamic_shapes=BATCH if dynamic else None,
        external_data=False,
        verbose=False,
    )  # one file: the tests copy it
    got = ort_outputs(path, example)
    with torch.no_grad():
        expected = model(example).numpy()
    difference = np.abs(got - expected)
    return {"max": float(difference.max()), "mean": float(difference.mean()), "array": difference}[
        report
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The file a correct export writes, copied in by the 'reporting' mistakes below (no re-export)."""
    saved = {}

    def keep(model, example, path):
        result = export_and_verify(model, example, path)
        saved["file"] = tmp_path_factory.mktemp("onnx") / "model.onnx"
        shutil.copy(path, saved["file"])
        return result

    assert check_export_onnx(keep, solution=True)
    return saved["file"]


def reuse(exported, report):
    """A student function that writes the correct file but reports ``report(got, expected)``."""

    def fn(model, example, path):
        shutil.copy(exported, path)
        got = ort_outputs(path, example)
        with torch.no_grad():
            expected = model(
                example
            ).numpy()  # model as given: train mode unless report says otherwise
        return report(model, got, expected, example)

    return fn


def test_export_accepts_a_correct_solution(exported, capsys):
    assert (
        check_export_onnx(
            reuse(
                exported,
                lambda m, got, exp, x: float(np.abs(got - m.eval()(x).detach().numpy()).max()),
            )
        )
        is True
    )
    assert capsys.readouterr().out.strip() == "\u2705 export to ONNX and verify: correct"


def test_export_accepts_named_dimensions_and_a_numpy_number(capsys):
    def named(model, example, path):
        model.eval()
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
        with torch.no_grad():
            return np.abs(
                ort_outputs(path, example) - model(example).numpy()
            ).max()  # a NumPy float32

    assert check_export_onnx(named) is True


def test_export_reports_the_stub(failing):
    def stub(model, example, path):
        raise NotImplementedError

    failing(check_export_onnx, stub, "not attempted yet")


def test_export_wants_a_dynamic_batch_dimension(failing):
    failing(
        check_export_onnx,
        lambda m, x, p: export_and_verify(m, x, p, dynamic=False),
        "batch size 4, not 7",
        "dynamic_shapes",
    )


def test_export_recognises_a_reference_computed_in_train_mode(exported, failing):
    # The file is right (exported in eval semantics); the PyTorch outputs it was compared
    # with had dropout active.
    failing(
        check_export_onnx,
        reuse(exported, lambda m, got, exp, x: float(np.abs(got - exp).max())),
        "train mode",
        "model.eval()",
    )


def test_export_recognises_the_mean(exported, failing):
    def mean(m, got, exp, x):
        return float(np.abs(got - m.eval()(x).detach().numpy()).mean())

    failing(check_export_onnx, reuse(exported, mean), "mean absolute difference", ".max()")


def test_export_recognises_a_comparison_with_itself(exported, failing):
    # The two runtimes differ by ~1e-7 on this model (they add in different orders), never by exactly 0.
    failing(
        check_export_onnx,
        reuse(exported, lambda m, got, exp, x: float(np.abs(got - got).max())),
        "with itself",
    )


def test_export_wants_one_number_and_the_file(exported, failing):
    failing(
        check_export_onnx, reuse(exported, lambda m, got, exp, x: np.abs(got - exp)), "one number"
    )
    failing(check_export_onnx, lambda m, x, p: 0.0, "nothing was written to path")

    def other_model(model, example, path):
        shutil.copy(exported, path)  # a file exported from another model (other weights)
        with torch.no_grad():
            model.features[0].weight.add_(1.0)
        return 0.0

    failing(check_export_onnx, other_model, "differ from the model's")


# --------------------------------------------------------------------------------------
# check_measure_latency
# --------------------------------------------------------------------------------------


def measure_latency(run, warmup, repeats):
    """The way the notebook teaches: untimed warm-up, one perf_counter pair per call, median."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_latency_accepts_a_correct_solution(capsys):
    assert check_measure_latency(measure_latency) is True
    assert capsys.readouterr().out.strip() == "\u2705 measure a latency: correct"


def test_latency_accepts_the_standard_library_way():
    def with_timeit(run, warmup, repeats):
        timeit.repeat(run, repeat=warmup, number=1)  # the warm-up, untimed in effect
        return statistics.median(timeit.repeat(run, repeat=repeats, number=1))

    assert check_measure_latency(with_timeit) is True


def test_latency_reports_the_stub(failing):
    def stub(run, warmup, repeats):
        raise NotImplementedError

    failing(check_measure_latency, stub, "not attempted yet")


def test_latency_recognises_the_mean(failing):
    def mean(run, warmup, repeats):
        for _ in range(warmup):
            run()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return (time.perf_counter() - start) / repeats

    failing(check_measure_latency, mean, "the mean", "median")


def test_latency_recognises_a_missing_warmup(failing):
    def no_warmup(run, warmup, repeats):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    failing(check_measure_latency, no_warmup, "called 7 times", "warm-up")

    def timed_warmup(run, warmup, repeats):
        times = []
        for _ in range(warmup + repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    failing(check_measure_latency, timed_warmup, "timed the warm-up calls too")


def test_latency_recognises_milliseconds_and_the_minimum(failing):
    failing(
        check_measure_latency, lambda run, w, r: 1000 * measure_latency(run, w, r), "milliseconds"
    )

    def fastest(run, warmup, repeats):
        for _ in range(warmup):
            run()
        return min(timeit.repeat(run, repeat=repeats, number=1))

    failing(check_measure_latency, fastest, "fastest call")


# --------------------------------------------------------------------------------------
# check_quantize_int8
# --------------------------------------------------------------------------------------


def accuracy(path, images, labels) -> float:
    return float((ort_outputs(path, images).argmax(1) == labels.numpy()).mean())


def quantize_and_evaluate(float_path, int8_path, images, labels):
    """A correct student solution: ONNX Runtime's dynamic quantization, then both accuracies."""
    quantize_dynamic(float_path, int8_path, weight_type=QuantType.QInt8)
    return accuracy(float_path, images, labels), accuracy(int8_path, images, labels)


def test_quantize_accepts_a_correct_solution(capsys):
    assert check_quantize_int8(quantize_and_evaluate) is True
    assert (
        capsys.readouterr().out.strip()
        == "\u2705 quantize to int8 and measure the accuracy: correct"
    )


def test_quantize_reports_the_stub(failing):
    def stub(float_path, int8_path, images, labels):
        raise NotImplementedError

    failing(check_quantize_int8, stub, "not attempted yet")


def test_quantize_recognises_a_copy_that_is_not_quantized(failing):
    def copied(float_path, int8_path, images, labels):
        shutil.copy(float_path, int8_path)
        return accuracy(float_path, images, labels), accuracy(int8_path, images, labels)

    failing(check_quantize_int8, copied, "no 8-bit weights", "quantize_dynamic")


def test_quantize_recognises_the_float_model_evaluated_twice(failing):
    def twice(float_path, int8_path, images, labels):
        quantize_dynamic(float_path, int8_path, weight_type=QuantType.QInt8)
        return accuracy(float_path, images, labels), accuracy(float_path, images, labels)

    failing(check_quantize_int8, twice, "int8 accuracy is the float model's")


def test_quantize_recognises_percentages_and_swapped_results(failing):
    def percent(*args):
        return tuple(100 * a for a in quantize_and_evaluate(*args))

    failing(check_quantize_int8, percent, "fractions between 0 and 1")
    failing(check_quantize_int8, lambda *args: quantize_and_evaluate(*args)[::-1], "swapped")


def test_quantize_refuses_overwriting_the_float_model(failing):
    def in_place(float_path, int8_path, images, labels):
        quantize_dynamic(float_path, float_path, weight_type=QuantType.QInt8)
        return accuracy(float_path, images, labels), accuracy(float_path, images, labels)

    failing(check_quantize_int8, in_place, "float model at float_path was changed")


def test_quantize_wants_a_pair_of_numbers(failing):
    def only_the_change(*args):
        f, q = quantize_and_evaluate(*args)
        return q - f

    failing(check_quantize_int8, only_the_change, "return a tuple (float_accuracy, int8_accuracy)")


def test_the_checks_leave_the_global_random_state_alone(exported, leaves_global_rng_alone):
    leaves_global_rng_alone(check_measure_latency, measure_latency)
    leaves_global_rng_alone(check_quantize_int8, quantize_and_evaluate)
    # A student who compares in train mode draws dropout masks: still not from the notebook's generator.
    leaves_global_rng_alone(check_export_onnx, reuse(exported, lambda m, got, exp, x: 0.0))
