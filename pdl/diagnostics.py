"""The checks ``fit`` makes on the batches, so that a mistake gets a plain explanation.

Two moments:

- **on the first batch** of every epoch (``forward_with_diagnostics``): the forward pass and
  the loss, with their typical errors (a shape, a dtype, a device, out of memory) explained,
  and the outputs checked against the targets and the metrics;
- **on every batch** (``check_class_indices``, ``split_batch``): cheap checks that a label
  beyond the model's outputs in batch 500 is caught too; a loss that becomes NaN or infinite
  stops the run with ``NonFiniteLossError``.

The checks of ``fit``'s arguments, before training, are in ``pdl/arguments.py``. Every error
says what is wrong and what to do about it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection

from pdl.device import to_device


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training cannot continue from there."""


class BatchShapeError(ValueError):
    """The model's outputs and the targets do not fit the loss function (or the inputs the model)."""


# --------------------------------------------------------------------------------------
# Every batch
# --------------------------------------------------------------------------------------


def split_batch(batch: Any, device: torch.device) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch, moved to ``device``; NumPy arrays and odd batches explained.

    Example:
        >>> split_batch((np.zeros((2, 3)), np.zeros(2)), torch.device("cpu"))
        Traceback (most recent call last):
        ...
        TypeError: the batch holds NumPy arrays (ndarray inputs, ndarray targets), but models take torch tensors. Convert the data once, before making the loader: x = torch.from_numpy(x).float() (NumPy's default float64 is not what models use), y = torch.from_numpy(y).long() for class indices.
    """
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        got = f"a {type(batch).__name__}" + (
            f" of length {len(batch)}" if hasattr(batch, "__len__") else ""
        )
        raise TypeError(
            f"each batch must be a pair (inputs, targets); got {got}. A Dataset's __getitem__ should "
            "return (input, target), e.g. TensorDataset(x, y) or pdl.data.tensor_loader(x, y)."
        )
    inputs, targets = batch
    if isinstance(inputs, np.ndarray) or isinstance(targets, np.ndarray):
        raise TypeError(
            f"the batch holds NumPy arrays ({type(inputs).__name__} inputs, {type(targets).__name__} targets), but "
            "models take torch tensors. Convert the data once, before making the loader: "
            "x = torch.from_numpy(x).float() (NumPy's default float64 is not what models use), "
            "y = torch.from_numpy(y).long() for class indices."
        )
    return to_device((inputs, targets), device, non_blocking=True)


def check_class_indices(outputs: Any, targets: Any, loss_fn: Any) -> None:
    """For ``CrossEntropyLoss``/``NLLLoss``: every class index fits the outputs (cheap: one min/max).

    Example:
        >>> check_class_indices(torch.zeros(2, 3), torch.tensor([0, 5]), nn.CrossEntropyLoss())
        Traceback (most recent call last):
        ...
        pdl.diagnostics.BatchShapeError: The targets contain class 5, but the model outputs 3 scores per sample (classes 0..2). Does the last layer have as many outputs as there are classes (nn.Linear(..., 6) or more)?
    """
    if not isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)) or not isinstance(
        targets, torch.Tensor
    ):
        return
    if (
        targets.is_floating_point()
        or targets.numel() == 0
        or not isinstance(outputs, torch.Tensor)
        or outputs.ndim < 2
    ):
        return
    n_classes = outputs.shape[1]
    low, high = (bound.item() for bound in torch.aminmax(targets))
    if 0 <= low and high < n_classes:
        return  # the usual case, decided by one min/max
    # Targets equal to ignore_index (-100 by default, often 255 in segmentation) are skipped
    # by the loss, so only the others must be valid class indices.
    classes = targets[targets != loss_fn.ignore_index]
    if classes.numel() == 0:
        return
    low, high = (bound.item() for bound in torch.aminmax(classes))
    if low < 0 or high >= n_classes:
        bad = high if high >= n_classes else low
        raise BatchShapeError(
            f"The targets contain class {bad}, but the model outputs {n_classes} scores per sample "
            f"(classes 0..{n_classes - 1}). Does the last layer have as many outputs as there are classes"
            + (
                f" (nn.Linear(..., {bad + 1}) or more)?"
                if bad >= 0
                else "? Class indices start at 0."
            )
        )


def non_finite_loss_error(
    value: float, epoch: int, step: int, n_batches: int | None
) -> NonFiniteLossError:
    """The error ``fit`` raises when the training loss becomes NaN or infinite, with what to try.

    Example:
        >>> print(non_finite_loss_error(float("nan"), 3, 17, 100))  # doctest: +ELLIPSIS
        The loss became nan at epoch 3, step 17 of 100. Usual causes: ...
    """
    return NonFiniteLossError(
        f"The loss became {value} at epoch {epoch}, step {step}{f' of {n_batches}' if n_batches else ''}. Usual "
        "causes: a learning rate that is too high, inputs that are not normalized (or hold NaN), a log or "
        "division of zero in a custom loss. Try a 10x smaller learning rate, or gradient clipping (grad_clip=1.0)."
    )


def check_validation_loss(results: dict[str, float], epoch: int, train_loss: float) -> None:
    """A NaN validation loss would silently never be "best": stop with an explanation instead.

    Example:
        >>> check_validation_loss({"loss": 0.4}, epoch=1, train_loss=0.5)  # finite: nothing happens
    """
    value = results.get("loss", 0.0)
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"The validation loss is {value} after epoch {epoch}, while the training loss was {train_loss:.4g}. "
            "When only the validation loss breaks, look at the validation data: NaN or inf values "
            "(torch.isfinite(x).all()), images not normalized like the training images, or targets of another kind."
        )


# --------------------------------------------------------------------------------------
# The first batch: forward and loss, with explanations
# --------------------------------------------------------------------------------------


def forward_with_diagnostics(
    model: nn.Module,
    loss_fn: Any,
    inputs: Any,
    targets: Any,
    metrics: MetricCollection | None = None,
) -> tuple[Any, torch.Tensor | None]:
    """Steps 1 and 2 of the loop (forward, loss) for a first batch, every usual mistake explained.

    Returns ``(outputs, loss)`` (``loss`` is None without a ``loss_fn``), exactly as
    ``outputs = model(inputs); loss = loss_fn(outputs, targets)`` would.

    Example:
        >>> forward_with_diagnostics(nn.Linear(784, 10), nn.CrossEntropyLoss(), torch.zeros(8, 1, 28, 28),
        ...                          torch.zeros(8, dtype=torch.long))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pdl.diagnostics.BatchShapeError: The model failed on the first batch, whose inputs have shape (8, 1, 28, 28): ...
    """
    try:
        outputs = model(inputs)
    except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError too
        explained = explain_forward_error(error, model, inputs)
        if explained is None:
            raise
        raise explained from error
    loss = None
    if loss_fn is not None:
        check_outputs_and_targets(outputs, targets, loss_fn)
        check_class_indices(outputs, targets, loss_fn)
        loss = loss_fn(outputs, targets)
        check_loss(loss)
    if metrics is not None:
        check_metrics(metrics, outputs, targets)
    return outputs, loss


def _inputs_summary(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape))
    return type(inputs).__name__


def explain_forward_error(error: RuntimeError, model: nn.Module, inputs: Any) -> Exception | None:
    """A plain explanation of ``error`` raised by ``model(inputs)``, or None when there is none to give.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> try:
        ...     model(torch.zeros(4, 5))
        ... except RuntimeError as error:
        ...     print(type(explain_forward_error(error, model, torch.zeros(4, 5))).__name__)
        BatchShapeError
    """
    text = str(error)
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    shape = _inputs_summary(inputs)
    if (
        isinstance(error, torch.OutOfMemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
    ):
        size = (
            f"batch size {len(inputs)}"
            if isinstance(inputs, torch.Tensor) and inputs.ndim
            else "this batch"
        )
        return torch.OutOfMemoryError(
            f"Out of memory on the first batch (inputs {shape}, {size}): {first_line}\n"
            "Try a smaller batch_size (half of it, say) or smaller images; on a GPU mixed precision "
            "(precision='auto') also saves memory, and deleting models of earlier notebook cells (del model; "
            "torch.cuda.empty_cache()) frees theirs."
        )
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if (parameter is not None and isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
            and inputs.dtype != parameter.dtype and "type" in text):  # fmt: skip
        return TypeError(
            f"The inputs are {inputs.dtype} but the model's weights are {parameter.dtype} ({first_line}). "
            f"Convert the inputs: x.to({parameter.dtype}) (NumPy arrays become float64 tensors: "
            "torch.from_numpy(x).float()), or the model: model.to(x.dtype)."
        )
    if "device" in text and ("same device" in text or "Expected" in text):
        devices = sorted({str(p.device) for p in model.parameters()})
        where = inputs.device if isinstance(inputs, torch.Tensor) else "?"
        return RuntimeError(
            f"Tensors on different devices in the forward pass (model parameters on {', '.join(devices)}, "
            f"inputs on {where}): {first_line}\nA tensor created inside forward() without device= stays on the "
            "CPU: create it with device=x.device (or register it in __init__ with self.register_buffer)."
        )
    if any(hint in text for hint in ("shape", "size", "channels", "Expected", "expected")):
        return BatchShapeError(
            f"The model failed on the first batch, whose inputs have shape {shape}: {first_line}\n"
            "Check that the first layer expects this input size (e.g. nn.Linear(784, ...) needs flattened "
            "28x28 images: add nn.Flatten() first; nn.Conv2d(3, ...) needs 3-channel images)."
        )
    return None


_ELEMENTWISE_LOSSES = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
)


def check_outputs_and_targets(outputs: torch.Tensor, targets: torch.Tensor, loss_fn: Any) -> None:
    """Raise ``BatchShapeError`` with a plain explanation if outputs and targets don't fit ``loss_fn``.

    Catches the classic mistakes before they become cryptic errors (or, worse, silent
    broadcasting): class indices that are floats or of the wrong shape for ``CrossEntropyLoss``,
    and ``(N, 1)`` outputs against ``(N,)`` targets for ``MSELoss``/``BCEWithLogitsLoss``.

    Example:
        >>> check_outputs_and_targets(torch.zeros(4, 1), torch.zeros(4), nn.MSELoss())
        Traceback (most recent call last):
        ...
        pdl.diagnostics.BatchShapeError: MSELoss compares outputs and targets element by element, so their shapes must match, but the model outputs (4, 1) and the targets are (4,). Reshape one of them, e.g. outputs.squeeze(1) or targets.unsqueeze(1) / .view(-1, 1).
    """
    if not isinstance(outputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        return
    name = type(loss_fn).__name__
    out, tgt = tuple(outputs.shape), tuple(targets.shape)
    if isinstance(loss_fn, _ELEMENTWISE_LOSSES):
        if out != tgt:
            raise BatchShapeError(
                f"{name} compares outputs and targets element by element, so their shapes must match, "
                f"but the model outputs {out} and the targets are {tgt}. Reshape one of them, e.g. "
                "outputs.squeeze(1) or targets.unsqueeze(1) / .view(-1, 1)."
            )
        if (
            isinstance(loss_fn, (nn.BCELoss, nn.BCEWithLogitsLoss))
            and not targets.is_floating_point()
        ):
            raise BatchShapeError(
                f"{name} needs float targets (0.0 / 1.0); got {targets.dtype}. Use targets.float()."
            )
    elif isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        if outputs.ndim < 2:
            raise BatchShapeError(
                f"{name} needs one score per class, outputs of shape (batch, classes); got {out}. "
                "For a single output per sample use BCEWithLogitsLoss instead."
            )
        if targets.is_floating_point():
            if out == tgt:
                return  # class probabilities (e.g. label smoothing / mixup targets) are fine
            raise BatchShapeError(
                f"{name} needs class indices as integers (torch.long) of shape {(out[0], *out[2:])}; "
                f"got {targets.dtype} targets of shape {tgt}. Use targets.long()."
            )
        if tgt != (out[0], *out[2:]):
            raise BatchShapeError(
                f"{name}: outputs {out} need targets of shape {(out[0], *out[2:])} (one class index per "
                f"sample), but the targets are {tgt}. Flatten (N, 1) targets with targets.squeeze(1)."
            )


def check_loss(loss: Any) -> None:
    """The loss must be one number in a tensor, and (while training) depend on trainable parameters.

    Example:
        >>> check_loss(torch.ones(3))
        Traceback (most recent call last):
        ...
        ValueError: loss_fn returned a tensor of shape (3,), not one number: use the loss's default reduction='mean' (not 'none'), or add .mean() to your own loss.
    """
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"loss_fn returned a {type(loss).__name__}, not a tensor: compute the loss with torch operations"
        )
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn returned a tensor of shape {tuple(loss.shape)}, not one number: use the loss's default "
            "reduction='mean' (not 'none'), or add .mean() to your own loss."
        )
    if torch.is_grad_enabled() and not loss.requires_grad:
        raise RuntimeError(
            "The loss does not depend on any trainable parameter, so backward() has nothing to compute: "
            "every parameter is frozen, or the forward pass cut the graph (.detach(), .item(), .numpy(), "
            "torch.no_grad() inside forward). Unfreeze what should learn, and keep the forward pass in torch."
        )


def check_metrics(metrics: MetricCollection, outputs: Any, targets: Any) -> None:
    """The metrics accept the outputs and each computes one number (tried on a copy, so nothing is counted twice).

    Example:
        >>> from pdl.metrics import classification_metrics
        >>> check_metrics(classification_metrics(3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    """
    probe = metrics.clone()
    try:
        probe.update(outputs.detach().float(), targets)
        values = probe.compute()
    except (ValueError, RuntimeError) as error:
        raise ValueError(
            f"The metrics cannot use the model's outputs {_inputs_summary(outputs)} and targets "
            f"{_inputs_summary(targets)}: {str(error).strip().splitlines()[0]}\nCheck num_classes and task= "
            "(pdl.metrics.classification_metrics(num_classes) for C scores, task='binary' for one score)."
        ) from error
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise ValueError(
                f"metric {name!r} computes a tensor of shape {tuple(value.shape)}, not one number, but the history "
                "holds one number per metric and epoch. Use an averaged metric (average='macro' or 'micro'), and "
                "compute per-class results after training from pdl.predict(model, loader)."
            )
