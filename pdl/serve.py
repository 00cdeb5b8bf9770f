"""A demo web app for a trained classifier: ONNX Runtime behind FastAPI, one HTML page (lecture 08).

    python -m pdl serve --model runs/08_model_to_application/app    # then open http://127.0.0.1:8000
    make app                                                         # the same, training a model if needed

Why this stack: ONNX Runtime runs the exported network without PyTorch in the request path and
is fast on a CPU; FastAPI (on uvicorn) is a few lines per endpoint; the page is plain HTML and
JavaScript served by the app itself, so it works offline and loads nothing from a CDN (FastAPI's
own ``/docs`` pages would, so they are switched off). Nothing is sent anywhere else.

A model folder holds what ``export_for_app`` writes: ``model.onnx`` (any batch size, checked
against PyTorch), ``model.json`` (class names and preprocessing) and ``examples/*.png`` (test
images the page offers). Endpoints: ``GET /`` the page, ``GET /api/info``, ``GET
/api/examples/<name>``, and ``POST /api/predict`` with an image file (the raw bytes, or a form
field ``file``), which answers with the top classes as JSON:

    curl --data-binary @shoe.png http://127.0.0.1:8000/api/predict
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request)
# at definition time, and fastapi is imported inside create_app (it is an optional extra).
import argparse
import contextlib
import io
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.onnx"
INFO_FILE = "model.json"
EXAMPLES_DIR = "examples"
# Where notebook 08 exports its model (relative to the folder it runs in, notebooks/).
DEFAULT_FOLDER = Path("runs") / "08_model_to_application" / "app"
MAX_UPLOAD_BYTES = 10 * 2**20  # a photo from a phone fits; a mistaken upload of a video does not
DEMO_TRAIN_IMAGES = 12_000  # what `--train-if-missing` trains on: about a minute on a laptop CPU


class BadImageError(ValueError):
    """The uploaded bytes are not an image Pillow can read."""


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
    partial = folder / (MODEL_FILE + ".partial")  # renamed when complete: no half-written model
    try:
        sample = torch.randn(
            3, channels, image_size, image_size, generator=torch.Generator().manual_seed(0)
        )
        torch.onnx.export(
            model, (sample[:2],), partial, input_names=["images"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False,
        )  # fmt: skip
        difference = verify_export(
            partial, model, sample, tolerance
        )  # batch 3: the batch size really is free
        os.replace(partial, folder / MODEL_FILE)
    finally:
        partial.unlink(missing_ok=True)  # only left over when the export failed
        model.train(was_training)

    names = []
    if examples is not None:
        images, labels = examples
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = (
                f"{i:02d}_{re.sub(r'[^A-Za-z0-9]+', '-', class_names[int(label)]).strip('-')}.png"
            )
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
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
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
    if difference > tolerance:
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
# The classifier: preprocessing and ONNX Runtime
# --------------------------------------------------------------------------------------


class Classifier:
    """An exported model, ready to classify image files.

    Example:
        >>> classifier = Classifier("runs/08_model_to_application/app")  # doctest: +SKIP
        >>> classifier.predict(open("shoe.png", "rb").read())["label"]  # doctest: +SKIP
        'Sneaker'
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        import onnxruntime

        self.folder = Path(folder)
        if not (self.folder / MODEL_FILE).is_file() or not (self.folder / INFO_FILE).is_file():
            raise FileNotFoundError(
                f"no exported model in {self.folder} (it needs {MODEL_FILE} and {INFO_FILE}): run notebook 08, "
                "which exports one with pdl.serve.export_for_app, or start the app with --train-if-missing"
            )
        self.info = json.loads((self.folder / INFO_FILE).read_text(encoding="utf-8"))
        self.classes: list[str] = self.info["classes"]
        self.session = onnxruntime.InferenceSession(
            str(self.folder / MODEL_FILE), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        size, channels = self.info["image_size"], self.info["channels"]
        self.session.run(
            None, {self.input_name: np.zeros((1, channels, size, size), np.float32)}
        )  # warm-up

    def preprocess(self, data: bytes) -> tuple[np.ndarray, bool]:
        """Image bytes -> a normalized ``(1, C, H, W)`` float32 batch, and whether it was inverted.

        Fashion-MNIST shows light clothes on a black background; a photo usually has a light
        background. A one-channel image whose border is mostly light is therefore inverted
        first, so the model sees what it was trained on (the page says when this happened).
        """
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise BadImageError(f"this is not an image file Pillow can read ({error})") from error
        image = ImageOps.exif_transpose(image)  # phone photos store their rotation separately
        if image.mode in ("RGBA", "LA", "P"):  # transparent pixels count as white paper
            image = Image.alpha_composite(
                Image.new("RGBA", image.size, "white"), image.convert("RGBA")
            )
        channels, size = self.info["channels"], self.info["image_size"]
        image = image.convert("L" if channels == 1 else "RGB")
        inverted = False
        if channels == 1:
            pixels = np.asarray(image)
            border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
            if border.mean() > 127:
                image, inverted = ImageOps.invert(image), True
        image = ImageOps.pad(
            image, (size, size), color=0
        )  # keep the aspect ratio, pad with background
        x = (
            np.asarray(image, dtype=np.float32).reshape(size, size, channels).transpose(2, 0, 1)
            / 255
        )
        x = (x - np.reshape(self.info["mean"], (-1, 1, 1))) / np.reshape(
            self.info["std"], (-1, 1, 1)
        )
        return x[None].astype(np.float32), inverted

    def predict(self, data: bytes, top: int = 3) -> dict[str, Any]:
        """Classify one image file's bytes: the best class, the ``top`` classes, the model's time."""
        x, inverted = self.preprocess(data)
        started = time.perf_counter()
        logits = self.session.run(None, {self.input_name: x})[0][0].astype(np.float64)
        milliseconds = (time.perf_counter() - started) * 1e3
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities)[:top]
        top_classes = [
            {"label": self.classes[i], "probability": float(probabilities[i])} for i in order
        ]
        return {
            **top_classes[0],
            "index": int(order[0]),
            "top": top_classes,
            "milliseconds": milliseconds,
            "inverted": inverted,
        }


