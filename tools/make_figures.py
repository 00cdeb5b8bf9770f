"""Draw every figure the lecture decks use, by code, into one folder.

The decks in ``slides/`` link their figures as ``figures/<name>.png``. The figures are build
products, never committed: ``tools/build_slides.py`` calls ``generate()`` to write them to
``build/slides/figures/`` next to the rendered HTML and PDF. For the Marp preview in VS Code,
write them next to the decks instead (``slides/figures/`` is git-ignored):

    python tools/make_figures.py                      # -> build/slides/figures/
    python tools/make_figures.py --out slides/figures # for the VS Code preview
    python tools/make_figures.py 04_optimizer_paths   # just one figure

Every number a figure shows is computed when it is drawn: curves come from real (small)
training runs on synthetic data, gradients from autograd, learning rates from torch's
schedulers, parameter counts from torchvision's models. The exceptions are labelled as such:
the published peak throughputs in ``peak_tflops`` (with our estimate for a desktop CPU, next
to a matmul measured on the machine that draws the figure) and the published dates of
``timeline``. Everything is small, so the whole set takes
seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no screen needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402
from torch import nn  # noqa: E402

import pdl  # noqa: E402
from pdl.data import tensor_loader  # noqa: E402
from pdl.metrics import accuracy, confusion_matrix  # noqa: E402
from pdl.plot import compare_histories, plot_confusion_matrix, plot_history  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "build" / "slides" / "figures"
MACHINE_THREADS = torch.get_num_threads()

# One look for every figure: large enough fonts to read on a projector.
STYLE = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "legend.fontsize": 10,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

FIGURES: dict[str, Callable[[], plt.Figure]] = {}


def figure(function: Callable[[], plt.Figure]) -> Callable[[], plt.Figure]:
    """Register ``function`` as the figure ``<function name>.png`` (its name without ``fig_``).

    Example:
        >>> "04_activations" in FIGURES
        True
    """
    FIGURES[function.__name__.removeprefix("fig_")] = function
    return function


# --------------------------------------------------------------------------------------
# Small synthetic data sets and a quiet fit
# --------------------------------------------------------------------------------------


def spirals(
    n: int = 600, classes: int = 3, noise: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved 2-D spirals, one arm per class: a small task a linear model cannot solve.

    Example:
        >>> x, y = spirals(30, classes=3)
        >>> x.shape, y.unique().tolist()
        (torch.Size([30, 2]), [0, 1, 2])
    """
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    radius = torch.rand(n, generator=generator)
    angle = y * (2 * math.pi / classes) + radius * 3.0 + noise * torch.randn(n, generator=generator)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return x, y


