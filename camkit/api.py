"""``camkit.explain``: one call from a model and a batch to maps, dispatching to the ``Explainer`` or to
the options any method can use (``camkit.ensemble``: eigen smoothing, layer fusion, test-time augmentation).
Its own module so that ``camkit.explainer`` and ``camkit.ensemble`` need not import each other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from camkit import ensemble
from camkit.explainer import CamResult, Explainer
from camkit.layout import Layout
from camkit.methods import CamMethod

if TYPE_CHECKING:  # importing camkit stays torch-free
    from torch import Tensor, nn


def explain(
    model: nn.Module,
    inputs: Tensor | Sequence[Tensor] | Mapping[str, Any],
    method: str | CamMethod = "cam",
    layer: Any = None,
    targets: Any = None,
    layout: str | Layout | None = None,
    *,
    topk: int | None = None,
    eigen_smooth: bool = False,
    fusion: str = "mean",
    augment: Mapping[str, Any] | None = None,
    **options: Any,
) -> CamResult:
    """Class activation maps of ``model`` on the batch ``inputs`` in one call.

    ``method``: a registered name ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
    "scorecam", "eigencam", "fullgrad", "guided-gradcam", "dff", ... ``camkit list methods``), a composition
    such as "gradcam+sess", or a ``CamMethod`` object. ``inputs``: a tensor batch, a tuple of
    positional inputs or a dict of keyword inputs. ``targets``: None (predicted class), an int, one id per
    sample, an (N, K) array, "all", or a callable scoring the model output (``camkit.targets``); or
    ``topk=k``. Options every method can use (``camkit.ensemble``): ``eigen_smooth=True`` (first
    principal component of the weighted features), ``layer=[...]`` several layers fused by ``fusion``
    ("mean", "max", "product"), ``augment={"flips": "W", "scales": (0.75, 1.25)}`` (test-time
    augmentation, undone and averaged; never along discrete axes). Other options as for ``Explainer``."""
    if eigen_smooth:
        method = ensemble.EigenSmoothed(method, **dict(options.pop("method_options", None) or {}))
    if isinstance(layer, (list, tuple)):
        if augment:
            raise ValueError("pass either several layers or augment=, not both")
        return ensemble.explain_layers(model, inputs, method, layer, fusion, targets, topk=topk,
                                       **({"layouts": [layout] * len(layer)} if layout else {}), **options)
    if augment:
        return ensemble.explain_augmented(model, inputs, method, layer, targets, layout, topk=topk, **augment,
                                          **options)
    return Explainer(model, method, layer, layout, **options)(inputs, targets, topk=topk)


def available_methods() -> Sequence[str]:
    """Names of the registered CAM methods."""
    from camkit.plugin_manager import registry

    return list(registry("methods"))
