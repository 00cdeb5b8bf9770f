"""Self-checks for the notebook exercises, one module per lecture.

Each check takes your function (or tensor), compares it with a reference on fresh inputs,
prints a short success line or what is wrong, and returns True/False:

    >>> pdl.checks.check_linear_backward(linear_backward)  # doctest: +SKIP
    ✅ linear_backward: correct

- ``pdl.checks.numpy_by_hand``: lecture 00 (gradients by hand in NumPy)
- ``pdl.checks.tensors``: lecture 01
- ``pdl.checks.autograd``: lecture 02
- ``pdl.checks.modules``: lecture 03
- ``pdl.checks.training_tricks``: lecture 04
- ``pdl.checks.cnn``, ``pdl.checks.datasets``, ``pdl.checks.dropout``: lecture 05
- ``pdl.checks.batchnorm``, ``pdl.checks.folding``: lecture 06
- ``pdl.checks.transfer``: lecture 07
- ``pdl.checks.deployment``: lecture 08

Every check is also available directly as ``pdl.checks.check_...``.
"""

from pdl.checks import (
    autograd,
    batchnorm,
    cnn,
    datasets,
    deployment,
    dropout,
    folding,
    modules,
    numpy_by_hand,
    tensors,
    training_tricks,
    transfer,
)
from pdl.checks.autograd import *  # noqa: F403
from pdl.checks.batchnorm import *  # noqa: F403
from pdl.checks.cnn import *  # noqa: F403
from pdl.checks.core import (
    Verdict,
    answers,
    call_safely,
    compare_tensors,
    exercise,
    report,
    solutions,
    tally,
)
from pdl.checks.datasets import *  # noqa: F403
from pdl.checks.deployment import *  # noqa: F403
from pdl.checks.dropout import *  # noqa: F403
from pdl.checks.folding import *  # noqa: F403
from pdl.checks.modules import *  # noqa: F403
from pdl.checks.numpy_by_hand import *  # noqa: F403
from pdl.checks.tensors import *  # noqa: F403
from pdl.checks.training_tricks import *  # noqa: F403
from pdl.checks.transfer import *  # noqa: F403

__all__ = [
    "Verdict",
    "answers",
    "call_safely",
    "compare_tensors",
    "exercise",
    "report",
    "solutions",
    "tally",
] + [
    name
    for module in (
        numpy_by_hand,
        tensors,
        autograd,
        modules,
        training_tricks,
        cnn,
        datasets,
        dropout,
        batchnorm,
        folding,
        transfer,
        deployment,
    )
    for name in module.__all__
]