def blobs(n: int = 800, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Four overlapping Gaussian blobs in 2-D (two of them close), with class names.

    Example:
        >>> x, y, names = blobs(40)
        >>> x.shape, len(names)
        (torch.Size([40, 2]), 4)
    """
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, 2.5], [0.6, 0.6]])
    y = torch.arange(n) % 4
    x = centres[y] + 0.55 * torch.randn(n, 2, generator=generator)
    return x, y, ["circle", "square", "star", "oval"]


def quiet_fit(
    model: nn.Module,
    train: tuple,
    val: tuple,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
) -> pdl.History:
    """``pdl.fit`` on in-memory tensors, on the CPU, without progress output.

    Example:
        >>> x, y = spirals(64)
        >>> model = nn.Linear(2, 3)
        >>> h = quiet_fit(model, (x, y), (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=2)
        >>> len(h)
        2
    """
    generator = torch.Generator().manual_seed(seed)
    train_loader = tensor_loader(*train, batch_size=batch_size, shuffle=True, generator=generator)
    val_loader = tensor_loader(*val, batch_size=512)
    return pdl.fit(
        model,
        train_loader,
        val_loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        epochs=epochs,
        device="cpu",
        precision="fp32",
        progress=False,
    )


def mlp(
    widths: list[int], *, batch_norm: bool = False, activation: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """Linear layers of the given widths with an activation (and optionally BN) between them.

    Example:
        >>> [type(layer).__name__ for layer in mlp([2, 8, 3], batch_norm=True)]
        ['Linear', 'BatchNorm1d', 'ReLU', 'Linear']
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        last = i == len(widths) - 2
        layers.append(nn.Linear(n_in, n_out, bias=last or not batch_norm))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(activation())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------
# 00 Frameworks and hardware
# --------------------------------------------------------------------------------------


def measured_matmul_tflops(n: int = 1024, repeats: int = 5) -> float:
    """Best-of-``repeats`` float32 matmul throughput of this machine's CPU, in TFLOPS.

    Example:
        >>> measured_matmul_tflops(64, 1) > 0
        True
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(MACHINE_THREADS)  # a big matmul gets every core (see generate)
    try:
        a @ b  # warm-up: the first call pays for thread start-up
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 2 * n**3 / best / 1e12


@figure
def fig_00_peak_tflops() -> plt.Figure:
    # Published peak numbers (vendor specifications) in blue; the desktop CPU has no vendor
    # figure, so its bar is our estimate (hatched); the last bar is measured right now, on
    # whatever machine draws this figure.
    published = [
        ("A100, FP32", 19.5),
        ("RTX 3090, FP32", 35.6),
        ("A100, FP16 tensor cores", 312.0),
        ("TPU v3 board, bf16", 420.0),
    ]
    # cores x clock x FP32 operations per cycle: 10 x ~4 GHz x 32 (two 8-wide AVX2 FMA units).
    estimated = ("10-core desktop CPU, FP32\n(estimate, upper end)", 10 * 4e9 * 32 / 1e12)
    measured = ("this machine's CPU, FP32\n(measured 1024² matmul)", measured_matmul_tflops())
    rows = [estimated, *published, measured]
    names, values = [name for name, _ in rows], [value for _, value in rows]
    colors = ["#c8d4e6"] + ["#8aa4c8"] * len(published) + ["#e07b39"]
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    bars = ax.barh(names, values, color=colors)
    bars[0].set_hatch("//")
    ax.set_xscale("log")
    ax.set_xlabel("peak throughput, TFLOPS (log scale)")
    ax.set_title(
        "Peak TFLOPS: vendor (blue), estimate (hatched), measured here (orange)", fontsize=11
    )
    for bar, value in zip(bars, values, strict=True):
        ax.text(
            value * 1.15,
            bar.get_y() + bar.get_height() / 2,
            f"{value:.3g}",
            va="center",
            fontsize=10,
        )
    ax.set_xlim(min(values) / 2, max(values) * 4)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


@figure
def fig_00_timeline() -> plt.Figure:
    # Milestones of deep learning (published dates), with label heights that keep the crowded
    # last decade readable (positive: above the axis).
    events = [
        (1958, "perceptron\n(Rosenblatt)", 1.0),
        (1986, "backpropagation\n(Rumelhart, Hinton, Williams)", -1.0),
        (1998, "LeNet reads\ncheques", 1.0),
        (2009, "ImageNet", -1.0),
        (2012, "AlexNet wins\nImageNet", 1.0),
        (2015, "ResNet,\nU-Net", -1.0),
        (2016, "AlphaGo", 2.1),
        (2017, "transformer", -2.2),
        (2020, "AlphaFold 2,\nGPT-3", 1.0),
        (2022, "ChatGPT,\nStable Diffusion", -1.0),
    ]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.axhline(0, color="#555", linewidth=1.5)
    for year, label, height in events:
        color = "#e07b39" if year == 2012 else "#1f77b4"
        ax.plot([year, year], [0, height * 0.8], color=color, linewidth=1)
        ax.plot(year, 0, "o", color=color, markersize=7)
        ax.text(
            year,
            height,
            f"{year}\n{label}" if height > 0 else f"{label}\n{year}",
            ha="center",
            va="bottom" if height > 0 else "top",
            fontsize=9,
            color=color,
            fontweight="bold" if year == 2012 else "normal",
        )
    ax.set_xlim(1952, 2026)
    ax.set_ylim(-3.4, 3.4)
    ax.axis("off")
    ax.set_title("Deep learning is old; 2012 was the turn")
    fig.tight_layout()
    return fig


@figure
def fig_00_float_formats() -> plt.Figure:
    # Bit layouts of the three formats; range and precision come from torch.finfo.
    formats = [
        ("float32", torch.float32, 8, 23),
        ("float16", torch.float16, 5, 10),
        ("bfloat16", torch.bfloat16, 8, 7),
    ]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    scale = 0.25  # width of one bit
    for row, (name, dtype, exponent, mantissa) in enumerate(formats):
        y = -row * 1.2
        parts = [
            ("sign", 1, "#d62728"),
            ("exponent", exponent, "#1f77b4"),
            ("mantissa", mantissa, "#2ca02c"),
        ]
        x = 0.0
        for label, bits, color in parts:
            ax.add_patch(
                Rectangle((x, y), bits * scale, 0.8, facecolor=color, alpha=0.75, edgecolor="white")
            )
            if bits > 1:  # the sign bit is too narrow for a label
                short = label if bits * scale >= 1.75 else label[:3]
                ax.text(
                    x + bits * scale / 2,
                    y + 0.4,
                    f"{short} {bits}",
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=9,
                    fontweight="bold",
                )
            x += bits * scale
        info = torch.finfo(dtype)
        ax.text(-0.3, y + 0.4, name, ha="right", va="center", fontsize=12, fontweight="bold")
        ax.text(8.4, y + 0.4, f"max {info.max:.3g}   eps {info.eps:.2g}", va="center", fontsize=11)
    ax.set_xlim(-2.6, 12.6)
    ax.set_ylim(-2.6, 1.0)
    ax.axis("off")
    ax.set_title(
        "Same bits, different trade-off: bf16 keeps fp32's range, fp16 keeps more precision"
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 01 Tensors
# --------------------------------------------------------------------------------------


def _grid(
    ax: plt.Axes,
    values: torch.Tensor,
    x0: float,
    y0: float,
    color: str,
    ghost: tuple[int, int] | None = None,
) -> None:
    """Draw a 2-D tensor as a grid of numbered cells; ``ghost`` is the shape it is stretched to."""
    rows, cols = values.shape
    full_rows, full_cols = ghost or (rows, cols)
    for i in range(full_rows):
        for j in range(full_cols):
            real = i < rows and j < cols
            ax.add_patch(
                Rectangle(
                    (x0 + j, y0 - i),
                    1,
                    1,
                    facecolor=color if real else "white",
                    edgecolor="#555",
                    linestyle="-" if real else ":",
                    alpha=0.8 if real else 1,
                )
            )
            value = values[min(i, rows - 1), min(j, cols - 1)].item()
            ax.text(
                x0 + j + 0.5,
                y0 - i + 0.5,
                f"{value:g}",
                ha="center",
                va="center",
                color="black" if real else "#999",
                fontsize=12,
            )


@figure
def fig_01_broadcasting() -> plt.Figure:
    column = torch.tensor([[0.0], [10.0], [20.0]])  # (3, 1)
    row = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # (1, 4)
    result = column + row  # broadcasting does the work
    fig, ax = plt.subplots(figsize=(9, 2.9))
    _grid(ax, column, 0, 2, "#9ecae1", ghost=(3, 4))
    ax.text(4.6, 1.0, "+", fontsize=22, ha="center", va="center")
    _grid(ax, row, 5.2, 2, "#fdd0a2", ghost=(3, 4))
    ax.text(9.8, 1.0, "=", fontsize=22, ha="center", va="center")
    _grid(ax, result, 10.4, 2, "#c7e9c0")
    ax.text(2, -0.6, f"shape {tuple(column.shape)}", ha="center", fontsize=12)
    ax.text(7.2, -0.6, f"shape {tuple(row.shape)}", ha="center", fontsize=12)
    ax.text(12.4, -0.6, f"shape {tuple(result.shape)}", ha="center", fontsize=12)
    ax.set_xlim(-0.2, 14.6)
    ax.set_ylim(-0.9, 3.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("Broadcasting: size-1 dimensions are stretched (dotted cells are never stored)")
    fig.tight_layout()
    return fig


@figure
def fig_01_strides() -> plt.Figure:
    x = torch.arange(6.0).reshape(2, 3)
    t = x.t()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    # the storage: one flat block of memory shared by both views
    for k, value in enumerate(x.flatten().tolist()):
        ax.add_patch(Rectangle((k, 3.2), 1, 0.8, facecolor="#dadaeb", edgecolor="#555"))
        ax.text(k + 0.5, 3.6, f"{value:g}", ha="center", va="center", fontsize=12)
    ax.text(-0.3, 3.6, "storage", ha="right", va="center", fontsize=12, fontweight="bold")
    _grid(ax, x, 0, 1.2, "#9ecae1")
    ax.text(1.5, -1.3, f"x: shape {tuple(x.shape)}\nstride {x.stride()}", ha="center", fontsize=11)
    _grid(ax, t, 6, 1.2, "#fdd0a2")
    ax.text(
        7.0,
        -2.3,
        f"x.t(): shape {tuple(t.shape)}\nstride {t.stride()}\ncontiguous: {t.is_contiguous()}",
        ha="center",
        fontsize=11,
    )
    ax.set_xlim(-2.5, 10)
    ax.set_ylim(-2.6, 4.3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("One storage, two views: a view only changes shape and strides")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 02 Autograd
# --------------------------------------------------------------------------------------


@figure
def fig_02_graph() -> plt.Figure:
    # The graph autograd really recorded for c = (x * y + z).sum(), read from grad_fn.
    x = torch.randn(3, requires_grad=True)
    y = torch.randn(3, requires_grad=True)
    z = torch.randn(3, requires_grad=True)
    a = x * y
    b = a + z
    c = b.sum()
    total = c.grad_fn
    add = total.next_functions[0][0]
    mul, acc_z = (fn for fn, _ in add.next_functions)
    acc_x, acc_y = (fn for fn, _ in mul.next_functions)
    nodes = {
        "x": (0, 0, "leaf x\n" + type(acc_x).__name__),
        "y": (2.6, 0, "leaf y\n" + type(acc_y).__name__),
        "z": (5.2, 1.4, "leaf z\n" + type(acc_z).__name__),
        "mul": (1.3, 1.4, "a = x * y\n" + type(mul).__name__),
        "add": (3.2, 2.8, "b = a + z\n" + type(add).__name__),
        "sum": (3.2, 4.2, "c = b.sum()\n" + type(total).__name__),
    }
    edges = [("x", "mul"), ("y", "mul"), ("mul", "add"), ("z", "add"), ("add", "sum")]
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    for name, (cx, cy, text) in nodes.items():
        leaf = name in ("x", "y", "z")
        ax.add_patch(
            FancyBboxPatch(
                (cx - 1.1, cy - 0.4),
                2.2,
                0.8,
                boxstyle="round,pad=0.05",
                facecolor="#c7e9c0" if leaf else "#9ecae1",
                edgecolor="#333",
            )
        )
        ax.text(cx, cy, text, ha="center", va="center", fontsize=13)
    for start, end in edges:
        (x0, y0, _), (x1, y1, _) = nodes[start], nodes[end]
        ax.add_patch(
            FancyArrowPatch(
                (x0, y0 + 0.42), (x1, y1 - 0.42), arrowstyle="-|>", mutation_scale=14, color="#333"
            )
        )
    ax.text(
        6.5,
        4.4,
        "forward: up\nbackward(): down,\nfrom the root c\nto the leaves",
        fontsize=13,
        va="top",
    )
    ax.set_xlim(-1.3, 8.6)
    ax.set_ylim(-0.6, 4.8)
    ax.axis("off")
    ax.set_title("The graph autograd records: leaves are inputs, the root is the output")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 03 nn.Module and the training loop
# --------------------------------------------------------------------------------------


def _overfitting_history() -> pdl.History:
    """A real run that overfits: a wide MLP on 150 noisy spiral points, 50 epochs of Adam."""
    torch.manual_seed(0)
    x, y = spirals(650, noise=0.45, seed=1)
    model = mlp([2, 256, 256, 3])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return quiet_fit(
        model, (x[:150], y[:150]), (x[150:], y[150:]), optimizer=optimizer, epochs=50, batch_size=32
    )


@figure
def fig_03_bad_vs_good_graph() -> plt.Figure:
    history = _overfitting_history()
    fig, (bad, good) = plt.subplots(1, 2, figsize=(10, 4))
    bad.plot(history["train_loss"])
    bad.set_title("bad: training loss only, linear axis")
    plot_history(history, ax=good)
    good.set_title("good: train and validation, log axis")
    fig.suptitle("The same run twice: the right plot shows the overfitting the left one hides")
    fig.tight_layout()
    return fig


@figure
def fig_03_confusion_matrix() -> plt.Figure:
    torch.manual_seed(0)
    x, y, names = blobs(2000)
    model = mlp([2, 32, 4])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    quiet_fit(model, (x[:1000], y[:1000]), (x[1000:], y[1000:]), optimizer=optimizer, epochs=15)
    outputs, targets = pdl.predict(
        model, tensor_loader(x[1000:], y[1000:], batch_size=500), device="cpu"
    )
    matrix = confusion_matrix(outputs, targets, num_classes=4)
    val_accuracy = accuracy(outputs, targets)
    fig, (counts, rates) = plt.subplots(1, 2, figsize=(10, 4.2))
    plot_confusion_matrix(matrix, names, ax=counts)
    counts.set_title("counts")
    plot_confusion_matrix(matrix, names, normalize=True, ax=rates)
    rates.set_title("row-normalized: diagonal = recall")
    fig.suptitle(
        f"Validation confusion matrix of a small MLP on 4 blobs (accuracy {val_accuracy:.1%})"
    )
    fig.tight_layout()
    return fig


def _hinge_network(f: Callable[[torch.Tensor], torch.Tensor], knots: torch.Tensor) -> nn.Sequential:
    """A shallow ReLU net joining the points (t, f(t)) of the knots by straight lines (weights set, not trained)."""
    values = f(knots)
    slopes = (values[1:] - values[:-1]) / (knots[1:] - knots[:-1])
    net = nn.Sequential(nn.Linear(1, len(slopes)), nn.ReLU(), nn.Linear(len(slopes), 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)  # unit j: ReLU(x - t_j), a kink at t_j
        net[0].bias.copy_(-knots[:-1])
        net[2].weight.copy_(torch.cat([slopes[:1], slopes[1:] - slopes[:-1]]).unsqueeze(0))
        net[2].bias.fill_(values[0].item())
    return net


@figure
def fig_03_universal_approximation() -> plt.Figure:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(2 * x) + 0.3 * x

    x = torch.linspace(-3, 3, 601).unsqueeze(1)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(x, f(x), color="black", lw=5, alpha=0.25, label="f(x) = sin 2x + 0.3x")
    with torch.inference_mode():
        for units in (2, 4, 8, 32):
            net = _hinge_network(f, torch.linspace(-3, 3, units + 1))
            error = (net(x) - f(x)).abs().max().item()
            ax.plot(x, net(x), lw=1.8, label=f"{units} ReLU units (largest error {error:.3f})")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("One hidden layer, weights constructed: every unit adds one kink")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 04 Training tricks
# --------------------------------------------------------------------------------------


@figure
def fig_04_activations() -> plt.Figure:
    x = torch.linspace(-5, 5, 401, requires_grad=True)
    functions = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "ReLU": torch.relu,
        "Leaky ReLU (0.1)": lambda v: nn.functional.leaky_relu(v, 0.1),
        "ELU": nn.functional.elu,
        "GELU": nn.functional.gelu,
    }
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.2), sharex=True)
    for ax, (name, function) in zip(axes.flat, functions.items(), strict=True):
        value = function(x)
        (slope,) = torch.autograd.grad(value.sum(), x)  # the derivative, from autograd
        ax.plot(x.detach(), value.detach(), label="f(x)", lw=2)
        ax.plot(x.detach(), slope, "--", label="f'(x)", lw=2)
        ax.axhline(0, color="#999", lw=0.8)
        ax.set_title(name)
        ax.set_ylim(-1.6, 3)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("x")
    fig.suptitle(
        "Activation functions (solid) and their derivatives (dashed, computed by autograd)"
    )
    fig.tight_layout()
    return fig


@figure
def fig_04_preprocessing() -> plt.Figure:
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(400, 2, generator=generator) @ torch.tensor(
        [[3.0, 0.0], [1.6, 0.6]]
    ) + torch.tensor([8.0, 5.0])
    centred = raw - raw.mean(0)
    standardized = centred / raw.std(0)
    covariance = centred.T @ centred / (len(raw) - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    whitened = centred @ eigenvectors / eigenvalues.sqrt()
    panels = [
        ("raw", raw),
        ("zero-centred", centred),
        ("standardized", standardized),
        ("PCA-whitened", whitened),
    ]
    limit = 1.05 * max(points.abs().max().item() for _, points in panels)  # one scale for all
    fig, axes = plt.subplots(1, 4, figsize=(11, 3.2))
    for ax, (title, points) in zip(axes, panels, strict=True):
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
        ax.axhline(0, color="#999", lw=0.8)
        ax.axvline(0, color="#999", lw=0.8)
        ax.set_title(title)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
    fig.tight_layout()
    return fig


@figure
def fig_04_init_stats() -> plt.Figure:
    depth, width = 10, 512
    x = torch.randn(500, width, generator=torch.Generator().manual_seed(0))
    tanh_gain = nn.init.calculate_gain("tanh")  # 5/3
    setups = {
        "N(0, 0.01²), tanh": (lambda w: nn.init.normal_(w, std=0.01), torch.tanh),
        "N(0, 1), tanh": (lambda w: nn.init.normal_(w, std=1.0), torch.tanh),
        "Glorot (xavier_normal_), tanh": (nn.init.xavier_normal_, torch.tanh),
        "Glorot, gain 5/3, tanh": (lambda w: nn.init.xavier_normal_(w, gain=tanh_gain), torch.tanh),
        "N(0, 0.01²), ReLU": (lambda w: nn.init.normal_(w, std=0.01), torch.relu),
        "Kaiming (kaiming_normal_), ReLU": (
            lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
            torch.relu,
        ),
    }
    fig, (ax, saturation) = plt.subplots(
        1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]}
    )
    torch.manual_seed(0)
    with torch.inference_mode():
        for name, (init, activation) in setups.items():
            h, stds, saturated = x, [], []
            for _ in range(depth):
                weight = torch.empty(width, width)
                init(weight)
                h = activation(h @ weight.T)
                stds.append(h.std().item())
                saturated.append((h.abs() > 0.99).float().mean().item())
            line = ax.plot(
                range(1, depth + 1),
                stds,
                marker="o",
                label=f"{name} ({stds[0]:.2g} → {stds[-1]:.2g})",
            )[0]
            if "tanh" in name:
                saturation.plot(
                    range(1, depth + 1), saturated, marker="o", color=line.get_color(), label=name
                )
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("std of activations (log scale)")
    ax.set_title("std per layer (10 layers, width 512; layer 1 → 10)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    saturation.set_xlabel("layer")
    saturation.set_ylabel("fraction of units")
    saturation.set_ylim(-0.03, 1.03)
    saturation.set_title("tanh: saturated units, |a| > 0.99")
    saturation.legend(fontsize=8)
    saturation.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _surface(p: torch.Tensor) -> torch.Tensor:
    """A stretched valley with a bump: slow along x, steep along y (ill-conditioned)."""
    x, y = p[..., 0], p[..., 1]
    return 0.05 * x**2 + 2.0 * y**2 + 0.4 * torch.exp(-((x + 1.5) ** 2 + y**2))


OPTIMIZERS_2D = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.2),
    "SGD + momentum 0.9": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "Nesterov 0.9": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=1.0),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.05),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.3),
}


@figure
def fig_04_optimizer_paths() -> plt.Figure:
    grid_x, grid_y = torch.meshgrid(
        torch.linspace(-7.5, 1.5, 200), torch.linspace(-2.2, 2.2, 200), indexing="xy"
    )
    heights = _surface(torch.stack([grid_x, grid_y], dim=-1))
    fig, ax = plt.subplots(figsize=(10, 4.6))
    ax.contour(grid_x, grid_y, heights, levels=30, cmap="Greys", linewidths=0.7)
    for name, make in OPTIMIZERS_2D.items():
        point = torch.tensor([-7.0, 1.8], requires_grad=True)
        optimizer = make([point])
        path = [point.detach().clone()]
        for _ in range(60):
            optimizer.zero_grad()
            _surface(point).backward()
            optimizer.step()
            path.append(point.detach().clone())
        path = torch.stack(path)
        ax.plot(
            path[:, 0],
            path[:, 1],
            marker="o",
            markersize=2.5,
            lw=1.5,
            label=f"{name} ({_surface(path[-1]):.3f})",
        )
    ax.plot([0], [0], "k*", markersize=14)
    ax.set_xlabel("w₁ (shallow direction)")
    ax.set_ylabel("w₂ (steep direction)")
    ax.set_title("60 steps of torch.optim on a stretched 2-D loss surface (final loss in brackets)")
    ax.legend(fontsize=9, loc="lower right", ncols=2)
    fig.tight_layout()
    return fig


def _spiral_task() -> tuple[tuple, tuple]:
    x, y = spirals(1800, noise=0.2, seed=2)
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


@figure
def fig_04_optimizers_task() -> plt.Figure:
    train, val = _spiral_task()
    settings = {
        "SGD lr 0.05": lambda p: torch.optim.SGD(p, lr=0.05),
        "SGD+momentum lr 0.05": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        "Adagrad lr 0.05": lambda p: torch.optim.Adagrad(p, lr=0.05),
        "RMSprop lr 1e-3": lambda p: torch.optim.RMSprop(p, lr=1e-3),
        "Adam lr 1e-3": lambda p: torch.optim.Adam(p, lr=1e-3),
    }
    histories = {}
    for name, make in settings.items():
        torch.manual_seed(0)  # the same initial weights for every optimizer
        model = mlp([2, 64, 64, 3])
        histories[name] = quiet_fit(
            model, train, val, optimizer=make(model.parameters()), epochs=15
        )
    fig, ax = plt.subplots(figsize=(8, 4.2))
    compare_histories(histories, ax=ax)
    ax.set_title("Spirals, 2-64-64-3 MLP, same init: validation loss per optimizer")
    fig.tight_layout()
    return fig


@figure
def fig_04_learning_rates() -> plt.Figure:
    train, val = _spiral_task()
    histories = {}
    for lr in (1e-3, 3e-2, 0.3, 3.0):
        torch.manual_seed(0)
        model = mlp([2, 64, 64, 3])
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        try:
            histories[f"lr {lr:g}"] = quiet_fit(model, train, val, optimizer=optimizer, epochs=15)
        except pdl.diagnostics.NonFiniteLossError:
            continue  # a diverging run is part of the lesson; it just has no curve
    fig, ax = plt.subplots(figsize=(8, 4.2))
    compare_histories(histories, metric="loss", split="train", ax=ax)
    ax.set_title("SGD + momentum on spirals: training loss for four learning rates")
    fig.tight_layout()
    return fig


@figure
def fig_04_lr_range_test() -> plt.Figure:
    (x, y), _ = _spiral_task()
    torch.manual_seed(0)
    model = mlp([2, 64, 64, 3])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    steps, start, end = 200, 1e-4, 30.0
    growth = torch.optim.lr_scheduler.ExponentialLR(
        optimizer, gamma=(end / start) ** (1 / (steps - 1))
    )
    loader = tensor_loader(
        x, y, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )

    def batches():  # as many passes over the data as the test needs
        while True:
            yield from loader

    rates, losses, average = [], [], 0.0
    for step, (inputs, targets) in enumerate(batches(), start=1):
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        average = 0.9 * average + 0.1 * loss.item()
        rates.append(growth.get_last_lr()[0])
        losses.append(average / (1 - 0.9**step))  # smoothed, bias-corrected
        if step == steps or not math.isfinite(loss.item()) or losses[-1] > 4 * min(losses):
            break  # done, or blown up: the rest would be noise
        growth.step()
    lowest = min(range(len(losses)), key=losses.__getitem__)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(rates, losses, lw=2)
    ax.axvline(rates[lowest], color="gray", ls=":", label=f"lowest loss at lr {rates[lowest]:.2g}")
    ax.axvline(
        rates[lowest] / 10, color="green", ls="--", label=f"10x below: lr {rates[lowest] / 10:.2g}"
    )
    ax.set_xscale("log")
    ax.set_ylim(0, 2 * losses[0])  # the blow-up at the end runs off the top
    ax.set_xlabel("learning rate (raised after every batch, log scale)")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"Learning-rate range test: SGD + momentum 0.9, spirals MLP, {len(rates)} batches")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


@figure
def fig_04_lr_schedules() -> plt.Figure:
    steps = 100

    def trace(make: Callable[[torch.optim.Optimizer], object]) -> list[float]:
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = make(optimizer)
        rates = []
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return rates

    schedules = {
        "StepLR(step_size=30, gamma=0.1)": lambda o: torch.optim.lr_scheduler.StepLR(
            o, 30, gamma=0.1
        ),
        "CosineAnnealingLR(T_max=100)": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
            o, steps
        ),
        "OneCycleLR(max_lr=0.1)": lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.1, total_steps=steps
        ),
        "warm-up 10 + cosine": lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, 0.01, 1.0, total_iters=10),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, steps - 10),
            ],
            milestones=[10],
        ),
    }
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, make in schedules.items():
        ax.plot(trace(make), label=name, lw=2)
    ax.set_xlabel("step (or epoch)")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedules from torch.optim.lr_scheduler (base lr 0.1)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 05 Convolutional networks
# --------------------------------------------------------------------------------------


def _cells(
    ax: plt.Axes,
    values: torch.Tensor,
    x0: float,
    y0: float,
    colors: list[list[str]] | str,
    highlight: tuple[int, int, int] | None = None,
) -> None:
    """A 2-D tensor as numbered cells (top-left at x0, y0); ``colors`` per cell or one for all;
    ``highlight=(row, column, size)`` outlines a square window in red."""
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            color = colors if isinstance(colors, str) else colors[i][j]
            ax.add_patch(Rectangle((x0 + j, y0 - i), 1, 1, facecolor=color, edgecolor="#555"))
            ax.text(
                x0 + j + 0.5,
                y0 - i + 0.5,
                f"{values[i, j].item():g}",
                ha="center",
                va="center",
                fontsize=12,
            )
    if highlight is not None:
        i, j, size = highlight
        ax.add_patch(
            Rectangle(
                (x0 + j, y0 - i - size + 1), size, size, fill=False, edgecolor="#d62728", lw=3
            )
        )


@figure
def fig_05_convolution() -> plt.Figure:
    image = torch.tensor(
        [[1.0, 2, 0, 1, 3], [0, 1, 3, 2, 1], [2, 0, 1, 1, 0], [1, 3, 2, 0, 1], [0, 1, 1, 2, 2]]
    )
    kernel = torch.tensor([[1.0, 0, -1], [1, 0, -1], [1, 0, -1]])
    out = torch.nn.functional.conv2d(image[None, None], kernel[None, None])[
        0, 0
    ]  # what nn.Conv2d computes
    i, j = 1, 2  # the window shown
    fig, ax = plt.subplots(figsize=(11, 3.6))
    _cells(ax, image, 0, 4, "#deebf7", highlight=(i, j, 3))
    ax.text(5.6, 2.5, "*", fontsize=24, ha="center", va="center")
    _cells(ax, kernel, 6.2, 3, "#fdd0a2")
    ax.text(9.8, 2.5, "=", fontsize=24, ha="center", va="center")
    _cells(ax, out, 10.4, 3, "#e5f5e0", highlight=(i, j, 1))
    window = image[i : i + 3, j : j + 3]
    ax.text(
        6.5,
        -1.0,
        f"out[{i}, {j}] = sum(window x kernel) = {(window * kernel).sum().item():g}"
        f"   (F.conv2d: {out[i, j].item():g})",
        ha="center",
        fontsize=12,
        color="#d62728",
    )
    ax.text(2.5, -1.9, "input 5x5", ha="center", fontsize=12)
    ax.text(7.7, -1.9, "kernel 3x3 (learned)", ha="center", fontsize=12)
    ax.text(11.9, -1.9, "output 3x3", ha="center", fontsize=12)
    ax.set_xlim(-0.3, 13.7)
    ax.set_ylim(-2.3, 5.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("A 3x3 kernel slides over the input; every position uses the same 9 weights")
    fig.tight_layout()
    return fig


@figure
def fig_05_pooling() -> plt.Figure:
    grid = torch.tensor([[1.0, 3, 2, 0], [4, 2, 1, 1], [0, 1, 5, 6], [2, 2, 7, 8]])
    palette = [["#deebf7", "#fdd0a2"], ["#e5f5e0", "#efedf5"]]  # one colour per 2x2 window
    colors = [[palette[i // 2][j // 2] for j in range(4)] for i in range(4)]
    pooled = {
        "max pooling": torch.nn.functional.max_pool2d(grid[None, None], 2)[0, 0],
        "average pooling": torch.nn.functional.avg_pool2d(grid[None, None], 2)[0, 0],
    }
    fig, ax = plt.subplots(figsize=(10, 3.4))
    _cells(ax, grid, 0, 3, colors)
    for k, (name, values) in enumerate(pooled.items()):
        x0 = 6 + 4.5 * k
        _cells(ax, values, x0, 2, palette)
        ax.text(x0 + 1, -0.7, name, ha="center", fontsize=12)
    ax.text(2, -0.7, "4x4 feature map", ha="center", fontsize=12)
    ax.annotate(
        "",
        xy=(5.6, 1.5),
        xytext=(4.3, 1.5),
        arrowprops={"arrowstyle": "-|>", "color": "#333", "lw": 2},
    )
    ax.set_xlim(-0.3, 13)
    ax.set_ylim(-1.1, 4.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(
        "2x2 pooling with stride 2: one number per window, no parameters, half the height and width"
    )
    fig.tight_layout()
    return fig


@figure
def fig_05_receptive_field() -> plt.Figure:
    layers = [("conv 3x3", 3, 1), ("conv 3x3", 3, 1), ("max-pool 2x2", 2, 2), ("conv 3x3", 3, 1)]
    size = 16
    fig, axes = plt.subplots(1, len(layers), figsize=(12, 3.7), layout="constrained")
    stack: list[nn.Module] = []
    for ax, (name, kernel_size, stride) in zip(axes, layers, strict=True):
        window = nn.Conv2d(
            1, 1, kernel_size, stride=stride, bias=False
        )  # the pooling window's footprint
        nn.init.constant_(window.weight, 1.0)
        stack.append(window)
        x = torch.zeros(1, 1, size, size, requires_grad=True)
        out = nn.Sequential(*stack)(x)
        out[
            0, 0, out.shape[2] // 2, out.shape[3] // 2
        ].backward()  # which input pixels reach the centre unit?
        reached = (x.grad[0, 0] != 0).float()
        side = int(reached.sum(dim=1).nonzero().numel())
        ax.imshow(reached.numpy(), cmap="Blues", vmin=0, vmax=1.3)
        ax.set_xticks(np.arange(-0.5, size, 1), [])
        ax.set_yticks(np.arange(-0.5, size, 1), [])
        ax.tick_params(length=0)
        ax.grid(color="#ccc", lw=0.5)
        ax.set_title(f"+ {name}\nsees {side}x{side} pixels", fontsize=12)
    fig.suptitle(
        "Receptive field of one unit after each layer (measured with autograd on a 16x16 input)"
    )
    return fig


def _bars(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy 16x16 images, each with one short bar: horizontal, vertical or one of two diagonals."""
    images = torch.randn(n, 1, 16, 16, generator=generator) * 0.3
    labels = torch.randint(0, 4, (n,), generator=generator)
    offsets = torch.randint(3, 13, (n, 2), generator=generator)
    for k in range(n):
        r, c = offsets[k].tolist()
        for t in range(-2, 3):
            dr, dc = [(0, t), (t, 0), (t, t), (t, -t)][labels[k]]
            images[k, 0, r + dr, c + dc] += 2.0
    return images, labels


@figure
def fig_05_filters() -> plt.Figure:
    generator = torch.Generator().manual_seed(0)
    (x_train, y_train), (x_val, y_val) = _bars(1500, generator), _bars(500, generator)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(8 * 16, 4),
    )
    quiet_fit(
        model,
        (x_train, y_train),
        (x_val, y_val),
        optimizer=torch.optim.Adam(model.parameters(), lr=3e-3),
        epochs=6,
    )
    outputs, targets = pdl.predict(model, x_val, device="cpu"), y_val
    val_accuracy = accuracy(outputs.outputs, targets)
    fig, axes = plt.subplots(2, 9, figsize=(12, 3.4))
    sample = x_val[int((y_val == 2).nonzero()[0])]  # a diagonal bar
    with torch.inference_mode():
        maps = torch.relu(model[0](sample[None]))[0]
    axes[0, 0].set_title("input", fontsize=11)
    axes[0, 0].imshow(sample[0].numpy(), cmap="gray")
    axes[1, 0].set_visible(False)
    for k in range(8):
        axes[0, k + 1].imshow(model[0].weight[k, 0].detach().numpy(), cmap="RdBu_r")
        axes[1, k + 1].imshow(maps[k].numpy(), cmap="gray")
    axes[0, 1].set_title("filters (5x5)", fontsize=11, loc="left")
    axes[1, 1].set_title("feature maps (after ReLU)", fontsize=11, loc="left")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"A CNN trained to tell 4 bar orientations apart (validation accuracy {val_accuracy:.0%}): "
        "its first-layer filters and feature maps"
    )
    fig.tight_layout()
    return fig


