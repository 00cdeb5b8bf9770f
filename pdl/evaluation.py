"""Evaluation and prediction, the loop's read-only half: ``evaluate`` and ``predict``.

Both run the model in eval mode under ``torch.inference_mode`` and give it back in the mode
it came in; they work the same under torchrun (each rank takes its share of the data, the
results cover all of it). ``evaluate`` runs the same first-batch diagnostics as training
(``pdl.diagnostics``). ``fit``, which calls ``evaluate`` after every epoch, is in
``pdl/train.py``; both functions are also importable from there
(``from pdl.train import evaluate, fit, predict, train_one_epoch``) and as ``pdl.evaluate``
and ``pdl.predict``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from torch import nn
from torchmetrics import MetricCollection
from tqdm.auto import tqdm

from pdl import distributed  # distributed: several processes under torchrun (pdl/distributed.py)
from pdl.arguments import check_loader, check_loss_fn, no_batches_error
from pdl.device import PrecisionPolicy, get_device, precision_policy, to_device
from pdl.diagnostics import check_class_indices, forward_with_diagnostics, split_batch
from pdl.metrics import compute_metrics

# --------------------------------------------------------------------------------------
# One pass of evaluation, predictions
# --------------------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module | None = None,
    *,
    device: torch.device | str | None = None,
    metrics: MetricCollection | None = None,
    policy: PrecisionPolicy | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate ``model`` on ``loader`` in eval mode and under ``torch.inference_mode``.

    Returns the mean loss (when ``loss_fn`` is given) and the computed ``metrics``.
    Eval mode matters: dropout is switched off and batch norm uses its running statistics.
    Under torchrun each rank evaluates its share and returns the results over all of it.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> loader = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
        >>> sorted(evaluate(model, loader, nn.CrossEntropyLoss(), device="cpu"))
        ['loss']
    """
    device = _resolve_device(model, device)
    policy = policy or precision_policy(device, "fp32")
    check_loss_fn(loss_fn, required=False)
    check_loader(loader, "the evaluation loader")
    loader = distributed.shard_for_evaluation(loader)  # distributed: each rank evaluates its share
    if metrics is not None:
        metrics.reset()
    loss_sum, sample_count = 0.0, 0
    step = 0
    with eval_mode(model), torch.inference_mode():
        bar = tqdm(total=_len_or_none(loader), desc="evaluate", leave=False, disable=not progress)
        for step, batch in enumerate(loader, start=1):  # not tqdm(loader): see pdl.train
            inputs, targets = split_batch(batch, device)
            with torch.autocast(device.type, dtype=policy.dtype, enabled=policy.enabled):
                if step == 1:  # first-batch diagnostics, as in train_one_epoch
                    outputs, loss = forward_with_diagnostics(
                        model, loss_fn, inputs, targets, metrics
                    )
                else:
                    outputs = model(inputs)
                    check_class_indices(outputs, targets, loss_fn)
                    loss = loss_fn(outputs, targets) if loss_fn is not None else None
            if loss is not None:
                loss_sum += loss.item() * len(targets)
            sample_count += len(targets)
            if metrics is not None:
                metrics.update(outputs.float(), targets)
            bar.update()
        bar.close()
    loss_sum, sample_count = distributed.sum_over_ranks(
        loss_sum, sample_count
    )  # distributed: all ranks (before any error, so that no rank is left waiting)
    if sample_count == 0:
        raise no_batches_error("the evaluation loader", 1)
    results = {}
    if loss_fn is not None:
        results["loss"] = loss_sum / sample_count
    if metrics is not None:
        results.update(compute_metrics(metrics))
    return results


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the ``with`` block, the model's own mode again after it (even on an error).

    A loop that calls ``model.train()`` once and ``evaluate`` every epoch keeps its dropout.

    Example:
        >>> model = nn.Dropout()
        >>> with eval_mode(model):
        ...     model.training
        False
        >>> model.training
        True
    """
    was_training = model.training
    model.eval()  # dropout off, batch norm on its running statistics
    try:
        yield model
    finally:
        model.train(was_training)


class Predictions(NamedTuple):
    """What ``predict`` returns: the model's raw outputs and, if the data had them, the targets."""

    outputs: torch.Tensor
    targets: torch.Tensor | None


def predict(
    model: nn.Module,
    data: Iterable | torch.Tensor,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 256,
) -> Predictions:
    """Run ``model`` over ``data`` (a DataLoader, or a tensor of inputs) and collect outputs on the CPU.

    Batches may be ``(inputs, targets)`` or just inputs. The outputs are raw scores
    (logits): take ``.argmax(1)`` for class predictions, ``.softmax(1)`` for probabilities.
    Under torchrun every rank returns all outputs, in the order of the data.

    Example:
        >>> out, targets = predict(nn.Linear(3, 2), torch.randn(5, 3), device="cpu")
        >>> out.shape, targets
        (torch.Size([5, 2]), None)
    """
    device = _resolve_device(model, device)
    data = distributed.shard_for_evaluation(data)  # distributed: each rank predicts its share
    if isinstance(data, torch.Tensor):
        data = data.split(batch_size)
    outputs, targets = [], []
    with eval_mode(model), torch.inference_mode():
        for batch in data:
            if isinstance(batch, (tuple, list)) and len(batch) == 2:
                inputs, batch_targets = split_batch(batch, device)
                targets.append(batch_targets.cpu())
            elif isinstance(batch, (tuple, list)) and len(batch) == 1:
                inputs = to_device(
                    batch[0], device
                )  # DataLoader(TensorDataset(x)) yields one-element lists
            else:
                inputs = to_device(batch, device)
            outputs.append(model(inputs).float().cpu())
    if not outputs:
        raise ValueError("predict got no data: the loader or tensor is empty")
    outputs, targets = torch.cat(outputs), (torch.cat(targets) if targets else None)
    # distributed: every rank gets all outputs and targets, in the order of the data
    return Predictions(distributed.gather_shards(outputs), distributed.gather_shards(targets))


# --------------------------------------------------------------------------------------
# Helpers: devices, loaders (train_one_epoch in pdl/train.py uses them too)
# --------------------------------------------------------------------------------------


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device asked for, else the one the model's parameters are on."""
    if device is not None:
        return get_device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _len_or_none(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
