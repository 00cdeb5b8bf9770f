"""pdl.train: the loop, its options, and the promises it makes (resume, Ctrl-C, NaN, shapes)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pdl
from pdl.checkpoint import load_checkpoint
from pdl.data import fashion_mnist_tensors, tensor_loader
from pdl.diagnostics import BatchShapeError, NonFiniteLossError
from pdl.history import History
from pdl.metrics import classification_metrics
from pdl.train import evaluate, fit, predict, train_one_epoch


@pytest.fixture(scope="module")
def fmnist():
    """Fashion-MNIST, flattened, as in-memory tensors (from the mirror's real files)."""
    return fashion_mnist_tensors("train", flatten=True), fashion_mnist_tensors("test", flatten=True)


def mlp(dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, 10))


def toy_data(n: int = 64, batch_size: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=generator)
    y = (x[:, 0] > 0).long()
    return tensor_loader(x, y, batch_size=batch_size)


def parameters_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# --------------------------------------------------------------------------------------
# The headline promises
# --------------------------------------------------------------------------------------


def test_fit_trains_fashion_mnist_mlp_to_085_in_3_epochs(fmnist, tmp_path):
    (x_train, y_train), (x_test, y_test) = fmnist
    pdl.seed_everything(0)
    model = mlp()
    history = fit(
        model,
        tensor_loader(x_train, y_train, batch_size=64, shuffle=True),
        tensor_loader(x_test, y_test, batch_size=1000),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        epochs=3,
        metrics=classification_metrics(10),
        progress=False,
    )
    assert len(history) == 3
    assert history["val_accuracy"][-1] >= 0.85, history
    # The reported accuracy is the real one: recompute it from predictions.
    outputs, targets = predict(model, tensor_loader(x_test, y_test, batch_size=1000))
    assert (outputs.argmax(1) == targets).float().mean().item() == pytest.approx(
        history["val_accuracy"][-1], abs=1e-6
    )
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_resume_from_epoch_1_checkpoint_equals_uninterrupted_run(fmnist, tmp_path):
    (x_train, y_train), (x_test, y_test) = fmnist
    x_train, y_train, x_val, y_val = x_train[:6000], y_train[:6000], x_test[:1000], y_test[:1000]

    def run(epochs: int, checkpoint_dir, resume=None, seed: int = 0):
        pdl.seed_everything(seed)
        model = mlp(dropout=0.2)  # dropout: the random state must be restored too
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        history = fit(
            model,
            tensor_loader(x_train, y_train, batch_size=64, shuffle=True),
            tensor_loader(x_val, y_val, batch_size=500),
            loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, scheduler=scheduler,
            epochs=epochs, checkpoint_dir=checkpoint_dir, resume=resume, progress=False,
        )  # fmt: skip
        return model, history

    uninterrupted, full_history = run(3, tmp_path / "a")
    run(1, tmp_path / "b")  # stops after epoch 1: b/last.pt is the epoch-1 checkpoint
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    # A different seed before resuming: everything random must come from the checkpoint.
    resumed, resumed_history = run(3, tmp_path / "c", resume=tmp_path / "b" / "last.pt", seed=123)

    assert torch.equal(parameters_of(uninterrupted), parameters_of(resumed))
    assert resumed_history["val_loss"] == full_history["val_loss"]
    assert resumed_history["lr"] == [1e-3, 5e-4, 2.5e-4]  # the scheduler continued too


def test_nan_loss_raises_error_naming_epoch_and_step():
    x = torch.randn(64, 5)
    x[40] = math.nan  # sample 40 is in the third batch of 16
    loader = tensor_loader(x, torch.zeros(64, dtype=torch.long), batch_size=16)
    model = nn.Linear(5, 2)
    with pytest.raises(NonFiniteLossError, match=r"became nan at epoch 1, step 3 of 4"):
        fit(
            model,
            loader,
            loss_fn=nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            epochs=2,
            progress=False,
        )