def _letter_f() -> torch.Tensor:
    """A 28x28 uint8 image of the letter F: asymmetric, so flips and shifts are visible."""
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 5:23, 9:13] = 255  # the stem
    image[0, 5:9, 9:21] = 255  # the top bar
    image[0, 12:16, 9:18] = 255  # the middle bar
    return image


@figure
def fig_05_augmentation() -> plt.Figure:
    from torchvision.transforms import v2

    augment = v2.Compose(
        [v2.RandomCrop(28, padding=3), v2.RandomHorizontalFlip(), v2.RandomRotation(10)]
    )
    torch.manual_seed(0)
    image = _letter_f()
    versions = torch.stack([image] + [augment(image) for _ in range(7)]).float() / 255
    fig = pdl.plot.show_images(versions, ncols=8, size=1.4)
    fig.axes[0].set_title("original", fontsize=10)
    fig.suptitle(
        "v2.RandomCrop(28, padding=3), RandomHorizontalFlip(), RandomRotation(10): a new version per call"
    )
    fig.tight_layout()
    return fig


@figure
def fig_05_regularization() -> plt.Figure:
    # Four overlapping blobs plus 8 noise features, and only 100 training points: a roomy MLP
    # can memorize them through the noise features, so the validation loss turns up early.
    x, y, _ = blobs(1100, seed=1)
    x = torch.cat([x, torch.randn(len(x), 8, generator=torch.Generator().manual_seed(3))], dim=1)
    train, val = (x[:100], y[:100]), (x[100:], y[100:])

    def run(
        hidden: list[int],
        dropout: float = 0.0,
        make_optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
    ) -> pdl.History:
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for n_in, n_out in zip([10, *hidden[:-1]], hidden, strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.Dropout(dropout)]
        model = nn.Sequential(*layers, nn.Linear(hidden[-1], 4))
        return quiet_fit(
            model,
            train,
            val,
            optimizer=make_optimizer(model.parameters()),
            epochs=60,
            batch_size=32,
        )

    histories = {
        "baseline (256-256)": run([256, 256]),
        "dropout 0.5": run([256, 256], dropout=0.5),
        "AdamW weight_decay=1": run(
            [256, 256], make_optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=1.0)
        ),
        "smaller (32)": run([32]),
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    baseline = histories["baseline (256-256)"]
    plot_history(baseline, ax=left)
    best = min(range(len(baseline)), key=lambda i: baseline["val_loss"][i]) + 1
    left.axvline(best, color="gray", linestyle=":", label=f"early stopping keeps epoch {best}")
    left.legend()
    left.set_title("baseline: train and validation loss")
    compare_histories(histories, ax=right)
    right.set_title("validation loss, one change at a time")
    fig.suptitle(
        "100 training points (4 overlapping blobs + 8 noise features), an MLP, 60 epochs of Adam"
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 06 Batch normalization
# --------------------------------------------------------------------------------------


@figure
def fig_06_bn_stats() -> plt.Figure:
    torch.manual_seed(0)
    x = torch.randn(512, 64) * 3 + 2  # inputs that are neither centred nor scaled
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, batch_norm in zip(axes, (False, True), strict=True):
        model = mlp([64] * 9 + [10], batch_norm=batch_norm, activation=nn.Tanh)
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.3)  # a careless initialization
        model.train()
        values, h = [], x
        with torch.inference_mode():
            for module in model:
                h = module(h)
                if isinstance(module, nn.Tanh):
                    values.append(h.flatten())
        ax.boxplot([v.numpy() for v in values], showfliers=False)
        ax.set_xlabel("hidden layer")
        ax.set_title("with BatchNorm before each tanh" if batch_norm else "without BatchNorm")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("tanh activations")
    fig.suptitle("Activations of a 9-layer tanh MLP at initialization (std-0.3 weights)")
    fig.tight_layout()
    return fig


