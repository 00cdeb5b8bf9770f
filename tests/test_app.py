"""Lecture 08's demo app: started with its one command, it classifies a known image right,
over HTTP and on its page in headless Chromium.

The model is lecture 05's CNN, small and trained for a few seconds on 2,000 images; the known
image is the test image it classifies right with the highest confidence (found with ONNX
Runtime on the normalized tensor, not through the app's own preprocessing).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import onnxruntime
import pytest
import torch

import pdl
from pdl import export

REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TEST_IMAGES = (
    2000  # what train_and_export evaluates on; its examples are the first image of each class
)


@dataclass
class Known:
    path: Path  # the PNG the app saved
    label: str
    probability: float  # ONNX Runtime's, on the normalized tensor


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("app") / "model"
    export.train_and_export(
        folder,
        train_images=2000,
        channels=(8, 16),
        hidden=32,
        test_images=TEST_IMAGES,
        progress=False,
    )
    return folder


@pytest.fixture(scope="module")
def known(model_folder) -> Known:
    """Of the example images, the one the model gets right with the highest probability."""
    x, y = pdl.data.fashion_mnist_tensors("test", limit=TEST_IMAGES)
    picks = [int((y == c).nonzero()[0]) for c in range(10)]
    session = onnxruntime.InferenceSession(
        str(model_folder / export.MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    logits = session.run(None, {"images": x[picks].numpy()})[0]
    probabilities = torch.from_numpy(logits).softmax(1)
    right = [c for c in range(10) if probabilities[c].argmax() == c]
    assert right, "the quickly trained model gets none of the example images right"
    best = max(right, key=lambda c: probabilities[c, c])
    info = json.loads((model_folder / export.INFO_FILE).read_text())
    return Known(
        model_folder / export.EXAMPLES_DIR / info["examples"][best],
        info["classes"][best],
        float(probabilities[best, best]),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_folder):
    """``python -m pdl serve`` in a subprocess, the command the README gives; its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pdl", "serve", "--model", str(model_folder), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{process.stdout.read()}")
            try:
                urllib.request.urlopen(url + "/api/info", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail("the app did not answer within 60 s")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        process.stdout.close()


def post(url: str, data: bytes, content_type: str = "image/png") -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/api/predict", data=data, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_the_app_classifies_a_known_image(server, known):
    status, answer = post(server, known.path.read_bytes())
    assert status == 200, answer
    assert answer["label"] == known.label
    # The PNG holds 8-bit pixels, the tensor float32: the same image up to rounding.
    assert answer["probability"] == pytest.approx(known.probability, abs=0.02)
    assert [t["label"] for t in answer["top"]][0] == known.label and len(answer["top"]) == 3
    assert answer["inverted"] is False  # a Fashion-MNIST image already has a dark background


def test_the_app_accepts_a_form_upload_and_a_photo_with_a_light_background(server, known):
    boundary = "pdl-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + known.path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, answer = post(server, body, f"multipart/form-data; boundary={boundary}")
    assert (status, answer["label"]) == (200, known.label)

    from PIL import Image, ImageOps

    photo = ImageOps.invert(Image.open(known.path).convert("L")).resize(
        (280, 280)
    )  # dark on white, larger
    png = Path(known.path.parent.parent / "photo.png")
    photo.save(png)
    status, answer = post(server, png.read_bytes())
    assert status == 200 and answer["inverted"] is True and answer["label"] == known.label


def test_the_app_refuses_what_is_not_an_image(server):
    status, answer = post(server, b"these bytes are no image")
    assert status == 400 and "not an image" in answer["detail"]
    status, answer = post(server, b"")
    assert status == 400 and "send an image" in answer["detail"]
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(server + "/api/examples/..%2Fmodel.json")
    assert error.value.code == 404


def test_the_app_refuses_uploads_it_cannot_bound_and_decompression_bombs(server, tmp_path):
    import http.client
    import urllib.parse

    from PIL import Image

    address = urllib.parse.urlsplit(server)

    def send(body, headers):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        try:
            connection.request("POST", "/api/predict", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.load(response)
        finally:
            connection.close()

    # Chunked (no Content-Length): the size is unknown before reading, so it is refused.
    status, answer = send(
        iter([b"abc"]), {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}
    )
    assert status == 411 and "Content-Length" in answer["detail"]
    # An announced size over the limit is refused before anything is read.
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.putrequest("POST", "/api/predict")
        connection.putheader("Content-Type", "image/png")
        connection.putheader("Content-Length", str(100 << 20))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and "larger than" in json.load(response)["detail"]
    finally:
        connection.close()
    # A small PNG that would unpack to 225 million pixels: Pillow refuses it, the app says so.
    bomb = tmp_path / "bomb.png"
    Image.new("1", (15_000, 15_000)).save(bomb)
    status, answer = send(bomb.read_bytes(), {"Content-Type": "image/png"})
    assert status == 400 and "too many pixels" in answer["detail"]


def test_serve_without_a_model_says_what_to_do(tmp_path, capsys):
    from pdl.__main__ import main

    assert main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    message = capsys.readouterr().err
    assert "No exported model" in message and "--train-if-missing" in message


def chromium(user_data: Path):
    """Headless Chromium through Selenium, with the system's chromedriver (no download)."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(
            f"the browser test needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium "
            "chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={user_data}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    return driver


def test_the_page_shows_the_prediction_in_chromium(server, known, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path / "chromium-profile")
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples button")) == 10)
        prediction = driver.find_element(By.ID, "prediction")

        driver.find_element(By.ID, "upload").send_keys(str(known.path))  # a file upload
        wait.until(lambda d: prediction.get_attribute("data-state") == "done")
        assert prediction.text == known.label
        assert "ms in ONNX Runtime" in driver.find_element(By.ID, "details").text

        others = [
            b
            for b in driver.find_elements(By.CSS_SELECTOR, "#examples button")
            if b.get_attribute("data-name") != known.path.name
        ]
        others[0].click()  # another image first, so that the next answer is new
        wait.until(lambda d: prediction.get_attribute("data-state") == "done")
        driver.find_element(
            By.CSS_SELECTOR, f'#examples button[data-name="{known.path.name}"]'
        ).click()
        wait.until(lambda d: prediction.get_attribute("data-state") == "done")
        assert prediction.text == known.label
        bars = driver.find_elements(By.CSS_SELECTOR, "#top li")
        assert len(bars) == 3 and known.label in bars[0].text
    finally:
        driver.quit()


def test_an_export_is_verified_against_pytorch(model_folder):
    x = torch.randn(5, 1, 28, 28)
    with torch.random.fork_rng():
        other = pdl.models.ExamplesCNN(channels=(8, 16), hidden=32).eval()  # other random weights
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export.verify_export(model_folder / export.MODEL_FILE, other, x)


def test_an_export_that_computes_nan_fails_verification(model_folder):
    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 10), float("nan"))

    with pytest.raises(RuntimeError, match="differs from PyTorch by nan"):
        export.verify_export(model_folder / export.MODEL_FILE, Broken(), torch.randn(2, 1, 28, 28))
