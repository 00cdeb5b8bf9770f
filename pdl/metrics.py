"""Classification metrics, computed by torchmetrics with the right ``task=``.

torchmetrics metrics accumulate over batches (``update``) and report once (``compute``),
which is exactly what an epoch needs: the accuracy of an epoch is *not* the mean of the
per-batch accuracies when the last batch is smaller.

Which task?

- ``"multiclass"``: the model outputs C scores per sample ``(N, C)`` (C >= 2, trained with
  ``CrossEntropyLoss``), targets are class indices ``(N,)``.
- ``"binary"``: the model outputs one score per sample ``(N,)`` or ``(N, 1)`` (trained with
  ``BCEWithLogitsLoss``), targets are 0/1. Scores outside [0, 1] are treated as logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torchmetrics
from torchmetrics import Metric, MetricCollection


def classification_metrics(num_classes: int, *, task: str | None = None) -> MetricCollection:
    """Accuracy, macro precision, macro recall and macro F1 as one ``MetricCollection``.

    ``task`` defaults to "multiclass"; pass "binary" for a model with a single output.
    Macro averaging gives every class the same weight, so a rare class that is always
    missed pulls the score down instead of hiding behind the frequent ones.

    Example:
        >>> m = classification_metrics(3)
        >>> m.update(torch.tensor([[2.0, 0, 0], [0, 2.0, 0]]), torch.tensor([0, 2]))
        >>> {k: round(v.item(), 3) for k, v in m.compute().items()}
        {'accuracy': 0.5, 'f1': 0.333, 'precision': 0.333, 'recall': 0.333}
    """
    task = task or "multiclass"
    if task == "multiclass":
        if num_classes < 2:
            raise ValueError(
                "a multiclass problem needs num_classes >= 2; use task='binary' for one output"
            )
        kwargs = {"task": "multiclass", "num_classes": num_classes, "average": "macro"}
        # Accuracy stays the plain fraction of correct predictions ("micro"), as people expect.
        accuracy = torchmetrics.Accuracy(
            task="multiclass", num_classes=num_classes, average="micro"
        )
    elif task == "binary":
        kwargs = {"task": "binary"}
        accuracy = torchmetrics.Accuracy(task="binary")
    else:
        raise ValueError(f"task must be 'multiclass' or 'binary', not {task!r}")
    return MetricCollection(
        {
            "accuracy": accuracy,
            "precision": torchmetrics.Precision(**kwargs),
            "recall": torchmetrics.Recall(**kwargs),
            "f1": torchmetrics.F1Score(**kwargs),
        }
    )


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose highest score is the target class (one output: score > 0).

    Example:
        >>> accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
        0.5
    """
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        predictions = (outputs.reshape(-1) > 0).long()
        targets = targets.reshape(-1).long()
    else:
        predictions = outputs.argmax(dim=-1)
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape"
        )
    return (predictions == targets).float().mean().item()


def confusion_matrix(
    outputs: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """A ``(C, C)`` count matrix: row = true class, column = predicted class.

    ``outputs`` may be scores ``(N, C)`` or predicted labels ``(N,)``.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
        tensor([[1, 1],
                [0, 1]])
    """
    predictions = outputs.argmax(dim=-1) if outputs.ndim == 2 else outputs
    metric = torchmetrics.ConfusionMatrix(task="multiclass", num_classes=num_classes)
    return metric(predictions.cpu(), targets.cpu())


def metric_copies(
    metrics: MetricCollection | Mapping[str, Metric] | None, device: torch.device | str
) -> tuple[MetricCollection | None, MetricCollection | None]:
    """Two independent copies of ``metrics`` on ``device``, for training and for validation.

    A metric accumulates state between ``update`` and ``compute``, so the training and the
    validation numbers of an epoch need one copy each.

    Example:
        >>> train, val = metric_copies(classification_metrics(3), "cpu")
        >>> train is val, sorted(train)
        (False, ['accuracy', 'f1', 'precision', 'recall'])
    """
    if metrics is None:
        return None, None
    if not isinstance(metrics, MetricCollection):
        metrics = MetricCollection(dict(metrics))
    return metrics.clone().to(device), metrics.clone().to(device)


def compute_metrics(metrics: MetricCollection) -> dict[str, float]:
    """``metrics.compute()`` as plain Python floats, one per metric name.

    Example:
        >>> m = classification_metrics(2)
        >>> m.update(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
        >>> compute_metrics(m)["accuracy"]
        0.5
    """
    return {name: value.item() for name, value in metrics.compute().items()}