@figure
def fig_06_bn_training() -> plt.Figure:
    train, val = _spiral_task()
    histories = {}
    for batch_norm in (False, True):
        for lr in (0.01, 0.1):
            torch.manual_seed(0)
            model = mlp([2] + [48] * 8 + [3], batch_norm=batch_norm)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            name = f"{'with' if batch_norm else 'no'} BN, lr {lr:g}"
            try:
                histories[name] = quiet_fit(model, train, val, optimizer=optimizer, epochs=15)
            except pdl.diagnostics.NonFiniteLossError:
                continue
    fig, ax = plt.subplots(figsize=(8, 4.2))
    compare_histories(histories, ax=ax)
    ax.set_title("A deep (8 hidden layers) ReLU MLP on spirals, with and without BN")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 07 Transfer learning
# --------------------------------------------------------------------------------------


@figure
def fig_07_residual_block() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    boxes = [(1.0, "conv 3x3"), (2.0, "BN + ReLU"), (3.0, "conv 3x3"), (4.0, "BN")]
    for y, text in boxes:
        ax.add_patch(
            FancyBboxPatch(
                (1.2, y - 0.3),
                2.6,
                0.6,
                boxstyle="round,pad=0.05",
                facecolor="#9ecae1",
                edgecolor="#333",
            )
        )
        ax.text(2.5, y, text, ha="center", va="center", fontsize=14)
    for y0, y1 in [(0.2, 0.7), (1.3, 1.7), (2.3, 2.7), (3.3, 3.7), (4.3, 4.78)]:
        ax.add_patch(
            FancyArrowPatch((2.5, y0), (2.5, y1), arrowstyle="-|>", mutation_scale=14, color="#333")
        )
    ax.plot([2.5, 4.6, 4.6], [0.45, 0.45, 5.0], color="#d62728", lw=2)
    ax.add_patch(
        FancyArrowPatch(
            (4.6, 5.0), (2.74, 5.0), arrowstyle="-|>", mutation_scale=14, color="#d62728", lw=2
        )
    )
    ax.text(
        4.8,
        2.5,
        "identity shortcut:\nx is added back\nunchanged",
        color="#d62728",
        fontsize=14,
        va="center",
    )
    ax.plot([0.95, 0.85, 0.85, 0.95], [0.7, 0.7, 4.3, 4.3], color="#1f77b4", lw=1.5)
    ax.add_patch(plt.Circle((2.5, 5.0), 0.22, facecolor="white", edgecolor="#333"))
    ax.text(2.5, 5.0, "+", ha="center", va="center", fontsize=16)
    ax.text(2.5, 0.0, "x", ha="center", va="center", fontsize=14)
    ax.text(2.5, 5.55, "ReLU( F(x) + x )", ha="center", fontsize=13)
    ax.text(0.7, 2.5, "F(x)", fontsize=13, va="center", ha="right", color="#1f77b4")
    ax.set_xlim(-0.4, 7.2)
    ax.set_ylim(-0.3, 6.0)
    ax.axis("off")
    ax.set_title("A ResNet basic block: the layers learn a correction F(x) to x")
    fig.tight_layout()
    return fig


