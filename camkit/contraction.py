"""The CAM equation and the post-processing of maps.

    M_c(s) = sum_k w_k^c(s) * f_k(s)

Methods differ only in where the weights w come from; layouts only in how the axes of f are
laid out. ``class_activation_map`` is the one place the equation is computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from camkit.kernels import select_kernel
from camkit.layout import CONTINUOUS, Layout
from camkit.validation import NonFiniteError

if TYPE_CHECKING:
    from camkit.methods import Weights


def _is_numpy(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _check_finite(array: Any, what: str) -> None:
    if _is_numpy(array):
        finite = bool(np.isfinite(array).all())
    else:
        import torch

        # one fp32 reduction (far cheaper than an elementwise mask on a CPU): NaN or inf anywhere makes
        # the sum non-finite; a sum that merely overflows is rechecked element by element
        finite = bool(torch.isfinite(array.sum(dtype=torch.float32))) or bool(array.isfinite().all())
    if not finite:
        raise NonFiniteError(f"{what} contain NaN or infinite values")


def class_activation_map(
    features: Any,
    layout: "str | Layout",
    weights: "Weights | None" = None,
    *,
    channel_weights: Any = None,
    site_weights: Any = None,
    class_weights: Any = None,
    dtype: Any = None,
) -> Any:
    """Contract ``features`` with weights over the channel axis of ``layout``.

    Exactly one kind of weights, as a ``camkit.Weights`` (what a method returns) or by keyword:

    * ``channel_weights``: ``(N, C)`` -> maps ``(N, *sites)``; or ``(N, K, C)`` -> ``(N, K, *sites)``;
    * ``site_weights`` (a weight per channel *and* site, LayerCAM / HiResCAM): the features' shape
      -> ``(N, *sites)``; or ``(N, K, <features' shape without N>)`` -> ``(N, K, *sites)``;
    * ``class_weights``: ``(K, C)`` shared by all samples (e.g. a classifier) -> ``(N, K, *sites)``.

    Sites keep the layout's order (``NHWC`` features give ``(N, H, W)`` maps). Works on torch tensors
    (on their device, in their dtype) and numpy arrays alike. ``float16`` features are summed in
    ``float32`` (a sum over hundreds of channels overflows 65504 easily); the maps come back in ``dtype``
    (default: the features'), and a map that does not fit it is an error, never ``inf``. A non-finite
    map (NaN features or weights) is an error too.
    """
    layout = Layout.parse(layout)
    layout.check(features.shape)
    if weights is not None:
        if any(w is not None for w in (channel_weights, site_weights, class_weights)):
            raise ValueError("pass weights either as a Weights or by keyword, not both")
        by_kind: dict[str, Any] = {weights.keyword: weights.tensor}
        return class_activation_map(features, layout, dtype=dtype, **by_kind)
    given = {kind: w for kind, w in (("channel", channel_weights), ("site", site_weights), ("class", class_weights))
             if w is not None}
    if len(given) != 1:
        raise ValueError("pass exactly one of channel_weights, site_weights, class_weights")
    (kind, matrix), = given.items()
    equation = _contraction_equation(features, layout, kind, matrix)
    if _is_numpy(features):
        maps = select_kernel(features).contract(equation, features, matrix)
        _check_finite(maps, "class activation maps (from the features and weights)")
        return maps if dtype is None else maps.astype(dtype)
    return _contract_torch(features, matrix, equation, dtype)


def _contraction_equation(features: Any, layout: Layout, kind: str, matrix: Any) -> str:
    """The einsum equation of ``kind`` weights (``"channel"``, ``"site"`` or ``"class"``) against features
    in ``layout``; weights of a shape that does not fit are an error naming both shapes."""
    n_samples = features.shape[layout.batch_axis]
    n_channels = features.shape[layout.channel_axis]
    f = layout.subscripts
    sites = layout.site_letters.lower()
    without_batch = f.replace("n", "")
    if kind == "channel":
        if tuple(matrix.shape) == (n_samples, n_channels):
            return f"{f},nc->n{sites}"
        if matrix.ndim == 3 and (matrix.shape[0], matrix.shape[2]) == (n_samples, n_channels):
            return f"{f},nkc->nk{sites}"
        raise ValueError(f"channel_weights of shape {tuple(matrix.shape)} do not fit features "
                         f"{tuple(features.shape)} in layout {layout}: expected (N={n_samples}, C={n_channels}) "
                         f"or (N, K, C)")
    if kind == "site":
        if tuple(matrix.shape) == tuple(features.shape):
            return f"{f},{f}->n{sites}"
        if matrix.ndim == features.ndim + 1 and matrix.shape[0] == n_samples and \
                tuple(matrix.shape[2:]) == tuple(s for a, s in enumerate(features.shape) if a != layout.batch_axis):
            return f"{f},nk{without_batch}->nk{sites}"
        raise ValueError(f"site_weights of shape {tuple(matrix.shape)} do not fit features "
                         f"{tuple(features.shape)} in layout {layout}")
    if matrix.ndim != 2 or matrix.shape[1] != n_channels:
        raise ValueError(f"class_weights of shape {tuple(matrix.shape)} do not fit features with "
                         f"C={n_channels} channels: expected (K, {n_channels})")
    return f"{f},kc->nk{sites}"


def _contract_torch(features: Any, matrix: Any, equation: str, dtype: Any) -> Any:
    """The contraction on the features' device: float16 summed in float32, the maps cast to ``dtype`` (default
    the features') only if they fit it."""
    import torch

    out_dtype = dtype or features.dtype
    if features.dtype == torch.float16:  # accumulate in fp32; the fp16 cast is checked below
        features = features.float()
    maps = select_kernel(features).contract(equation, features, matrix)
    _check_finite(maps, "class activation maps (from the features and weights)")
    if maps.dtype != out_dtype:
        maps = maps.to(out_dtype)
        if not bool(maps.isfinite().all()):
            raise ValueError(f"class activation maps overflow {out_dtype}: values reach "
                             f"{float(maps.float().abs().nan_to_num(float('inf')).amax()):.3g}; ask for dtype="
                             f"torch.float32 (camkit.explain does) or compute the features in float32 / bfloat16")
    return maps


def postprocess(
    maps: Any,
    map_letters: str,
    *,
    layout: "str | Layout",
    relu: bool = True,
    normalize: bool = True,
    size: Mapping[str, int] | None = None,
    reduce: str = "",
) -> Any:
    """ReLU, reduction, resampling and per-map min-max normalisation, each optional.

    ``map_letters`` names the map's axes (``"NHW"`` or ``"NKHW"``); ``reduce`` lists axis letters to
    average away (only reducible ones, e.g. persons ``M``); ``size`` maps continuous letters to
    their new size (discrete axes such as joints are never interpolated). A constant map becomes
    all zeros with a ``ConstantMapWarning``, never NaN.
    """
    layout = Layout.parse(layout)
    _check_finite(maps, "maps to post-process")  # one NaN site would make the normalised map all NaN
    kernel = select_kernel(maps)
    for letter in reduce:
        if letter not in map_letters:
            raise ValueError(f"cannot reduce axis {letter!r}: maps have axes {map_letters!r}")
        if layout.kind(letter) != "reducible":
            raise ValueError(f"axis {letter!r} of layout {layout} is {layout.kind(letter)}, not reducible")
    if reduce:
        maps = kernel.reduce_mean(maps, tuple(map_letters.index(ch) for ch in reduce))
        map_letters = "".join(ch for ch in map_letters if ch not in reduce)
    sample_dims = 2 if map_letters.startswith("NK") else 1
    if size:
        bad = [ch for ch in size if ch not in map_letters or layout.kind(ch) != CONTINUOUS]
        if bad:
            raise ValueError(f"cannot resample axes {''.join(bad)!r}: only continuous axes of "
                             f"{map_letters!r} ({layout.continuous_letters!r}) are resampled")
        sizes = {map_letters.index(ch): int(s) for ch, s in size.items()}
        if normalize:  # one kernel call: a GPU kernel may fuse ReLU, resampling and normalisation
            return kernel.resample_normalize(maps, sizes, sample_dims, relu=relu)
        return kernel.resample(kernel.relu(maps) if relu else maps, sizes)
    if relu:
        maps = kernel.relu(maps)
    if normalize:
        maps = kernel.normalize(maps, sample_dims)
    return maps
