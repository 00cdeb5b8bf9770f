"""Training on several processes: PyTorch's DistributedDataParallel, started by ``torchrun``.

Data parallelism in one sentence: every process (a *rank*) holds a full copy of the model,
takes its own share of each minibatch, and before every optimizer step the gradients are
averaged over the ranks, so every copy takes the same step. Launch a script with

    torchrun --nproc-per-node 2 examples/ddp_fashion_mnist.py

and ``pdl.fit`` does the rest with the functions below (no-ops in a single process):

- ``setup``: join the default process group (nccl on CUDA, gloo on the CPU), one GPU per rank.
- ``wrap_model``: ``DistributedDataParallel``, which averages the gradients in ``backward()``.
- ``shard_for_training``: re-sample a DataLoader with a ``DistributedSampler`` (same batch
  size per rank, so one step sees ``world_size * batch_size`` samples); ``set_epoch`` reshuffles.
- ``shard_for_evaluation``, ``sum_over_ranks``, ``gather_shards``: evaluate and predict split
  the samples, add up the losses and collect the outputs, so every rank reports what one
  process would (torchmetrics synchronizes its own states when a group exists).
- ``sync_batchnorm``: opt in to BatchNorm statistics over the whole global batch (GPU only).

Tested with 2 CPU processes: N ranks of batch b train what one process of batch N*b trains
(same data order, no BatchNorm), and every rank gets the same history.

Every rank runs the same script and must call ``fit``, ``evaluate`` and ``predict`` (they
communicate): inside ``if rank == 0`` the others would wait until the ``TIMEOUT``.
The process group ``fit`` creates stays up for later calls (torch cannot re-create it in the
same process) until the script exits, or ``fit`` ends by an error or Ctrl-C: then it is left
at once, so that the other ranks stop instead of waiting.
The CUDA path (nccl, ``LOCAL_RANK``, ``SyncBatchNorm``) follows PyTorch's documentation, untested.
"""

from __future__ import annotations

import atexit
import os
import warnings
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

# How long a rank waits in a collective (all-reduce, barrier): long enough for rank 0 to write
# a checkpoint while the others wait, short enough that a dead rank or a call made on one rank
# only ends the job in minutes (torch's default for gloo: 30). For another value, call
# torch.distributed.init_process_group(timeout=...) in the script before fit.
TIMEOUT = timedelta(minutes=5)

# --------------------------------------------------------------------------------------
# Who am I? Rank and world size
# --------------------------------------------------------------------------------------


def is_distributed() -> bool:
    """True when this process is one of several in an initialized process group.

    Example:
        >>> is_distributed()  # a plain python process
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    """How many processes train together: the process group's size, else torchrun's ``WORLD_SIZE``.

    Example:
        >>> get_world_size()
        1
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def get_rank() -> int:
    """This process's number, 0 to ``get_world_size() - 1`` (torchrun's ``RANK`` before ``fit``).

    Example:
        >>> get_rank()
        0
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, the process that prints, logs and writes files (always True in one process).

    Example:
        >>> is_main_process()
        True
    """
    return get_rank() == 0


# --------------------------------------------------------------------------------------
# Joining and leaving the process group
# --------------------------------------------------------------------------------------


