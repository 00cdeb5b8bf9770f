"""The training loop of lecture 03, packaged: ``train_one_epoch``, ``evaluate``, ``predict``, ``fit``.

Read it top to bottom: ``fit`` is the loop you wrote by hand,

    for epoch in range(epochs):
        model.train()
        for inputs, targets in train_loader:
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        evaluate(model, val_loader)

plus options you switch on with plain keyword arguments: a device, mixed precision,
an LR scheduler, gradient clipping and accumulation, metrics, a progress bar, TensorBoard,
checkpoints, resuming and early stopping. No callbacks, no hidden state.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric, MetricCollection
from tqdm.auto import tqdm

from pdl import distributed  # distributed: several processes under torchrun (pdl/distributed.py)
from pdl.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from pdl.device import PrecisionPolicy, get_device, precision_policy, to_device
from pdl.plot import LivePlot, plot_history


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training cannot continue from there."""


class BatchShapeError(ValueError):
    """The model's outputs and the targets do not fit the loss function."""


# --------------------------------------------------------------------------------------
# History: what fit returns
# --------------------------------------------------------------------------------------


@dataclass
class History:
    """Per-epoch records of a ``fit`` run: losses, metrics, learning rate and seconds.

    ``history["val_loss"]`` is the list of validation losses, one per epoch;
    ``history.to_dict()`` gives every column; ``history.plot()`` draws the curves.

    Example:
        >>> h = History([{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.5}])
        >>> h["train_loss"], len(h)
        ([0.9, 0.5], 2)
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False  # True when Ctrl-C ended the run early
    skipped_steps: int = 0  # fp16 steps the GradScaler skipped because of inf/NaN gradients

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: str) -> list[float]:
        if key not in self.keys():
            raise KeyError(f"no column {key!r} in this history; columns: {', '.join(self.keys())}")
        return [row.get(key, math.nan) for row in self.rows]

    def keys(self) -> list[str]:
        """Column names in first-seen order.

        Example:
            >>> History([{"epoch": 1, "train_loss": 0.9}]).keys()
            ['epoch', 'train_loss']
        """
        names: dict[str, None] = {}
        for row in self.rows:
            names.update(dict.fromkeys(row))
        return list(names)

    def to_dict(self) -> dict[str, list[float]]:
        """Every column as a list, e.g. for ``pandas.DataFrame(history.to_dict())``.

        Example:
            >>> History([{"epoch": 1, "train_loss": 0.9}]).to_dict()
            {'epoch': [1], 'train_loss': [0.9]}
        """
        return {key: self[key] for key in self.keys()}

    def plot(self, **kwargs: Any):
        """Plot the loss curves (and metrics) with ``pdl.plot.plot_history``; returns the axes.

        Example:
            >>> ax = History([{"epoch": 1, "train_loss": 0.9}]).plot()
            >>> ax.get_yscale()
            'log'
        """
        return plot_history(self, **kwargs)

    def __repr__(self) -> str:
        if not self.rows:
            return "History(empty)"
        keys = self.keys()
        lines = ["  ".join(f"{k:>12}" for k in keys)]
        for row in self.rows:
            lines.append("  ".join(_format_cell(row.get(k, math.nan)) for k in keys))
        flags = " (interrupted)" if self.interrupted else ""
        return f"History: {len(self)} epochs{flags}\n" + "\n".join(lines)


def _format_cell(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{value:>12g}"
    return f"{value:>12.4g}"


# --------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation, predictions
# --------------------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | str | None = None,
    policy: PrecisionPolicy | None = None,
    scaler: torch.amp.GradScaler | None = None,
    metrics: MetricCollection | None = None,
    step_scheduler: Any = None,
    grad_clip: float | None = None,
    accumulate_steps: int = 1,
    epoch: int = 1,
    progress: bool = False,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader``; return the mean loss and the metrics.

    Each batch must be ``(inputs, targets)``. ``step_scheduler`` is stepped after every
    optimizer step (e.g. ``OneCycleLR``); ``accumulate_steps=k`` adds up the gradients of
    k batches before one optimizer step (an effective batch k times larger).
    The returned dict also holds ``skipped_steps``: fp16 steps the GradScaler skipped.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> loader = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))] * 4
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sorted(train_one_epoch(model, loader, nn.CrossEntropyLoss(), opt, device="cpu"))
        ['loss', 'skipped_steps']
    """
    device = _resolve_device(model, device)
    policy = policy or precision_policy(device, "fp32")
    if accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
    model.train()
    if metrics is not None:
        metrics.reset()
    total_loss, total_samples, skipped = 0.0, 0, 0
    n_batches = _len_or_none(loader)
    # The bar is updated by hand instead of wrapping the loader: tqdm.auto's async-friendly
    # class calls iter(loader) once more when it wraps one, which would draw an extra shuffle
    # seed from the global RNG (and start DataLoader workers twice).
    bar = tqdm(total=n_batches, desc=f"epoch {epoch} train", leave=False, disable=not progress)
    optimizer.zero_grad(set_to_none=True)
    step = 0
    for step, batch in enumerate(loader, start=1):
        inputs, targets = _split_batch(batch, device)
        with policy.autocast():
            outputs = _forward(model, inputs, first=step == 1)
            if step == 1:
                check_outputs_and_targets(outputs, targets, loss_fn)
            loss = loss_fn(outputs, targets)

        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"The loss became {loss_value} at epoch {epoch}, step {step}"
                f"{f' of {n_batches}' if n_batches else ''}. Usual causes: a learning rate that is "
                "too high, inputs that are not normalized, a log or division of zero in a custom "
                "loss. Try a 10x smaller learning rate, or gradient clipping (grad_clip=1.0)."
            )
        # With accumulation, each batch contributes 1/k of the gradient of the big batch.
        scaled_loss = loss / accumulate_steps if accumulate_steps > 1 else loss
        if scaler is not None:
            scaler.scale(scaled_loss).backward()
        else:
            scaled_loss.backward()

        if step % accumulate_steps == 0:
            skipped += _optimizer_step(model, optimizer, scaler, grad_clip, step_scheduler)

        batch_size = len(targets)
        total_loss += loss_value * batch_size
        total_samples += batch_size
        if metrics is not None:
            metrics.update(outputs.detach().float(), targets)
        bar.update()
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{total_loss / total_samples:.4f}", refresh=False)
    bar.close()

    if step % accumulate_steps != 0:
        # The last batches did not fill a group of accumulate_steps: step with what they added.
        skipped += _optimizer_step(model, optimizer, scaler, grad_clip, step_scheduler)
    total_loss, total_samples = distributed.sum_over_ranks(total_loss, total_samples)  # distributed: over all ranks
    distributed.broadcast_buffers(model)  # distributed: every rank evaluates rank 0's BatchNorm statistics
    results = {"loss": total_loss / max(total_samples, 1)}
    if metrics is not None:
        results.update(_compute(metrics))
    results["skipped_steps"] = skipped
    return results