@figure
def fig_07_resnet_stages() -> plt.Figure:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=2)  # the architecture only: counts need no weights
    stages = {
        "stem": ["conv1", "bn1", "relu", "maxpool"],
        "layer1": ["layer1"],
        "layer2": ["layer2"],
        "layer3": ["layer3"],
        "layer4": ["layer4"],
        "avgpool + fc": ["avgpool", "flatten", "fc"],
    }
    counts, shapes = [], []
    with torch.inference_mode():
        h = torch.zeros(1, 3, 224, 224)
        for parts in stages.values():
            counts.append(0)
            for name in parts:
                h = torch.flatten(h, 1) if name == "flatten" else getattr(model, name)(h)
                counts[-1] += (
                    sum(p.numel() for p in getattr(model, name).parameters())
                    if name != "flatten"
                    else 0
                )
            shapes.append("x".join(str(s) for s in h.shape[1:]))
    fig, ax = plt.subplots(figsize=(9, 4))
    bars = ax.bar(
        list(stages),
        [c / 1e6 for c in counts],
        color=["#bbb", "#9ecae1", "#6baed6", "#3182bd", "#08519c", "#e07b39"],
    )
    for bar, count, shape in zip(bars, counts, shapes, strict=True):
        size = f"{count / 1e6:.2f} M" if count >= 1e5 else f"{count / 1e3:.1f} k"
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height() + 0.08,
            f"{size}\nout {shape}",
            ha="center",
            fontsize=10,
        )
    ax.set_ylabel("parameters (millions)")
    ax.set_ylim(0, max(counts) / 1e6 * 1.3)
    total = sum(p.numel() for p in model.parameters())
    ax.set_title(
        f"ResNet-18 with a 2-class head: {total / 1e6:.1f} M parameters, output shape per stage (224 px)"
    )
    fig.tight_layout()
    return fig


