"""Batch normalization written out in plain tensor operations (lecture 06).

This is the readable reference that the lecture 06 self-checks compare your code with, and
the unit tests compare with ``nn.BatchNorm1d`` / ``nn.BatchNorm2d``:

- ``batch_norm_statistics(x)``: the per-channel mean and (biased) variance of a batch.
- ``batch_norm(x, gamma, beta)``: the training-mode formula, normalize then scale and shift.
- ``BatchNorm``: the full layer for ``(N, C)``, ``(N, C, L)`` and ``(N, C, H, W)`` inputs, with
  running statistics (momentum, and the unbiased variance, as PyTorch keeps them), eval-mode
  behaviour and learnable gamma/beta. Its state dict has PyTorch's key names.
- ``fold_batchnorm(conv, bn)``: for inference, merge a batch norm into the convolution before
  it, so one layer does the work of two. ``fold_batchnorms(model)`` does it for a whole
  ``nn.Sequential``.

Gradients are not written by hand: autograd differentiates the formula, the statistics
included, exactly as it does for ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _reduce_dims(x: torch.Tensor) -> list[int]:
    """The dimensions batch norm averages over: every one except the channel dimension 1."""
    if x.ndim < 2:
        raise ValueError(
            f"batch norm needs a batch of shape (N, C, ...), got shape {tuple(x.shape)}"
        )
    return [0, *range(2, x.ndim)]


def _per_channel(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape ``(C,)`` to ``(1, C, 1, ...)`` so that it broadcasts against ``x``."""
    return values.reshape(1, -1, *([1] * (x.ndim - 2)))


def batch_norm_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and the *biased* variance of each channel of ``x``, both of shape ``(C,)``.

    Channel = dimension 1. For ``(N, C)`` the statistics run over the batch; for
    ``(N, C, H, W)`` over the batch and every pixel, so one channel shares one mean.
    The variance divides by the number of values ``n`` (``correction=0``), as normalization
    does; ``torch.var``'s default divides by ``n - 1``.

    Example:
        >>> mean, var = batch_norm_statistics(torch.tensor([[1.0, 10.0], [3.0, 10.0]]))
        >>> mean, var
        (tensor([ 2., 10.]), tensor([1., 0.]))
    """
    dims = _reduce_dims(x)
    return x.mean(dim=dims), x.var(dim=dims, correction=0)


def batch_norm(
    x: torch.Tensor,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    eps: float = 1e-5,
    mean: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalize each channel of ``x``, then scale by ``gamma`` and shift by ``beta`` (both ``(C,)``).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta``. Without ``mean``/``var`` the batch's
    own statistics are used (training mode); pass running statistics for eval mode.
    ``eps`` keeps the division finite for a channel that is constant in the batch.

    Example:
        >>> x = torch.tensor([[1.0], [3.0]])
        >>> batch_norm(x).flatten()  # mean 2, variance 1: (x - 2) / 1
        tensor([-1.0000,  1.0000])
        >>> batch_norm(x, gamma=torch.tensor([2.0]), beta=torch.tensor([5.0])).flatten()
        tensor([3.0000, 7.0000])
    """
    if mean is None or var is None:
        mean, var = batch_norm_statistics(x)
    x_hat = (x - _per_channel(mean, x)) / torch.sqrt(_per_channel(var, x) + eps)
    if gamma is not None:
        x_hat = x_hat * _per_channel(gamma, x)
    if beta is not None:
        x_hat = x_hat + _per_channel(beta, x)
    return x_hat


