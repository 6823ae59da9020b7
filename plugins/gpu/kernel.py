"""``CudaKernel``: the torch kernel plus device-side overlays and optional Triton fusion.

The plain torch path is the default: on a GPU its ops are already batched and on the device
(``TorchKernel`` up-casts half precision only on the CPU). With ``use_triton=True`` (or the
environment variable ``CAMKIT_TRITON=1``) normalisation, the fused resample + normalise and the
overlay run as Triton kernels where the shapes allow it, the torch path otherwise.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping

from camkit.kernels import ConstantMapWarning, TorchKernel, check_overlay_inputs

TRITON_ENV = "CAMKIT_TRITON"
TRITON_DTYPES = ("float32", "float16", "bfloat16")


def triton_requested() -> bool:
    """Whether ``CAMKIT_TRITON`` asks for the Triton kernels ("1", "true", "yes")."""
    return os.environ.get(TRITON_ENV, "").strip().lower() in ("1", "true", "yes")


def _load_triton() -> Any:
    try:
        from camkit_plugins.gpu import triton_kernels
    except ImportError as exc:
        raise RuntimeError(f"the Triton kernels were requested ({TRITON_ENV}=1 or use_triton=True) but triton "
                           f"cannot be imported: {exc}") from exc
    return triton_kernels


def _warn_constant(flags: Any) -> None:
    count = int(flags.sum())
    if count:
        warnings.warn(f"{count} map(s) are constant and were normalised to zeros", ConstantMapWarning, stacklevel=5)


class CudaKernel(TorchKernel):
    """Kernel for CUDA tensors (also usable on CPU tensors: tests run it there, with Triton's
    interpreter for the Triton path)."""

    name = "cuda"

    def __init__(self, use_triton: bool | None = None) -> None:
        super().__init__()
        self.use_triton = triton_requested() if use_triton is None else bool(use_triton)
        self._triton = _load_triton() if self.use_triton else None

    def _triton_fits(self, tensor: Any) -> bool:
        return self._triton is not None and str(tensor.dtype).removeprefix("torch.") in TRITON_DTYPES

    def normalize(self, maps: Any, sample_dims: int) -> Any:
        if not self._triton_fits(maps) or maps.numel() == 0:
            return super().normalize(maps, sample_dims)
        rows = maps.reshape(-1, int(maps[(0,) * sample_dims].numel()))
        out, flags = self._triton.normalize_rows(rows)
        _warn_constant(flags)
        return out.reshape(maps.shape)

    def resample_normalize(self, maps: Any, sizes: Mapping[int, int], sample_dims: int, relu: bool = False) -> Any:
        """Resample then normalise (optionally ReLU first); fused in one Triton kernel for maps whose
        last two axes are the resampled ones (``NHW`` / ``NKHW`` images)."""
        two_last = set(sizes) == {maps.ndim - 2, maps.ndim - 1} and sample_dims == maps.ndim - 2
        if not (self._triton_fits(maps) and two_last and maps.numel()):
            return super().resample_normalize(maps, sizes, sample_dims, relu=relu)
        out_h, out_w = int(sizes[maps.ndim - 2]), int(sizes[maps.ndim - 1])
        flat = maps.reshape(-1, *maps.shape[-2:])
        out, flags = self._triton.resample_normalize(flat, out_h, out_w, relu=relu)
        _warn_constant(flags)
        return out.reshape(*maps.shape[:-2], out_h, out_w)

    def overlay(self, images: Any, maps: Any, alpha: float = 0.5) -> Any:
        """The torch overlay, or the same formula as one Triton kernel."""
        if self._triton is None:
            return super().overlay(images, maps, alpha)
        check_overlay_inputs(images, maps, alpha)
        return self._triton.jet_overlay(images, maps, self.jet_lut(images.device, alpha), alpha)
