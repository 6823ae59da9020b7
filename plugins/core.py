"""camkit's generic built-ins: named layouts, the torch kernel, and the generic answers to
"which layer?" and "which classifier?" (all ``trylast``, so any other plugin comes first)."""

from __future__ import annotations

from typing import Any

from camkit.hookspecs import hookimpl

POOLING_LAYOUTS = {"AdaptiveAvgPool1d": "NCL", "AdaptiveAvgPool2d": "NCHW", "AdaptiveAvgPool3d": "NCDHW",
                   "AvgPool1d": "NCL", "AvgPool2d": "NCHW", "AvgPool3d": "NCDHW"}


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


def _is_global_pool(module: Any) -> bool:
    name = type(module).__name__
    if name.startswith("AdaptiveAvgPool"):
        size = module.output_size
        sizes = size if isinstance(size, tuple) else (size,)
        return all(s == 1 for s in sizes)
    return False


@hookimpl(trylast=True)
def camkit_find_target_layer(model: Any) -> Any:
    """A registered model family first; else the sibling right before a global average pool."""
    from camkit.plugin_manager import registry

    for family in registry("model_families").values():
        if family.matches(model):
            return family.target_layer(model), family.feature_layout(model)
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for position, (child_name, child) in enumerate(children):
            if _is_global_pool(child) and position > 0:
                before = children[position - 1][0]
                full = f"{parent_name}.{before}" if parent_name else before
                return full, POOLING_LAYOUTS[type(child).__name__]
    return None  # explain() traces one sample instead


@hookimpl(trylast=True)
def camkit_find_classifier(model: Any, num_channels: int) -> Any:
    """A registered model family first; else the last Linear / 1x1 conv taking ``num_channels``."""
    import torch.nn as nn

    from camkit.plugin_manager import registry

    for family in registry("model_families").values():
        if family.matches(model):
            weights = family.classifier_weights(model)
            if weights is not None:
                return weights
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.in_features == num_channels:
            found = module.weight
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.in_channels == num_channels \
                and all(k == 1 for k in module.kernel_size) and module.groups == 1:
            found = module.weight.flatten(1)
    return found
