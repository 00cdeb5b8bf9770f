"""Shared test set-up: the repository root on sys.path, a non-interactive matplotlib, and the
``failing`` and ``leaves_global_rng_alone`` fixtures of the self-check tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # tests draw figures without a screen

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # so tests can import tools/ and benchmarks/

# Keep torch to the cores the machine has; tests are many small runs.
os.environ.setdefault("PDL_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def fresh_verdicts():
    """Every test starts with no recorded self-check verdicts (pdl.checks.tally's memory)."""
    from pdl.checks.core import forget

    forget()
    yield
    forget()


@pytest.fixture
def failing(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """``failing(check, fn, *fragments)``: assert that ``check(fn)`` fails with a line holding every fragment.

    Returns the printed line, for further assertions.
    """

    def check_fails(check: Callable, fn: object, *expected_fragments: str) -> str:
        assert check(fn) is False
        out = capsys.readouterr().out
        assert out.startswith(("\u274c", "\u2b1c")), (
            out
        )  # a red cross (failed) or a white square (not attempted)
        for fragment in expected_fragments:
            assert fragment in out, out
        return out

    return check_fails


@pytest.fixture
def leaves_global_rng_alone(
    capsys: pytest.CaptureFixture[str],
) -> Callable[[Callable, object], None]:
    """``leaves_global_rng_alone(check, fn)``: assert that running ``check(fn)`` keeps torch's global random state.

    A check must not change what the notebook's next ``torch.randn`` returns.
    """

    def run(check: Callable, fn: object) -> None:
        torch.manual_seed(1234)
        state = torch.random.get_rng_state()
        check(fn)
        capsys.readouterr()
        assert torch.equal(torch.random.get_rng_state(), state), (
            f"{check.__name__} changed the global random state"
        )

    return run