def test_ctrl_c_returns_history_and_keeps_checkpoints(tmp_path):
    class InterruptingLoader:
        """Yields normal batches, then raises KeyboardInterrupt midway through epoch 3."""

        def __init__(self):
            self.inner, self.epoch = toy_data(), 0

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            self.epoch += 1
            for step, batch in enumerate(self.inner):
                if self.epoch == 3 and step == 2:
                    raise KeyboardInterrupt
                yield batch

    model = nn.Linear(5, 2)
    history = fit(
        model,
        InterruptingLoader(),
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=5,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert history.interrupted
    assert history["epoch"] == [1, 2]
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 2 and last["history"] == history.rows
    # The model keeps what it trained, including the two batches of the interrupted epoch.
    assert not torch.equal(last["model"]["weight"], model.weight.detach())


# --------------------------------------------------------------------------------------
# Clear errors for shape mistakes, on the first batch
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "targets", "loss_fn", "message"),
    [
        (
            nn.Linear(5, 3),
            torch.randint(0, 10, (16,)),
            nn.CrossEntropyLoss(),
            r"targets contain class \d, but the model outputs 3 scores",
        ),
        (
            nn.Linear(5, 3),
            torch.rand(16),
            nn.CrossEntropyLoss(),
            r"needs class indices as integers",
        ),
        (
            nn.Linear(5, 1),
            torch.rand(16),
            nn.MSELoss(),
            r"shapes must match, but the model outputs \(16, 1\) and the targets are \(16,\)",
        ),
        (
            nn.Linear(5, 1),
            torch.randint(0, 2, (16, 1)),
            nn.BCEWithLogitsLoss(),
            r"needs float targets",
        ),
        (
            nn.Linear(5, 3),
            torch.randint(0, 3, (16, 2)),
            nn.CrossEntropyLoss(),
            r"need targets of shape \(16,\)",
        ),
    ],
)
def test_shape_mismatch_fails_on_first_batch_with_clear_message(model, targets, loss_fn, message):
    loader = [(torch.randn(16, 5), targets)] * 3
    with pytest.raises(BatchShapeError, match=message):
        train_one_epoch(
            model, loader, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu"
        )


def test_model_input_mismatch_names_the_batch_shape():
    model = nn.Sequential(nn.Linear(784, 10))
    loader = [(torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))]
    with pytest.raises(
        BatchShapeError, match=r"(?s)inputs have shape \(8, 1, 28, 28\).*nn.Flatten"
    ):
        train_one_epoch(
            model,
            loader,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            device="cpu",
        )


def test_batches_must_be_pairs():
    model = nn.Linear(5, 2)
    with pytest.raises(TypeError, match="pair \\(inputs, targets\\)"):
        train_one_epoch(
            model,
            [torch.randn(4, 5)],
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
        )


@pytest.mark.parametrize("ignore_index", [-100, 255])
def test_targets_equal_to_ignore_index_are_not_classes(ignore_index):
    model = nn.Linear(5, 3)
    targets = torch.tensor([0, 1, ignore_index, 2] * 4)
    loss_fn = nn.CrossEntropyLoss(ignore_index=ignore_index)
    loader = [(torch.randn(16, 5), targets)]
    result = train_one_epoch(
        model, loader, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu"
    )
    assert math.isfinite(result["loss"])
    # ... but a real class beyond the outputs is still caught, ignored targets or not.
    targets[0] = 7
    with pytest.raises(
        BatchShapeError, match="targets contain class 7, but the model outputs 3 scores"
    ):
        train_one_epoch(
            model,
            [(torch.randn(16, 5), targets)],
            loss_fn,
            torch.optim.SGD(model.parameters(), lr=0.1),
        )


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


def test_gradient_accumulation_matches_one_big_batch():
    x, y = torch.randn(64, 5), torch.randint(0, 2, (64,))
    torch.manual_seed(0)
    big, small = nn.Linear(5, 2), nn.Linear(5, 2)
    small.load_state_dict(big.state_dict())
    loss_fn = nn.CrossEntropyLoss()
    train_one_epoch(
        big, tensor_loader(x, y, batch_size=64), loss_fn, torch.optim.SGD(big.parameters(), lr=0.5)
    )
    train_one_epoch(
        small,
        tensor_loader(x, y, batch_size=16),
        loss_fn,
        torch.optim.SGD(small.parameters(), lr=0.5),
        accumulate_steps=4,
    )
    torch.testing.assert_close(parameters_of(big), parameters_of(small))


