"""Triton kernels (opt-in: ``CAMKIT_TRITON=1`` or ``CudaKernel(use_triton=True)``).

* ``normalize_rows``: per-map min-max normalisation in one kernel (torch needs aminmax, sub, div).
* ``resample_normalize``: ReLU + bilinear upsampling (half-pixel centres, as ``F.interpolate`` with
  ``align_corners=False``) + min-max normalisation fused: the small source map is read, the large
  output written once, no full-size temporaries.
* ``jet_overlay``: JET lookup + alpha blend of uint8 images.

All compute in fp32 and store in the output dtype. Importing this module imports triton; it
runs on CUDA tensors, and on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _row_range(lo, hi, tiny, rel_eps):
    """Row minimum, whether the row is constant, and the span to divide by (1 where constant)."""
    row_lo = tl.min(lo, axis=0)
    row_hi = tl.max(hi, axis=0)
    span = row_hi - row_lo
    # same rule as TorchKernel.normalize: a span within rounding error of the magnitude is constant
    constant = span <= tl.maximum(tl.maximum(tl.abs(row_lo), tl.abs(row_hi)) * rel_eps, tiny)
    return row_lo, constant, tl.where(constant, 1.0, span)


@triton.jit
def _normalize_rows_kernel(x_ptr, out_ptr, flag_ptr, row_len, tiny, rel_eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = row.to(tl.int64) * row_len
    offsets = tl.arange(0, BLOCK)
    lo = tl.full([BLOCK], float("inf"), tl.float32)
    hi = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, row_len, BLOCK):
        idx = start + offsets
        valid = idx < row_len
        v = tl.load(x_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
        lo = tl.minimum(lo, tl.where(valid, v, float("inf")))
        hi = tl.maximum(hi, tl.where(valid, v, float("-inf")))
    row_lo, constant, safe = _row_range(lo, hi, tiny, rel_eps)
    tl.store(flag_ptr + row, constant.to(tl.int8))
    for start in range(0, row_len, BLOCK):
        idx = start + offsets
        valid = idx < row_len
        v = tl.load(x_ptr + base + idx, mask=valid, other=0.0).to(tl.float32)
        y = tl.where(constant, 0.0, (v - row_lo) / safe)
        tl.store(out_ptr + base + idx, y.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _bilinear(src_ptr, base, idx, in_h, in_w, out_w, scale_h, scale_w, relu: tl.constexpr):
    oy = idx // out_w
    ox = idx % out_w
    sy = tl.maximum((oy.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
    sx = tl.maximum((ox.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
    y0 = tl.minimum(sy.to(tl.int32), in_h - 1)
    x0 = tl.minimum(sx.to(tl.int32), in_w - 1)
    y1 = tl.minimum(y0 + 1, in_h - 1)
    x1 = tl.minimum(x0 + 1, in_w - 1)
    ly = sy - y0.to(tl.float32)
    lx = sx - x0.to(tl.float32)
    a = tl.load(src_ptr + base + y0 * in_w + x0).to(tl.float32)
    b = tl.load(src_ptr + base + y0 * in_w + x1).to(tl.float32)
    c = tl.load(src_ptr + base + y1 * in_w + x0).to(tl.float32)
    d = tl.load(src_ptr + base + y1 * in_w + x1).to(tl.float32)
    if relu:
        a = tl.maximum(a, 0.0)
        b = tl.maximum(b, 0.0)
        c = tl.maximum(c, 0.0)
        d = tl.maximum(d, 0.0)
    return (1.0 - ly) * ((1.0 - lx) * a + lx * b) + ly * ((1.0 - lx) * c + lx * d)


@triton.jit
def _resample_normalize_kernel(src_ptr, out_ptr, flag_ptr, in_h, in_w, out_h, out_w, scale_h, scale_w, tiny, rel_eps,
                               relu: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    src_base = row.to(tl.int64) * (in_h * in_w)
    out_len = out_h * out_w
    out_base = row.to(tl.int64) * out_len
    offsets = tl.arange(0, BLOCK)
    lo = tl.full([BLOCK], float("inf"), tl.float32)
    hi = tl.full([BLOCK], float("-inf"), tl.float32)
    for start in range(0, out_len, BLOCK):
        idx = start + offsets
        valid = idx < out_len
        safe_idx = tl.where(valid, idx, 0)
        v = _bilinear(src_ptr, src_base, safe_idx, in_h, in_w, out_w, scale_h, scale_w, relu)
        lo = tl.minimum(lo, tl.where(valid, v, float("inf")))
        hi = tl.maximum(hi, tl.where(valid, v, float("-inf")))
    row_lo, constant, safe = _row_range(lo, hi, tiny, rel_eps)
    tl.store(flag_ptr + row, constant.to(tl.int8))
    for start in range(0, out_len, BLOCK):
        idx = start + offsets
        valid = idx < out_len
        safe_idx = tl.where(valid, idx, 0)
        v = _bilinear(src_ptr, src_base, safe_idx, in_h, in_w, out_w, scale_h, scale_w, relu)
        y = tl.where(constant, 0.0, (v - row_lo) / safe)
        tl.store(out_ptr + out_base + idx, y.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _jet_overlay_kernel(img_ptr, map_ptr, lut_ptr, out_ptr, pixels, blocks_per_sample, keep, BLOCK: tl.constexpr):
    # one flat grid axis (up to 2**31 - 1 programs): grid axes 1 and 2 stop at 65535, which an
    # (N, pixel blocks) grid would pass at 8192 x 8192 pixels
    pid = tl.program_id(0)
    sample = pid // blocks_per_sample
    block = pid % blocks_per_sample
    idx = block * BLOCK + tl.arange(0, BLOCK)
    valid = idx < pixels
    m = tl.load(map_ptr + sample.to(tl.int64) * pixels + idx, mask=valid, other=0.0).to(tl.float32)
    bin_ = tl.minimum(tl.maximum((m * 255.0 + 0.5).to(tl.int32), 0), 255)  # round(v * 255), as lut_index
    img_base = sample.to(tl.int64) * 3 * pixels
    for channel in tl.static_range(3):
        colour = tl.load(lut_ptr + bin_ * 3 + channel, mask=valid, other=0.0)
        pixel = tl.load(img_ptr + img_base + channel * pixels + idx, mask=valid, other=0).to(tl.float32)
        v = tl.floor(pixel * keep + colour + 0.5)
        v = tl.minimum(tl.maximum(v, 0.0), 255.0)
        tl.store(out_ptr + img_base + channel * pixels + idx, v.to(tl.uint8), mask=valid)


def _constant_thresholds(dtype: Any) -> tuple[float, float]:
    from camkit.kernels import CONSTANT_RELATIVE_SPAN

    finfo = torch.finfo(dtype)
    return finfo.tiny, CONSTANT_RELATIVE_SPAN * finfo.eps


def normalize_rows(rows: Any) -> tuple[Any, Any]:
    """Min-max normalise each row of a contiguous ``(R, L)`` tensor -> (normalised, constant flags (R,))."""
    rows = rows.contiguous()
    out = torch.empty_like(rows)
    flags = torch.empty(rows.shape[0], dtype=torch.int8, device=rows.device)
    if rows.shape[0]:
        tiny, rel_eps = _constant_thresholds(rows.dtype)
        _normalize_rows_kernel[(rows.shape[0],)](rows, out, flags, rows.shape[1], tiny, rel_eps, BLOCK=BLOCK)
    return out, flags.bool()


def resample_normalize(maps: Any, out_h: int, out_w: int, relu: bool = False) -> tuple[Any, Any]:
    """Optional ReLU, bilinear resize of ``(R, h, w)`` maps to ``(R, out_h, out_w)`` and per-map
    min-max normalisation, fused. Returns (maps, constant flags (R,))."""
    maps = maps.contiguous()
    rows, in_h, in_w = maps.shape
    out = torch.empty(rows, out_h, out_w, dtype=maps.dtype, device=maps.device)
    flags = torch.empty(rows, dtype=torch.int8, device=maps.device)
    if rows:
        tiny, rel_eps = _constant_thresholds(maps.dtype)
        _resample_normalize_kernel[(rows,)](maps, out, flags, in_h, in_w, out_h, out_w, in_h / out_h, in_w / out_w,
                                            tiny, rel_eps, relu=relu, BLOCK=BLOCK)
    return out, flags.bool()


def jet_overlay(images: Any, maps: Any, lut_scaled: Any, alpha: float) -> Any:
    """JET + blend: ``images`` uint8 (N, 3, H, W), ``maps`` (N, H, W), ``lut_scaled`` = 255 * alpha * jet (256, 3)."""
    images, maps = images.contiguous(), maps.contiguous()
    out = torch.empty_like(images)
    n, _, h, w = images.shape
    pixels = h * w
    block = 1024
    if n and pixels:
        blocks = triton.cdiv(pixels, block)
        if n * blocks >= 2**31:
            raise ValueError(f"{n} images of {h}x{w} pixels are too many for one overlay launch: split the batch")
        _jet_overlay_kernel[(n * blocks,)](images, maps, lut_scaled.contiguous(), out, pixels, blocks,
                                           1.0 - float(alpha), BLOCK=block)
    return out
