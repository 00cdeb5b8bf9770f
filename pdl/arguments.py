"""The checks ``fit`` makes on its arguments, before training, so that no work is lost.

- ``check_training_arguments``: the loss is an instance, the optimizer holds this model's
  trainable parameters, ``grad_clip`` and ``accumulate_steps`` make sense (``train_one_epoch``
  makes it too);
- ``check_fit_arguments``: the epochs, the patience, the scheduler, and loaders that can be
  iterated every epoch and are not empty (``check_loader``, which ``evaluate`` makes too;
  ``no_batches_error`` for a loader that turns out empty only while it is iterated);
- ``check_plateau_mode``: ``ReduceLROnPlateau`` minimizes or maximizes what ``fit`` monitors.

The checks on the batches themselves (the first one in full, every one cheaply) are in
``pdl/diagnostics.py``. Every error says what is wrong and what to do about it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader

# --------------------------------------------------------------------------------------
# Before training
# --------------------------------------------------------------------------------------


def check_training_arguments(
    model: nn.Module, loss_fn: Any, optimizer: Any, grad_clip: Any = None, accumulate_steps: Any = 1
) -> None:
    """Refuse what would train nothing, or train wrongly, without an error from torch.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> check_training_arguments(model, nn.MSELoss, torch.optim.SGD(model.parameters(), lr=0.1))
        Traceback (most recent call last):
        ...
        TypeError: loss_fn is the class MSELoss, not a loss function: create one with nn.MSELoss() (note the parentheses).
    """
    check_loss_fn(loss_fn)
    if isinstance(optimizer, type):
        raise TypeError(
            f"optimizer is the class {optimizer.__name__}, not an optimizer: create one with "
            f"torch.optim.{optimizer.__name__}(model.parameters(), lr=...)."
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim optimizer, got {type(optimizer).__name__}: e.g. "
            "torch.optim.Adam(model.parameters(), lr=1e-3)."
        )
    own = {id(p) for p in model.parameters()}
    if isinstance(loss_fn, nn.Module):
        own |= {id(p) for p in loss_fn.parameters()}  # a loss may have learnable parameters too
    held = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(id(p) in own for p in held):
        raise ValueError(
            f"the optimizer holds none of this {type(model).__name__}'s parameters, so training would change "
            "nothing: it was built for another model (or for an earlier copy of this one). Build it from this "
            "model, after creating it: torch.optim.Adam(model.parameters(), lr=...)."
        )
    if not any(p.requires_grad for p in held if id(p) in own):
        raise ValueError(
            "every parameter the optimizer holds is frozen (requires_grad=False), so nothing would train: "
            "unfreeze what should learn (pdl.transfer.unfreeze / train_only) before building the optimizer."
        )
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float))
                                  or not math.isfinite(grad_clip) or grad_clip <= 0):  # fmt: skip
        raise ValueError(
            f"grad_clip must be a positive number (the largest gradient norm allowed, e.g. 1.0) or None, got "
            f"{grad_clip!r}: clipping to zero stops training, and a negative norm would reverse the gradient."
        )
    if (
        isinstance(accumulate_steps, bool)
        or not isinstance(accumulate_steps, int)
        or accumulate_steps < 1
    ):
        raise ValueError(
            f"accumulate_steps must be a whole number >= 1 (1: no accumulation), got {accumulate_steps!r}"
        )


def check_loss_fn(loss_fn: Any, required: bool = True) -> None:
    """A loss function must be an instance (``nn.CrossEntropyLoss()``) or a function, not a class.

    Example:
        >>> check_loss_fn(nn.CrossEntropyLoss())
    """
    if loss_fn is None and not required:
        return
    if isinstance(loss_fn, type):
        raise TypeError(
            f"loss_fn is the class {loss_fn.__name__}, not a loss function: create one with "
            f"nn.{loss_fn.__name__}() (note the parentheses)."
        )
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable, like nn.CrossEntropyLoss(); got a {type(loss_fn).__name__}"
        )
    if (
        getattr(loss_fn, "reduction", "mean") == "sum"
    ):  # reported per sample: a sum would be N times too big
        raise ValueError(
            f"loss_fn {type(loss_fn).__name__}(reduction='sum') adds up the batch, but pdl reports the "
            "mean loss per sample (and learning rates are tuned for it): use the default reduction='mean'."
        )


def check_fit_arguments(
    train_loader: Any,
    val_loader: Any,
    *,
    epochs: Any,
    patience: Any,
    scheduler: Any,
    scheduler_interval: str,
    optimizer: torch.optim.Optimizer,
) -> None:
    """What ``fit`` checks beyond ``check_training_arguments``, before the first epoch.

    Example:
        >>> check_fit_arguments([], None, epochs=0, patience=None, scheduler=None, scheduler_interval="epoch",
        ...                     optimizer=None)
        Traceback (most recent call last):
        ...
        ValueError: epochs must be a whole number >= 1 (the total number of epochs of the run), got 0
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(
            f"epochs must be a whole number >= 1 (the total number of epochs of the run), got {epochs!r}"
        )
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
    ):
        why = (
            ": patience=0 would stop after the first epoch that does not improve on itself"
            if patience == 0
            else ""
        )
        raise ValueError(
            f"patience must be a whole number >= 1 (epochs without improvement before stopping) or None, "
            f"got {patience!r}{why}."
        )
    check_loader(train_loader, "train_loader", epochs)
    if val_loader is not None:
        check_loader(val_loader, "val_loader", epochs)
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(
            f"scheduler_interval must be 'epoch' or 'step', not {scheduler_interval!r}"
        )
    if scheduler is not None:
        if isinstance(scheduler, type):
            raise TypeError(
                f"scheduler is the class {scheduler.__name__}: create it with {scheduler.__name__}(optimizer, ...)"
            )
        if getattr(scheduler, "optimizer", optimizer) is not optimizer:
            raise ValueError(
                "the scheduler was built for another optimizer than the one passed to fit, so its steps would "
                "change nothing: create it from this optimizer, e.g. StepLR(optimizer, step_size=1)."
            )
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if plateau and scheduler_interval == "step":
            raise ValueError(
                "ReduceLROnPlateau needs the monitored value of an epoch: use scheduler_interval='epoch'"
            )


