"""The bad-input sweep: every mistake in the table gets a clear pdl error, none a silently wrong result.

Each row is (what goes wrong, how to provoke it, the error type pdl raises, words the message
must contain, the words that say what to do about it (None: the message explains, but has no
fix to offer), and whether the error comes before any training step). Rows that should fail
before training also check that the model's weights are exactly as they were: no work lost.

Faults that are not a bad input (Ctrl-C during a checkpoint write, a SIGKILL mid-write, exact
resume with DataLoader workers, a repair of the data root next to your own files) have their
own tests in test_train.py, test_checkpoint.py and test_data.py.

    python -m pytest -q tests/test_bad_inputs.py -k summary -s   # prints the sweep's counts
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchmetrics
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pdl
from pdl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pdl.data import fashion_mnist_tensors, tensor_loader, train_val_split
from pdl.device import get_device, precision_policy
from pdl.diagnostics import BatchShapeError, NonFiniteLossError
from pdl.features import cached_features, extract_features, feature_extractor
from pdl.metrics import classification_metrics
from pdl.store import DatasetNotFoundError, data_root, ensure
from pdl.transfer import head_name, param_groups, replace_head, train_from
from pdl.weights import WeightsFileError, WeightsNotAvailableError, build_backbone, resolve_weights


class Env:
    """A small run to break in one way per row: a linear model on toy data, and a scratch folder."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
        self.tmp, self.monkeypatch = tmp_path, monkeypatch
        self.hub = torch.hub.get_dir()  # restored by close()
        torch.manual_seed(0)
        self.model = nn.Linear(5, 3)
        self.before = [p.detach().clone() for p in self.model.parameters()]

    def batches(self, n: int = 4, targets=None, inputs=None) -> list:
        x = torch.randn(8, 5) if inputs is None else inputs
        y = torch.randint(0, 3, (8,)) if targets is None else targets
        return [(x, y)] * n

    def fit(self, **overrides):
        arguments = {
            "train_loader": self.batches(), "val_loader": self.batches(2), "loss_fn": nn.CrossEntropyLoss(),
            "optimizer": torch.optim.SGD(self.model.parameters(), lr=0.1), "epochs": 2, "device": "cpu",
            "progress": False, **overrides,
        }  # fmt: skip
        model = arguments.pop("model", self.model)
        return pdl.fit(
            model, arguments.pop("train_loader"), arguments.pop("val_loader"), **arguments
        )

    def unchanged(self) -> bool:
        return all(
            torch.equal(a, b.detach())
            for a, b in zip(self.before, self.model.parameters(), strict=True)
        )

    def checkpoint(self, **overrides) -> Path:
        """A last.pt after 2 epochs of the default run (or with ``overrides``)."""
        folder = self.tmp / "run"
        model = overrides.pop("model", nn.Linear(5, 3))
        optimizer = overrides.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=0.1)
        self.fit(model=model, optimizer=optimizer, checkpoint_dir=folder, **overrides)
        return folder / "last.pt"

    def resume(self, **overrides):
        """Resume the default checkpoint with ``overrides`` (a fresh model of the same kind by default)."""
        path = self.checkpoint()
        self.before = [p.detach().clone() for p in self.model.parameters()]
        return self.fit(resume=path, epochs=4, **overrides)

    def file(self, name: str, content: bytes | object) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        return path

    def hub_file(self, content: bytes | object) -> None:
        """Put ``content`` where the torch hub cache keeps ResNet-18's weights (None: nothing), offline."""
        torch.hub.set_dir(str(self.tmp / "hub"))
        self.monkeypatch.setenv("PDL_OFFLINE", "1")
        folder = self.tmp / "hub" / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        if content is not None:
            path = folder / "resnet18-f37072fd.pth"
            path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)

    def close(self) -> None:
        torch.hub.set_dir(self.hub)


