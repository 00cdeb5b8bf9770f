"""Self-checks for the notebook exercises, one module per lecture.

Each check takes your function (or tensor), compares it with a reference on fresh inputs,
prints a short success line or what is wrong, and returns True/False:

    >>> pdl.checks.check_some_exercise(my_function)  # doctest: +SKIP
    ✅ some exercise: correct
"""

from pdl.checks.core import call_safely, compare_tensors, report

__all__ = ["call_safely", "compare_tensors", "report"]