@pytest.mark.parametrize("as_generator", [False, True])
def test_accumulation_steps_the_scheduler_for_the_last_incomplete_group(as_generator):
    # 5 batches, groups of 2: optimizer (and per-step scheduler) steps after batches 2, 4 and 5,
    # whether or not the loader has a len().
    model = nn.Linear(5, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    batches = [(torch.randn(4, 5), torch.randint(0, 2, (4,))) for _ in range(5)]
    loader = (batch for batch in batches) if as_generator else batches
    train_one_epoch(
        model,
        loader,
        nn.CrossEntropyLoss(),
        optimizer,
        accumulate_steps=2,
        step_scheduler=scheduler,
    )
    assert scheduler.last_epoch == 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1 / 4)
    assert all(p.grad is None for p in model.parameters())  # nothing left over for the next epoch


def test_gradient_clipping_limits_the_update():
    model = nn.Linear(5, 2)
    before = parameters_of(model)
    loader = [(100 * torch.randn(16, 5), torch.randint(0, 2, (16,)))]
    train_one_epoch(
        model,
        loader,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=1.0),
        grad_clip=0.01,
    )
    assert (parameters_of(model) - before).norm().item() == pytest.approx(0.01, rel=1e-4)


def test_schedulers_per_epoch_and_per_step():
    model = nn.Linear(5, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    per_epoch = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    history = fit(
        model,
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        epochs=3,
        scheduler=per_epoch,
        progress=False,
    )
    assert history["lr"] == pytest.approx([1.0, 0.1, 0.01])

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    history = fit(
        model,
        toy_data(batch_size=16),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        epochs=2,
        scheduler=per_step,
        scheduler_interval="step",
        progress=False,
    )
    assert history["lr"] == pytest.approx([1.0, 1 / 5])  # 4 steps per epoch


def test_reduce_lr_on_plateau_gets_the_monitored_value():
    model = nn.Linear(5, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0, factor=0.5)
    history = fit(
        model,
        toy_data(),
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        epochs=3,
        scheduler=scheduler,
        progress=False,
    )
    assert scheduler.best == pytest.approx(min(history["val_loss"]))


def test_early_stopping_and_best_checkpoint(tmp_path):
    model = nn.Linear(5, 2)
    # lr=0: the validation loss never improves after the first epoch.
    history = fit(
        model,
        toy_data(),
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        epochs=10,
        patience=2,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert history["epoch"] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3


def test_monitor_a_metric_to_maximize(tmp_path):
    model = nn.Linear(5, 2)
    history = fit(
        model,
        toy_data(),
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        epochs=4,
        metrics=classification_metrics(2),
        monitor="val_accuracy",
        checkpoint_dir=tmp_path,
        progress=False,
    )
    best_epoch = load_checkpoint(tmp_path / "best.pt")["epoch"]
    accuracies = history["val_accuracy"]
    assert accuracies[best_epoch - 1] == max(accuracies)
    with pytest.raises(KeyError, match="monitor='val_f2'"):
        fit(
            model,
            toy_data(),
            toy_data(),
            loss_fn=nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
            epochs=1,
            monitor="val_f2",
            progress=False,
        )


def test_resuming_with_another_monitor_is_refused(tmp_path):
    model = nn.Linear(5, 2)
    fit(
        model,
        toy_data(),
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        epochs=1,
        checkpoint_dir=tmp_path,
        progress=False,
    )  # monitors val_loss
    with pytest.raises(
        ValueError,
        match=r"monitoring 'val_loss' \(mode 'min'\), but this run monitors 'val_accuracy'",
    ):
        fit(
            model,
            toy_data(),
            toy_data(),
            loss_fn=nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
            epochs=2,
            metrics=classification_metrics(2),
            monitor="val_accuracy",
            resume=tmp_path / "last.pt",
            progress=False,
        )


class ScaledLoss(nn.Module):
    """A loss 1e4 times larger: with fp16 autocast and the default scale, gradients overflow."""

    def forward(self, outputs, targets):
        return 1e4 * nn.functional.cross_entropy(outputs, targets)


def test_fp16_scaler_skips_overflowing_steps_without_failing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 2))
    history = fit(
        model,
        toy_data(n=256),
        loss_fn=ScaledLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=1e-6),
        epochs=2,
        device="cpu",
        precision="fp16",
        progress=False,
    )
    assert sum(history["train_skipped_steps"]) > 0  # an ordinary per-epoch column
    assert math.isfinite(history["train_loss"][-1])