# --------------------------------------------------------------------------------------
# The web app
# --------------------------------------------------------------------------------------


def create_app(classifier: Classifier):
    """The FastAPI application: the page, the model's description, example images, predictions.

    Example:
        >>> app = create_app(Classifier("runs/08_model_to_application/app"))  # doctest: +SKIP
    """
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(
        title="pdl demo app", docs_url=None, redoc_url=None
    )  # the docs pages load from a CDN

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            key: classifier.info.get(key)
            for key in ("classes", "image_size", "channels", "examples", "description")
        }

    @app.get("/api/examples/{name}")
    def example(name: str) -> FileResponse:
        if name not in classifier.info.get("examples", []):  # only the listed files, never a path
            raise HTTPException(status_code=404, detail=f"no example image {name!r}")
        return FileResponse(classifier.folder / EXAMPLES_DIR / name, media_type="image/png")

    @app.post("/api/predict")
    async def predict(request: Request) -> dict[str, Any]:
        if int(request.headers.get("content-length") or 0) > MAX_UPLOAD_BYTES:
            raise HTTPException(
                status_code=413, detail=f"the image is larger than {MAX_UPLOAD_BYTES >> 20} MB"
            )
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_part_size=MAX_UPLOAD_BYTES)
            upload = form.get("file")
            data = await upload.read() if hasattr(upload, "read") else b""
        else:
            data = await request.body()
        if not data:
            raise HTTPException(
                status_code=400, detail="send an image: the request body, or a form field 'file'"
            )
        try:  # ONNX Runtime works on the CPU: run it beside the event loop, not in it
            return await run_in_threadpool(classifier.predict, data)
        except BadImageError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None

    return app


