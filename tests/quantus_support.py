"""Quantus 0.6 for the parity tests: imported once, skipped cleanly when absent, and runnable under
numpy >= 2.4 (where ``np.trapz``, which Quantus's AUC helpers call, is gone)."""

import numpy as np
import pytest


def import_quantus():
    """The ``quantus`` module (the test is skipped without it), with ``np.trapz`` restored if needed."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz, removed in numpy 2.4
    return pytest.importorskip("quantus")