def test_binary_classification_with_one_logit_and_live_plot():
    torch.manual_seed(0)
    x = torch.randn(256, 5)
    y = (x[:, :1] > 0).float()  # (N, 1) float targets, as BCEWithLogitsLoss wants
    model = nn.Linear(5, 1)
    history = fit(
        model,
        tensor_loader(x, y, batch_size=32),
        tensor_loader(x, y, batch_size=64),
        loss_fn=nn.BCEWithLogitsLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        epochs=3,
        metrics=classification_metrics(2, task="binary"),
        progress=False,
        live_plot=True,
    )
    assert history["val_accuracy"][-1] >= 0.9


def test_evaluate_uses_eval_mode_and_inference_mode():
    model = nn.Sequential(nn.Linear(5, 5), nn.Dropout(0.9), nn.Linear(5, 2))
    loader = toy_data()
    first = evaluate(model, loader, nn.CrossEntropyLoss())
    second = evaluate(model, loader, nn.CrossEntropyLoss())
    assert first == second  # dropout is off: evaluation is deterministic
    assert model.training  # given back in the mode it came in: a hand-written loop keeps dropout
    model.eval()
    predict(model, torch.randn(4, 5))
    assert not model.training
    model.train()
    with pytest.raises(ValueError):
        evaluate(model, [], nn.CrossEntropyLoss())
    assert model.training  # also after an error


def test_fit_returns_the_model_in_eval_mode_ready_for_predictions():
    model = nn.Sequential(nn.Linear(5, 5), nn.Dropout(0.5), nn.Linear(5, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, toy_data(), loss_fn=nn.CrossEntropyLoss(), optimizer=opt, epochs=1, progress=False)
    assert not model.training
    x = torch.randn(3, 5)
    assert torch.equal(model(x), model(x))  # dropout off


def test_predict_with_and_without_targets():
    model = nn.Linear(5, 2)
    outputs, targets = predict(model, toy_data(n=40))
    assert outputs.shape == (40, 2) and targets.shape == (40,)
    outputs, targets = predict(model, torch.randn(7, 5), batch_size=3)
    assert outputs.shape == (7, 2) and targets is None
    inputs_only = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(7, 5)), batch_size=3
    )
    outputs, targets = predict(model, inputs_only)  # batches are one-element lists [inputs]
    assert outputs.shape == (7, 2) and targets is None
    with pytest.raises(ValueError, match="empty"):
        predict(model, [])


def test_metrics_are_computed_on_both_splits():
    model = nn.Linear(5, 2)
    history = fit(
        model,
        toy_data(),
        toy_data(seed=1),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        epochs=1,
        metrics={"accuracy": classification_metrics(2)["accuracy"]},
        progress=False,
    )
    assert set(history.keys()) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
    }
    assert 0.0 <= history["val_accuracy"][0] <= 1.0


def test_progress_prints_one_line_per_epoch(capsys):
    model = nn.Linear(5, 2)
    fit(
        model,
        toy_data(),
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=2,
        progress=True,
    )
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1/2", "2/2"]
    assert "val_loss" in lines[0]


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = nn.Linear(5, 2)
    history = fit(
        model,
        toy_data(),
        toy_data(seed=1),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        epochs=3,
        metrics=classification_metrics(2),
        log_dir=tmp_path / "tb",
        progress=False,
    )
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "loss/train",
        "loss/val",
        "accuracy/train",
        "accuracy/val",
        "lr",
        "seconds_per_epoch",
    } <= tags
    logged = [(e.step, e.value) for e in events.Scalars("loss/val")]
    assert [step for step, _ in logged] == [1, 2, 3]
    assert [value for _, value in logged] == pytest.approx(history["val_loss"], rel=1e-6)


