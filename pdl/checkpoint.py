"""Saving and loading training state safely.

A checkpoint is a plain dict of ``state_dict``s, numbers and tensors, so it loads with
``torch.load(path, weights_only=True)``: no pickled code runs when you open a file someone
sent you. It is written *atomically*: first to a temporary file next to the target, flushed
to disk, then renamed over the old file. Ctrl-C during the write is held back until the file
is complete; a crash (or SIGKILL) in the middle leaves the previous checkpoint as it was, and
at worst a temporary file that ``remove_stale_temporary_files`` cleans up when the next run
starts in that folder.

``training_state`` and ``restore_training_state`` are the matched pair ``pdl.fit`` uses:
the first says what a resumable checkpoint holds, the second checks that it fits the run
that resumes it (before changing anything) and puts every piece back.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import secrets
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

FORMAT = "pdl-checkpoint-2"  # what fit writes; resume refuses anything else


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, unsafe or does not fit this run."""


# --------------------------------------------------------------------------------------
# Writing and reading files
# --------------------------------------------------------------------------------------

# ".last.pt.<8 hex digits>.tmp": the temporary files save_checkpoint writes (and only those).
_TEMPORARY = re.compile(r"^\.(?P<target>.+\.pt)\.[0-9a-f]{8}\.tmp$")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically; return the path.

    Ctrl-C while the file is written is deferred: the write completes, then the
    ``KeyboardInterrupt`` is raised. The file gets the usual permissions (0644 with the
    usual umask), like any file ``torch.save`` writes.

    Example:
        >>> import tempfile, torch.nn as nn
        >>> folder = tempfile.mkdtemp()
        >>> p = save_checkpoint({"model": nn.Linear(2, 1).state_dict()}, f"{folder}/last.pt")
        >>> sorted(load_checkpoint(p)["model"])
        ['bias', 'weight']
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"cannot write the checkpoint {path}: it is a folder; give a file name such as {path / 'last.pt'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lives in the same folder: os.replace is only atomic within one
    # file system. O_EXCL: never overwrite anything; mode 0o666 minus the umask, as open() does.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    with _ctrl_c_deferred():
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
        )  # O_BINARY: Windows
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # our own temporary file: never leave it behind
            raise
    return path


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C, Jupyter's "interrupt") until the block ends, then deliver it.

    Inside ``torch.save`` a KeyboardInterrupt would surface as a ``RuntimeError`` from the zip
    writer, escaping ``fit``'s Ctrl-C handling. Signals can only be handled in the main thread;
    elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(
                    signal.SIGINT, received[0]
                )  # Python's default handler raises KeyboardInterrupt
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def remove_stale_temporary_files(folder: str | os.PathLike, older_than: float = 60.0) -> list[Path]:
    """Delete temporary files that ``save_checkpoint`` left in ``folder`` when its process was killed.

    Only files of save_checkpoint's own naming (``.<name>.pt.<8 hex digits>.tmp``) that have
    not been written to for ``older_than`` seconds (so not another run's write in progress)
    are removed; every other file stays. Returns what was removed.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in (".last.pt.3f9a0c12.tmp", "notes.tmp"):
        ...     _ = (folder / name).write_bytes(b"")
        >>> [p.name for p in remove_stale_temporary_files(folder, older_than=0)]
        ['.last.pt.3f9a0c12.tmp']
        >>> sorted(p.name for p in folder.iterdir())
        ['notes.tmp']
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for path in sorted(folder.iterdir()):
        if (
            _TEMPORARY.match(path.name)
            and path.is_file()
            and now - path.stat().st_mtime >= older_than
        ):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def prepare_checkpoint_dir(folder: str | os.PathLike) -> tuple[Path, list[Path]]:
    """Create ``folder`` for checkpoints (or check it), clean pdl's stale temporary files there.

    Raises before any training when the folder cannot hold checkpoints (it is a file, or not
    writable). Returns the folder and the temporary files it removed.

    Example:
        >>> import tempfile
        >>> folder, removed = prepare_checkpoint_dir(Path(tempfile.mkdtemp()) / "runs" / "mlp")
        >>> folder.is_dir(), removed
        (True, [])
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"checkpoint_dir {folder} is a file, not a folder: fit writes last.pt and best.pt into a folder. "
            f"Pass a folder (e.g. {folder.with_suffix('')}) or remove the file."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(
            f"cannot create checkpoint_dir {folder} ({error.strerror}): choose a folder you can write to"
        ) from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(
            f"checkpoint_dir {folder} is not writable: choose a folder you can write to"
        )
    return folder, remove_stale_temporary_files(folder)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise ``CheckpointError`` if it is unusable.

    A file that holds pickled Python objects (code could run while unpickling) is refused,
    whoever wrote it: pdl only opens plain tensor files.

    Example:
        >>> load_checkpoint("/nonexistent.pt")
        Traceback (most recent call last):
        ...
        pdl.checkpoint.CheckpointError: No checkpoint at /nonexistent.pt: check the path (pdl.fit writes last.pt and best.pt into its checkpoint_dir)
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file (did you mean {path / 'last.pt'}?)"
        )
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at {path}: check the path (pdl.fit writes last.pt and best.pt into its checkpoint_dir)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        if not holds_pickled_objects(error):
            raise CheckpointError(
                f"Could not read the checkpoint {path} ({path.stat().st_size} bytes): it is truncated, "
                f"corrupt or was not written by torch.save ({type(error).__name__}). A checkpoint that "
                "was being written when its process died is never left under its real name, so this "
                "file came from elsewhere: copy it again, or use another checkpoint."
            ) from None
        raise CheckpointError(
            f"Refused to load {path}: it is not a plain tensor file. It holds pickled Python objects "
            "(a whole model, or a class of its own), and unpickling them could run any code in it. "
            "pdl only loads tensors, numbers, strings and containers of them. If you wrote the file "
            "yourself, save model.state_dict() (or a dict of state_dicts) instead of the objects."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a dict (a checkpoint or a state_dict)"
        )
    return state


