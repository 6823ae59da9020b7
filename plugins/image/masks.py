"""Segmentation masks as PNG files in PASCAL VOC's palette format: one byte per pixel (the class index,
0 = background, 255 = "void", not scored), and the VOC colour map so any viewer shows the classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

VOID = 255


def voc_palette(count: int = 256) -> list[int]:
    """PASCAL VOC's colour map, flattened ``[r0, g0, b0, r1, ...]``: the bits of the class index spread
    over the three channels from the most significant bit down (class 1 = (128, 0, 0), 15 = (192, 128, 128))."""
    palette = []
    for index in range(count):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


def write_mask(path: str | Path, mask: Any) -> Path:
    """A class-index mask (H, W) of integers in 0..255 as a palette PNG, written atomically."""
    import numpy as np
    from PIL import Image

    from camkit.io import atomic_path

    values = np.asarray(mask)
    if values.ndim != 2 or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise ValueError(f"{path}: a mask is (H, W) of class indices 0..255, got shape {values.shape}")
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return Path(path)


def read_mask(path: str | Path) -> Any:
    """uint8 (H, W) class indices of a mask PNG: a palette PNG's indices as stored (VOC's format); a grey
    PNG's values. An RGB mask is an error (its colours would need the palette to be turned back into
    classes)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: a mask PNG holds class indices (palette or grey), this one is {image.mode}")
        return np.array(image)
