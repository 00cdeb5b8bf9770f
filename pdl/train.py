"""The training loop of lecture 03, packaged: ``train_one_epoch`` and ``fit``.

Read it top to bottom: ``fit`` is the loop you wrote by hand::

    for epoch in range(epochs):
        model.train()
        for inputs, targets in train_loader:
            outputs = model(inputs)            # 1. forward
            loss = loss_fn(outputs, targets)   # 2. loss
            optimizer.zero_grad()              # 3. zero the old gradients
            loss.backward()                    # 4. backward
            optimizer.step()                   # 5. step
        evaluate(model, val_loader)

plus options you switch on with plain keyword arguments: a device, mixed precision,
an LR scheduler, gradient clipping and accumulation, metrics, a progress bar, TensorBoard,
checkpoints, resuming and early stopping. No callbacks, no hidden state. ``evaluate`` and
``predict`` live in ``pdl.evaluation`` (imported here too, so ``from pdl.train import
evaluate, predict`` works); the checks that explain mistakes in ``pdl.arguments`` (before
training) and ``pdl.diagnostics`` (on the batches), what a checkpoint holds in
``pdl.checkpoint``, the record of the run in ``pdl.history``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from tqdm.auto import tqdm

from pdl import distributed  # distributed: several processes under torchrun (pdl/distributed.py)
from pdl.arguments import (
    check_fit_arguments,
    check_plateau_mode,
    check_training_arguments,
    no_batches_error,
)
from pdl.checkpoint import (
    load_checkpoint,
    loader_generator,
    prepare_checkpoint_dir,
    requested_learning_rates,
    restore_training_state,
    save_checkpoint,
    training_state,
    warn_if_workers_persist,
)
from pdl.device import PrecisionPolicy, get_device, precision_policy
from pdl.diagnostics import (
    check_class_indices,
    check_validation_loss,
    forward_with_diagnostics,
    non_finite_loss_error,
    split_batch,
)
from pdl.evaluation import _len_or_none, _resolve_device, evaluate
from pdl.evaluation import predict as predict  # so that `from pdl.train import predict` works
from pdl.history import (
    History,
    Monitor,
    learning_rates,
    log_scalars,
    run_columns,
    summary_line,
    tensorboard_writer,
)
from pdl.metrics import compute_metrics, metric_copies
from pdl.plot import LivePlot

# --------------------------------------------------------------------------------------
# One epoch of training
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
    k batches before one optimizer step (an effective batch k times larger). With fp16
    (``scaler`` enabled) the result also holds ``skipped_steps``: steps the GradScaler
    skipped because a gradient was inf/NaN.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> loader = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))] * 4
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sorted(train_one_epoch(model, loader, nn.CrossEntropyLoss(), opt, device="cpu"))
        ['loss']
    """
    device = _resolve_device(model, device)
    policy = policy or precision_policy(device, "fp32")
    scaler = (
        scaler or policy.make_scaler()
    )  # disabled unless fp16: then it passes everything through
    check_training_arguments(model, loss_fn, optimizer, grad_clip, accumulate_steps)
    model.train()
    if metrics is not None:
        metrics.reset()
    loss_sum, sample_count, skipped_steps = (
        0.0,
        0,
        0,
    )  # plain local totals, easy to add up across processes
    n_batches = _len_or_none(loader)
    # The bar is updated by hand instead of wrapping the loader: tqdm.auto's async-friendly
    # class calls iter(loader) once more when it wraps one, which would draw an extra shuffle
    # seed from the global RNG (and start DataLoader workers twice).
    bar = tqdm(total=n_batches, desc=f"epoch {epoch} train", leave=False, disable=not progress)
    step = 0
    for step, batch in enumerate(loader, start=1):
        inputs, targets = split_batch(batch, device)
        with torch.autocast(device.type, dtype=policy.dtype, enabled=policy.enabled):
            if step == 1:
                # First-batch diagnostics: the same two steps, with a mistake in the data, the
                # model or the loss (a shape, a dtype, a class index...) explained in plain words.
                outputs, loss = forward_with_diagnostics(model, loss_fn, inputs, targets, metrics)
            else:
                outputs = model(inputs)  # 1. forward
                check_class_indices(
                    outputs, targets, loss_fn
                )  # cheap: a bad label in batch 500 is caught too
                loss = loss_fn(outputs, targets)  # 2. loss
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise non_finite_loss_error(loss_value, epoch, step, n_batches)

        if (step - 1) % accumulate_steps == 0:
            optimizer.zero_grad(set_to_none=True)  # 3. zero the gradients of the previous step
        # 4. backward. With accumulation each batch adds 1/k of the big batch's gradient;
        # with fp16 the scaler multiplies the loss first so that small gradients do not underflow.
        scaler.scale(loss / accumulate_steps).backward()
        if step % accumulate_steps == 0:
            skipped_steps += _optimizer_step(
                model, optimizer, scaler, grad_clip, step_scheduler
            )  # 5. step

        batch_size = len(targets)
        loss_sum += loss_value * batch_size
        sample_count += batch_size
        if metrics is not None:
            metrics.update(outputs.detach().float(), targets)
        bar.update()
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum / sample_count:.4f}", refresh=False)
    bar.close()

    if step == 0:
        raise no_batches_error("the training loader", epoch)
    if step % accumulate_steps != 0:
        # The last batches did not fill a group of accumulate_steps: step with what they added.
        skipped_steps += _optimizer_step(model, optimizer, scaler, grad_clip, step_scheduler)
    optimizer.zero_grad(set_to_none=True)  # free the gradients' memory until the next epoch
    loss_sum, sample_count = distributed.sum_over_ranks(
        loss_sum, sample_count
    )  # distributed: all ranks
    distributed.broadcast_buffers(
        model
    )  # distributed: every rank evaluates rank 0's BatchNorm statistics
    results = {"loss": loss_sum / sample_count}
    if metrics is not None:
        results.update(compute_metrics(metrics))
    if scaler.is_enabled():
        results["skipped_steps"] = skipped_steps
    return results