def holds_pickled_objects(error: BaseException) -> bool:
    """True when ``torch.load(..., weights_only=True)`` refused a file for the Python objects in it.

    Damaged files raise other errors (or an unpickling error without a GLOBAL: garbage bytes).

    Example:
        >>> import pickle
        >>> holds_pickled_objects(pickle.UnpicklingError("Unsupported global: GLOBAL os.system"))
        True
    """
    return isinstance(error, pickle.UnpicklingError) and "GLOBAL" in str(error)


# --------------------------------------------------------------------------------------
# Random number generator state: what makes a resumed run continue exactly
# --------------------------------------------------------------------------------------


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Capture the Python, NumPy and torch RNG states (and ``generator``'s, if given).

    Stored so that a resumed run shuffles and drops out exactly like an uninterrupted one.
    Everything is kept as tensors, lists and numbers so the checkpoint stays
    ``weights_only``-loadable.

    Example:
        >>> state = rng_state(); a = torch.rand(1)
        >>> restore_rng_state(state); torch.equal(a, torch.rand(1))
        True
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what ``rng_state`` captured.

    Example:
        >>> restore_rng_state(rng_state())
    """
    random.setstate(state["python"])  # torch.save keeps the nested tuples setstate wants
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def loader_generator(loader: Iterable) -> torch.Generator | None:
    """The random generator that shuffles ``loader``, if it has its own (saved for resuming).

    Example:
        >>> g = torch.Generator()
        >>> loader_generator(DataLoader(range(4), shuffle=True, generator=g)) is g
        True
    """
    if not isinstance(loader, DataLoader):
        return None
    sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    for candidate in (loader, sampler, getattr(sampler, "sampler", None)):
        generator = getattr(candidate, "generator", None)
        if isinstance(generator, torch.Generator):
            return generator
    return None


def warn_if_workers_persist(loader: Iterable) -> None:
    """Warn when a resumed run cannot repeat the original: workers that keep their random state.

    Example:
        >>> warn_if_workers_persist([(torch.zeros(1), torch.zeros(1))])  # not a DataLoader: silent
    """
    if isinstance(loader, DataLoader) and loader.persistent_workers and loader.num_workers > 0:
        warnings.warn(
            "this training loader keeps its worker processes between epochs (persistent_workers=True): their "
            "random state is not in the checkpoint, so the resumed run will shuffle and augment differently "
            "from an uninterrupted one. For an exact resume use persistent_workers=False (pdl.data.make_loader "
            "does), or num_workers=0.",
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------
# The matched pair fit uses: what a resumable checkpoint holds, and putting it back
# --------------------------------------------------------------------------------------


def requested_learning_rates(optimizer: torch.optim.Optimizer) -> list[float]:
    """The learning rate asked for in each parameter group, before any scheduler changed it.

    Example:
        >>> requested_learning_rates(torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1))
        [0.1]
    """
    return [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]


def training_state(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    history: list[dict[str, float]],
    monitor: dict[str, Any],
    requested_lrs: list[float],
    generator: torch.Generator | None,
) -> dict[str, Any]:
    """Everything a run needs to continue exactly after ``epoch``: the checkpoint ``fit`` writes.

    Example:
        >>> model = nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> state = training_state(1, model, opt, scheduler=None, scaler=torch.amp.GradScaler("cpu", enabled=False),
        ...                        history=[], monitor={"column": "train_loss"}, requested_lrs=[0.1], generator=None)
        >>> state["format"], state["epoch"], state["optimizer_class"]
        ('pdl-checkpoint-2', 1, 'SGD')
    """
    return {
        "format": FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "optimizer_class": type(optimizer).__name__,
        "requested_lrs": requested_lrs,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scheduler_class": type(scheduler).__name__ if scheduler is not None else None,
        "scaler": scaler.state_dict(),  # {} when the scaler is disabled (anything but fp16)
        "history": history,
        "monitor": monitor,
        "rng": rng_state(generator),
    }


def restore_training_state(
    state: dict[str, Any],
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    monitor: dict[str, Any],
    requested_lrs: list[float],
    generator: torch.Generator | None,
    epochs: int,
) -> tuple[int, list[dict[str, float]], dict[str, Any]]:
    """Check that ``state`` (read from ``path``) fits this run, then restore it; return (epoch, history, monitor).

    Every check runs before anything is changed, so a refused checkpoint leaves the model and
    the optimizer as they were. Resuming continues the saved run exactly, with the saved
    optimizer state: its learning rates included. An optimizer that asks for other learning
    rates than the saved run did is refused, not silently overruled (see ``pdl.fit``).

    Example:
        >>> model = nn.Linear(2, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> off = torch.amp.GradScaler("cpu", enabled=False)
        >>> state = training_state(1, model, opt, scheduler=None, scaler=off, history=[{"epoch": 1}],
        ...                        monitor={"column": "train_loss", "mode": "min"}, requested_lrs=[0.1], generator=None)
        >>> restore_training_state(state, "last.pt", model=model, optimizer=opt, scheduler=None, scaler=off,
        ...                        monitor={"column": "train_loss", "mode": "min"}, requested_lrs=[0.1],
        ...                        generator=None, epochs=3)[:2]
        (1, [{'epoch': 1}])
    """
    _check_resumable(state, path, model, optimizer, scheduler, monitor, requested_lrs, epochs)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] and scaler.is_enabled():  # fp16 both times: the loss scale continues
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"], generator)
    return state["epoch"], list(state["history"]), state["monitor"]


def _check_resumable(
    state, path, model, optimizer, scheduler, monitor, requested_lrs, epochs
) -> None:
    if state.get("format") != FORMAT:
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(
                f"{path} holds a plain state_dict (weights only), not a checkpoint written by pdl.fit, so "
                "there is no optimizer, history or random state to resume. To start from these weights: "
                "model.load_state_dict(pdl.checkpoint.load_checkpoint(path)), then fit without resume=."
            )
        found = (
            f"format {state['format']!r}"
            if "format" in state
            else f"keys {', '.join(map(str, list(state)[:6]))}"
        )
        raise CheckpointError(
            f"{path} is not a checkpoint that this pdl's fit can resume ({found}; expected format {FORMAT!r}). "
            "Start a new run; to reuse its weights: model.load_state_dict(pdl.checkpoint.load_checkpoint(path)['model'])."
        )
    if state["epoch"] >= epochs:
        raise ValueError(
            f"{path} was saved after epoch {state['epoch']}, and epochs={epochs} counts every epoch of the run, "
            f"the resumed ones included: nothing is left to train. Pass epochs > {state['epoch']}."
        )
    saved = state["monitor"]
    if (saved["column"], saved["mode"]) != (monitor["column"], monitor["mode"]):
        # "best" holds a value of the checkpoint's monitor: comparing it with another quantity
        # (an accuracy against a loss) would pick the wrong best.pt.
        raise ValueError(
            f"{path} was written while monitoring {saved['column']!r} (mode {saved['mode']!r}), but this run "
            f"monitors {monitor['column']!r} (mode {monitor['mode']!r}). Resume with monitor={saved['column']!r}, "
            f"mode={saved['mode']!r} (or start a new run)."
        )
    _check_model_fits(state["model"], model, path)
    if state["optimizer_class"] != type(optimizer).__name__:
        raise CheckpointError(
            f"{path} was written by a run with torch.optim.{state['optimizer_class']}, and this run passes "
            f"torch.optim.{type(optimizer).__name__}: their states do not mix. Resume with "
            f"torch.optim.{state['optimizer_class']}, or start a new run from the saved weights."
        )
    saved_sizes = [len(group["params"]) for group in state["optimizer"]["param_groups"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        raise CheckpointError(
            f"{path} holds an optimizer with parameter groups of {saved_sizes} tensors, this one has {sizes}: "
            "build the optimizer over the same parameters (the same freezing and param_groups) as the saved run."
        )
    if [round(lr, 12) for lr in state["requested_lrs"]] != [round(lr, 12) for lr in requested_lrs]:
        raise ValueError(
            f"{path} continues a run that asked for learning rate(s) {state['requested_lrs']}, but the optimizer "
            f"passed now asks for {requested_lrs}. Resuming continues the saved run exactly, its learning "
            "rates and scheduler included, so it cannot use the new ones. Either pass an optimizer with the "
            "saved rates, or start a new run from the saved weights with the new rate: "
            "model.load_state_dict(pdl.checkpoint.load_checkpoint(path)['model']), then fit without resume=."
        )
    saved_scheduler, now = (
        state["scheduler_class"],
        type(scheduler).__name__ if scheduler is not None else None,
    )
    if saved_scheduler != now:
        raise ValueError(
            f"{path} was written with scheduler {saved_scheduler}, and this run passes {now}: "
            + (
                f"pass the same {saved_scheduler} to continue its schedule."
                if saved_scheduler
                else "the saved run had none, so there is no schedule to continue; resume without scheduler=."
            )
        )


def _check_model_fits(saved: dict[str, torch.Tensor], model: nn.Module, path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    reshaped = [k for k in saved if k in own and saved[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        parts = [
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing from the file", missing), ("unknown to the model", unexpected),
                                ("of another shape", reshaped))
            if keys
        ]  # fmt: skip
        raise CheckpointError(
            f"{path} holds the weights of another model than this {type(model).__name__} ({'; '.join(parts)}). "
            "Resume with the same architecture (and the same number of classes) as the saved run."
        )