def _optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
    step_scheduler: Any | None = None,
) -> int:
    """One optimizer step (with clipping and fp16 scaling), then zero the gradients and step a
    per-step scheduler; returns 1 if the scaler skipped the step."""
    skipped = 0
    if scaler is None:
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    else:
        if grad_clip is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scale_before = scaler.get_scale()
        scaler.step(optimizer)  # skipped internally if any gradient is inf/NaN
        scaler.update()  # ... and then the scale shrinks
        skipped = int(scaler.get_scale() < scale_before)
    optimizer.zero_grad(set_to_none=True)
    if step_scheduler is not None:
        step_scheduler.step()
    return skipped


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
    Under torchrun each rank evaluates its share of ``loader`` and every rank returns the
    results over all of it (call it on every rank).

    Example:
        >>> model = nn.Linear(3, 2)
        >>> loader = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
        >>> sorted(evaluate(model, loader, nn.CrossEntropyLoss(), device="cpu"))
        ['loss']
    """
    device = _resolve_device(model, device)
    policy = policy or precision_policy(device, "fp32")
    loader = distributed.shard_for_evaluation(loader)  # distributed: each rank evaluates its share
    model.eval()
    if metrics is not None:
        metrics.reset()
    total_loss, total_samples = 0.0, 0
    with torch.inference_mode():
        bar = tqdm(total=_len_or_none(loader), desc="evaluate", leave=False, disable=not progress)
        for batch in loader:  # not tqdm(loader): see train_one_epoch
            inputs, targets = _split_batch(batch, device)
            with policy.autocast():
                outputs = model(inputs)
                if loss_fn is not None:
                    total_loss += loss_fn(outputs, targets).item() * len(targets)
            total_samples += len(targets)
            if metrics is not None:
                metrics.update(outputs.float(), targets)
            bar.update()
        bar.close()
    total_loss, total_samples = distributed.sum_over_ranks(total_loss, total_samples)  # distributed: over all ranks
    results = {}
    if loss_fn is not None:
        results["loss"] = total_loss / max(total_samples, 1)
    if metrics is not None:
        results.update(_compute(metrics))
    return results


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
    Under torchrun each rank predicts its share and every rank returns all outputs, in the
    order of the dataset (call it on every rank).

    Example:
        >>> out, targets = predict(nn.Linear(3, 2), torch.randn(5, 3), device="cpu")
        >>> out.shape, targets
        (torch.Size([5, 2]), None)
    """
    device = _resolve_device(model, device)
    data = distributed.shard_for_evaluation(data)  # distributed: each rank predicts its share
    if isinstance(data, torch.Tensor):
        data = data.split(batch_size)
    model.eval()
    outputs, targets = [], []
    with torch.inference_mode():
        for batch in data:
            if isinstance(batch, (tuple, list)) and len(batch) == 2:
                inputs, batch_targets = batch
                targets.append(batch_targets.cpu())
            elif isinstance(batch, (tuple, list)) and len(batch) == 1:
                inputs = batch[0]  # DataLoader(TensorDataset(x)) yields one-element lists
            else:
                inputs = batch
            outputs.append(model(to_device(inputs, device)).float().cpu())
    if not outputs:
        raise ValueError("predict got no data: the loader or tensor is empty")
    outputs, targets = torch.cat(outputs), (torch.cat(targets) if targets else None)
    # distributed: every rank gets all outputs and targets, in the order of the data
    return Predictions(distributed.gather_shards(outputs), distributed.gather_shards(targets))