@contextlib.contextmanager
def running_app(folder: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the app in a background thread (port 0: a free one); yield its URL; stop it afterwards.

    For a notebook, a test or a screenshot; from a terminal use ``python -m pdl serve``.

    Example:
        >>> with running_app("runs/08_model_to_application/app") as url:  # doctest: +SKIP
        ...     print(url)  # e.g. http://127.0.0.1:40213
    """
    import uvicorn

    config = uvicorn.Config(
        create_app(Classifier(folder)), host=host, port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="pdl-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the app did not start on {host}:{port} (see the messages above)")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --------------------------------------------------------------------------------------
# The command line, python -m pdl serve, and a model when there is none
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m pdl serve``."""
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_FOLDER,
        help="folder export_for_app wrote (default: %(default)s)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--train-if-missing",
        action="store_true",
        help="without a model, train and export a small one first",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``python -m pdl serve`` with parsed ``args``; returns the exit status."""
    import uvicorn

    folder = args.model
    if not (folder / MODEL_FILE).is_file():
        if not args.train_if_missing:
            print(
                f"No exported model in {folder}. Run notebook 08 (it exports one there), or add "
                "--train-if-missing to train a small one first.",
                file=sys.stderr,
            )
            return 2
        print(
            f"No exported model in {folder}: training one first (lecture 05's CNN, one epoch on {DEMO_TRAIN_IMAGES:,} "
            "Fashion-MNIST images; about a minute on a laptop CPU). Notebook 08 exports a better one."
        )
        train_and_export(folder)
    with (
        socket.socket() as probe
    ):  # a clear message instead of uvicorn's bare "address already in use"
        try:
            probe.bind((args.host, args.port))
        except OSError as error:
            print(
                f"Cannot listen on {args.host}:{args.port} ({error.strerror}): is the app already running? "
                "Choose another port with --port.",
                file=sys.stderr,
            )
            return 1
    classifier = Classifier(folder)
    print(
        f"Serving {classifier.info['description']}\n  from {folder.resolve()}\n"
        f"  open http://{args.host}:{args.port} in a browser (Ctrl-C stops the app)"
    )
    uvicorn.run(create_app(classifier), host=args.host, port=args.port, log_level="warning")
    return 0


# --------------------------------------------------------------------------------------
# The page: plain HTML, CSS and JavaScript, nothing loaded from elsewhere
# --------------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pdl demo: image classifier</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 54rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
  #model { color: #555; margin-top: 0; }
  section { border: 1px solid #ddd; border-radius: 8px; padding: 0.8rem 1rem; margin: 0.8rem 0; }
  #examples button { border: 2px solid transparent; background: none; padding: 2px; cursor: pointer; }
  #examples button:hover, #examples button.chosen { border-color: #1f77b4; }
  #examples img { width: 56px; height: 56px; display: block; image-rendering: pixelated; }
  #result { display: flex; gap: 1.5rem; align-items: center; }
  #preview { width: 140px; height: 140px; object-fit: contain; image-rendering: pixelated; background: #000; }
  #prediction { font-size: 2rem; font-weight: 600; }
  #prediction.error { color: #c00; font-size: 1.1rem; }
  .bar { background: #1f77b4; height: 0.9rem; border-radius: 3px; display: inline-block; vertical-align: middle; }
  #top { list-style: none; padding: 0; margin: 0.4rem 0; }
  #top span.name { display: inline-block; width: 7.5rem; }
  #details { color: #555; font-size: 0.9rem; }
</style>
</head>
<body>
<h1>Image classifier</h1>
<p id="model">loading the model's description ...</p>
<section>
  <label for="upload"><b>Upload an image:</b></label>
  <input type="file" id="upload" accept="image/*">
</section>
<section>
  <b>Or pick a test image:</b>
  <div id="examples"></div>
</section>
<section id="result">
  <img id="preview" alt="the image being classified">
  <div>
    <div id="prediction" data-state="idle">?</div>
    <ol id="top"></ol>
    <div id="details">Upload or pick an image.</div>
  </div>
</section>
<script>
const $ = (id) => document.getElementById(id);
function show(result) {
  $("prediction").textContent = result.label;
  $("top").replaceChildren(...result.top.map((t) => {
    const item = document.createElement("li");
    item.innerHTML = `<span class="name"></span><span class="bar"></span> ${(100 * t.probability).toFixed(1)} %`;
    item.querySelector(".name").textContent = t.label;
    item.querySelector(".bar").style.width = `${Math.max(2, 200 * t.probability)}px`;
    return item;
  }));
  $("details").textContent = `${result.milliseconds.toFixed(2)} ms in ONNX Runtime` +
    (result.inverted ? " · colours inverted (light background, unlike the training images)" : "");
}
async function classify(blob) {
  $("preview").src = URL.createObjectURL(blob);
  $("prediction").dataset.state = "busy";
  $("prediction").className = "";
  $("prediction").textContent = "...";
  try {
    const response = await fetch("api/predict", {method: "POST", body: blob});
    const result = await response.json();
    if (!response.ok) throw new Error(result.detail || response.statusText);
    show(result);
  } catch (error) {
    $("prediction").className = "error";
    $("prediction").textContent = error.message;
    $("top").replaceChildren();
    $("details").textContent = "";
  }
  $("prediction").dataset.state = "done";
}
async function pick(name, button) {
  $("prediction").dataset.state = "busy";
  document.querySelectorAll("#examples button").forEach((b) => b.classList.toggle("chosen", b === button));
  const response = await fetch(`api/examples/${encodeURIComponent(name)}`);
  classify(await response.blob());
}
$("upload").addEventListener("change", () => { if ($("upload").files.length) classify($("upload").files[0]); });
fetch("api/info").then((r) => r.json()).then((info) => {
  $("model").textContent = `${info.description} · ${info.classes.length} classes · served by ONNX Runtime`;
  for (const name of info.examples) {
    const button = document.createElement("button");
    button.title = name;
    button.dataset.name = name;
    button.innerHTML = `<img alt="" src="api/examples/${encodeURIComponent(name)}">`;
    button.addEventListener("click", () => pick(name, button));
    $("examples").append(button);
  }
  const wanted = new URLSearchParams(location.search).get("example");  // ?example=NAME picks one on load
  const button = [...$("examples").children].find((b) => b.dataset.name === wanted);
  if (button) pick(wanted, button);
});
</script>
</body>
</html>
"""