def _optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    grad_clip: float | None,
    step_scheduler: Any | None,
) -> int:
    """Clip, step through the scaler, step a per-step scheduler; return 1 if fp16 skipped the step."""
    if grad_clip is not None:
        scaler.unscale_(
            optimizer
        )  # clip the true gradients, not the scaled ones (no-op without fp16)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scale_before = scaler.get_scale()
    scaler.step(optimizer)  # fp16: skipped if any gradient is inf/NaN ...
    scaler.update()  # ... and then the scale shrinks
    skipped = scaler.get_scale() < scale_before
    if step_scheduler is not None and not skipped:
        step_scheduler.step()  # a skipped step is not a step of the schedule
    return int(skipped)


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
    mode: str | None = None,
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
    - ``resume``: a ``last.pt`` to continue from: weights, optimizer, scheduler, history and
      random state are restored, and training goes on up to ``epochs`` in total. The run
      continues exactly as it would have without the interruption, so it keeps the saved
      learning rates: an optimizer that asks for other rates is refused with an explanation
      (to go on with a new rate, start a new run from the saved weights).
    - ``monitor``: the column that decides "best", default "val_loss" ("train_loss" without
      validation data); ``mode``: "min" or "max", by default "min" for a loss and the
      metric's own ``higher_is_better`` for a torchmetrics metric.
      ``patience``: stop after this many epochs without improvement.
    - ``log_dir``: write TensorBoard scalars there (``tensorboard --logdir <log_dir>``).
    - ``progress``: a progress bar per epoch and one summary line per epoch.
    - ``live_plot``: in a notebook, redraw the loss curves after every epoch.

    Under ``torchrun --nproc-per-node N`` the same call trains with DistributedDataParallel
    (``pdl.distributed``): the history is the same on every rank, only rank 0 prints and
    writes files, and ``model`` ends up trained.

    ``model`` is returned in eval mode, ready for predictions (``train_one_epoch`` switches
    it back to train mode).

    Every argument is checked before the first batch; see ``pdl.arguments``. Ctrl-C
    (KeyboardInterrupt) stops training cleanly: the model keeps what it learned, the history
    of the finished epochs is returned (``history.interrupted`` is True) and the checkpoints
    on disk stay intact. A NaN/inf loss raises ``NonFiniteLossError``.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> data = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))] * 4
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> history = fit(model, data, data, loss_fn=nn.CrossEntropyLoss(), optimizer=opt,
        ...               epochs=2, device="cpu", progress=False)
        >>> history.keys()
        ['epoch', 'train_loss', 'val_loss', 'lr', 'seconds']
    """
    # distributed: under torchrun, join the process group; each rank gets its own GPU
    device, created_group = distributed.setup(get_device(device))
    check_training_arguments(model, loss_fn, optimizer, grad_clip, accumulate_steps)
    check_fit_arguments(train_loader, val_loader, epochs=epochs, patience=patience, scheduler=scheduler,
                        scheduler_interval=scheduler_interval, optimizer=optimizer)  # fmt: skip
    model.to(device)
    policy = precision_policy(device, precision)
    scaler = policy.make_scaler()  # a pass-through object unless fp16
    train_metrics, val_metrics = metric_copies(metrics, device)
    columns = run_columns(train_metrics, val_loader is not None, optimizer, scaler.is_enabled())
    best = Monitor.choose(monitor, mode, columns, train_metrics)
    check_plateau_mode(scheduler, best.column, best.mode)
    requested_lrs = requested_learning_rates(
        optimizer
    )  # what this run asks for, before any training
    generator = loader_generator(train_loader)  # its state goes into every checkpoint
    if not distributed.is_main_process():  # distributed: only rank 0 prints, logs and writes files
        progress, live_plot, log_dir, checkpoint_dir = False, False, None, None
    if checkpoint_dir is not None:
        checkpoint_dir, removed = prepare_checkpoint_dir(checkpoint_dir)
        if removed:
            print(f"Removed {len(removed)} temporary file(s) that an interrupted run left in {checkpoint_dir}: "
                  + ", ".join(p.name for p in removed))  # fmt: skip

    history, start_epoch = History(), 1
    if resume is not None:
        # Loaded on the CPU: the saved random states must stay CPU tensors, and load_state_dict
        # copies the weights and the optimizer's state onto the model's device itself.
        done, rows, saved_monitor = restore_training_state(
            load_checkpoint(resume), resume, model=model, optimizer=optimizer,
            scheduler=scheduler, scaler=scaler, monitor=best.state_dict(), requested_lrs=requested_lrs,
            generator=generator, epochs=epochs,
        )  # fmt: skip
        history, start_epoch = History(rows), done + 1
        best.load_state_dict(saved_monitor)
        warn_if_workers_persist(train_loader)
        if progress:
            print(f"Resumed from {resume} after epoch {done}.")

    # distributed: DDP averages the gradients over the ranks; each rank trains on its share
    trained_model = distributed.wrap_model(model, device)  # `model` itself in one process
    train_loader = distributed.shard_for_training(train_loader)
    val_loader = distributed.shard_for_evaluation(val_loader) if val_loader is not None else None
    writer = tensorboard_writer(log_dir)
    live = LivePlot() if live_plot else None
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, epochs + 1):
            started = time.perf_counter()
            rates = learning_rates(optimizer)  # the rates this epoch starts with
            distributed.set_epoch(
                train_loader, epoch
            )  # distributed: a new shuffle, the same on every rank
            train = train_one_epoch(
                trained_model, train_loader, loss_fn, optimizer,
                device=device, policy=policy, scaler=scaler, metrics=train_metrics,
                step_scheduler=scheduler if scheduler_interval == "step" else None,
                grad_clip=grad_clip, accumulate_steps=accumulate_steps,
                epoch=epoch, progress=progress,
            )  # fmt: skip
            row: dict[str, float] = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}}
            if val_loader is not None:
                val = evaluate(
                    model, val_loader, loss_fn, device=device, metrics=val_metrics, policy=policy
                )
                check_validation_loss(val, epoch, train["loss"])
                row.update({f"val_{k}": v for k, v in val.items()})
            row.update(rates)
            row["seconds"] = distributed.max_over_ranks(
                time.perf_counter() - started
            )  # distributed: slowest rank
            history.rows.append(row)
            improved = best.update(row)
            if scheduler is not None and scheduler_interval == "epoch":
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(row[best.column])
                else:
                    scheduler.step()

            if writer is not None:
                log_scalars(writer, row)
            if live is not None:
                live.update(history)
            if progress:
                tqdm.write(summary_line(row, epochs))
            if checkpoint_dir is not None:
                state = training_state(
                    epoch, model, optimizer, scheduler=scheduler, scaler=scaler, history=history.rows,
                    monitor=best.state_dict(), requested_lrs=requested_lrs, generator=generator,
                )  # fmt: skip
                # best.pt first: if the run dies in between, last.pt (the resume point) is the
                # older one, and resuming repeats this epoch, which writes best.pt again.
                if improved:
                    save_checkpoint(state, checkpoint_dir / "best.pt")
                save_checkpoint(state, checkpoint_dir / "last.pt")
            if patience is not None and best.epochs_without_improvement >= patience:
                if progress:
                    print(f"Early stopping: {best.column} has not improved for {patience} epochs "
                          f"(best {best.best:.4g}).")  # fmt: skip
                break
        distributed.barrier()  # distributed: return once rank 0 has written its checkpoints
    except KeyboardInterrupt:
        history.interrupted = True
        distributed.leave(
            created_group
        )  # distributed: the ranks are out of step: let the others stop
        if distributed.is_main_process():  # distributed: one message, not one per rank
            print(
                f"Interrupted during epoch {epoch}: returning the history of {len(history)} "
                "finished epochs. The model keeps its current weights"
                + (f"; checkpoints in {checkpoint_dir} are intact." if checkpoint_dir else ".")
            )
    except BaseException:
        distributed.leave(
            created_group
        )  # distributed: an error must not leave the other ranks waiting
        raise
    finally:
        if writer is not None:
            writer.close()
        model.eval()  # ready for predictions; train_one_epoch switches back to train mode
    return history