def setup(device: torch.device) -> tuple[torch.device, bool]:
    """Join the default process group when torchrun started several processes.

    Returns ``(device, created)``: this rank's device (``cuda:LOCAL_RANK`` on CUDA, where
    each rank needs a GPU of its own) and whether this call created the group. The backend
    is nccl on CUDA and gloo on the CPU. A group the script initialized itself is used as it
    is. With ``WORLD_SIZE`` unset or 1 nothing happens.

    Example:
        >>> setup(torch.device("cpu"))  # one process: nothing to join
        (device(type='cpu'), False)
    """
    created = False
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return device, False
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1, but this PyTorch build has no torch.distributed.")
        if device.type not in ("cuda", "cpu"):
            raise RuntimeError(
                f"Training on several processes runs on CUDA GPUs (nccl) or on the CPU (gloo), "
                f"not on {device.type}. Pass device='cpu' (or set PDL_DEVICE=cpu)."
            )
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        atexit.register(leave, True)  # destroy it when the script ends
        created = True
    if device.type == "cuda" and is_distributed():
        gpus = torch.cuda.device_count()
        local_rank = int(os.environ.get("LOCAL_RANK", get_rank() % max(gpus, 1)))
        if local_rank >= gpus:
            raise RuntimeError(
                f"Rank {get_rank()} needs GPU {local_rank}, but this machine has {gpus}. Start at "
                "most one process per GPU: torchrun --nproc-per-node <number of GPUs>."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device, created


def leave(created: bool) -> None:
    """Destroy the process group if ``created`` (by ``setup``) and it still exists.

    After an error or Ctrl-C in ``fit`` the ranks are out of step: leaving makes the other
    ranks' pending all-reduce fail at once instead of waiting.

    Example:
        >>> leave(created=False)  # not ours: left alone
    """
    if created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank got here (e.g. until rank 0 has written its checkpoints).

    Example:
        >>> barrier()  # one process: returns at once
    """
    if is_distributed():
        dist.barrier()


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` when distributed; return it unchanged otherwise.

    The wrapper shares the model's parameters: training through it trains ``model`` itself,
    so the caller's object holds the trained weights after ``fit``. At construction DDP copies
    rank 0's weights to every rank, and in every ``backward()`` it averages the gradients.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> wrap_model(model, torch.device("cpu")) is model  # one process
        True
    """
    if not is_distributed():
        return model
    synced = any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if synced and device.type == "cpu":
        raise ValueError(
            "The model has SyncBatchNorm layers, which PyTorch runs on GPUs only. On the CPU keep "
            "plain BatchNorm (each process then normalizes over its own batch)."
        )
    if batchnorm and not synced and is_main_process():
        warnings.warn(
            "The model has BatchNorm layers: each process normalizes over its own batch, so the "
            "result differs from one process with the whole batch. For statistics over the global "
            "batch (GPUs only) call model = pdl.distributed.sync_batchnorm(model) before fit.",
            stacklevel=3,
        )
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Opt in: replace the BatchNorm layers by ``SyncBatchNorm`` (mean and variance over all ranks).

    Call it before ``fit``, on every rank: ``model = pdl.distributed.sync_batchnorm(model)``.
    The layers keep their parameters, buffers and ``state_dict`` keys, and behave like plain
    BatchNorm in one process and in eval mode. PyTorch syncs on GPUs only.

    Example:
        >>> model = sync_batchnorm(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
        >>> type(model[1]).__name__, sorted(model[1].state_dict())[:2]
        ('SyncBatchNorm', ['bias', 'num_batches_tracked'])
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) of a DDP-wrapped model.

    DDP copies them before each training forward, after which each rank's moved with its own
    batch; called after each epoch, so every rank evaluates the very model rank 0 saves.

    Example:
        >>> broadcast_buffers(nn.BatchNorm1d(3))  # one process: nothing to do
    """
    if not (is_distributed() and isinstance(model, DistributedDataParallel)):
        return
    for buffer in model.module.buffers():
        dist.broadcast(buffer.data, src=0)


# --------------------------------------------------------------------------------------
# The data: each rank its share
# --------------------------------------------------------------------------------------


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``N`` takes samples ``r, r+N, r+2N, ...`` of the dataset, each exactly once.

    For evaluation and prediction: unlike ``DistributedSampler`` it never pads with repeated
    samples, so sums over the ranks count every sample once and ``predict`` can restore the
    order. Ranks may get one sample more than others: fine where no step runs in lockstep.

    Example:
        >>> list(ShardSampler(range(5), rank=1, world_size=2))
        [1, 3]
    """

    def __init__(self, data_source: Any, *, rank: int, world_size: int):
        self.indices = range(rank, len(data_source), world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard_for_training(
    loader: Any, *, rank: int | None = None, world_size: int | None = None, seed: int | None = None
) -> Any:
    """A copy of ``loader`` that gives this rank its share, through a ``DistributedSampler``.

    Same batch size per rank (one optimizer step sees ``world_size * batch_size`` samples),
    same workers, collate function and ``drop_last``. A shuffled loader stays shuffled: each
    epoch's permutation comes from ``seed + epoch`` (call ``set_epoch``), the same on every
    rank, and rank r takes positions r, r+N, r+2N, ... of it. ``seed`` defaults to the seed of
    the generator that shuffled ``loader`` (or torch's global seed), sent from rank 0 to all.
    ``DistributedSampler`` pads the dataset with a few repeated samples to a multiple of N, so
    every rank takes the same number of steps. One process: ``loader`` is returned as it is.

    Example:
        >>> from pdl.data import tensor_loader
        >>> loader = tensor_loader(torch.arange(8.0), batch_size=2)
        >>> [batch[0].tolist() for batch in shard_for_training(loader, rank=1, world_size=2)]
        [[1.0, 3.0], [5.0, 7.0]]
    """
    world_size = get_world_size() if world_size is None else world_size
    if world_size <= 1 or _sampler_of(loader, (DistributedSampler,)) is not None:
        return loader  # one process, or the script already gave it a DistributedSampler
    sampler, batch_size, drop_last = _index_sampler(loader, "training", world_size)
    shuffle = isinstance(sampler, RandomSampler)
    if seed is None:
        # The seed of whatever would have shuffled the loader: seed_everything(s) or a generator
        # seeded with s gives the same orders on every run. Rank 0's, in case the ranks differ;
        # below 2**63 so that seed + epoch stays a valid seed.
        generator = (
            sampler.generator if shuffle and sampler.generator is not None else loader.generator
        )
        seed = generator.initial_seed() if generator is not None else torch.initial_seed()
        seed = _same_on_every_rank(seed % 2**63)
    distributed_sampler = DistributedSampler(
        loader.dataset,
        num_replicas=world_size,
        rank=get_rank() if rank is None else rank,
        shuffle=shuffle,
        seed=seed,
    )
    return _rebuild(loader, distributed_sampler, batch_size, drop_last)


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell the loader's ``DistributedSampler`` the epoch (else every epoch repeats one order).

    Example:
        >>> set_epoch([(torch.zeros(1), torch.zeros(1))], 3)  # not a DistributedSampler: nothing to do
    """
    sampler = _sampler_of(loader, (DistributedSampler,))
    if sampler is not None:
        sampler.set_epoch(epoch)


def shard_for_evaluation(
    data: Any, *, rank: int | None = None, world_size: int | None = None
) -> Any:
    """This rank's share of ``data`` for ``evaluate`` and ``predict``: samples r, r+N, r+2N, ...

    A DataLoader is re-sampled with ``ShardSampler`` (same batch size, every sample kept; the
    order is the dataset's, shuffling changes nothing in a sum), a tensor is sliced
    ``data[r::N]``. Only a ``ShardSampler`` loader is kept as it is: a ``DistributedSampler``
    pads and shuffles, which would count samples twice and scramble ``predict``'s order.

    Example:
        >>> shard_for_evaluation(torch.arange(5), rank=0, world_size=2)
        tensor([0, 2, 4])
    """
    world_size = get_world_size() if world_size is None else world_size
    rank = get_rank() if rank is None else rank
    if world_size <= 1:
        return data
    if isinstance(data, torch.Tensor):
        return data[rank::world_size]
    if _sampler_of(data, (ShardSampler,)) is not None:
        return data
    if _sampler_of(data, (DistributedSampler,)) is not None:  # the whole dataset: re-shard it
        batch_size = data.batch_size
    else:
        batch_size = _index_sampler(data, "evaluation", world_size)[1]
    shards = ShardSampler(data.dataset, rank=rank, world_size=world_size)
    return _rebuild(data, shards, batch_size, False)  # drop_last=False: every sample counts


def _index_sampler(loader: Any, purpose: str, world_size: int) -> tuple[Sampler, int, bool]:
    """The sampler that orders ``loader``'s samples, its batch size and drop_last; or a clear error."""
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"On {world_size} processes pdl splits the data between them, which needs a torch "
            f"DataLoader (e.g. pdl.data.tensor_loader); for {purpose} it got a {type(loader).__name__}."
        )
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            "pdl cannot split an IterableDataset between processes: shard the stream yourself."
        )
    if type(loader.batch_sampler) is BatchSampler:
        sampler, batch_size, drop_last = loader.sampler, loader.batch_size, loader.drop_last
    elif loader.batch_sampler is None and type(loader.sampler) is BatchSampler:  # tensor_loader
        batches = loader.sampler
        sampler, batch_size, drop_last = batches.sampler, batches.batch_size, batches.drop_last
    else:
        raise TypeError(
            f"pdl cannot split this DataLoader between processes: it uses the batch sampler "
            f"{type(loader.batch_sampler or loader.sampler).__name__}. Give it a DistributedSampler yourself."
        )
    # Only a plain shuffle or the plain order can be split faithfully: a sampler that picks a
    # subset, repeats or weights samples would be silently replaced by the whole dataset.
    plain_shuffle = (
        type(sampler) is RandomSampler
        and not sampler.replacement
        and len(sampler) == len(loader.dataset)
    )
    if not (plain_shuffle or type(sampler) is SequentialSampler):
        raise TypeError(
            f"pdl can split a DataLoader that visits every sample once, shuffled or in order, but this "
            f"one samples with {type(sampler).__name__}. For a subset use torch.utils.data.Subset with "
            "shuffle=True; otherwise give it a DistributedSampler yourself (each rank its share)."
        )
    return sampler, batch_size, drop_last


def _rebuild(loader: DataLoader, sampler: Sampler, batch_size: int, drop_last: bool) -> DataLoader:
    """``loader`` again, with ``sampler`` choosing the samples and everything else kept."""
    options = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    if loader.batch_sampler is None:
        # The dataset returns whole batches (pdl.data.tensor_loader): batch the indices here.
        return DataLoader(
            loader.dataset,
            sampler=BatchSampler(sampler, batch_size, drop_last),
            batch_size=None,
            **options,
        )
    return DataLoader(
        loader.dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **options
    )


def _sampler_of(loader: Any, kinds: tuple[type, ...]) -> Sampler | None:
    """The sampler of one of ``kinds`` inside ``loader`` (directly, or under a BatchSampler)."""
    if not isinstance(loader, DataLoader):
        return None
    inner = (
        getattr(loader.sampler, "sampler", None),
        getattr(loader.batch_sampler, "sampler", None),
    )
    for candidate in (loader.sampler, *inner):
        if isinstance(candidate, kinds):
            return candidate
    return None


# --------------------------------------------------------------------------------------
# Putting the ranks' results together
# --------------------------------------------------------------------------------------


def _comm_device() -> torch.device:
    # nccl moves GPU tensors only; gloo CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _same_on_every_rank(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not is_distributed():
        return value
    message = [value]
    dist.broadcast_object_list(message, src=0)
    return message[0]


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Add up numbers over all ranks (e.g. a loss times its sample count, and the count).

    sum(loss * count) / sum(count) is the mean over every sample, as one process computes it
    (a mean of per-rank means is not, when ranks hold different numbers of samples).

    Example:
        >>> sum_over_ranks(2.5, 10)  # one process: the same numbers back
        (2.5, 10.0)
    """
    return _all_reduce(values, "sum")


def max_over_ranks(value: float) -> float:
    """The largest ``value`` over all ranks (an epoch lasts until its slowest rank is done).

    Example:
        >>> max_over_ranks(1.5)
        1.5
    """
    return _all_reduce((value,), "max")[0]


def _all_reduce(values: tuple[float, ...], op: str) -> tuple[float, ...]:
    if not is_distributed():
        return tuple(float(v) for v in values)
    totals = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(totals, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tuple(totals.tolist())


def gather_shards(shard: torch.Tensor | None) -> torch.Tensor | None:
    """Collect every rank's ``shard_for_evaluation`` rows and put them back in the data's order.

    Rank r computed rows r, r+N, r+2N, ...; every rank gets all of them, as one process would.

    Example:
        >>> gather_shards(torch.tensor([0, 2, 4]))  # one process: the rows themselves
        tensor([0, 2, 4])
    """
    if shard is None or not is_distributed():
        return shard
    shards: list[Any] = [None] * get_world_size()
    dist.all_gather_object(shards, shard.cpu())
    rows = torch.empty((sum(len(s) for s in shards), *shard.shape[1:]), dtype=shard.dtype)
    for r, part in enumerate(shards):
        rows[r :: len(shards)] = part
    return rows
