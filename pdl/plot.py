"""Plots the course draws again and again: training curves, image grids, confusion matrices.

Every function draws on a matplotlib ``Axes`` (a new figure unless you pass ``ax=``) and
returns it, so you can add titles, save the figure, or put several plots side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator


def plot_history(
    history: Any,
    *,
    metric: str = "loss",
    ax: plt.Axes | None = None,
    log: bool | None = None,
    label: str | None = None,
) -> plt.Axes:
    """Training and validation curves of one metric, together, against the epoch.

    ``history`` is a ``pdl.History`` or a dict of columns (``{"train_loss": [...],
    "val_loss": [...]}``). Losses get a log-scale y axis by default: on a linear axis every
    loss curve looks like an "L", and the late progress (or the growing gap between training
    and validation that signals overfitting) is invisible. ``label`` prefixes the legend,
    so several runs can share one axes.

    Example:
        >>> ax = plot_history({"train_loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, 0.6]})
        >>> ax.get_yscale()
        'log'
    """
    columns = _columns(history)
    log = ("loss" in metric) if log is None else log
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    found = False
    for split, style in (("train", "-"), ("val", "--")):
        values = columns.get(f"{split}_{metric}")
        if values is None:
            continue
        found = True
        name = f"{label} {split}" if label else split
        ax.plot(_epochs(columns, values), values, style, marker="o", markersize=3, label=name)
    if not found:
        raise KeyError(f"no train_{metric} or val_{metric} column; columns: {', '.join(columns)}")
    return _finish_epoch_axes(ax, metric, log)


def compare_histories(
    histories: Mapping[str, Any],
    *,
    metric: str = "loss",
    split: str = "val",
    ax: plt.Axes | None = None,
    log: bool | None = None,
) -> plt.Axes:
    """One curve per run (e.g. per optimizer or activation) for ``{split}_{metric}``.

    Example:
        >>> runs = {"sgd": {"val_loss": [1.0, 0.8]}, "adam": {"val_loss": [0.7, 0.4]}}
        >>> len(compare_histories(runs).get_lines())
        2
    """
    log = ("loss" in metric) if log is None else log
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    key = f"{split}_{metric}"
    for name, history in histories.items():
        columns = _columns(history)
        if key not in columns:
            raise KeyError(f"run {name!r} has no column {key!r}")
        values = columns[key]
        ax.plot(_epochs(columns, values), values, marker="o", markersize=3, label=name)
    return _finish_epoch_axes(ax, key, log)


def _columns(history: Any) -> dict[str, list[float]]:
    """A ``History`` or a mapping of columns, as a plain dict of columns."""
    return history.to_dict() if hasattr(history, "to_dict") else dict(history)


def _epochs(columns: Mapping[str, list[float]], values: list[float]) -> list[float]:
    """The epoch column, or 1, 2, ... when the history has none."""
    return columns.get("epoch", list(range(1, len(values) + 1)))


def _finish_epoch_axes(ax: plt.Axes, quantity: str, log: bool) -> plt.Axes:
    """Scale, labels, grid and legend shared by the per-epoch curve plots."""
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{quantity} (log scale)" if log else quantity)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return ax


def show_images(
    images: torch.Tensor | Sequence[torch.Tensor],
    labels: Sequence[int] | torch.Tensor | None = None,
    *,
    predictions: Sequence[int] | torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    ncols: int = 8,
    size: float = 1.6,
) -> plt.Figure:
    """A grid of images with their labels; with ``predictions``, wrong ones are titled in red.

    Images are ``(N, C, H, W)`` or ``(N, H, W)`` tensors; pass the ``mean``/``std`` used for
    normalization to show them in their original colours.

    Example:
        >>> fig = show_images(torch.rand(4, 1, 28, 28), [0, 1, 2, 3], predictions=[0, 1, 0, 3])
        >>> [ax.title.get_color() for ax in fig.axes][:3]
        ['black', 'black', 'red']
    """
    images = torch.stack(list(images)) if not isinstance(images, torch.Tensor) else images
    images = images.detach().cpu().float()
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if mean is not None and std is not None:
        channels = images.shape[1]
        images = images * torch.as_tensor(std).reshape(-1, 1, 1).expand(
            channels, 1, 1
        ) + torch.as_tensor(mean).reshape(-1, 1, 1).expand(channels, 1, 1)
    n = len(images)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows + 0.3 * nrows), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        picture = images[i].permute(1, 2, 0).clamp(0, 1).numpy()
        ax.imshow(
            picture.squeeze(-1) if picture.shape[-1] == 1 else picture,
            cmap="gray" if picture.shape[-1] == 1 else None,
        )
        if labels is None:
            continue
        true = _name(labels[i], class_names)
        if predictions is None:
            ax.set_title(true, fontsize=8, color="black")
        else:
            predicted = _name(predictions[i], class_names)
            wrong = int(predictions[i]) != int(labels[i])
            ax.set_title(
                f"{predicted}\n(true: {true})" if wrong else predicted,
                fontsize=8,
                color="red" if wrong else "black",
            )
    fig.tight_layout()
    return fig


def _name(index: Any, class_names: Sequence[str] | None) -> str:
    index = int(index)
    return class_names[index] if class_names is not None else str(index)


def plot_confusion_matrix(
    matrix: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    normalize: bool = False,
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Draw a confusion matrix (rows: true class, columns: predicted) with counts in the cells.

    ``normalize=True`` divides each row by its total, so the diagonal shows each class's recall.

    Example:
        >>> ax = plot_confusion_matrix(torch.tensor([[5, 1], [2, 7]]), ["ant", "bee"])
        >>> ax.get_xlabel()
        'predicted'
    """
    matrix = torch.as_tensor(matrix).double()
    if normalize:
        matrix = matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1)
    n = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    side = max(3.5, 0.6 * n + 1.0)  # readable for 2 classes, grows with more
    ax = ax or plt.subplots(figsize=(side + 0.8, side))[1]
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max().item() / 2
    for i in range(n):
        for j in range(n):
            value = matrix[i, j].item()
            text = f"{value:.2f}" if normalize else f"{int(value)}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > threshold else "black",
            )
    return ax


class LivePlot:
    """Loss curves that redraw in a notebook while ``fit`` runs, epoch by epoch.

    Call ``update(history)`` after each epoch with the history so far (a ``History`` or a
    dict of columns); it draws the whole history, so a resumed run shows its earlier epochs
    too. Outside a notebook it draws nothing.

    Example:
        >>> live = LivePlot()
        >>> live.update({"epoch": [1], "train_loss": [0.9], "val_loss": [1.0]})
    """

    def __init__(self, metric: str = "loss") -> None:
        self.metric = metric
        self._display = None

    def update(self, history: Any) -> None:
        """Redraw the curves of ``history`` in the notebook cell that runs ``fit``."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_history(history, metric=self.metric, ax=ax)
        plt.close(fig)  # shown through the display handle, not twice
        if self._display is None:
            self._display = display(fig, display_id=True)
        else:
            self._display.update(fig)
