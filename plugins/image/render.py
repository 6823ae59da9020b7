"""Rendering image CAMs: JET heat maps blended over pictures (in torch, on the maps' device),
labelled overlay files, and matplotlib grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from camkit.io import atomic_path


def jet_lut(device: Any = "cpu") -> Any:
    """The JET colormap as a ``(256, 3)`` float tensor of RGB values in [0, 255] on ``device`` (the
    table every overlay uses, ``camkit.kernels.jet_table``)."""
    import torch

    from camkit.kernels import jet_table

    return torch.from_numpy(jet_table()).mul_(255.0).to(device)


def overlay_torch(images_uint8: Any, maps: Any, alpha: float = 0.5) -> Any:
    """``uint8 (N, 3, H, W)``: JET(maps) x alpha + images x (1 - alpha) with the torch kernel, on the maps'
    device. ``maps`` are ``(N, H, W)`` (values outside [0, 1] are clipped), the size of the images."""
    from camkit.kernels import TorchKernel

    return overlay(images_uint8, maps, alpha, kernel=TorchKernel())


def overlay(images_uint8: Any, maps: Any, alpha: float = 0.5, kernel: Any = None) -> Any:
    """The selected kernel's overlay (a GPU plugin's fused one on CUDA); maps clipped to [0, 1] first."""
    from camkit.kernels import select_kernel

    kernel = kernel or select_kernel(maps)
    return kernel.overlay(images_uint8.to(maps.device), maps.float().nan_to_num(0.0).clamp(0.0, 1.0), alpha)


def label_text(class_name: str, probability: float) -> str:
    """``"dog 97.31%"``."""
    return f"{class_name} {100.0 * probability:.2f}%"


def draw_label(image_rgb: Any, text: str) -> Any:
    """The picture (H, W, 3) uint8 numpy RGB with ``text`` written at its top-left on a dark band."""
    import cv2

    height, width = image_rgb.shape[:2]
    scale = max(0.35, min(height, width) / 400.0)
    thickness = max(1, int(round(scale * 2)))
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    if text_w > 0.95 * width:  # small pictures: shrink the text to fit rather than cut it
        scale *= 0.95 * width / text_w
        thickness = 1
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    out = image_rgb.copy()
    pad = max(2, text_h // 3)
    cv2.rectangle(out, (0, 0), (min(width - 1, text_w + 2 * pad), text_h + baseline + 2 * pad), (0, 0, 0), -1)
    cv2.putText(out, text, (pad, pad + text_h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    return out


def write_overlay(path: str | Path, overlay_rgb: Any, text: str | None = None, quality: int = 92) -> Path:
    """Write one overlay (H, W, 3) uint8 RGB numpy array (or (3, H, W) tensor) as a JPEG/PNG."""
    import cv2
    import numpy as np

    if hasattr(overlay_rgb, "detach"):
        overlay_rgb = overlay_rgb.detach().cpu().permute(1, 2, 0).numpy()
    image = np.ascontiguousarray(overlay_rgb)
    if text:
        image = draw_label(image, text)
    path = Path(path)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    with atomic_path(path) as temporary:  # the temporary keeps the suffix: cv2 picks the format from it
        if not cv2.imwrite(str(temporary), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
            raise OSError(f"{path}: could not write the overlay")
    return path


def overlay_file_name(stem: str, class_name: str, probability: float | None = None, suffix: str = ".jpg") -> str:
    """``<name>_pred_<label>_<pp.pp>pct.jpg`` (without ``probability``: ``<name>_pred_<label>.jpg``);
    characters unsafe in file names are replaced by ``_``. The percentage is the one written on the picture."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in class_name)
    score = "" if probability is None else f"_{100 * probability:.2f}pct"
    return f"{stem}_pred_{safe}{score}{suffix}"


def save_grid(path: str | Path, images: Any, maps: Any, titles: Sequence[str], ncols: int = 3,
              alpha: float = 0.5, cmap: str = "jet", suptitle: str | None = None) -> Path:
    """A matplotlib grid: each picture (uint8 (N, C, H, W), C = 1 or 3) with its map (N, H, W)
    blended on top and its title. Written as PNG."""
    from camkit.display import figure_and_axes

    images = images.detach().cpu() if hasattr(images, "detach") else images
    maps = maps.detach().float().cpu() if hasattr(maps, "detach") else maps
    count = len(images)
    if count != len(maps) or count != len(titles):
        raise ValueError(f"save_grid: {count} images, {len(maps)} maps and {len(titles)} titles must match")
    nrows = max(1, -(-count // ncols))
    figure, axes = figure_and_axes(nrows, ncols, figsize=(2.3 * ncols, 2.5 * nrows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        picture = images[index].permute(1, 2, 0).numpy()
        axis.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray")
        axis.imshow(maps[index].numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
        axis.set_title(titles[index], fontsize=9)
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80)  # the format from the suffix, which the temporary keeps
    return path


def denormalise_to_uint8(inputs: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Model inputs (N, C, H, W) normalised with ``mean``/``std`` back to uint8 pictures."""
    import torch

    mean_t = torch.tensor(mean, dtype=torch.float32, device=inputs.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=inputs.device).view(1, -1, 1, 1)
    return ((inputs.float() * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)