# --------------------------------------------------------------------------------------
# fit: epochs, validation, and the options
# --------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device | str | None = None,
    precision: str = "auto",
    metrics: MetricCollection | Mapping[str, Metric] | None = None,
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    grad_clip: float | None = None,
    accumulate_steps: int = 1,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    monitor: str | None = None,
    patience: int | None = None,
    log_dir: str | os.PathLike | None = None,
    progress: bool = True,
    live_plot: bool = False,
) -> History:
    """Train ``model`` for ``epochs`` epochs, validating after each; return a ``History``.

    Arguments beyond the loop itself:

    - ``device``: default ``pdl.device.get_device()``; the model is moved there.
    - ``precision``: "auto" (see ``pdl.device.precision_policy``), "fp32", "bf16" or "fp16".
    - ``metrics``: torchmetrics metrics (e.g. ``pdl.metrics.classification_metrics(10)``),
      computed on the training and the validation data every epoch.
    - ``scheduler``: an LR scheduler, stepped once per epoch (``scheduler_interval="epoch"``)
      or after every optimizer step ("step"). ``ReduceLROnPlateau`` gets the monitored value.
    - ``grad_clip``: clip the gradient norm to this value; ``accumulate_steps``: add up the
      gradients of this many batches per optimizer step.
    - ``checkpoint_dir``: write ``last.pt`` after every epoch and ``best.pt`` when the
      monitored value improves (atomically; load with ``pdl.checkpoint.load_checkpoint``).
    - ``resume``: a checkpoint to continue from: weights, optimizer, scheduler, history and
      random state are restored, and training goes on up to ``epochs`` in total.
    - ``monitor``: the column that decides "best", default "val_loss" ("train_loss" without
      validation data); losses are minimized, anything else maximized.
      ``patience``: stop after this many epochs without improvement.
    - ``log_dir``: write TensorBoard scalars there (``tensorboard --logdir <log_dir>``).
    - ``progress``: a progress bar per epoch and one summary line per epoch.
    - ``live_plot``: in a notebook, redraw the loss curves after every epoch.

    Under ``torchrun --nproc-per-node N`` the same call trains with DistributedDataParallel
    (``pdl.distributed``): each rank trains on its share of every batch, the history is the
    same on every rank, only rank 0 prints and writes files, and ``model`` ends up trained.

    Ctrl-C (KeyboardInterrupt) stops training cleanly: the model keeps what it learned, the
    history of the finished epochs is returned (``history.interrupted`` is True) and the
    checkpoints on disk stay intact. A NaN/inf loss raises ``NonFiniteLossError``.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> data = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))] * 4
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> history = fit(model, data, data, loss_fn=nn.CrossEntropyLoss(), optimizer=opt,
        ...               epochs=2, device="cpu", progress=False)
        >>> history.keys()
        ['epoch', 'train_loss', 'val_loss', 'lr', 'seconds']
    """
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', not {scheduler_interval!r}")
    # distributed: under torchrun, join the process group; each rank gets its own GPU
    device, created_group = distributed.setup(get_device(device))
    model.to(device)
    policy = precision_policy(device, precision)
    scaler = policy.make_scaler()
    train_metrics, val_metrics = _metric_copies(metrics, device)
    monitor = monitor or ("val_loss" if val_loader is not None else "train_loss")
    maximize = "loss" not in monitor
    if not distributed.is_main_process():  # distributed: only rank 0 prints, logs and writes checkpoints
        progress, live_plot, log_dir, checkpoint_dir = False, False, None, None
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    generator = _loader_generator(train_loader)

    history = History()
    best = -math.inf if maximize else math.inf
    epochs_without_improvement = 0
    start_epoch = 1
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        if state["monitor"] != monitor:
            # "best" holds a value of the checkpoint's monitor: comparing it with another
            # quantity (an accuracy against a loss) would pick the wrong best.pt.
            raise ValueError(
                f"{resume} was written while monitoring {state['monitor']!r}, but this run monitors "
                f"{monitor!r}. Resume with monitor={state['monitor']!r} (or start a new run)."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        history = History(rows=list(state["history"]), skipped_steps=state.get("skipped_steps", 0))
        best, epochs_without_improvement = state["best"], state["epochs_without_improvement"]
        start_epoch = state["epoch"] + 1
        restore_rng_state(state["rng"], generator)
        if progress:
            print(f"Resumed from {resume} after epoch {state['epoch']}.")

    # distributed: DDP averages the gradients over the ranks; each rank trains on its share
    trained_model = distributed.wrap_model(model, device)  # `model` itself in one process
    train_loader = distributed.shard_for_training(train_loader)
    val_loader = distributed.shard_for_evaluation(val_loader) if val_loader is not None else None
    writer = _tensorboard_writer(log_dir)
    live = LivePlot() if live_plot else None
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, epochs + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]  # the rate this epoch starts with
            distributed.set_epoch(train_loader, epoch)  # distributed: a new shuffle, the same on every rank
            train = train_one_epoch(
                trained_model, train_loader, loss_fn, optimizer,
                device=device, policy=policy, scaler=scaler, metrics=train_metrics,
                step_scheduler=scheduler if scheduler_interval == "step" else None,
                grad_clip=grad_clip, accumulate_steps=accumulate_steps,
                epoch=epoch, progress=progress,
            )  # fmt: skip
            history.skipped_steps += train.pop("skipped_steps")
            row: dict[str, float] = {"epoch": epoch}
            row.update({f"train_{k}": v for k, v in train.items()})
            if val_loader is not None:
                val = evaluate(model, val_loader, loss_fn, device=device, metrics=val_metrics, policy=policy)
                row.update({f"val_{k}": v for k, v in val.items()})
            row["lr"] = lr
            row["seconds"] = distributed.max_over_ranks(time.perf_counter() - started)  # distributed: the slowest rank
            history.rows.append(row)

            if monitor not in row:
                raise KeyError(f"monitor={monitor!r} is not among the epoch's columns: {', '.join(row)}")
            value = row[monitor]
            improved = value > best if maximize else value < best
            if improved:
                best, epochs_without_improvement = value, 0
            else:
                epochs_without_improvement += 1
            if scheduler is not None and scheduler_interval == "epoch":
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(value)
                else:
                    scheduler.step()

            if writer is not None:
                _log_scalars(writer, row)
            if live is not None:
                live.update(history)
            if progress:
                tqdm.write(_summary_line(row, epochs))
            if checkpoint_dir is not None:
                state = {
                    "format": "pdl-checkpoint-1",
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "history": history.rows,
                    "skipped_steps": history.skipped_steps,
                    "monitor": monitor,
                    "best": best,
                    "epochs_without_improvement": epochs_without_improvement,
                    "rng": rng_state(generator),
                }
                save_checkpoint(state, checkpoint_dir / "last.pt")
                if improved:
                    save_checkpoint(state, checkpoint_dir / "best.pt")
            if patience is not None and epochs_without_improvement >= patience:
                if progress:
                    print(f"Early stopping: {monitor} has not improved for {patience} epochs (best {best:.4g}).")
                break
        distributed.barrier()  # distributed: return once rank 0 has written its checkpoints
    except KeyboardInterrupt:
        history.interrupted = True
        distributed.leave(created_group)  # distributed: the ranks are out of step: let the others stop
        print(
            f"Interrupted during epoch {epoch}: returning the history of {len(history)} finished "
            "epochs. The model keeps its current weights"
            + (f"; checkpoints in {checkpoint_dir} are intact." if checkpoint_dir else ".")
        )
    except BaseException:
        distributed.leave(created_group)  # distributed: an error here must not leave the other ranks waiting
        raise
    finally:
        if writer is not None:
            writer.close()
    return history


