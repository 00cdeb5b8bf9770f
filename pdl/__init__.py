"""pdl: the helper library of the Practical Deep Learning course.

Small modules, one concern each, meant to be read:

- ``pdl.device``: device choice, mixed-precision policy, seeding, moving batches.
- ``pdl.data``: the data root, offline mirror and downloads; Fashion-MNIST and ants/bees.
- ``pdl.train``: ``train_one_epoch``, ``evaluate``, ``predict`` and ``fit`` (lecture 03's loop).
- ``pdl.checkpoint``: atomic, ``weights_only``-safe checkpoints.
- ``pdl.metrics``: torchmetrics classification metrics with the right ``task=``.
- ``pdl.plot``: training curves, image grids, confusion matrices.
- ``pdl.batchnorm``: batch normalization written out, and folding BN into a conv (lecture 06).
- ``pdl.models``: networks built by hand in one lecture and reused in later ones (lecture 05's CNN).
- ``pdl.checks``: self-checks for the notebook exercises.
- ``pdl.distributed``: several processes under ``torchrun`` (DistributedDataParallel) for ``fit``.
- ``pdl.transfer``: pretrained backbones, heads, freezing, cached features (lecture 07).
"""

from pdl import (
    batchnorm,
    checkpoint,
    checks,
    data,
    device,
    distributed,
    metrics,
    models,
    plot,
    train,
    transfer,
)
from pdl.device import get_device, precision_policy, seed_everything, to_device
from pdl.train import History, evaluate, fit, predict, train_one_epoch

__version__ = "0.1.0"

__all__ = [
    "History",
    "batchnorm",
    "checkpoint",
    "checks",
    "data",
    "device",
    "distributed",
    "evaluate",
    "fit",
    "get_device",
    "metrics",
    "models",
    "plot",
    "precision_policy",
    "predict",
    "seed_everything",
    "to_device",
    "train",
    "train_one_epoch",
    "transfer",

]
