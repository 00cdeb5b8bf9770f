"""What ``fit`` records and reports: the ``History`` of epochs, the monitored "best", the log lines.

- ``History``: one row per epoch (losses, metrics, learning rates, seconds), with columns,
  ``to_dict()`` and ``plot()``.
- ``Monitor``: which column decides "best" (for ``best.pt`` and early stopping), in which
  direction, and how many epochs since it last improved.
- ``learning_rates``, ``summary_line``, ``tensorboard_writer``, ``log_scalars``: the columns
  for the learning rates, the line printed per epoch, the TensorBoard scalars.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torchmetrics import Metric

from pdl.plot import plot_history

if TYPE_CHECKING:  # imported for the type hints only: tensorboard loads when logging is asked for
    from matplotlib.axes import Axes
    from torch.utils.tensorboard import SummaryWriter


@dataclass
class History:
    """Per-epoch records of a ``fit`` run: losses, metrics, learning rates and seconds.

    ``history["val_loss"]`` is the list of validation losses, one per epoch;
    ``history.to_dict()`` gives every column; ``history.plot()`` draws the curves.
    With fp16 training, ``train_skipped_steps`` counts the steps the GradScaler skipped.

    Example:
        >>> h = History([{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": 0.5}])
        >>> h["train_loss"], len(h)
        ([0.9, 0.5], 2)
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False  # True when Ctrl-C ended the run early

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

    def plot(self, **kwargs: Any) -> Axes:
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
# The monitored column: what "best" means
# --------------------------------------------------------------------------------------


@dataclass
class Monitor:
    """The column that decides "best", its direction ("min" or "max"), the best value so far.

    Build it with ``Monitor.choose``, which checks the column and finds the direction.

    Example:
        >>> m = Monitor("val_loss", "min")
        >>> [m.update({"epoch": e, "val_loss": v}) for e, v in enumerate([0.9, 0.7, 0.8], start=1)]
        [True, True, False]
        >>> m.best, m.epochs_without_improvement
        (0.7, 1)
    """

    column: str
    mode: str
    best: float = math.nan  # nan: no epoch yet
    epochs_without_improvement: int = 0

    @classmethod
    def choose(
        cls,
        column: str | None,
        mode: str | None,
        columns: list[str],
        metrics: Mapping[str, Metric] | None,
    ) -> Monitor:
        """The monitor for a run whose rows will have ``columns``; ``column=None`` means the validation loss.

        ``mode=None`` finds the direction: "min" for a loss; for a torchmetrics metric its own
        ``higher_is_better``. Anything else needs an explicit ``mode``.

        Example:
            >>> import torchmetrics
            >>> Monitor.choose("val_mae", None, ["train_loss", "val_mae"], {"mae": torchmetrics.MeanAbsoluteError()}).mode
            'min'
        """
        column = column or ("val_loss" if "val_loss" in columns else "train_loss")
        if column not in columns:
            raise KeyError(
                f"monitor={column!r} is not a column of this run, so it could never pick a best epoch; "
                f"the columns will be: {', '.join(columns)}. Pick one of them"
            )
        if mode is None:
            mode = _direction(column, metrics)
        if mode not in ("min", "max"):
            raise ValueError(
                f"mode must be 'min' (lower is better) or 'max' (higher is better), not {mode!r}"
            )
        return cls(column, mode)

    def update(self, row: Mapping[str, float]) -> bool:
        """Take the epoch's ``row``; return True when its value is the best so far.

        Example:
            >>> Monitor("val_accuracy", "max").update({"epoch": 1, "val_accuracy": 0.8})
            True
        """
        value = row[self.column]
        if not math.isfinite(value):
            raise ValueError(
                f"{self.column} is {value} after epoch {int(row['epoch'])}, so no epoch can be called the best. "
                "A nan metric usually means it saw no samples or divided by zero; check the data of that split."
            )
        improved = math.isnan(self.best) or (
            value < self.best if self.mode == "min" else value > self.best
        )
        if improved:
            self.best, self.epochs_without_improvement = value, 0
        else:
            self.epochs_without_improvement += 1
        return improved

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the monitor, so that a resumed run knows the best so far.

        Example:
            >>> Monitor("val_loss", "min").state_dict()["mode"]
            'min'
        """
        return {"column": self.column, "mode": self.mode, "best": self.best,
                "epochs_without_improvement": self.epochs_without_improvement}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what ``state_dict`` returned (the column and mode come from ``fit``'s arguments).

        Example:
            >>> m = Monitor("val_loss", "min")
            >>> m.load_state_dict({"best": 0.5, "epochs_without_improvement": 2})
            >>> m.best
            0.5
        """
        self.best, self.epochs_without_improvement = (
            state["best"],
            state["epochs_without_improvement"],
        )


def _direction(column: str, metrics: Mapping[str, Metric] | None) -> str:
    if column.endswith("loss"):
        return "min"
    name = column.split("_", 1)[1] if column.startswith(("train_", "val_")) else column
    metric = metrics[name] if metrics is not None and name in metrics else None
    better = getattr(metric, "higher_is_better", None)
    if better is None:
        raise ValueError(
            f"cannot tell whether a higher or a lower {column!r} is better: pass mode='max' (e.g. an accuracy) "
            "or mode='min' (e.g. an error)"
        )
    return "max" if better else "min"


# --------------------------------------------------------------------------------------
# Learning rates, the summary line, TensorBoard
# --------------------------------------------------------------------------------------


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate of every parameter group: ``{"lr": ...}`` for one group, else ``lr_<name>``.

    A group's name is its "name" entry (``pdl.transfer.param_groups`` sets one), else its index.

    Example:
        >>> from torch import nn
        >>> head, body = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> learning_rates(torch.optim.SGD([{"params": head.parameters(), "lr": 0.1, "name": "fc"},
        ...                                 {"params": body.parameters(), "lr": 0.01}]))
        {'lr_fc': 0.1, 'lr_1': 0.01}
    """
    groups = optimizer.param_groups
    if len(groups) == 1:
        return {"lr": float(groups[0]["lr"])}
    return {
        f"lr_{group.get('name', index)}": float(group["lr"]) for index, group in enumerate(groups)
    }


def run_columns(metrics: Mapping[str, Metric] | None, validate: bool, optimizer: torch.optim.Optimizer,
                fp16: bool) -> list[str]:  # fmt: skip
    """The columns every row of a run will have, known before it trains (to check ``monitor``).

    Example:
        >>> from torch import nn
        >>> run_columns(None, True, torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1), fp16=False)
        ['epoch', 'train_loss', 'val_loss', 'lr', 'seconds']
    """
    names = ["loss", *(metrics.keys() if metrics is not None else [])]
    columns = ["epoch", *(f"train_{n}" for n in names), *(["train_skipped_steps"] if fp16 else [])]
    if validate:
        columns += [f"val_{n}" for n in names]
    return [*columns, *learning_rates(optimizer), "seconds"]


def summary_line(row: Mapping[str, float], epochs: int) -> str:
    """The line ``fit`` prints after an epoch.

    Example:
        >>> summary_line({"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "lr": 0.001, "seconds": 1.23}, 3)
        'epoch 2/3  train_loss 0.5000  val_loss 0.6000  lr 0.001  1.2s'
    """
    parts = [f"epoch {int(row['epoch'])}/{epochs}"]
    for key, value in row.items():
        if key.startswith(("train_", "val_")):
            parts.append(
                f"{key} {value:.4f}" if not key.endswith("steps") else f"{key} {int(value)}"
            )
    parts += [
        f"{key} {value:.3g}" for key, value in row.items() if key == "lr" or key.startswith("lr_")
    ]
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


def tensorboard_writer(log_dir: str | os.PathLike | None) -> SummaryWriter | None:
    """A ``SummaryWriter`` for ``log_dir``, or None (imported only when logging is asked for).

    Example:
        >>> tensorboard_writer(None) is None
        True
    """
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def log_scalars(writer: SummaryWriter, row: Mapping[str, float]) -> None:
    """Write one epoch's row: tags "loss/train" and "loss/val" put the splits side by side.

    Example:
        >>> import tempfile
        >>> writer = tensorboard_writer(tempfile.mkdtemp())
        >>> log_scalars(writer, {"epoch": 1, "train_loss": 0.9, "val_loss": 1.1, "lr": 0.1, "seconds": 2.0})
        >>> writer.close()
    """
    epoch = int(row["epoch"])
    for key, value in row.items():
        if key.startswith(("train_", "val_")):
            split, name = key.split("_", 1)
            writer.add_scalar(f"{name}/{split}", value, epoch)
        elif key == "lr" or key.startswith("lr_"):
            writer.add_scalar(key.replace("_", "/", 1), value, epoch)
    writer.add_scalar("seconds_per_epoch", row["seconds"], epoch)
    writer.flush()