class Payload:
    """Unpickling it would create a file: code that must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class OneBadLabel:
    """Batches with valid labels, then a label beyond the outputs in the third batch."""

    def __len__(self):
        return 4

    def __iter__(self):
        for step in range(4):
            y = torch.randint(0, 3, (8,))
            if step == 2:
                y[5] = 7
            yield torch.randn(8, 5), y


class NanMetric(torchmetrics.Metric):
    higher_is_better = True

    def update(self, outputs, targets):
        pass

    def compute(self):
        return torch.tensor(float("nan"))


class Flaky(nn.Module):
    """A model whose forward raises ``error``: what a GPU out of memory or a stray CPU tensor look like."""

    def __init__(self, error: Exception):
        super().__init__()
        self.linear, self.error = nn.Linear(5, 3), error

    def forward(self, x):
        raise self.error


def unidentified_dataset():
    class Generated(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return torch.randn(3, 32, 32), 0

    return Generated()


def frozen_linear():
    model = nn.Linear(5, 3)
    model.requires_grad_(False)
    return model


@dataclass
class Case:
    name: str
    run: Callable[[Env], object]
    error: type[BaseException]
    words: tuple[str, ...]  # the message must contain each of these
    fix: str | None  # the words that say what to do (None: the message only explains)
    before_training: bool = False  # the model must be untouched afterwards


def row(name, run, error, words, fix, before_training=False) -> Case:
    return Case(
        name,
        run,
        error,
        tuple(words) if isinstance(words, (list, tuple)) else (words,),
        fix,
        before_training,
    )


SGD = torch.optim.SGD
CASES = [
    # --- fit's arguments: refused before the first batch --------------------------------------
    row("loss_fn is the class", lambda e: e.fit(loss_fn=nn.CrossEntropyLoss), TypeError, "is the class CrossEntropyLoss", "nn.CrossEntropyLoss()", True),
    row("loss_fn sums the batch", lambda e: e.fit(loss_fn=nn.CrossEntropyLoss(reduction="sum")), ValueError, "reduction='sum'", "use the default reduction='mean'", True),
    row("evaluate with a summing loss", lambda e: pdl.evaluate(nn.Linear(5, 3), e.batches(), nn.CrossEntropyLoss(reduction="sum")), ValueError, "adds up the batch", "reduction='mean'"),
    row("loss_fn is a string", lambda e: e.fit(loss_fn="cross_entropy"), TypeError, "must be callable", "like nn.CrossEntropyLoss()", True),
    row("optimizer is the class", lambda e: e.fit(optimizer=torch.optim.Adam), TypeError, "is the class Adam", "torch.optim.Adam(model.parameters()", True),
    row("optimizer is model.parameters()", lambda e: e.fit(optimizer=e.model.parameters()), TypeError, "must be a torch.optim optimizer", "torch.optim.Adam(model.parameters()", True),
    row("optimizer of another model", lambda e: e.fit(optimizer=SGD(nn.Linear(5, 3).parameters(), lr=0.1)), ValueError, "holds none of this Linear's parameters", "Build it from this model", True),
    row("optimizer over frozen parameters only", lambda e: e.fit(model=(m := frozen_linear()), optimizer=SGD(m.parameters(), lr=0.1)), ValueError, "frozen", "unfreeze what should learn", True),
    row("grad_clip=0", lambda e: e.fit(grad_clip=0), ValueError, "grad_clip must be a positive number", "e.g. 1.0", True),
    row("grad_clip negative", lambda e: e.fit(grad_clip=-1.0), ValueError, "reverse the gradient", "e.g. 1.0", True),
    row("grad_clip nan", lambda e: e.fit(grad_clip=float("nan")), ValueError, "got nan", "e.g. 1.0", True),
    row("grad_clip a string", lambda e: e.fit(grad_clip="1.0"), ValueError, "got '1.0'", "e.g. 1.0", True),
    row("accumulate_steps=0", lambda e: e.fit(accumulate_steps=0), ValueError, "accumulate_steps must be a whole number >= 1", "1: no accumulation", True),
    row("accumulate_steps=1.5", lambda e: e.fit(accumulate_steps=1.5), ValueError, "got 1.5", "1: no accumulation", True),
    row("epochs=0", lambda e: e.fit(epochs=0), ValueError, "epochs must be a whole number >= 1", "the total number of epochs", True),
    row("epochs negative", lambda e: e.fit(epochs=-3), ValueError, "got -3", "the total number of epochs", True),
    row("epochs=2.5", lambda e: e.fit(epochs=2.5), ValueError, "got 2.5", "the total number of epochs", True),
    row("patience=0", lambda e: e.fit(patience=0), ValueError, "patience=0 would stop", "whole number >= 1", True),
    row("patience negative", lambda e: e.fit(patience=-1), ValueError, "got -1", "whole number >= 1", True),
    row("scheduler_interval unknown", lambda e: e.fit(scheduler_interval="batch"), ValueError, "not 'batch'", "'epoch' or 'step'", True),
    row("scheduler is the class", lambda e: e.fit(scheduler=torch.optim.lr_scheduler.StepLR), TypeError, "is the class StepLR", "StepLR(optimizer, ...)", True),
    row("scheduler of another optimizer", lambda e: e.fit(scheduler=torch.optim.lr_scheduler.StepLR(SGD(e.model.parameters(), lr=1), 1)), ValueError, "built for another optimizer", "create it from this optimizer", True),
    row("ReduceLROnPlateau per step", lambda e: e.fit(optimizer=(o := SGD(e.model.parameters(), lr=0.1)), scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(o), scheduler_interval="step"), ValueError, "needs the monitored value", "scheduler_interval='epoch'", True),
    row("ReduceLROnPlateau against the monitor", lambda e: e.fit(optimizer=(o := SGD(e.model.parameters(), lr=0.1)), scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(o), metrics=classification_metrics(3), monitor="val_accuracy"), ValueError, "lower the learning rate whenever val_accuracy improves", "mode='max'", True),
    row("monitor a column that does not exist", lambda e: e.fit(monitor="val_f2", metrics=classification_metrics(3)), KeyError, ["monitor='val_f2'", "val_f1"], "Pick one of them", True),
    row("monitor validation without validation data", lambda e: e.fit(val_loader=None, monitor="val_loss"), KeyError, "monitor='val_loss' is not a column", "Pick one of them", True),
    row("monitor a column of unknown direction", lambda e: e.fit(monitor="seconds"), ValueError, "higher or a lower 'seconds'", "pass mode='max'", True),
    row("mode misspelt", lambda e: e.fit(mode="maximize"), ValueError, "not 'maximize'", "mode must be 'min'", True),
    row("precision misspelt", lambda e: e.fit(precision="half"), ValueError, "not 'half'", "'fp32', 'bf16' or 'fp16'", True),
    row("checkpoint_dir is a file", lambda e: e.fit(checkpoint_dir=e.file("runs", b"x")), NotADirectoryError, "is a file, not a folder", "Pass a folder", True),
    row("checkpoint_dir below a file", lambda e: e.fit(checkpoint_dir=e.file("runs", b"x") / "mlp"), PermissionError, "cannot create checkpoint_dir", "choose a folder you can write to", True),
    row("train_loader is a tensor", lambda e: e.fit(train_loader=torch.randn(8, 5)), TypeError, "is a tensor, not batches", "pdl.data.tensor_loader(x, y", True),
    row("train_loader is a generator", lambda e: e.fit(train_loader=(b for b in e.batches())), TypeError, "can be iterated only once", "a DataLoader", True),
    row("train_loader is empty", lambda e: e.fit(train_loader=[]), ValueError, "yields no batches", "Give it data", True),
    row("tensor_loader's drop_last drops the only batch", lambda e: e.fit(train_loader=tensor_loader(torch.randn(5, 5), torch.zeros(5, dtype=torch.long), batch_size=8, drop_last=True)), ValueError, ["5 samples, batch_size=8", "drop_last=True"], "Give it data", True),
    row("drop_last drops the only batch", lambda e: e.fit(train_loader=DataLoader(TensorDataset(torch.randn(5, 5), torch.zeros(5, dtype=torch.long)), batch_size=8, drop_last=True)), ValueError, ["5 samples, batch_size=8", "drop_last=True"], "Give it data", True),
    row("val_loader is empty", lambda e: e.fit(val_loader=[]), ValueError, "val_loader yields no batches", "Give it data", True),
    row("train_loader is None", lambda e: e.fit(train_loader=None), TypeError, "must yield (inputs, targets) batches", "like a DataLoader", True),
    row("train_loader is a number", lambda e: e.fit(train_loader=64), TypeError, "got a int", "like a DataLoader", True),
    row("an empty generator, one epoch", lambda e: e.fit(train_loader=(b for b in []), epochs=1), ValueError, "yielded no batches in epoch 1", "pass a DataLoader", True),
    # --- batches: the first batch explains, every batch is checked --------------------------------
    row("batches of inputs only", lambda e: e.fit(train_loader=[torch.randn(8, 5)] * 2), TypeError, "must be a pair (inputs, targets)", "TensorDataset(x, y)", True),
    row("batches of three", lambda e: e.fit(train_loader=[(torch.randn(8, 5),) * 3] * 2), TypeError, "a tuple of length 3", "TensorDataset(x, y)", True),
    row("NumPy batches", lambda e: e.fit(train_loader=[(torch.randn(8, 5).numpy(), torch.zeros(8, dtype=torch.long).numpy())]), TypeError, "NumPy arrays", "torch.from_numpy(x).float()", True),
    row("float64 inputs", lambda e: e.fit(train_loader=e.batches(inputs=torch.randn(8, 5, dtype=torch.float64))), TypeError, "inputs are torch.float64 but the model's weights are torch.float32", "x.to(torch.float32)", True),
    row("images into an MLP", lambda e: e.fit(model=(m := nn.Linear(784, 3)), optimizer=SGD(m.parameters(), lr=0.1), train_loader=e.batches(inputs=torch.randn(8, 1, 28, 28))), BatchShapeError, "inputs have shape (8, 1, 28, 28)", "add nn.Flatten() first", True),
    row("grey images into an RGB conv", lambda e: e.fit(model=(m := nn.Sequential(nn.Conv2d(3, 3, 3), nn.Flatten(1), nn.LazyLinear(3))), optimizer=SGD(m[0].parameters(), lr=0.1), train_loader=e.batches(inputs=torch.randn(8, 1, 8, 8))), BatchShapeError, "inputs have shape (8, 1, 8, 8)", "needs 3-channel images", True),
    row("class index beyond the outputs", lambda e: e.fit(train_loader=e.batches(targets=torch.full((8,), 10))), BatchShapeError, "contain class 10, but the model outputs 3 scores", "nn.Linear(..., 11)", True),
    row("a bad label in batch 3", lambda e: e.fit(train_loader=OneBadLabel()), BatchShapeError, "contain class 7", "nn.Linear(..., 8)"),
    row("negative class index", lambda e: e.fit(train_loader=e.batches(targets=torch.full((8,), -1))), BatchShapeError, "contain class -1", "Class indices start at 0", True),
    row("float class indices", lambda e: e.fit(train_loader=e.batches(targets=torch.rand(8))), BatchShapeError, "needs class indices as integers", "targets.long()", True),
    row("(N, 1) class indices", lambda e: e.fit(train_loader=e.batches(targets=torch.zeros(8, 1, dtype=torch.long))), BatchShapeError, "need targets of shape (8,)", "targets.squeeze(1)", True),
    row("one output for cross-entropy", lambda e: e.fit(model=(m := nn.Sequential(nn.Linear(5, 1), nn.Flatten(0))), optimizer=SGD(m.parameters(), lr=0.1)), BatchShapeError, "needs one score per class", "use BCEWithLogitsLoss", True),
    row("MSE (N, 1) vs (N,) in fit", lambda e: e.fit(model=(m := nn.Linear(5, 1)), optimizer=SGD(m.parameters(), lr=0.1), loss_fn=nn.MSELoss(), train_loader=e.batches(targets=torch.rand(8))), BatchShapeError, "outputs (8, 1) and the targets are (8,)", "outputs.squeeze(1)", True),
    row("MSE (N, 1) vs (N,) in evaluate", lambda e: pdl.evaluate(nn.Linear(5, 1), e.batches(targets=torch.rand(8)), nn.MSELoss()), BatchShapeError, "outputs (8, 1) and the targets are (8,)", "outputs.squeeze(1)"),
    row("BCE with integer targets", lambda e: e.fit(model=(m := nn.Linear(5, 1)), optimizer=SGD(m.parameters(), lr=0.1), loss_fn=nn.BCEWithLogitsLoss(), train_loader=e.batches(targets=torch.ones(8, 1, dtype=torch.long))), BatchShapeError, "needs float targets", "targets.float()", True),
    row("a loss with reduction='none'", lambda e: e.fit(loss_fn=nn.CrossEntropyLoss(reduction="none")), ValueError, "returned a tensor of shape (8,)", "reduction='mean'", True),
    row("a loss that returns a float", lambda e: e.fit(loss_fn=lambda out, y: float(nn.functional.cross_entropy(out, y).detach())), TypeError, "returned a float, not a tensor", "torch operations", True),
    row("a forward pass that detaches", lambda e: e.fit(model=(m := nn.Sequential(nn.Linear(5, 3))), optimizer=SGD(m.parameters(), lr=0.1), loss_fn=lambda out, y: nn.functional.cross_entropy(out.detach(), y)), RuntimeError, "cut the graph (.detach()", "keep the forward pass in torch", True),
    row("out of memory on the first batch", lambda e: e.fit(model=(m := Flaky(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))), optimizer=SGD(m.parameters(), lr=0.1)), torch.OutOfMemoryError, ["Out of memory on the first batch", "batch size 8"], "smaller batch_size", True),
    row("the CPU allocator runs out", lambda e: e.fit(model=(m := Flaky(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to allocate 80000000000 bytes"))), optimizer=SGD(m.parameters(), lr=0.1)), torch.OutOfMemoryError, "can't allocate memory", "smaller batch_size", True),
    row("a tensor made on another device in forward", lambda e: e.fit(model=(m := Flaky(RuntimeError("Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"))), optimizer=SGD(m.parameters(), lr=0.1)), RuntimeError, "different devices in the forward pass", "device=x.device", True),
    row("NaN in the training inputs", lambda e: e.fit(train_loader=[*e.batches(2), (torch.full((8, 5), float("nan")), torch.zeros(8, dtype=torch.long))]), NonFiniteLossError, "became nan at epoch 1, step 3 of 3", "10x smaller learning rate"),
    row("NaN in the validation inputs", lambda e: e.fit(val_loader=e.batches(1, inputs=torch.full((8, 5), float("nan")))), NonFiniteLossError, "validation loss is nan after epoch 1", "torch.isfinite(x).all()"),
    row("a metric that is not one number", lambda e: e.fit(metrics={"confusion": torchmetrics.ConfusionMatrix(task="multiclass", num_classes=3)}), ValueError, "computes a tensor of shape (3, 3)", "average='macro'", True),
    row("metrics for another number of classes", lambda e: e.fit(metrics=classification_metrics(2)), ValueError, "cannot use the model's outputs (8, 3)", "Check num_classes", True),
    row("a monitored metric that is nan", lambda e: e.fit(metrics={"odd": NanMetric()}, monitor="val_odd"), ValueError, "val_odd is nan after epoch 1", "check the data of that split"),
    # --- resuming -------------------------------------------------------------------------------
    row("resume a plain state_dict", lambda e: e.fit(resume=e.file("weights.pt", nn.Linear(5, 3).state_dict())), CheckpointError, "holds a plain state_dict", "model.load_state_dict(", True),
    row("resume a file that is not there", lambda e: e.fit(resume=e.tmp / "nope" / "last.pt"), CheckpointError, "No checkpoint at", "check the path", True),
    row("resume a folder", lambda e: e.fit(resume=e.tmp), CheckpointError, "is a folder, not a checkpoint file", "did you mean", True),
    row("resume an SGD run with Adam", lambda e: e.resume(optimizer=torch.optim.Adam(e.model.parameters(), lr=0.1)), CheckpointError, "written by a run with torch.optim.SGD", "Resume with torch.optim.SGD", True),
    row("resume into another architecture", lambda e: e.resume(model=(m := nn.Sequential(nn.Linear(5, 3))), optimizer=SGD(m.parameters(), lr=0.1)), CheckpointError, "the weights of another model", "same architecture", True),
    row("resume with another number of classes", lambda e: e.resume(model=(m := nn.Linear(5, 4)), optimizer=SGD(m.parameters(), lr=0.1)), CheckpointError, "of another shape: weight, bias", "same number of classes", True),
    row("resume with a new learning rate", lambda e: e.resume(optimizer=SGD(e.model.parameters(), lr=0.01)), ValueError, ["asked for learning rate(s) [0.1]", "[0.01]"], "start a new run from the saved weights", True),
    row("resume a finished run", lambda e: e.fit(resume=e.checkpoint(), epochs=2), ValueError, "nothing is left to train", "Pass epochs > 2", True),
    row("resume with another monitor", lambda e: e.fit(resume=e.checkpoint(), epochs=4, metrics=classification_metrics(3), monitor="val_accuracy"), ValueError, "monitoring 'val_loss'", "Resume with monitor='val_loss'", True),
    row("resume and add a scheduler", lambda e: e.resume(optimizer=(o := SGD(e.model.parameters(), lr=0.1)), scheduler=torch.optim.lr_scheduler.StepLR(o, 1)), ValueError, "written with scheduler None", "resume without scheduler=", True),
    row("resume and drop the scheduler", lambda e: e.fit(resume=e.checkpoint(model=(m := nn.Linear(5, 3)), optimizer=(o := SGD(m.parameters(), lr=0.1)), scheduler=torch.optim.lr_scheduler.StepLR(o, 1)), epochs=4), ValueError, "written with scheduler StepLR", "pass the same StepLR", True),
    row("resume with other parameter groups", lambda e: e.resume(optimizer=SGD([{"params": [e.model.weight]}, {"params": [e.model.bias]}], lr=0.1)), CheckpointError, "parameter groups of [2] tensors", "over the same parameters", True),
    row("resume a truncated checkpoint", lambda e: e.fit(resume=e.file("half.pt", e.checkpoint().read_bytes()[:300])), CheckpointError, "truncated, corrupt", "copy it again", True),
    row("resume a pickle that runs code", lambda e: e.fit(resume=e.file("evil.pt", {"payload": Payload(e.tmp / "pwned")})), CheckpointError, "not a plain tensor file", "save model.state_dict()", True),
    row("resume a checkpoint of an older pdl", lambda e: e.fit(resume=e.file("old.pt", {"format": "pdl-checkpoint-1", "epoch": 1})), CheckpointError, "format 'pdl-checkpoint-1'", "Start a new run", True),
    row("load a list as a checkpoint", lambda e: load_checkpoint(e.file("list.pt", [1, 2, 3])), CheckpointError, "holds a list, not a dict", None),
    row("save a checkpoint onto a folder", lambda e: save_checkpoint({}, e.tmp), IsADirectoryError, "it is a folder", "give a file name such as", True),
    # --- devices and precision ------------------------------------------------------------------
    row("PDL_DEVICE=banana", lambda e: (e.monkeypatch.setenv("PDL_DEVICE", "banana"), get_device()), ValueError, "PDL_DEVICE='banana' (an environment variable) is not a device", "unset PDL_DEVICE"),
    row("device='gpu'", lambda e: get_device("gpu"), ValueError, "device 'gpu' is not a device", "use 'cpu', 'cuda'"),
    row("cuda:3 on a one-GPU machine", lambda e: (e.monkeypatch.setattr(torch.cuda, "is_available", lambda: True), e.monkeypatch.setattr(torch.cuda, "device_count", lambda: 1), get_device("cuda:3")), RuntimeError, "this machine has 1 CUDA device(s): cuda:0", "use one of them"),
    row("cuda without a GPU", lambda e: (e.monkeypatch.setattr(torch.cuda, "is_available", lambda: False), e.fit(device="cuda")), RuntimeError, "CUDA is not available here", "use 'cpu'", True),
    row("mps without a Mac GPU", lambda e: (e.monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False), get_device("mps")), RuntimeError, "Apple MPS is not available here", "use 'cpu'"),
    row("precision_policy misspelt", lambda e: precision_policy("cpu", "float16"), ValueError, "not 'float16'", "'fp32', 'bf16' or 'fp16'"),
    # --- data -----------------------------------------------------------------------------------
    row("limit=-5", lambda e: fashion_mnist_tensors("test", limit=-5), ValueError, "got -5", "None for all of them"),
    row("limit=0", lambda e: fashion_mnist_tensors("test", limit=0), ValueError, "got 0", "None for all of them"),
    row("split='val'", lambda e: fashion_mnist_tensors("val"), ValueError, "not 'val'", "one of train, test"),
    row("tensor_loader of unequal lengths", lambda e: tensor_loader(torch.randn(10, 5), torch.zeros(9)), ValueError, "(10, 5), (9,)", "x[:n], y[:n]"),
    row("tensor_loader of NumPy arrays", lambda e: tensor_loader(torch.randn(10, 5).numpy(), torch.zeros(10)), TypeError, "got ndarray", "torch.from_numpy(x)"),
    row("tensor_loader of nothing", lambda e: tensor_loader(torch.randn(0, 5), torch.zeros(0)), ValueError, "empty tensors (0 samples)", None),
    row("val_fraction=1.5", lambda e: train_val_split(TensorDataset(torch.zeros(10)), 1.5), ValueError, "between 0 and 1", "e.g. 0.1"),
    row("a dataset offline, nowhere", lambda e: (e.monkeypatch.setenv("PDL_DATA_ROOT", str(e.tmp / "root")), e.monkeypatch.delenv("PDL_DATA_MIRROR", raising=False), e.monkeypatch.setenv("PDL_OFFLINE", "1"), ensure("hymenoptera")), DatasetNotFoundError, "https://download.pytorch.org/tutorial/hymenoptera_data.zip", "point PDL_DATA_MIRROR at a folder"),
    row("an unknown dataset", lambda e: ensure("cifar10"), KeyError, "unknown dataset 'cifar10'", "known: fashion-mnist"),
    row("PDL_DATA_ROOT is a file", lambda e: (e.monkeypatch.setenv("PDL_DATA_ROOT", str(e.file("root", b"x"))), data_root()), NotADirectoryError, "is a file, not a folder", "point PDL_DATA_ROOT at a folder"),
    # --- weights, heads, features -------------------------------------------------------------------
    row("an unknown backbone", lambda e: resolve_weights("resnet17", "DEFAULT"), ValueError, "unknown backbone 'resnet17'", "torchvision.models.list_models"),
    row("unknown weights", lambda e: resolve_weights("resnet18", "IMAGENET1K_V9"), ValueError, "has no weights 'IMAGENET1K_V9'", "choose one of: DEFAULT"),
    row("weights of another architecture", lambda e: resolve_weights("resnet18", "MobileNet_V2_Weights.DEFAULT"), ValueError, "weights for another architecture", "its weights: ResNet18_Weights"),
    row("a weights file that is not there", lambda e: build_backbone("resnet18", str(e.tmp / "w.pth"), verbose=False), FileNotFoundError, "w.pth does not exist", "check the path, or use weights=None"),
    row("a weights file of another architecture", lambda e: build_backbone("mobilenet_v2", str(e.file("r.pth", torchvision.models.resnet18().state_dict())), verbose=False), WeightsFileError, "does not fit this MobileNetV2 beyond its head", "saved from another architecture"),
    row("a weights file that runs code", lambda e: build_backbone("resnet18", str(e.file("evil.pth", {"payload": Payload(e.tmp / "pwned")})), verbose=False), WeightsFileError, "not a plain tensor file", "save model.state_dict()"),
    row("a hub file that runs code", lambda e: (e.hub_file({"payload": Payload(e.tmp / "pwned")}), build_backbone("resnet18", "DEFAULT", verbose=False)), WeightsFileError, "resnet18-f37072fd.pth from the torch hub cache: it is not a plain tensor file", "delete it, and it is downloaded again"),
    row("a truncated hub file", lambda e: (e.hub_file(b"PK\x03\x04"), build_backbone("resnet18", "DEFAULT", verbose=False)), WeightsFileError, "resnet18-f37072fd.pth (4 bytes) in the torch hub cache", "Delete it, and it is downloaded again"),
    row("hub weights offline", lambda e: (e.hub_file(None), build_backbone("resnet18", "DEFAULT", verbose=False)), WeightsNotAvailableError, "PDL_OFFLINE is set", "use weights=None"),
    row("a head of zero classes", lambda e: replace_head(torchvision.models.resnet18(), 0), ValueError, "num_classes must be >= 1", None),
    row("a model without a head", lambda e: head_name(nn.Sequential(nn.Linear(2, 2))), ValueError, "cannot find the head of this Sequential", None),
    row("train_from an unknown stage", lambda e: train_from(torchvision.models.resnet18(), "layer9"), ValueError, "has no module 'layer9'", "its children: conv1"),
    row("param_groups forgetting parameters", lambda e: param_groups(torchvision.models.resnet18(), {"fc": 1e-3}), ValueError, "belong to none of ['fc']", "pass rest_lr=... or freeze them"),
    row("caching features of an unidentified dataset", lambda e: cached_features(torchvision.models.resnet18(), unidentified_dataset(), device="cpu"), TypeError, "cannot cache features of a Generated", "extract_features(feature_extractor(model), dataset)"),
    row("features of dict batches", lambda e: extract_features(feature_extractor(torchvision.models.resnet18()), [{"x": torch.zeros(1)}], device="cpu"), TypeError, "got a dict", "return an image tensor, or (image, label)"),
    row("features of nothing", lambda e: extract_features(feature_extractor(torchvision.models.resnet18()), TensorDataset(torch.zeros(0, 3, 8, 8)), device="cpu"), ValueError, "got no images", None),
    row("predict on nothing", lambda e: pdl.predict(nn.Linear(5, 3), []), ValueError, "predict got no data", None),
    row("evaluate on nothing", lambda e: pdl.evaluate(nn.Linear(5, 3), [], nn.CrossEntropyLoss()), ValueError, "yields no batches", "Give it data"),
    row("multiclass metrics for one class", lambda e: classification_metrics(1), ValueError, "needs num_classes >= 2", "use task='binary'"),
    row("a metrics task misspelt", lambda e: classification_metrics(3, task="multi"), ValueError, "not 'multi'", "'multiclass' or 'binary'"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_bad_input_gets_a_clear_error(case: Case, tmp_path, monkeypatch):
    env = Env(tmp_path, monkeypatch)
    try:
        with pytest.raises(case.error) as raised:
            case.run(env)
    finally:
        env.close()
    message = str(raised.value.args[0]) if isinstance(raised.value, KeyError) else str(raised.value)
    for words in (*case.words, *([case.fix] if case.fix else [])):
        assert words in message, f"{words!r} not in: {message}"
    assert (
        "weights_only=False" not in message
    )  # never advise loading a file from elsewhere unsafely
    assert not (tmp_path / "pwned").exists()  # no pickled code ever ran
    if case.before_training:
        assert env.unchanged(), "the error came after the model had been changed"


def test_summary_of_the_sweep():
    """At least 80 bad inputs, none silently wrong, at least 90% with a message that says what to do."""
    with_fix = sum(case.fix is not None for case in CASES)
    early = sum(case.before_training for case in CASES)
    print(
        f"\nbad-input sweep: {len(CASES)} inputs, {len(CASES)} clear pdl errors (0 silently wrong), "
        f"{with_fix} ({100 * with_fix / len(CASES):.0f}%) say what to do, {early} refused before any training step"
    )
    assert len(CASES) >= 80 and len({case.name for case in CASES}) == len(CASES)
    assert with_fix >= 0.9 * len(CASES)
