"""camkit: class activation maps for any feature layout, with plugin backends.

    import camkit
    result = camkit.explain(model, images, method="gradcam")   # result.maps: (N, H, W) on images' device

Importing camkit does not import torch: the public names below load on first use.
"""

from __future__ import annotations

from typing import Any

from camkit.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

_LAZY = {
    "explain": "camkit.api",
    "Explainer": "camkit.explainer",
    "CamResult": "camkit.explainer",
    "resolve_targets": "camkit.explainer",
    "available_methods": "camkit.api",
    "tokens_to_grid": "camkit.locate",
    "Layout": "camkit.layout",
    "class_activation_map": "camkit.contraction",
    "postprocess": "camkit.contraction",
    "capture_features": "camkit.capture",
    "CapturePoint": "camkit.capture",
    "FeatureSource": "camkit.locate",
    "locate_features": "camkit.explainer",
    "targets": "camkit.targets",
    "CamMethod": "camkit.methods",
    "WeightContext": "camkit.methods",
    "Weights": "camkit.methods",
    "HeadMismatchWarning": "camkit.methods",
    "InputMapMethod": "camkit.methods",
    "ModelFamily": "camkit.families",
    "Command": "camkit.cli",
    "ConstantMapWarning": "camkit.kernels",
    "TorchKernel": "camkit.kernels",
    "NumpyKernel": "camkit.kernels",
    "get_plugin_manager": "camkit.plugin_manager",
    "registry": "camkit.plugin_manager",
    "lookup": "camkit.plugin_manager",
    "temporary_plugin": "camkit.plugin_manager",
    "list_plugins": "camkit.cli",
    "eigen_smooth": "camkit.ensemble",
    "explain_layers": "camkit.ensemble",
    "explain_augmented": "camkit.ensemble",
    "explain_sess": "camkit.sess",
    "deep_feature_factorization": "camkit.factorization",
    "guided_backprop": "camkit.guided",
    "guided_gradcam": "camkit.guided",
    "overlay": "camkit.display",
    "compare": "camkit.display",
    "display": "camkit.display",
}

__all__ = ["__version__", "hookimpl", "hookspec", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"camkit.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'camkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