def test_history_columns_dict_and_errors():
    history = History(
        [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7}]
    )
    assert history.to_dict()["val_loss"][0] != history.to_dict()["val_loss"][0]  # NaN where missing
    assert history["val_loss"][1] == 0.7
    with pytest.raises(KeyError, match="columns: epoch, train_loss, val_loss"):
        history["accuracy"]
    assert "2 epochs" in repr(history)
    ax = history.plot()
    assert ax.get_yscale() == "log"


# --------------------------------------------------------------------------------------
# Faults: Ctrl-C during a checkpoint write, leftovers of a killed run, exact resume with workers
# --------------------------------------------------------------------------------------


def _saves_then(monkeypatch, on_call: int, action):
    """Make pdl's torch.save run ``action`` at its ``on_call``-th call (1-based), before writing."""
    import pdl.checkpoint as checkpoint

    real_save, calls = checkpoint.torch.save, []

    def save(obj, f):
        calls.append(1)
        if len(calls) == on_call:
            action()
        return real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    return calls


def test_ctrl_c_while_a_checkpoint_is_written_returns_the_history(tmp_path, monkeypatch):
    import os
    import signal

    # Calls: epoch 1 writes best.pt then last.pt; epoch 2 best.pt (improved) then last.pt (4th).
    _saves_then(
        monkeypatch, 4, lambda: os.kill(os.getpid(), signal.SIGINT)
    )  # a real Ctrl-C mid-write
    model = nn.Linear(5, 2)
    history = fit(model, toy_data(), toy_data(), loss_fn=nn.CrossEntropyLoss(),
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=5, checkpoint_dir=tmp_path,
                  progress=False)  # fmt: skip
    assert history.interrupted and history["epoch"] == [
        1,
        2,
    ]  # the write finished, then Ctrl-C counted
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_keyboard_interrupt_inside_the_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    _saves_then(monkeypatch, 4, interrupt)  # epoch 2's last.pt
    model = nn.Linear(5, 2)
    history = fit(model, toy_data(), toy_data(), loss_fn=nn.CrossEntropyLoss(),
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=5, checkpoint_dir=tmp_path,
                  progress=False)  # fmt: skip
    assert history.interrupted and history["epoch"] == [1, 2]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1  # the previous one, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temporary file


def test_a_run_cleans_the_temporary_files_a_killed_run_left_and_nothing_else(tmp_path, capsys):
    import os

    stale = [tmp_path / ".last.pt.3f9a0c12.tmp", tmp_path / ".best.pt.0a1b2c3d.tmp"]
    others = [tmp_path / "notes.tmp", tmp_path / ".last.pt.backup", tmp_path / "last.pt.3f9a0c12.tmp",
              tmp_path / ".data.3f9a0c12.tmp", tmp_path / ".last.pt.toolongname.tmp"]  # fmt: skip
    fresh = tmp_path / ".last.pt.ffff9999.tmp"  # being written right now by another run
    for path in [*stale, *others, fresh]:
        path.write_bytes(b"x" * 100)
    for path in [*stale, *others]:
        os.utime(path, (0, 0))  # last written long ago
    model = nn.Linear(5, 2)
    fit(
        model,
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=1,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"x" * 100 for p in [*others, fresh])
    out = capsys.readouterr().out
    assert (
        "Removed 2 temporary file(s) that an interrupted run left" in out
        and ".best.pt.0a1b2c3d.tmp" in out
    )


class NoisyImages(torch.utils.data.Dataset):
    """Random augmentation in __getitem__: inside DataLoader workers, seeded by the loader."""

    def __init__(self, n: int = 96):
        generator = torch.Generator().manual_seed(0)
        self.x, self.y = (
            torch.randn(n, 5, generator=generator),
            torch.randint(0, 2, (n,), generator=generator),
        )

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index] + 0.1 * torch.randn(5), self.y[index]


