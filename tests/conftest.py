"""Shared test set-up: the repository root on sys.path, a non-interactive matplotlib."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # tests draw figures without a screen

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # so tests can import tools/ and benchmarks/

# Keep torch to the cores the machine has; tests are many small runs.
os.environ.setdefault("PDL_DEVICE", "cpu")