def _pretrained_first_conv() -> tuple[str, torch.Tensor, torch.Tensor]:
    """The first conv's weights of an ImageNet-pretrained backbone, and of the same one at random.

    ResNet-18 when torchvision's weights are in the hub cache or downloadable (as in lecture
    07 online); otherwise MobileNetV2 with the ImageNet weights of the data mirror (as in an
    offline run); random weights only, and said so, when neither is available.
    """
    import torchvision

    from pdl.weights import WeightsNotAvailableError, build_backbone

    choices = [
        ("resnet18", "DEFAULT", "ResNet-18, torchvision's ImageNet weights"),
        (
            "mobilenet_v2",
            "data:weights/mobilenet_v2_imagenet_features.pth",
            "MobileNetV2, the data mirror's ImageNet weights",
        ),
    ]
    backbone, label = "resnet18", "ResNet-18: NO pretrained weights here, both rows random"
    model = torchvision.models.resnet18(weights=None)
    for name, weights, description in choices:
        try:
            model = build_backbone(name, weights, verbose=False, progress=False)
        except (WeightsNotAvailableError, FileNotFoundError):
            continue
        backbone, label = name, description
        break
    with torch.random.fork_rng():
        torch.manual_seed(0)
        random_model = torchvision.models.get_model(backbone, weights=None)

    def first(net: nn.Module) -> torch.Tensor:
        return next(m for m in net.modules() if isinstance(m, nn.Conv2d)).weight.detach()

    return label, first(model), first(random_model)


