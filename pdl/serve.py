"""A demo web app for a trained classifier: ONNX Runtime behind FastAPI, one HTML page (lecture 08).

    python -m pdl serve --model runs/08_model_to_application/app    # then open http://127.0.0.1:8000
    make app                                                         # the same, training a model if needed

Why this stack: ONNX Runtime runs the exported network without PyTorch in the request path and
is fast on a CPU; FastAPI (on uvicorn) is a few lines per endpoint; the page is plain HTML and
JavaScript served by the app itself, so it works offline and loads nothing from a CDN (FastAPI's
own ``/docs`` pages would, so they are switched off). Nothing is sent anywhere else.

A model folder holds what ``export_for_app`` writes (``pdl/export.py``, with ``train_and_export``
for when there is no model yet): ``model.onnx`` (any batch size, checked against PyTorch),
``model.json`` (class names and preprocessing) and ``examples/*.png`` (test images the page
offers). This module is the app that serves it: ``Classifier`` (preprocessing and ONNX Runtime),
``create_app`` (FastAPI), ``running_app``, the command line and the page. Endpoints: ``GET /``
the page, ``GET /api/info``, ``GET /api/examples/<name>``, and ``POST /api/predict`` with an
image file (the raw bytes, or a form field ``file``), which answers with the top classes as JSON:

    curl --data-binary @shoe.png http://127.0.0.1:8000/api/predict
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request)
# at definition time, and fastapi is imported inside create_app (it is an optional extra).
import argparse
import contextlib
import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdl.export import DEMO_TRAIN_IMAGES, EXAMPLES_DIR, INFO_FILE, MODEL_FILE, train_and_export

if TYPE_CHECKING:  # for the type hints only: FastAPI loads when the app starts
    from fastapi import FastAPI

# Where notebook 08 exports its model (relative to the folder it runs in, notebooks/).
DEFAULT_FOLDER = Path("runs") / "08_model_to_application" / "app"
MAX_UPLOAD_BYTES = 10 * 2**20  # a photo from a phone fits; a mistaken upload of a video does not


class BadImageError(ValueError):
    """The uploaded bytes are not an image Pillow can read."""


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
                "which exports one with pdl.export.export_for_app, or start the app with --train-if-missing"
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

        Example:
            >>> x, inverted = classifier.preprocess(Path("photo.jpg").read_bytes())  # doctest: +SKIP
            >>> x.shape, inverted  # doctest: +SKIP
            ((1, 1, 28, 28), True)
        """
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise BadImageError(f"this is not an image file Pillow can read ({error})") from error
        except Image.DecompressionBombError as error:  # a small file that unpacks to gigabytes
            raise BadImageError(f"the image has too many pixels ({error})") from error
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
        """Classify one image file's bytes: the best class, the ``top`` classes, the model's time.

        Example:
            >>> classifier = Classifier("runs/08_model_to_application/app")  # doctest: +SKIP
            >>> classifier.predict(Path("shoe.png").read_bytes())["label"]  # doctest: +SKIP
            'Ankle boot'
        """
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


def create_app(classifier: Classifier) -> "FastAPI":  # quoted: FastAPI is imported lazily
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
        # The size is checked before reading: a body without a length could be endless, and
        # uvicorn never reads more than the length a request announces.
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            raise HTTPException(status_code=411, detail="send the image with a Content-Length")
        if int(length) > MAX_UPLOAD_BYTES:
            raise HTTPException(
                status_code=413, detail=f"the image is larger than {MAX_UPLOAD_BYTES >> 20} MB"
            )
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form(max_part_size=MAX_UPLOAD_BYTES) as form:  # closes temp files
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
# The command line, python -m pdl serve
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m pdl serve``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> parser.parse_args(["--port", "8001"]).port
        8001
    """
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
    """Run ``python -m pdl serve`` with parsed ``args``; returns the exit status.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> main(parser.parse_args(["--model", "runs/08_model_to_application/app"]))  # doctest: +SKIP
    """
    import uvicorn

    folder = args.model
    if not (folder / MODEL_FILE).is_file():
        if not args.train_if_missing:
            print(
                f"No exported model in {folder.resolve()}. Notebook 08 exports one into "
                "runs/08_model_to_application/app beside the notebook (notebooks/runs/... in a "
                "checkout of the course): pass that folder with --model, or add "
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
        if os.name != "nt":  # as uvicorn does: connections closing after a restart don't count
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
