"""Lecture 08's model, made ready for the demo app: exported to ONNX, verified, described.

``export_for_app(model, folder, ...)`` writes what the app in ``pdl.serve`` reads:

- ``model.onnx``: the network, for any batch size, checked against PyTorch with ONNX Runtime
  (``verify_export``) before it is put in place (written as ``.partial``, then renamed);
- ``model.json``: the class names, the input size, the normalization, a description;
- ``examples/*.png``: test images the page offers, un-normalized back to 8-bit pixels.

``train_and_export`` trains a small model first, for ``python -m pdl serve --train-if-missing``
when notebook 08 has not exported one yet. The app itself (the classifier behind FastAPI, its
page, ``running_app`` and the command line) is ``pdl/serve.py``.
"""

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.onnx"
INFO_FILE = "model.json"
EXAMPLES_DIR = "examples"
DEMO_TRAIN_IMAGES = 12_000  # what `--train-if-missing` trains on: about a minute on a laptop CPU


# --------------------------------------------------------------------------------------
# Export: the ONNX file, its description and example images
# --------------------------------------------------------------------------------------


def export_for_app(
    model: Any,
    folder: str | os.PathLike,
    *,
    class_names: Sequence[str],
    mean: float | Sequence[float],
    std: float | Sequence[float],
    image_size: int = 28,
    channels: int = 1,
    examples: tuple[Any, Any] | None = None,
    description: str = "",
    tolerance: float = 1e-4,
) -> Path:
    """Export ``model`` to ``folder/model.onnx`` with what the app needs to use it; return the folder.

    The export takes any batch size, runs in eval mode (the model's own mode is restored
    afterwards) and is verified: ONNX Runtime's outputs must equal PyTorch's within
    ``tolerance``, or it raises. ``examples`` is ``(images, labels)``, normalized images
    ``(N, C, H, W)`` as the model sees them; they are saved as PNG files for the page.

    Example:
        >>> import tempfile, torch
        >>> from pdl.models import ExamplesCNN
        >>> folder = export_for_app(ExamplesCNN(channels=(4, 8), hidden=16), tempfile.mkdtemp(),
        ...                         class_names=[str(i) for i in range(10)], mean=0.5, std=0.5)
        >>> sorted(p.name for p in folder.iterdir())
        ['examples', 'model.json', 'model.onnx']
    """
    import torch

    folder = Path(folder)
    (folder / EXAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()  # dropout off, batch norm on its running statistics
    # Both files are written beside their real names and renamed together at the end: a crash
    # never leaves a half-written model, nor a new model with the old class names.
    partial = folder / (MODEL_FILE + ".partial")
    info_partial = folder / (INFO_FILE + ".partial")
    try:
        sample = torch.randn(
            3, channels, image_size, image_size, generator=torch.Generator().manual_seed(0)
        )
        torch.onnx.export(
            model, (sample[:2],), partial, input_names=["images"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False,
            dynamo=True,  # the torch.export-based exporter (the default from torch 2.9 on)
        )  # fmt: skip
        difference = verify_export(
            partial, model, sample, tolerance
        )  # batch 3: the batch size really is free
        names = []
        if examples is not None:
            images, labels = examples
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                name = f"{i:02d}_{re.sub(r'[^A-Za-z0-9]+', '-', class_names[int(label)]).strip('-')}.png"
                _save_png(image, mean, std, folder / EXAMPLES_DIR / name)
                names.append(name)
        info = {
            "format": "pdl-app-1",
            "classes": list(class_names),
            "image_size": image_size,
            "channels": channels,
            "mean": _per_channel(mean, channels),
            "std": _per_channel(std, channels),
            "examples": names,
            "description": description or type(model).__name__,
            "max_abs_difference_to_pytorch": difference,
            "torch": torch.__version__,
        }
        info_partial.write_text(json.dumps(info, indent=2), encoding="utf-8")
        os.replace(partial, folder / MODEL_FILE)
        os.replace(info_partial, folder / INFO_FILE)
    finally:
        partial.unlink(missing_ok=True)  # only left over when something failed
        info_partial.unlink(missing_ok=True)
        model.train(was_training)
    return folder


def verify_export(
    path: str | os.PathLike, model: Any, sample: Any, tolerance: float = 1e-4
) -> float:
    """The largest absolute difference between ONNX Runtime's and ``model``'s outputs on ``sample``.

    Raises ``RuntimeError`` above ``tolerance``. ``model`` should be in eval mode.

    Example:
        >>> verify_export("runs/08_model_to_application/app/model.onnx", model, images)  # doctest: +SKIP
        8.195639e-08
    """
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(sample).numpy()
    got = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    difference = float(np.abs(got - expected).max())
    if not difference <= tolerance:  # also catches NaN, which compares False with everything
        raise RuntimeError(
            f"the exported model differs from PyTorch by {difference:.2e} (> {tolerance:g})"
        )
    return difference


def _per_channel(value: float | Sequence[float], channels: int) -> list[float]:
    values = (
        [float(value)] * channels if isinstance(value, (int, float)) else [float(v) for v in value]
    )
    if len(values) != channels:
        raise ValueError(
            f"expected {channels} mean/std values (one per channel), got {len(values)}"
        )
    return values


def _save_png(
    image: Any, mean: float | Sequence[float], std: float | Sequence[float], path: Path
) -> None:
    """Undo the normalization of one ``(C, H, W)`` image and write it as an 8-bit PNG."""
    from PIL import Image

    pixels = np.asarray(
        image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32
    )
    channels = pixels.shape[0]
    pixels = pixels * np.reshape(_per_channel(std, channels), (-1, 1, 1)) + np.reshape(
        _per_channel(mean, channels), (-1, 1, 1)
    )
    pixels = (pixels.clip(0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)


# --------------------------------------------------------------------------------------
# A model when there is none: train a small one (python -m pdl serve --train-if-missing)
# --------------------------------------------------------------------------------------


def train_and_export(
    folder: str | os.PathLike,
    *,
    train_images: int = DEMO_TRAIN_IMAGES,
    epochs: int = 1,
    channels: tuple[int, int] = (32, 64),
    hidden: int = 128,
    test_images: int = 2_000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train lecture 05's CNN on the first ``train_images`` Fashion-MNIST images and export it.

    A short run for the demo; notebook 08 trains a better model. Returns ``model.json``'s content.

    Example:
        >>> info = train_and_export("runs/demo", train_images=2000, channels=(8, 16))  # doctest: +SKIP
    """
    import torch
    from torch import nn

    import pdl
    from pdl.data import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

    pdl.seed_everything(seed)
    x_train, y_train = pdl.data.fashion_mnist_tensors("train", limit=train_images)
    x_test, y_test = pdl.data.fashion_mnist_tensors("test", limit=test_images)
    model = pdl.models.ExamplesCNN(channels=channels, hidden=hidden)
    loader = pdl.data.tensor_loader(
        x_train,
        y_train,
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    history = pdl.fit(
        model,
        loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters()),
        epochs=epochs,
        device="cpu",
        progress=progress,
    )
    if history.interrupted:  # fit keeps what was trained, but the app must not serve half a run
        raise KeyboardInterrupt("training was interrupted: nothing was exported")
    outputs, _ = pdl.predict(model, x_test, device="cpu")
    accuracy = pdl.metrics.accuracy(outputs, y_test)
    picks = [
        int((y_test == c).nonzero()[0]) for c in range(len(FASHION_MNIST_CLASSES))
    ]  # one per class
    description = (
        f"ExamplesCNN(channels={tuple(channels)}, hidden={hidden}), {epochs} epoch(s) on "
        f"{len(x_train):,} Fashion-MNIST images; test accuracy {accuracy:.3f} on {len(x_test):,} images"
    )
    export_for_app(
        model,
        folder,
        class_names=FASHION_MNIST_CLASSES,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        examples=(x_test[picks], y_test[picks]),
        description=description,
    )
    if progress:
        print(f"Trained in {sum(history['seconds']):.0f} s and exported to {folder}: {description}")
    return json.loads((Path(folder) / INFO_FILE).read_text(encoding="utf-8"))