def check_plateau_mode(scheduler: Any, monitor_column: str, monitor_mode: str) -> None:
    """``ReduceLROnPlateau`` compares values in its own ``mode``: it must agree with the monitor's.

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
        >>> check_plateau_mode(torch.optim.lr_scheduler.ReduceLROnPlateau(opt), "val_accuracy", "max")
        Traceback (most recent call last):
        ...
        ValueError: ReduceLROnPlateau(mode='min') gets val_accuracy, which this run maximizes (mode='max'): it would lower the learning rate whenever val_accuracy improves. Create it with ReduceLROnPlateau(optimizer, mode='max').
    """
    if (
        isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        and scheduler.mode != monitor_mode
    ):
        verb = "maximizes" if monitor_mode == "max" else "minimizes"
        raise ValueError(
            f"ReduceLROnPlateau(mode={scheduler.mode!r}) gets {monitor_column}, which this run {verb} "
            f"(mode={monitor_mode!r}): it would lower the learning rate whenever {monitor_column} improves. "
            f"Create it with ReduceLROnPlateau(optimizer, mode={monitor_mode!r})."
        )


def check_loader(loader: Any, name: str, epochs: int = 1) -> None:
    """A loader must yield batches, every epoch: not a tensor, not a one-shot generator, not empty.

    Example:
        >>> check_loader(iter([1, 2]), "train_loader", epochs=3)
        Traceback (most recent call last):
        ...
        TypeError: train_loader is a list_iterator, which can be iterated only once: epoch 2 would get no batches. Pass something that can be iterated every epoch: a DataLoader, pdl.data.tensor_loader(x, y), or a list of (inputs, targets) batches.
    """
    if isinstance(loader, torch.Tensor):
        raise TypeError(
            f"{name} is a tensor, not batches: wrap inputs and targets in a loader, "
            "e.g. pdl.data.tensor_loader(x, y, batch_size=64, shuffle=True)."
        )
    if not isinstance(loader, Iterable):
        raise TypeError(
            f"{name} must yield (inputs, targets) batches, like a DataLoader; got a {type(loader).__name__}"
        )
    if isinstance(loader, Iterator) and epochs > 1:
        raise TypeError(
            f"{name} is a {type(loader).__name__}, which can be iterated only once: epoch 2 would get no batches. "
            "Pass something that can be iterated every epoch: a DataLoader, pdl.data.tensor_loader(x, y), "
            "or a list of (inputs, targets) batches."
        )
    try:
        size = len(loader)
    except TypeError:
        return  # no len(): checked after the epoch instead
    if size == 0:
        hint = ""
        if isinstance(loader, DataLoader):
            # tensor_loader batches in its sampler (a BatchSampler), so the sizes live there
            batches = loader.sampler if isinstance(loader.sampler, BatchSampler) else loader
            hint = (
                f" (its dataset holds {len(loader.dataset)} samples, batch_size={batches.batch_size}"  # type: ignore[arg-type]
                f"{', drop_last=True drops the only, incomplete batch' if batches.drop_last else ''})"
            )
        raise ValueError(
            f"{name} yields no batches{hint}: an epoch over it would compute nothing. Give it data."
        )


def no_batches_error(name: str, epoch: int) -> ValueError:
    """The error for a loader that turned out empty only while iterating it.

    Example:
        >>> print(no_batches_error("the training loader", 2))  # doctest: +ELLIPSIS
        the training loader yielded no batches in epoch 2: ...
    """
    return ValueError(
        f"{name} yielded no batches in epoch {epoch}: the loss and metrics of an empty epoch mean nothing. "
        "A generator or iterator is used up after one pass: pass a DataLoader or a list of batches."
    )
