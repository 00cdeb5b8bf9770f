"""pdl.fit on two processes (DistributedDataParallel, gloo on the CPU), launched with torchrun.

The tests below start ``python -m torch.distributed.run --nproc-per-node 2`` on this very file
(three jobs side by side); ``worker()`` at the bottom is what each rank runs. The reference is
the hand-written loop of lecture 03 in this process, with the doubled batch over the order
``DistributedSampler`` uses: epoch e shuffles with ``torch.randperm(n, seed + e)``, rank r takes
positions r, r+2, r+4, ... of it, so step k of the two ranks together sees exactly positions
2bk .. 2b(k+1)-1: batch k of one process with batch 2b.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from subprocess import PIPE
from typing import NamedTuple

import pytest
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import pdl
from pdl import distributed
from pdl.data import tensor_loader
from pdl.metrics import classification_metrics

N_TRAIN, N_VAL, BATCH, EPOCHS, SEED, LR = 256, 101, 16, 3, 7, 0.2  # 101: the ranks get 51 and 50
THIS_FILE = Path(__file__).resolve()
EXAMPLE = THIS_FILE.parent.parent / "examples" / "ddp_fashion_mnist.py"


def toy_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three classes in 10 dimensions, decided by two coordinates: learnable in a few epochs."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_VAL, 10, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def make_model() -> nn.Module:
    # The same initial weights in every process (DDP would copy rank 0's anyway).
    pdl.seed_everything(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))  # no BatchNorm, no dropout


def loaders(seed: int = SEED):
    x, y, x_val, y_val = toy_data()
    generator = torch.Generator().manual_seed(seed)
    train = tensor_loader(x, y, batch_size=BATCH, shuffle=True, generator=generator)
    return train, tensor_loader(x_val, y_val, batch_size=20)


def flat(state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in state_dict.values()])


class Job(NamedTuple):
    done: subprocess.CompletedProcess
    ended: float  # time.time() when it had ended
    out: Path


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict[str, Job]:
    """The three torchrun jobs of these tests, started side by side (most of their time is
    Python starting and importing torch): "train", "fail" and "interrupt"."""
    # --standalone: a rendezvous on this machine at a free port, so jobs can run side by side.
    env = {**os.environ, "PDL_DEVICE": "cpu", "PYTHONPATH": str(THIS_FILE.parent.parent)}
    running = {}
    for scenario in ("train", "fail", "interrupt"):
        out = tmp_path_factory.mktemp(scenario)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   str(THIS_FILE), scenario, str(out)]  # fmt: skip
        # A session of its own, so that a job that hangs can be ended with all its workers.
        job = subprocess.Popen(
            command, stdout=PIPE, stderr=PIPE, text=True, env=env, start_new_session=True
        )
        running[scenario] = (job, out)
    finished, deadline = {}, time.time() + 600
    try:
        for scenario, (job, out) in running.items():
            try:
                stdout, stderr = job.communicate(timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the torchrun job {scenario!r} still ran after 600 s")
            done = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
            finished[scenario] = Job(done, time.time(), out)
    finally:  # a hung job, or Ctrl-C in pytest: leave no worker behind
        for job, _ in running.values():
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    return finished


# --------------------------------------------------------------------------------------
# Two ranks vs one process with the doubled batch
# --------------------------------------------------------------------------------------


def reference_run() -> tuple[nn.Module, list[dict[str, float]]]:
    """Lecture 03's loop in one process, batch 2*BATCH, over DistributedSampler's permutations."""
    x, y, x_val, y_val = toy_data()
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rows = []
    for epoch in range(1, EPOCHS + 1):
        order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(SEED + epoch))
        total = 0.0
        for batch in order.split(2 * BATCH):
            loss = loss_fn(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        with torch.inference_mode():
            outputs = model(x_val)
            val_loss = loss_fn(outputs, y_val).item()
            val_accuracy = (outputs.argmax(1) == y_val).float().mean().item()
        rows.append(
            {"train_loss": total / N_TRAIN, "val_loss": val_loss, "val_accuracy": val_accuracy}
        )
    return model, rows


@pytest.fixture(scope="module")
def two_ranks(jobs):
    """The "train" job: fit, evaluate, predict, resume and the example on 2 ranks."""
    done, _, out = jobs["train"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return out, results, done.stdout


def test_two_ranks_train_the_weights_of_one_process_with_the_doubled_batch(two_ranks):
    _, (rank0, rank1), _ = two_ranks
    reference, reference_rows = reference_run()
    # DDP averages the gradients, so both ranks take identical steps: bit for bit equal.
    assert torch.equal(flat(rank0["weights"]), flat(rank1["weights"]))
    difference = (flat(rank0["weights"]) - flat(reference.state_dict())).abs().max().item()
    assert difference <= 1e-5, (
        f"2 ranks x batch {BATCH} vs 1 process x batch {2 * BATCH}: max |dw| = {difference:.2e}"
    )
    # ... and it did train: the comparison is not one of zeros.
    assert flat(reference.state_dict()).abs().max() > 0.5
    # The reduced losses and torchmetrics' synchronized accuracy are what one process measures.
    for row, expected in zip(rank0["history"], reference_rows, strict=True):
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, abs=1e-5), (key, row, expected)
    assert reference_rows[-1]["val_accuracy"] > 0.8


def test_history_is_identical_on_both_ranks_and_only_rank_0_writes(two_ranks):
    out, (rank0, rank1), stdout = two_ranks
    assert rank0["history"] == rank1["history"]  # every column, seconds included
    assert [row["epoch"] for row in rank0["history"]] == [1, 2, 3]
    # One set of checkpoints, one TensorBoard log, one summary line per epoch.
    assert sorted(p.name for p in (out / "run").iterdir()) == ["best.pt", "last.pt", "tb"]
    assert len(list((out / "run" / "tb").iterdir())) == 1
    last = pdl.checkpoint.load_checkpoint(out / "run" / "last.pt")
    assert last["epoch"] == EPOCHS and last["history"] == rank0["history"]
    # The unwrapped model's keys (no "module." prefix), and the weights rank 0 ended with.
    assert torch.equal(flat(last["model"]), flat(rank0["weights"]))
    # Rank 0's summary of the last epoch in the first run and in the resumed one; none of rank 1.
    assert stdout.count(f"epoch {EPOCHS}/{EPOCHS} ") == 2, stdout
    assert stdout.count("Resumed from") == 1, stdout


def test_evaluate_and_predict_after_fit_give_every_rank_the_one_process_answer(two_ranks):
    _, (rank0, rank1), _ = two_ranks
    _, _, x_val, y_val = toy_data()
    assert rank0["still_in_group"] and rank1["still_in_group"]  # fit's group serves them
    model = make_model()
    model.load_state_dict(rank0["weights"])
    with torch.inference_mode():
        expected = model(x_val)
    for rank in (rank0, rank1):
        assert rank["evaluate"] == rank0["evaluate"]
        assert rank["evaluate"]["loss"] == pytest.approx(
            nn.functional.cross_entropy(expected, y_val).item(), abs=1e-6
        )
        assert rank["evaluate"]["loss"] == pytest.approx(rank0["history"][-1]["val_loss"], abs=1e-9)
        # Each rank predicted half, and every rank got all 101 rows back, in the data's order.
        assert torch.equal(rank["predict_targets"], y_val)
        torch.testing.assert_close(rank["predict_outputs"], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(rank["predict_tensor"], expected, rtol=0, atol=1e-6)


def test_batchnorm_gets_a_warning_and_sync_batchnorm_on_the_cpu_a_clear_error(two_ranks):
    _, (rank0, rank1), _ = two_ranks
    (warning,) = rank0["batchnorm_warnings"]
    assert "sync_batchnorm" in warning
    assert rank1["batchnorm_warnings"] == []  # said once, by rank 0
    for rank in (rank0, rank1):
        assert "GPUs only" in rank["sync_batchnorm_on_cpu"]


def test_the_example_runs_on_two_processes(two_ranks):
    out, _, stdout = two_ranks
    result = json.loads((out / "example.json").read_text())
    assert (result["processes"], result["backend"]) == (2, "gloo")
    assert result["batch_size_per_step"] == 2 * 64
    # predict() put the two ranks' outputs back in order: they match the targets as fit's did.
    assert result["val_accuracy"] == pytest.approx(result["predict_accuracy"], abs=1e-6)
    assert result["val_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert stdout.count("2 processes (gloo, cpu)") == 1, stdout


def without_seconds(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_resuming_on_two_ranks_continues_the_run_exactly(two_ranks):
    _, (rank0, rank1), _ = two_ranks
    for rank in (rank0, rank1):
        torch.testing.assert_close(
            flat(rank["resumed_weights"]), flat(rank0["weights"]), rtol=0, atol=1e-7
        )
        assert without_seconds(rank["resumed_history"]) == without_seconds(rank0["history"])


# --------------------------------------------------------------------------------------
# A failing or interrupted rank ends the job; it does not hang
# --------------------------------------------------------------------------------------


# Rank 1 goes on living for SURVIVES seconds after its fit ended: if rank 0 waited for it
# (or for the process-group timeout, 300 s), the job would take that long.
SURVIVES = 120


def test_an_error_on_one_rank_ends_the_whole_job_quickly(jobs):
    done, ended, out = jobs["fail"]
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stdout + done.stderr
    seconds = ended - float((out / "failed_at").read_text())
    assert seconds < 60, f"the job ended {seconds:.0f} s after the failure"


def test_ctrl_c_on_one_rank_ends_the_whole_job_quickly(jobs):
    done, ended, out = jobs["interrupt"]
    assert "rank 1 interrupted: True" in done.stdout, done.stdout + done.stderr[-3000:]
    assert done.returncode != 0  # rank 0 was waiting in an all-reduce: it fails instead of waiting
    seconds = ended - float((out / "failed_at").read_text())
    assert seconds < 60, f"the job ended {seconds:.0f} s after the Ctrl-C"


# --------------------------------------------------------------------------------------
# The pieces, in this process
# --------------------------------------------------------------------------------------


def test_shards_of_two_ranks_make_up_the_doubled_batch_step_by_step():
    x = torch.arange(64.0)
    for make in (
        lambda: tensor_loader(
            x, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(SEED)
        ),
        lambda: DataLoader(
            TensorDataset(x),
            batch_size=4,
            shuffle=True,
            generator=torch.Generator().manual_seed(SEED),
        ),
    ):
        shards = [distributed.shard_for_training(make(), rank=r, world_size=2) for r in (0, 1)]
        for epoch in (1, 2):
            for shard in shards:
                distributed.set_epoch(shard, epoch)
            order = torch.randperm(64, generator=torch.Generator().manual_seed(SEED + epoch))
            steps = [torch.cat([b0[0], b1[0]]) for b0, b1 in zip(*shards, strict=True)]
            assert len(steps) == 8 and all(len(step) == 8 for step in steps)
            for step, expected in zip(steps, order.split(8), strict=True):
                assert sorted(step.tolist()) == sorted(x[expected].tolist())


def test_evaluation_shards_count_every_sample_once_and_keep_options():
    data = TensorDataset(torch.arange(11.0))
    loader = DataLoader(data, batch_size=3, shuffle=True, num_workers=1, drop_last=False)
    shards = [distributed.shard_for_evaluation(loader, rank=r, world_size=2) for r in (0, 1)]
    seen = [sample for shard in shards for (batch,) in shard for sample in batch.tolist()]
    assert sorted(seen) == list(range(11))  # no padding, no duplicates
    assert shards[1].num_workers == 1 and shards[1].batch_size == 3
    again = distributed.shard_for_evaluation(shards[0], rank=0, world_size=2)
    assert again is shards[0]  # already split


def test_evaluation_re_shards_a_distributed_sampler_and_keeps_the_last_samples():
    data = TensorDataset(torch.arange(11.0))
    # A DistributedSampler pads to 12 and shuffles; drop_last would drop samples 9 and 10.
    for r in (0, 1):
        given = DataLoader(data, batch_size=3, drop_last=True,
                           sampler=DistributedSampler(data, num_replicas=2, rank=r, shuffle=True))  # fmt: skip
        shard = distributed.shard_for_evaluation(given, rank=r, world_size=2)
        assert [s for (batch,) in shard for s in batch.tolist()] == [
            float(i) for i in range(r, 11, 2)
        ]


@pytest.mark.parametrize(
    ("loader", "words"),
    [
        ([(torch.zeros(2, 3), torch.zeros(2))], ["DataLoader", "list"]),
        (
            DataLoader(TensorDataset(torch.zeros(8)), sampler=SubsetRandomSampler([0, 1, 2])),
            ["SubsetRandomSampler", "Subset"],
        ),
        (
            DataLoader(TensorDataset(torch.zeros(8)), sampler=WeightedRandomSampler([1.0] * 8, 8)),
            ["WeightedRandomSampler", "DistributedSampler"],
        ),
    ],
)
def test_loaders_that_cannot_be_split_get_a_clear_error(loader, words):
    with pytest.raises(TypeError) as error:
        distributed.shard_for_training(loader, rank=0, world_size=2, seed=0)
    for word in words:
        assert word in str(error.value)


def test_sync_batchnorm_keeps_weights_and_behaves_like_batchnorm_in_one_process():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    reference = {k: v.clone() for k, v in plain.state_dict().items()}
    synced = distributed.sync_batchnorm(plain)
    assert isinstance(synced[1], nn.SyncBatchNorm)
    assert synced.state_dict().keys() == reference.keys()
    x = torch.randn(16, 4)
    expected = nn.functional.batch_norm(nn.functional.linear(x, reference["0.weight"], reference["0.bias"]),
                                        None, None, reference["1.weight"], reference["1.bias"], training=True)  # fmt: skip
    # Training mode without a process group: plain BatchNorm.
    torch.testing.assert_close(synced(x), expected)


def test_one_process_leaves_everything_as_it_is():
    model, loader = nn.Linear(2, 1), tensor_loader(torch.zeros(4, 2), batch_size=2)
    assert distributed.setup(torch.device("cpu")) == (torch.device("cpu"), False)
    assert distributed.wrap_model(model, torch.device("cpu")) is model
    assert (
        distributed.shard_for_training(loader) is loader
        and distributed.shard_for_evaluation(loader) is loader
    )


# --------------------------------------------------------------------------------------
# What each rank runs under torchrun
# --------------------------------------------------------------------------------------


class FailingLoss(nn.CrossEntropyLoss):
    """Cross-entropy that raises ``error`` on rank 1 at its ``at``-th training step: a bug or a Ctrl-C there."""

    def __init__(self, error: type[BaseException], at: int, stamp: Path):
        super().__init__()
        self.error, self.at, self.calls, self.stamp = error, at, 0, stamp

    def forward(self, outputs, targets):
        self.calls += torch.is_grad_enabled()  # training steps only, not evaluation
        if distributed.get_rank() == 1 and self.calls == self.at:
            self.stamp.write_text(str(time.time()))
            raise self.error("injected failure on rank 1")
        return super().forward(outputs, targets)


def worker(scenario: str, out: Path) -> None:
    def run(model, epochs, loss_fn=None, seed=SEED, **kwargs):
        train_loader, val_loader = loaders(seed)
        return pdl.fit(
            model, train_loader, val_loader,
            loss_fn=loss_fn or nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9),
            epochs=epochs, device="cpu", metrics=classification_metrics(3), **kwargs,
        )  # fmt: skip

    if scenario in ("fail", "interrupt"):
        error = RuntimeError if scenario == "fail" else KeyboardInterrupt
        at = N_TRAIN // (2 * BATCH) + 3  # epoch 2, step 3
        history = run(
            make_model(), EPOCHS, loss_fn=FailingLoss(error, at, out / "failed_at"), progress=False
        )
        print(f"rank {distributed.get_rank()} interrupted: {history.interrupted}", flush=True)
        time.sleep(SURVIVES)  # a rank that goes on after fit: the others must not wait for it
        return

    model = make_model()
    history = run(model, EPOCHS, checkpoint_dir=out / "run", log_dir=out / "run" / "tb")
    _, val_loader = loaders()
    _, _, x_val, _ = toy_data()
    outputs, targets = pdl.predict(model, val_loader)
    results = {
        "weights": model.state_dict(),  # the caller's model object, trained
        "history": history.rows,
        "still_in_group": distributed.is_distributed(),
        "evaluate": pdl.evaluate(model, val_loader, nn.CrossEntropyLoss()),
        "predict_outputs": outputs,
        "predict_targets": targets,
        "predict_tensor": pdl.predict(model, x_val, batch_size=16).outputs,
    }
    # Resume: one epoch, then a fresh start from last.pt (new model, optimizer and loaders).
    # The shuffle follows the checkpoint's generator state, whatever seed the new loader has.
    run(make_model(), 1, checkpoint_dir=out / "part", progress=False)
    resumed = make_model()
    resume = out / "part" / "last.pt"
    resumed_history = run(
        resumed, EPOCHS, seed=SEED + 1, checkpoint_dir=out / "part", resume=resume
    )
    results.update(resumed_weights=resumed.state_dict(), resumed_history=resumed_history.rows)
    # BatchNorm: a warning that each rank normalizes alone; SyncBatchNorm on the CPU: a clear error.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distributed.wrap_model(
            nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), torch.device("cpu")
        )
    results["batchnorm_warnings"] = [str(w.message) for w in caught]
    try:
        distributed.wrap_model(
            distributed.sync_batchnorm(nn.Sequential(nn.BatchNorm1d(2))), torch.device("cpu")
        )
    except ValueError as error:
        results["sync_batchnorm_on_cpu"] = str(error)
    torch.save(results, out / f"rank{distributed.get_rank()}.pt")
    # The example, small, in the process group that the first fit created.
    sys.argv = [str(EXAMPLE), "--epochs", "1", "--train-size", "1024", "--val-size", "500",
                "--result-json", str(out / "example.json")]  # fmt: skip
    runpy.run_path(str(EXAMPLE), run_name="__main__")


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))
