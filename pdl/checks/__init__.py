"""Self-checks for the notebook exercises, one module per lecture.

Each check takes your function (or tensor), compares it with a reference on fresh inputs,
prints a short success line or what is wrong, and returns True/False:

    >>> pdl.checks.check_linear_backward(linear_backward)  # doctest: +SKIP
    ✅ linear_backward: correct

- ``pdl.checks.tensors``: lectures 00 (NumPy by hand) and 01 (tensors)
- ``pdl.checks.autograd``: lecture 02
- ``pdl.checks.modules``: lecture 03
- ``pdl.checks.training_tricks``: lecture 04
- ``pdl.checks.batchnorm``: lecture 06
- ``pdl.checks.transfer``: lecture 07
- ``pdl.checks.deployment``: lecture 08

Every check is also available directly as ``pdl.checks.check_...``.
"""

from pdl.checks import autograd, batchnorm, deployment, modules, tensors, training_tricks, transfer
from pdl.checks.autograd import *  # noqa: F403
from pdl.checks.batchnorm import *  # noqa: F403
from pdl.checks.core import Verdict, answers, call_safely, compare_tensors, exercise, report, solutions, tally
from pdl.checks.deployment import *  # noqa: F403
from pdl.checks.modules import *  # noqa: F403
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
    for module in (tensors, autograd, modules, training_tricks, batchnorm, transfer, deployment)
    for name in module.__all__
]
