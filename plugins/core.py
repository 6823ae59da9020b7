"""camkit's generic built-ins: named layouts, the torch kernel, and the generic answer to "where do the
CAM features come from?" (``trylast``, so any other plugin comes first)."""

from __future__ import annotations

from typing import Any

from camkit.hookspecs import hookimpl


@hookimpl
def camkit_register_layouts() -> dict[str, str]:
    return {
        "image": "NCHW",
        "image-channels-last": "NHWC",
        "signal": "NCL",
        "tokens": "NLC",
        "volume": "NCDHW",
        "video": "NCTHW",
        "skeleton": "NCTVM",
        "skeleton-single": "NCTV",
    }


@hookimpl(trylast=True)
def camkit_select_kernel(device_type: str, dtype: Any) -> Any:
    from camkit.kernels import TorchKernel

    return TorchKernel()


@hookimpl(trylast=True)
def camkit_locate_features(model: Any, inputs: Any) -> Any:
    """A registered model family first; else the data flow of one forward pass (``camkit.locate``)."""
    from camkit.explainer import family_source
    from camkit.families import adapt_model
    from camkit.locate import input_sizes_for, trace_features

    family = family_source(model)
    if family is not None:
        return family
    model = adapt_model(model)  # e.g. a YOLO object: trace its network, not its predict()
    x = inputs.tensor  # a picture's height and width (a clip's frames too) give token models their grid
    return trace_features(model, lambda: inputs(model), input_sizes_for(model, x), primary=x)