# --------------------------------------------------------------------------------------
# Helpers: batches, shapes, metrics, logging
# --------------------------------------------------------------------------------------


def _split_batch(batch: Any, device: torch.device) -> tuple[Any, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            "each batch must be a pair (inputs, targets); got "
            + (f"a {type(batch).__name__} of length {len(batch)}" if hasattr(batch, "__len__") else type(batch).__name__)
        )
    inputs, targets = to_device(tuple(batch), device, non_blocking=True)
    return inputs, targets


def _forward(model: nn.Module, inputs: Any, first: bool) -> torch.Tensor:
    if not first:
        return model(inputs)
    try:
        return model(inputs)
    except RuntimeError as error:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise BatchShapeError(
            f"The model failed on the first batch, whose inputs have shape {shape}: {error}\n"
            "Check that the first layer expects this input size (e.g. nn.Linear(784, ...) needs "
            "flattened 28x28 images: add nn.Flatten() first) and that model and data are on the same device."
        ) from error


_ELEMENTWISE_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss, nn.BCEWithLogitsLoss)


def check_outputs_and_targets(outputs: torch.Tensor, targets: torch.Tensor, loss_fn: nn.Module) -> None:
    """Raise ``BatchShapeError`` with a plain explanation if outputs and targets don't fit ``loss_fn``.

    Catches the classic mistakes before they become cryptic errors (or, worse, silent
    broadcasting): class indices that are floats or out of range for ``CrossEntropyLoss``,
    and ``(N, 1)`` outputs against ``(N,)`` targets for ``MSELoss``/``BCEWithLogitsLoss``.

    Example:
        >>> check_outputs_and_targets(torch.zeros(4, 1), torch.zeros(4), nn.MSELoss())
        Traceback (most recent call last):
        ...
        pdl.train.BatchShapeError: MSELoss compares outputs and targets element by element, so their shapes must match, but the model outputs (4, 1) and the targets are (4,). Reshape one of them, e.g. outputs.squeeze(1) or targets.unsqueeze(1) / .view(-1, 1).
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
        if isinstance(loss_fn, (nn.BCELoss, nn.BCEWithLogitsLoss)) and not targets.is_floating_point():
            raise BatchShapeError(f"{name} needs float targets (0.0 / 1.0); got {targets.dtype}. Use targets.float().")
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
                f"sample), but the targets are {tgt}."
            )
        n_classes = out[1]
        # Targets equal to ignore_index (-100 by default, often 255 in segmentation) are skipped
        # by the loss, so only the others must be valid class indices.
        classes = targets[targets != loss_fn.ignore_index]
        if classes.numel() == 0:
            return
        low, high = int(classes.min()), int(classes.max())
        if low < 0 or high >= n_classes:
            raise BatchShapeError(
                f"The targets contain class {high if high >= n_classes else low}, but the model "
                f"outputs {n_classes} scores per sample (classes 0..{n_classes - 1}). "
                "Does the last layer have as many outputs as there are classes?"
            )


def _metric_copies(
    metrics: MetricCollection | Mapping[str, Metric] | None, device: torch.device
) -> tuple[MetricCollection | None, MetricCollection | None]:
    """Separate copies for training and validation: a metric accumulates state."""
    if metrics is None:
        return None, None
    if not isinstance(metrics, MetricCollection):
        metrics = MetricCollection(dict(metrics))
    return metrics.clone().to(device), metrics.clone().to(device)


def _compute(metrics: MetricCollection) -> dict[str, float]:
    return {name: value.item() for name, value in metrics.compute().items()}


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device asked for, else the one the model's parameters are on."""
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _len_or_none(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _loader_generator(loader: Iterable) -> torch.Generator | None:
    """The random generator that shuffles ``loader``, if it has its own (saved for resuming)."""
    if not isinstance(loader, DataLoader):
        return None
    sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    for candidate in (loader, sampler, getattr(sampler, "sampler", None)):
        generator = getattr(candidate, "generator", None)
        if isinstance(generator, torch.Generator):
            return generator
    return None


def _tensorboard_writer(log_dir: str | os.PathLike | None):
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter  # imported only when logging is asked for

    return SummaryWriter(log_dir=str(log_dir))


def _log_scalars(writer, row: dict[str, float]) -> None:
    # Tags "loss/train" and "loss/val" put train and validation side by side in TensorBoard.
    epoch = int(row["epoch"])
    for key, value in row.items():
        if key.startswith(("train_", "val_")):
            split, name = key.split("_", 1)
            writer.add_scalar(f"{name}/{split}", value, epoch)
    writer.add_scalar("lr", row["lr"], epoch)
    writer.add_scalar("seconds_per_epoch", row["seconds"], epoch)
    writer.flush()


def _summary_line(row: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(row['epoch'])}/{epochs}"]
    for key, value in row.items():
        if key.startswith(("train_", "val_")):
            parts.append(f"{key} {value:.4f}")
    parts.append(f"lr {row['lr']:.3g}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)