def _neighbour_correlation(w: torch.Tensor) -> float:
    """How alike adjacent weights of the filters are: about 0 for noise, towards 1 for smooth patterns."""
    a = torch.cat([w[..., :, :-1].flatten(), w[..., :-1, :].flatten()])
    b = torch.cat([w[..., :, 1:].flatten(), w[..., 1:, :].flatten()])
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


@figure
def fig_07_first_layer_filters() -> plt.Figure:
    import torchvision

    label, pretrained, random = _pretrained_first_conv()
    fig, axes = plt.subplots(2, 1, figsize=(9, 4.2))
    for ax, weights, name in zip(
        axes, (pretrained, random), ("pretrained", "random initialisation"), strict=True
    ):
        tiles = weights[:32]
        low, high = tiles.amin(dim=(1, 2, 3), keepdim=True), tiles.amax(dim=(1, 2, 3), keepdim=True)
        grid = torchvision.utils.make_grid(
            (tiles - low) / (high - low + 1e-8), nrow=16, padding=1, pad_value=1.0
        )
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(
            f"{name}: neighbouring weights correlate {_neighbour_correlation(weights):.2f}"
        )
        ax.axis("off")
    k = pretrained.shape[-1]
    fig.suptitle(
        f"First-layer filters of {label}\n({k}x{k} RGB, the first 32 of {pretrained.shape[0]})"
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 08 From model to application
# --------------------------------------------------------------------------------------


def _box(
    ax: plt.Axes, x: float, y: float, text: str, color: str, width: float = 2.1, height: float = 0.9
) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.06",
            facecolor=color,
            edgecolor="#333",
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=11)


def _arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float], **style) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=14,
            color=style.pop("color", "#333"),
            **style,
        )
    )


@figure
def fig_08_pipeline() -> plt.Figure:
    steps = [
        "problem\nformulation",
        "data\nacquisition",
        "compare\nopen models",
        "architecture,\ntuning,\nfine-tuning",
        "evaluation on\nreal test data",
        "serve:\nexport, speed,\napplication",
    ]
    colors = ["#c6dbef", "#c6dbef", "#9ecae1", "#9ecae1", "#6baed6", "#fdd0a2"]
    fig, ax = plt.subplots(figsize=(11, 2.9))
    for i, (text, color) in enumerate(zip(steps, colors, strict=True)):
        _box(ax, 1.3 + 2.5 * i, 1.0, text, color, height=1.2)
        if i:
            _arrow(ax, (2.45 + 2.5 * (i - 1), 1.0), (0.15 + 2.5 * i, 1.0))
    for start, end, label in [
        (4, 2, "not good enough: other data or model"),
        (5, 0, "users' feedback: a new problem"),
    ]:
        x0, x1 = 1.3 + 2.5 * start, 1.3 + 2.5 * end
        ax.add_patch(
            FancyArrowPatch(
                (x0, 1.65),
                (x1, 1.65),
                connectionstyle=f"arc3,rad={0.18 if start == 4 else 0.12}",
                arrowstyle="-|>",
                mutation_scale=14,
                color="#d62728",
                lw=1.5,
            )
        )
        ax.text(
            (x0 + x1) / 2,
            2.35 if start == 4 else 2.72,
            label,
            ha="center",
            color="#d62728",
            fontsize=10,
        )
    ax.set(xlim=(-0.1, 15.2), ylim=(0.2, 3.0))
    ax.axis("off")
    ax.set_title("The pipeline of a deep-learning project, and its loops back")
    fig.tight_layout()
    return fig


@figure
def fig_08_model_zoo() -> plt.Figure:
    """Published ImageNet accuracy vs compute, from torchvision's weights metadata (no download)."""
    from torchvision.models import get_model_weights

    names = [
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "efficientnet_b3",
        "resnet18",
        "resnet50",
        "convnext_tiny",
        "convnext_base",
        "vit_b_16",
    ]
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    for name in names:
        meta = get_model_weights(name).DEFAULT.meta
        accuracy, gflops, params = (
            meta["_metrics"]["ImageNet-1K"]["acc@1"],
            meta["_ops"],
            meta["num_params"] / 1e6,
        )
        ax.scatter(gflops, accuracy, s=8 * params + 10, alpha=0.55)
        ax.annotate(
            f"{name} ({params:.0f} M)",
            (gflops, accuracy),
            textcoords="offset points",
            xytext=(6, -4),
            fontsize=9,
        )
    ax.set(
        xscale="log",
        xlabel="GFLOPs per 224 px image (log scale)",
        ylabel="ImageNet top-1 accuracy (%)",
        xlim=(0.03, 60),
    )
    ax.set_title("torchvision's published metadata (marker size: parameters)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def _seconds_per_call(run: Callable[[], object], min_run_time: float = 0.3) -> float:
    """Warm-up calls, then ``torch.utils.benchmark``: the median time of one call."""
    from torch.utils.benchmark import Timer

    for _ in range(3):
        run()
    timer = Timer(stmt="run()", globals={"run": run}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


@figure
def fig_08_batch_size() -> plt.Figure:
    model = pdl.models.ExamplesCNN().eval()  # random weights: the speed does not depend on them
    sizes = [1, 4, 16, 64, 256]
    seconds = {}
    for size in sizes:
        x = torch.randn(size, 1, 28, 28)

        def run(x=x):
            with torch.inference_mode():
                model(x)

        seconds[size] = _seconds_per_call(run)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(sizes, [1e3 * seconds[s] for s in sizes], marker="o")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="ms per batch",
        title="latency of one batch",
    )
    right.plot(sizes, [s / seconds[s] for s in sizes], marker="o", color="tab:green")
    right.set(xscale="log", xlabel="batch size", ylabel="images per second", title="throughput")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"Lecture 05's CNN, eager, measured when the figures were built ({torch.get_num_threads()} thread(s))"
    )
    fig.tight_layout()
    return fig


@figure
def fig_08_speedups() -> plt.Figure:
    import copy
    import tempfile

    import onnxruntime

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the paths are benchmarks/inference.py's own
    from benchmarks.inference import eager, export_and_quantize, onnx_runtime

    model = pdl.models.ExamplesCNN().eval()  # random weights: the speed does not depend on them
    files = export_and_quantize(model, Path(tempfile.mkdtemp(prefix="pdl-figure-")))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    paths = {
        "eager, eval + no_grad\n(the reference)": eager(model, torch.no_grad),
        "eager, inference_mode": eager(model, torch.inference_mode),
        "eager, channels_last": eager(last, torch.inference_mode, torch.channels_last),
    }
    for name, path in files.items():
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        paths[name.replace(", ", ",\n")] = onnx_runtime(session)
    batches = {
        "batch 1 (latency)": torch.randn(1, 1, 28, 28),
        "batch 256 (throughput)": torch.randn(256, 1, 28, 28),
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), sharey=True)
    for ax, (title, x) in zip(axes, batches.items(), strict=True):
        seconds = {name: _seconds_per_call(make(x)) for name, make in paths.items()}
        reference = next(iter(seconds.values()))
        ratios = [reference / s for s in seconds.values()]
        ax.barh(
            list(seconds),
            ratios,
            color=["tab:green" if r > 1.05 else "tab:red" if r < 0.95 else "#999" for r in ratios],
        )
        for i, r in enumerate(ratios):
            ax.text(r, i, f" {r:.2f}x", va="center", fontsize=10)
        ax.axvline(1, color="black", lw=1)
        ax.set(xscale="log", xlabel="speed-up vs eager float32 (log scale)", title=title)
        ax.set_xlim(right=max(ratios) * 3)
        # Ticks at 1, 2, 5 per decade, labelled "2x": the default minor labels overlap.
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].invert_yaxis()
    fig.suptitle(
        f"Lecture 05's CNN on this CPU, {torch.get_num_threads()} thread(s), measured when the figures were built"
    )
    fig.tight_layout()
    return fig


