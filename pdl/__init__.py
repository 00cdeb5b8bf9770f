"""pdl: the helper library of the Practical Deep Learning course.

Small modules, one concern each, meant to be read:

- ``pdl.device``: device choice, mixed-precision policy, seeding, moving batches.
- ``pdl.store``: the data root, the offline mirror, downloads, verification by manifest.
- ``pdl.data``: Fashion-MNIST and ants/bees as tensors, datasets and loaders.
- ``pdl.train``: ``train_one_epoch`` and ``fit`` (lecture 03's loop).
- ``pdl.evaluation``: ``evaluate`` and ``predict`` (eval mode, under ``inference_mode``).
- ``pdl.arguments``: the checks of ``fit``'s arguments, before any work is lost.
- ``pdl.diagnostics``: the checks on the batches: a mistake in the data, model or loss explained.
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
- ``pdl.export``: a model exported to ONNX for the demo app, verified against PyTorch (``import pdl.export``; lecture 08).
- ``pdl.serve``: the demo app, ONNX Runtime behind FastAPI (``import pdl.serve``; lecture 08).
- ``pdl.grading``: ``python -m pdl grade``, for instructors (``import pdl.grading``).
"""

__version__ = "0.2.0"  # the only place the version is written (pyproject.toml reads it)

from pdl import (  # noqa: E402
    arguments,
    batchnorm,
    checkpoint,
    checks,
    data,
    device,
    diagnostics,
    distributed,
    evaluation,
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
from pdl.evaluation import evaluate, predict  # noqa: E402
from pdl.history import History  # noqa: E402
from pdl.train import fit, train_one_epoch  # noqa: E402

__all__ = [
    "History",
    "__version__",
    "arguments",
    "batchnorm",
    "checkpoint",
    "checks",
    "data",
    "device",
    "diagnostics",
    "distributed",
    "evaluate",
    "evaluation",
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