class BatchNorm(nn.Module):
    """Batch normalization for ``(N, C)``, ``(N, C, L)`` and ``(N, C, H, W)`` inputs.

    Behaves like ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` with their defaults:

    - training mode: normalize with the batch's mean and biased variance, and update the
      running statistics ``running = (1 - momentum) * running + momentum * batch_value``,
      where the running variance takes the *unbiased* batch variance (``n / (n - 1)`` times
      the biased one). ``momentum=None`` gives a plain average over all batches seen.
    - eval mode: normalize with the running statistics, so the output of one sample does not
      depend on the rest of its batch (and a batch of one works).
    - ``weight`` (gamma, starts at 1) and ``bias`` (beta, starts at 0) are learned; with
      ``gamma = sqrt(var + eps)`` and ``beta = mean`` the layer can undo its normalization.

    The parameter and buffer names are PyTorch's, so state dicts load both ways.

    Example:
        >>> bn = BatchNorm(3)
        >>> y = bn(torch.randn(8, 3, 4, 4) * 5 + 2)
        >>> round(y.mean().item(), 4) + 0.0, round(y.var(correction=0).item(), 2)
        (0.0, 1.0)
        >>> bn.num_batches_tracked.item()
        1
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
    ):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))  # gamma
            self.bias = nn.Parameter(torch.zeros(num_features))  # beta
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        # Buffers, not parameters: saved in the state dict and moved by .to(), never trained.
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (2, 3, 4) or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input of shape (N, {self.num_features}), (N, {self.num_features}, L) or "
                f"(N, {self.num_features}, H, W), got {tuple(x.shape)}"
            )
        if not self.training:
            return batch_norm(
                x, self.weight, self.bias, self.eps, self.running_mean, self.running_var
            )

        n = x.numel() // self.num_features  # values per channel
        if n < 2:
            # One value per channel has no variance: every output would be beta (PyTorch raises too).
            raise ValueError(
                f"expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}"
            )
        mean, var = batch_norm_statistics(x)
        self._update_running_statistics(mean, var, n)
        return batch_norm(x, self.weight, self.bias, self.eps, mean, var)

    @torch.no_grad()  # bookkeeping: the running statistics are not part of the graph
    def _update_running_statistics(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        self.num_batches_tracked += 1
        if self.momentum is None:  # cumulative average: batch k gets weight 1/k
            momentum = 1.0 / self.num_batches_tracked.item()
        else:
            momentum = self.momentum
        unbiased_var = var * n / (n - 1)  # an estimate of the population variance
        self.running_mean.mul_(1 - momentum).add_(momentum * mean)
        self.running_var.mul_(1 - momentum).add_(momentum * unbiased_var)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
        )


# --------------------------------------------------------------------------------------
# Folding batch norm into the convolution before it, for inference
# --------------------------------------------------------------------------------------


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new ``nn.Conv2d`` that computes ``bn(conv(x))`` as ``bn`` does in eval mode.

    In eval mode batch norm is a fixed per-channel affine map,
    ``y = s * (z - running_mean) + beta`` with ``s = gamma / sqrt(running_var + eps)``, and
    ``z = W * x + b`` is linear, so the two merge into one convolution:
    ``W' = s * W`` (per output channel) and ``b' = s * (b - running_mean) + beta``.
    One layer instead of two means one pass over the activations instead of two.
    ``conv`` and ``bn`` are left unchanged; the result is only valid for inference.

    Example:
        >>> conv, bn = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
        >>> _ = bn(conv(torch.randn(16, 3, 8, 8)))  # training mode: running stats move
        >>> bn.eval()  # doctest: +ELLIPSIS
        BatchNorm2d(...)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(fold_batchnorm(conv, bn)(x), bn(conv(x)), atol=1e-5)
        True
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"fold_batchnorm folds into an nn.Conv2d, got {type(conv).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "the batch norm has no running statistics (track_running_stats=False): nothing to fold"
        )
    if bn.running_mean.shape[0] != conv.out_channels:
        raise ValueError(
            f"the batch norm has {bn.running_mean.shape[0]} channels, the conv {conv.out_channels} outputs"
        )
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)  # one factor per output channel
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)

    folded = copy.deepcopy(conv)  # same kernel size, stride, padding, groups, device, dtype
    if folded.bias is None:
        # The conv's dtype and device, not the batch norm's: a bfloat16 conv with a float32
        # batch norm must still get a bfloat16 bias, or its forward pass refuses the mix.
        weight = conv.weight
        folded.bias = nn.Parameter(
            torch.zeros(conv.out_channels, dtype=weight.dtype, device=weight.device)
        )
    folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    folded.bias.copy_((bias - bn.running_mean) * scale + beta)
    return folded


def fold_batchnorms(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` with every ``Conv2d`` followed by a batch norm folded into one conv.

    Looks into nested ``nn.Sequential`` blocks; anything else is copied as it is. Meant for
    inference: call it on a trained model (the copy is returned in eval mode).

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> folded = fold_batchnorms(model)
        >>> [type(m).__name__ for m in folded]
        ['Conv2d', 'ReLU']
        >>> x = torch.randn(2, 1, 6, 6)
        >>> torch.allclose(folded(x), model(x), atol=1e-5)
        True
    """
    layers: list[nn.Module] = []
    children = list(model)
    i = 0
    while i < len(children):
        layer = children[i]
        following = children[i + 1] if i + 1 < len(children) else None
        if isinstance(layer, nn.Conv2d) and isinstance(following, (nn.BatchNorm2d, BatchNorm)):
            layers.append(fold_batchnorm(layer, following))
            i += 2
            continue
        layers.append(
            fold_batchnorms(layer) if isinstance(layer, nn.Sequential) else copy.deepcopy(layer)
        )
        i += 1
    return nn.Sequential(*layers).eval()