@figure
def fig_08_parallelism() -> plt.Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, title in [
        (left, "data parallel: split the batch"),
        (right, "model parallel: split the layers"),
    ]:
        ax.set(xlim=(0, 10), ylim=(0, 6), title=title)
        ax.axis("off")
    for i, y in enumerate((4.2, 1.5)):
        _box(left, 2.0, y, f"batch half {i + 1}", "#fdd0a2", width=2.4)
        _box(left, 6.0, y, f"device {i + 1}:\nthe whole model", "#9ecae1", width=3.0, height=1.3)
        _arrow(left, (3.25, y), (4.45, y))
    left.add_patch(
        FancyArrowPatch(
            (7.6, 4.0), (7.6, 1.7), arrowstyle="<|-|>", mutation_scale=14, color="#d62728", lw=2
        )
    )
    left.text(
        7.85,
        2.85,
        "gradients\n(all-reduce,\nevery step)",
        color="#d62728",
        fontsize=11,
        va="center",
    )
    _box(right, 1.4, 3.0, "the batch", "#fdd0a2", width=1.9)
    _box(right, 4.3, 3.0, "device 1:\nlayers 1-k", "#9ecae1", width=2.3, height=1.3)
    _box(right, 8.0, 3.0, "device 2:\nlayers k+1-n", "#9ecae1", width=2.3, height=1.3)
    _arrow(right, (2.4, 3.0), (3.1, 3.0))
    right.add_patch(
        FancyArrowPatch(
            (5.5, 3.25), (6.8, 3.25), arrowstyle="-|>", mutation_scale=14, color="#d62728", lw=2
        )
    )
    right.add_patch(
        FancyArrowPatch(
            (6.8, 2.75), (5.5, 2.75), arrowstyle="-|>", mutation_scale=14, color="#d62728", lw=2
        )
    )
    right.text(6.15, 4.3, "activations\n(forward)", ha="center", color="#d62728", fontsize=11)
    right.text(6.15, 1.3, "their gradients\n(backward)", ha="center", color="#d62728", fontsize=11)
    fig.tight_layout()
    return fig


@figure
def fig_08_pipeline_bubble() -> plt.Figure:
    stages, work = 2, 4.0  # the batch takes 4 time units on each device
    fig, axes = plt.subplots(2, 1, figsize=(10, 3.6), sharex=True)
    for ax, micro in zip(axes, (1, 4), strict=True):
        width = work / micro
        total = width * (micro + stages - 1)
        for stage in range(stages):
            for m in range(micro):
                ax.barh(
                    stage, width, left=(stage + m) * width, color=plt.cm.tab10(m), edgecolor="white"
                )
                ax.text(
                    (stage + m + 0.5) * width,
                    stage,
                    f"{m + 1}" if micro > 1 else "the batch",
                    ha="center",
                    va="center",
                    color="white",
                )
        idle = 1 - work / total
        ax.set(
            yticks=range(stages),
            yticklabels=[f"device {s + 1}" for s in range(stages)],
            xlim=(0, 2 * work + 0.2),
        )
        ax.invert_yaxis()
        ax.set_title(
            f"{micro} micro-batch{'es' if micro > 1 else ''}: done after {total:g} time units, each device "
            f"idle {idle:.0%} of them (the bubble)",
            fontsize=12,
        )
    axes[1].set_xlabel("time (forward pass; the backward pass adds a mirrored schedule)")
    fig.tight_layout()
    return fig


@figure
def fig_08_app() -> plt.Figure:
    """A screenshot of the demo app (pdl.serve) in headless Chromium, with a model trained just now."""
    import os
    import shutil
    import subprocess
    import tempfile

    from pdl import export, serve

    names = (
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    )  # as tools/build_slides.py
    browser = os.environ.get("CHROME_PATH") or next(
        (shutil.which(n) for n in names if shutil.which(n)), None
    )
    if browser is None:
        raise RuntimeError(
            "the app screenshot (figure 08_app) needs a Chromium-family browser: apt-get install "
            "chromium, or set CHROME_PATH"
        )
    work = Path(tempfile.mkdtemp(prefix="pdl-app-figure-"))
    started = time.perf_counter()
    info = export.train_and_export(
        work / "model", train_images=6000, channels=(16, 32), hidden=64, progress=False
    )
    seconds = time.perf_counter() - started
    classifier = serve.Classifier(work / "model")
    answers = {
        name: classifier.predict((work / "model" / export.EXAMPLES_DIR / name).read_bytes())
        for name in info["examples"]
    }
    right = [n for n, a in answers.items() if a["label"] == info["classes"][int(n[:2])]]
    example = max(right or answers, key=lambda n: answers[n]["probability"])
    with serve.running_app(work / "model") as url:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={work / 'profile'}",
            "--hide-scrollbars",
            "--window-size=1000,520",
            "--virtual-time-budget=10000",
            f"--screenshot={work / 'app.png'}",
            f"{url}/?example={example}",
        ]
        try:
            subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"{browser} did not take the screenshot within 60 s") from error
        except subprocess.CalledProcessError as error:
            raise RuntimeError(
                f"{browser} failed to take the screenshot:\n{error.stderr[-2000:]}"
            ) from error
    fig, ax = plt.subplots(figsize=(10, 5.2))
    ax.imshow(plt.imread(work / "app.png"))
    ax.axis("off")
    ax.set_title(
        f"python -m pdl serve, in Chromium; the model was trained for {seconds:.0f} s on 6,000 images "
        "when this figure was drawn",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------


def generate(
    out_dir: str | Path = DEFAULT_OUT, names: list[str] | None = None, *, verbose: bool = True
) -> dict[str, Path]:
    """Draw the figures ``names`` (default: all) into ``out_dir`` as PNG; return name -> path.

    Example:
        >>> import tempfile
        >>> paths = generate(tempfile.mkdtemp(), ["01_broadcasting"], verbose=False)
        >>> paths["01_broadcasting"].name
        '01_broadcasting.png'
    """
    unknown = sorted(set(names or []) - set(FIGURES))
    if unknown:
        raise KeyError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The models here are tiny: one thread is fastest, and on a busy machine several
    # threads per small matmul spend most of their time waiting for each other (5-10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = {}
    try:
        with plt.rc_context(STYLE):
            for name in names or list(FIGURES):
                start, cpu_start = time.perf_counter(), time.process_time()
                fig = FIGURES[name]()
                path = out_dir / f"{name}.png"
                fig.savefig(path)
                plt.close(fig)
                paths[name] = path
                if verbose:
                    print(
                        f"  {name + '.png':28} {time.perf_counter() - start:5.1f} s  (CPU {time.process_time() - cpu_start:4.1f} s)"
                    )
    finally:
        torch.set_num_threads(threads)  # also after a failing figure (the tests run in one process)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="figures to draw (default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO)})",
    )
    parser.add_argument("--list", action="store_true", help="list the figure names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(FIGURES))
        return 0
    start = time.perf_counter()
    paths = generate(args.out, args.names or None)
    print(f"{len(paths)} figures in {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
