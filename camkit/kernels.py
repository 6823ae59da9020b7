"""Kernels: the array operations behind the contraction, its post-processing and the overlay.

Every kernel follows the ``Kernel`` protocol. ``TorchKernel`` works on any torch device and dtype;
``NumpyKernel`` on numpy arrays; both give the same numbers (tests check the parity) and share
``KernelBase``. A plugin may answer ``camkit_select_kernel`` with a faster kernel (fused GPU code) that
subclasses ``TorchKernel`` and overrides what it speeds up. The JET colour table is defined once here.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

JET_SIZE = 256


def jet_table() -> np.ndarray:
    """The ``(256, 3)`` float32 RGB table of the JET colormap, values in [0, 1]: OpenCV's
    ``COLORMAP_JET`` ramps (what CAM overlays conventionally use), shared by every overlay."""
    v = np.linspace(0.0, 1.0, JET_SIZE)
    ramps = [np.clip(1.5 - np.abs(4.0 * v - centre), 0.0, 1.0) for centre in (3.0, 2.0, 1.0)]  # R, G, B
    return np.stack(ramps, axis=1).astype(np.float32)


def check_overlay_inputs(images: Any, maps: Any, alpha: float) -> None:
    """Shapes, dtypes and ranges an overlay needs (torch or numpy); a clear error otherwise."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha={alpha} must be between 0 and 1")
    if str(images.dtype).removeprefix("torch.") != "uint8" or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if maps.ndim != 3 or (maps.shape[0], *maps.shape[1:]) != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not fit images {tuple(images.shape)}: "
                         f"expected (N, H, W) = {(images.shape[0], *images.shape[2:])}")
    if str(maps.dtype).removeprefix("torch.") not in ("float16", "bfloat16", "float32", "float64"):
        raise ValueError(f"maps must be floating point in [0, 1], got {maps.dtype}")
    if getattr(maps, "device", None) != getattr(images, "device", None):
        raise ValueError(f"maps are on {maps.device} but images on {images.device}")
    outside = ~((maps >= 0) & (maps <= 1))  # also catches NaN
    if bool(outside.any()):
        raise ValueError(f"{int(outside.sum())} map value(s) are outside [0, 1] or NaN: normalise the maps first")


@runtime_checkable
class Kernel(Protocol):
    """What the contraction, ``postprocess`` and the overlay ask of a kernel. ``maps`` are arrays whose
    first ``sample_dims`` axes index the maps; ``sizes`` map an axis to its new length."""

    name: str

    def contract(self, equation: str, features: Any, weights: Any) -> Any: ...

    def reduce_mean(self, maps: Any, axes: tuple[int, ...]) -> Any: ...

    def relu(self, maps: Any) -> Any: ...

    def resample(self, maps: Any, sizes: Mapping[int, int]) -> Any: ...

    def normalize(self, maps: Any, sample_dims: int) -> Any: ...

    def resample_normalize(self, maps: Any, sizes: Mapping[int, int], sample_dims: int,
                           relu: bool = False) -> Any: ...

    def overlay(self, images: Any, maps: Any, alpha: float = 0.5) -> Any: ...


class KernelBase:
    """The parts every kernel shares: fused steps default to their composition, and the overlay
    formula ``floor((1 - alpha) * image + alpha * 255 * jet(round(map * 255)) + 0.5)``."""

    name = "base"

    def resample_normalize(self, maps: Any, sizes: Mapping[int, int], sample_dims: int, relu: bool = False) -> Any:
        """``normalize(resample(relu(maps) if relu else maps, sizes), sample_dims)``; a kernel may fuse them."""
        if relu:
            maps = self.relu(maps)  # type: ignore[attr-defined]
        return self.normalize(self.resample(maps, sizes), sample_dims)  # type: ignore[attr-defined]

    @staticmethod
    def jet_indices(maps: Any) -> Any:
        """The nearest of the 256 colours for maps in [0, 1]: ``round(v * 255)``."""
        return (maps.astype(np.float32) if isinstance(maps, np.ndarray) else maps.float()) * (JET_SIZE - 1) + 0.5


class ConstantMapWarning(UserWarning):
    """A map had no contrast (all sites equal) and was normalised to zeros."""


# A map whose range is within a few rounding errors of its magnitude is constant: resampling a
# constant map leaves ulp-sized ripples that min-max normalisation would blow up to [0, 1].
CONSTANT_RELATIVE_SPAN = 4.0


