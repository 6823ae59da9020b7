"""Checks shared by every entry point: one clear error naming the tensor, never a silent NaN."""

from __future__ import annotations

from typing import Any


class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN or infinity; the message names the tensor."""


def require_finite(tensor: Any, name: str) -> Any:
    """Return ``tensor`` unchanged if every value is finite, else raise :class:`NonFiniteError`
    saying how many values of ``name`` are NaN / infinite. Works for torch tensors and numpy arrays."""
    import numpy as np

    if hasattr(tensor, "isfinite"):  # torch, on the tensor's own device
        if not (tensor.is_floating_point() or tensor.is_complex()):
            return tensor  # integers and booleans are always finite
        if tensor.is_floating_point():
            import torch

            # one fp32 sum (far cheaper than an elementwise mask): NaN or inf anywhere makes it non-finite;
            # a sum that merely overflows is rechecked element by element below
            if bool(tensor.sum(dtype=torch.float32).isfinite()):
                return tensor
        if bool(tensor.isfinite().all()):
            return tensor
        nan, total = int(tensor.isnan().sum()), tensor.numel()
        inf = int(tensor.isinf().sum())
    else:
        array = np.asarray(tensor)
        if array.dtype.kind not in "fc" or bool(np.isfinite(array).all()):
            return tensor
        nan, inf, total = int(np.isnan(array).sum()), int(np.isinf(array).sum()), array.size
    raise NonFiniteError(f"{name} is not finite: {nan} NaN and {inf} infinite values of {total}")
