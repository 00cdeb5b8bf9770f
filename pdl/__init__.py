"""pdl: the helper library of the Practical Deep Learning course.

Small modules, one concern each, meant to be read:

- ``pdl.device``: device choice, mixed-precision policy, seeding, moving batches.
- ``pdl.store``: the data root, the offline mirror, downloads, verification by manifest.
- ``pdl.data``: Fashion-MNIST and ants/bees as tensors, datasets and loaders.
- ``pdl.train``: ``train_one_epoch``, ``evaluate``, ``predict`` and ``fit`` (lecture 03's loop).
- ``pdl.diagnostics``: the checks that explain a mistake before any work is lost.
- ``pdl.history``: what ``fit`` records: the ``History``, the monitored best, log lines.
- ``pdl.checkpoint``: atomic, ``weights_only``-safe checkpoints and exact resuming.
- ``pdl.metrics``: torchmetrics classification metrics with the right ``task=``.
- ``pdl.plot``: training curves, image grids, confusion matrices.
- ``pdl.batchnorm``: batch normalization written out, and folding BN into a conv (lecture 06).
- ``pdl.models``: networks built by hand in one lecture and reused in later ones (lecture 05's CNN).
- ``pdl.transfer``: heads, freezing, discriminative learning rates (lecture 07).
- ``pdl.weights``: pretrained weights, ``build_backbone``, matching preprocessing (lecture 07).
- ``pdl.features``: frozen-backbone features, their cache, the linear probe (lecture 07).
- ``pdl.checks``: self-checks for the notebook exercises.
- ``pdl.distributed``: several processes under ``torchrun`` (DistributedDataParallel) for ``fit``.
"""

__version__ = "0.1.0"  # the only place the version is written (pyproject.toml reads it)

from pdl import (  # noqa: E402
    batchnorm,
    checkpoint,
    checks,
    data,
    device,
    diagnostics,
    distributed,
    features,
    history,
    metrics,
    models,
    plot,
    store,
    train,
    transfer,
    weights,
)
from pdl.device import get_device, precision_policy, seed_everything, to_device  # noqa: E402
from pdl.history import History  # noqa: E402
from pdl.train import evaluate, fit, predict, train_one_epoch  # noqa: E402

__all__ = [
    "History",
    "__version__",
    "batchnorm",
    "checkpoint",
    "checks",
    "data",
    "device",
    "diagnostics",
    "distributed",
    "evaluate",
    "features",
    "fit",
    "get_device",
    "history",
    "metrics",
    "models",
    "plot",
    "precision_policy",
    "predict",
    "seed_everything",
    "store",
    "to_device",
    "train",
    "train_one_epoch",
    "transfer",
    "weights",
]