@pytest.mark.parametrize("with_generator", [True, False])
def test_resume_is_bit_exact_with_make_loader_workers_and_random_augmentation(
    tmp_path, with_generator
):
    from pdl.data import make_loader

    def run(epochs, folder, resume=None, seed=0):
        pdl.seed_everything(seed)
        model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
        generator = torch.Generator().manual_seed(1) if with_generator else None
        loader = make_loader(
            NoisyImages(), batch_size=16, shuffle=True, num_workers=2, generator=generator
        )
        fit(
            model,
            loader,
            loss_fn=nn.CrossEntropyLoss(),
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
            epochs=epochs,
            checkpoint_dir=folder,
            resume=resume,
            progress=False,
        )
        return parameters_of(model)

    uninterrupted = run(3, tmp_path / "a")
    run(1, tmp_path / "b")
    resumed = run(3, tmp_path / "c", resume=tmp_path / "b" / "last.pt", seed=99)
    assert torch.equal(uninterrupted, resumed)


def test_resuming_with_a_loader_that_keeps_its_workers_warns(tmp_path):
    loader = torch.utils.data.DataLoader(
        NoisyImages(32), batch_size=16, num_workers=1, persistent_workers=True
    )
    model = nn.Linear(5, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(
        model,
        loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        epochs=1,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    with pytest.warns(UserWarning, match="persistent_workers=True.*persistent_workers=False"):
        fit(
            model,
            loader,
            loss_fn=nn.CrossEntropyLoss(),
            optimizer=optimizer,
            epochs=2,
            resume=tmp_path / "last.pt",
            progress=False,
        )


def test_checkpoints_get_the_permissions_of_any_new_file(tmp_path):
    model = nn.Linear(5, 2)
    fit(
        model,
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=1,
        checkpoint_dir=tmp_path,
        progress=False,
    )
    reference = tmp_path / "reference"
    reference.write_bytes(b"")  # open() applies the umask, as torch.save does
    assert (tmp_path / "last.pt").stat().st_mode == reference.stat().st_mode


# --------------------------------------------------------------------------------------
# Logic: direction of the monitor, learning-rate columns, skipped steps and schedulers
# --------------------------------------------------------------------------------------


def test_a_metric_to_minimize_picks_the_right_best_checkpoint(tmp_path):
    import torchmetrics

    torch.manual_seed(0)
    x = torch.randn(128, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    model = nn.Linear(3, 1)
    history = fit(model, tensor_loader(x, y, batch_size=16), tensor_loader(x, y, batch_size=64),
                  loss_fn=nn.MSELoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.05), epochs=4,
                  metrics={"mae": torchmetrics.MeanAbsoluteError()}, monitor="val_mae", checkpoint_dir=tmp_path,
                  progress=False)  # fmt: skip
    best_epoch = load_checkpoint(tmp_path / "best.pt")["epoch"]
    assert history["val_mae"][best_epoch - 1] == min(
        history["val_mae"]
    )  # lower is better for an error
    assert load_checkpoint(tmp_path / "best.pt")["monitor"]["mode"] == "min"


def test_every_parameter_group_gets_its_learning_rate_column():
    from pdl.transfer import param_groups

    model = nn.Sequential(nn.Linear(5, 5), nn.ReLU())
    model.add_module("fc", nn.Linear(5, 2))
    optimizer = torch.optim.SGD(param_groups(model, {"fc": 0.1}, rest_lr=0.01))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    history = fit(
        model,
        toy_data(),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=2,
        progress=False,
    )
    assert history["lr_fc"] == pytest.approx([0.1, 0.05]) and history["lr_rest"] == pytest.approx(
        [0.01, 0.005]
    )
    assert "lr" not in history.keys()


def test_a_skipped_fp16_step_does_not_step_a_per_step_scheduler():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    history = fit(
        model,
        toy_data(n=256),
        loss_fn=ScaledLoss(),
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_interval="step",
        epochs=1,
        device="cpu",
        precision="fp16",
        progress=False,
    )
    skipped = history["train_skipped_steps"][0]
    assert (
        skipped > 0 and scheduler.last_epoch == 16 - skipped
    )  # 16 batches, only real steps counted