def _linear_source(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of linear resampling with half-pixel centres (align_corners=False)."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0.0, None)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    return lo, hi, frac


class NumpyKernel(KernelBase):
    """The kernel for numpy arrays (the same numbers as ``TorchKernel``)."""

    name = "numpy"

    def overlay(self, images: Any, maps: Any, alpha: float = 0.5) -> Any:
        check_overlay_inputs(images, maps, alpha)
        colours = (jet_table() * 255.0 * float(alpha))[self.jet_indices(maps).astype(np.int64).clip(0, JET_SIZE - 1)]
        blended = images.astype(np.float32) * (1.0 - float(alpha)) + colours.transpose(0, 3, 1, 2)
        return np.floor(blended + 0.5).clip(0, 255).astype(np.uint8)

    def contract(self, equation: str, features: Any, weights: Any) -> Any:
        weights = np.asarray(weights, dtype=np.result_type(features.dtype, np.float32))
        return np.einsum(equation, features, weights, optimize=True)

    def reduce_mean(self, maps: Any, axes: tuple[int, ...]) -> Any:
        return maps.mean(axis=axes) if axes else maps

    def relu(self, maps: Any) -> Any:
        return np.maximum(maps, 0)

    def resample(self, maps: Any, sizes: Mapping[int, int]) -> Any:
        """Linear interpolation along each axis in ``sizes`` (axis -> new size), separably."""
        out = maps
        for axis, size in sizes.items():
            if out.shape[axis] == size:
                continue
            lo, hi, frac = _linear_source(size, out.shape[axis])
            shape = [1] * out.ndim
            shape[axis] = size
            frac = frac.reshape(shape).astype(out.dtype)
            out = np.take(out, lo, axis=axis) * (1 - frac) + np.take(out, hi, axis=axis) * frac
        return out

    def normalize(self, maps: Any, sample_dims: int) -> Any:
        flat = maps.reshape(maps.shape[:sample_dims] + (-1,))
        lo = flat.min(axis=-1, keepdims=True)
        hi = flat.max(axis=-1, keepdims=True)
        span = hi - lo
        eps = np.finfo(flat.dtype if np.issubdtype(flat.dtype, np.floating) else np.float32).eps
        threshold = np.maximum(CONSTANT_RELATIVE_SPAN * eps * np.maximum(np.abs(lo), np.abs(hi)),
                               np.finfo(np.float32).tiny)
        constant = span <= threshold
        if constant.any():
            warnings.warn(f"{int(constant.sum())} map(s) are constant and were normalised to zeros",
                          ConstantMapWarning, stacklevel=4)
        out = np.where(constant, 0.0, (flat - lo) / np.where(constant, 1.0, span))
        return out.astype(maps.dtype, copy=False).reshape(maps.shape)


class TorchKernel(KernelBase):
    """The default kernel: plain torch ops on the tensor's own device and dtype."""

    name = "torch"

    def __init__(self) -> None:
        self._luts: dict[Any, Any] = {}

    def jet_lut(self, device: Any, alpha: float) -> Any:
        """The JET table times ``255 * alpha`` on ``device`` (cached): the colour term of the blend."""
        import torch

        key = (str(device), float(alpha))
        if key not in self._luts:
            self._luts[key] = torch.from_numpy(jet_table()).to(device).mul_(255.0 * float(alpha))
        return self._luts[key]

    def overlay(self, images: Any, maps: Any, alpha: float = 0.5) -> Any:
        """JET-coloured ``maps`` (N, H, W) in [0, 1] blended over uint8 ``images`` (N, 3, H, W), as uint8."""
        import torch

        check_overlay_inputs(images, maps, alpha)
        index = self.jet_indices(maps).long().clamp_(0, JET_SIZE - 1)
        colour = self.jet_lut(images.device, alpha)[index].permute(0, 3, 1, 2)  # (N, 3, H, W)
        blended = images.float().mul_(1.0 - float(alpha)).add_(colour)
        return blended.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)

    def contract(self, equation: str, features: Any, weights: Any) -> Any:
        import torch

        weights = torch.as_tensor(weights, device=features.device).to(features.dtype)
        return torch.einsum(equation, features, weights)

    def reduce_mean(self, maps: Any, axes: tuple[int, ...]) -> Any:
        return maps.mean(dim=axes) if axes else maps

    def relu(self, maps: Any) -> Any:
        return maps.clamp_min(0)

    def resample(self, maps: Any, sizes: Mapping[int, int]) -> Any:
        """Linear / bilinear / trilinear interpolation along the axes in ``sizes`` only."""
        import torch
        import torch.nn.functional as F

        sizes = {a: s for a, s in sizes.items() if maps.shape[a] != s}
        if not sizes:
            return maps
        axes = sorted(sizes)
        if len(axes) > 3:  # F.interpolate handles at most 3 axes at once: do them in two passes
            first = {a: sizes[a] for a in axes[:3]}
            return self.resample(self.resample(maps, first), {a: sizes[a] for a in axes[3:]})
        others = [a for a in range(maps.ndim) if a not in axes]
        moved = maps.permute(*others, *axes)
        lead = moved.shape[: len(others)]
        flat = moved.reshape(-1, 1, *moved.shape[len(others):])
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(axes)]
        src_dtype = flat.dtype
        if flat.device.type == "cpu" and src_dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()  # half-precision interpolation is patchy on CPU
        out = F.interpolate(flat, size=[sizes[a] for a in axes], mode=mode, align_corners=False)
        out = out.to(src_dtype).reshape(*lead, *out.shape[2:])
        inverse = [0] * maps.ndim
        for position, axis in enumerate(others + axes):
            inverse[axis] = position
        return out.permute(*inverse)

    def normalize(self, maps: Any, sample_dims: int) -> Any:
        import torch

        flat = maps.reshape(*maps.shape[:sample_dims], -1)
        lo, hi = torch.aminmax(flat, dim=-1, keepdim=True)  # one pass instead of amin + amax
        span = hi - lo
        finfo = torch.finfo(span.dtype)
        threshold = torch.maximum(lo.abs(), hi.abs()).mul_(CONSTANT_RELATIVE_SPAN * finfo.eps).clamp_min_(finfo.tiny)
        constant = span <= threshold
        any_constant = bool(constant.any())
        if any_constant:
            warnings.warn(f"{int(constant.sum())} map(s) are constant and were normalised to zeros",
                          ConstantMapWarning, stacklevel=4)
            span = span.masked_fill(constant, 1.0)
        out = (flat - lo).div_(span)  # in place: no third full-size temporary
        if any_constant:
            out.masked_fill_(constant, 0.0)
        return out.reshape(maps.shape)


def select_kernel(array: Any) -> Kernel:
    """The kernel for ``array``: asks plugins first (``camkit_select_kernel``), built-ins last."""
    if isinstance(array, np.ndarray):
        return NumpyKernel()
    from camkit.plugin_manager import get_plugin_manager

    kernel = get_plugin_manager().hook.camkit_select_kernel(device_type=array.device.type, dtype=array.dtype)
    return kernel if kernel is not None else TorchKernel()
