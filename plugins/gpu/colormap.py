"""JET colormap and alpha blending of maps over images, vectorised in torch (any device).

The lookup table is OpenCV's ``COLORMAP_JET`` (256 entries of piecewise-linear ramps, within
rounding), indexed by ``round(value * 255)``: the same colours as the image plugin's CPU overlay.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LUT_SIZE = 256

def jet_lut() -> np.ndarray:
    """The 256 x 3 float32 RGB table of the JET colormap, values in [0, 1]: OpenCV's
    ``COLORMAP_JET`` ramps (what CAM overlays conventionally use), shared by every overlay path."""
    v = np.linspace(0.0, 1.0, LUT_SIZE)
    ramps = [np.clip(1.5 - np.abs(4.0 * v - centre), 0.0, 1.0) for centre in (3.0, 2.0, 1.0)]  # R, G, B
    return np.stack(ramps, axis=1).astype(np.float32)


def check_overlay_inputs(images: Any, maps: Any, alpha: float) -> None:
    """Shapes, dtypes and ranges ``overlay`` needs; a clear error otherwise."""
    import torch

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha={alpha} must be between 0 and 1")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if maps.ndim != 3 or (maps.shape[0], *maps.shape[1:]) != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not fit images {tuple(images.shape)}: "
                         f"expected (N, H, W) = {(images.shape[0], *images.shape[2:])}")
    if not maps.is_floating_point():
        raise ValueError(f"maps must be floating point in [0, 1], got {maps.dtype}")
    if maps.device != images.device:
        raise ValueError(f"maps are on {maps.device} but images on {images.device}")
    outside = ~((maps >= 0) & (maps <= 1))  # also catches NaN
    if bool(outside.any()):
        raise ValueError(f"{int(outside.sum())} map value(s) are outside [0, 1] or NaN: normalise the maps first")


def lut_index(maps: Any) -> Any:
    """The nearest of the 256 entries: ``round(v * 255)``."""
    return (maps.float() * (LUT_SIZE - 1) + 0.5).long().clamp_(0, LUT_SIZE - 1)


def jet_overlay_torch(images: Any, maps: Any, alpha: float = 0.5) -> Any:
    """``round((1 - alpha) * image + alpha * 255 * jet(map))`` as uint8 ``(N, 3, H, W)``, in torch."""
    import torch

    check_overlay_inputs(images, maps, alpha)
    lut = torch.from_numpy(jet_lut()).to(images.device).mul_(255.0 * float(alpha))  # (256, 3)
    colour = lut[lut_index(maps)].permute(0, 3, 1, 2)  # (N, 3, H, W)
    blended = images.float().mul_(1.0 - float(alpha)).add_(colour)
    return blended.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
