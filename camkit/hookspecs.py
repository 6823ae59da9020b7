"""Every hook camkit calls, in one module.

Two kinds of hooks:

* ``camkit_register_*`` hooks return a mapping ``name -> object``; camkit merges the answers of
  all plugins into a name-keyed registry where a duplicate name is an error.
* "who handles this?" hooks are ``firstresult``: the first plugin that returns something other
  than ``None`` wins; camkit's generic built-ins are ``trylast``.

Hook implementations must not import torch at module import time: import inside the function.
Every hook here is documented in ``docs/plugins.md`` (a test checks it).
"""

from __future__ import annotations

from typing import Any, Mapping

import pluggy

PROJECT_NAME = "camkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------- registries (name -> object)


@hookspec
def camkit_register_axes() -> Mapping[str, str]:
    """Axis letters and their kind: ``"continuous"`` (resampled by interpolation),
    ``"discrete"`` (never interpolated) or ``"reducible"`` (discrete, may be averaged away).
    ``N`` (batch) and ``C`` (channels) are fixed by the core."""


@hookspec
def camkit_register_layouts() -> Mapping[str, str]:
    """Named layouts, e.g. ``{"image": "NCHW", "skeleton": "NCTVM"}``."""


@hookspec
def camkit_register_methods() -> Mapping[str, Any]:
    """CAM methods: ``name -> camkit.CamMethod`` (where the channel weights come from)."""


@hookspec
def camkit_register_model_families() -> Mapping[str, Any]:
    """Model families: ``name -> camkit.ModelFamily`` (recognise a model whose features need a
    model-specific view, and say where they come from)."""


@hookspec
def camkit_register_models() -> Mapping[str, Any]:
    """Named model builders: ``name -> callable(num_classes=..., **options) -> nn.Module``."""


@hookspec
def camkit_register_datasets() -> Mapping[str, Any]:
    """Named dataset builders: ``name -> callable(**options)``."""


@hookspec
def camkit_register_renderers() -> Mapping[str, Any]:
    """Renderers that turn maps into pictures: ``name -> callable``."""


@hookspec
def camkit_register_metrics() -> Mapping[str, Any]:
    """Evaluation metrics: ``name -> metric object or callable``."""


@hookspec
def camkit_register_perturbations() -> Mapping[str, Any]:
    """Ways to remove or insert sites for faithfulness metrics (zeros, blur, mean pose, ...):
    ``name -> callable``."""


@hookspec
def camkit_register_commands() -> Mapping[str, Any]:
    """Command-line commands: ``"train image" -> camkit.Command`` (space-separated path)."""


# ---------------------------------------------------------------- who handles this? (firstresult)


@hookspec(firstresult=True)
def camkit_select_kernel(device_type: str, dtype: Any) -> Any:
    """Return a ``camkit.Kernel`` for features on ``device_type`` ("cpu", "cuda", ...) with
    ``dtype`` (a torch dtype or numpy dtype), or ``None`` to decline."""


@hookspec(firstresult=True)
def camkit_locate_features(model: Any, inputs: Any) -> Any:
    """Return a ``camkit.FeatureSource`` (capture point, layout, feature transform, classifier) saying
    where the CAM features of ``model`` come from, or ``None`` to decline. ``inputs`` is a
    ``camkit.adapters.ModelInputs`` batch of one sample (``inputs(model)`` runs the model). The built-in
    (``trylast``) asks the model families, then traces the data flow of one forward pass."""
