"""The interface of a model family (registered through ``camkit_register_model_families``).

Most models need no family: the tensor global pooling receives is found by data flow
(``camkit.locate``). A family is for models whose features need a model-specific view, e.g. ST-GCN,
which folds persons into the batch: its family names a layer that unfolds them (layout ``NCTVM``)."""

from __future__ import annotations

from typing import Any


class ModelFamily:
    """Recognises models of one kind and knows where their CAM comes from.

    Subclasses override ``matches``, ``target_layer`` (a module name, ``"name:input"`` or a
    ``CapturePoint``) and, when it is not channels-first, ``feature_layout``; ``classifier_weights``
    returns the ``(classes, channels)`` matrix after global average pooling, or ``None`` for none."""

    name: str = ""
    layout: str = "NCHW"

    def matches(self, model: Any) -> bool:
        raise NotImplementedError

    def target_layer(self, model: Any) -> Any:
        raise NotImplementedError

    def feature_layout(self, model: Any) -> str:
        return self.layout

    def classifier_weights(self, model: Any) -> Any:
        return None

    def adapt(self, model: Any) -> Any:
        """The module camkit runs for ``model`` (default: ``model`` itself). A family whose models need
        another forward (a wrapper object whose own forward predicts, raw outputs to turn into scores)
        returns an ``nn.Module`` with the same named submodules, so layer names stay the user's."""
        return model

    def locate(self, model: Any) -> Any:
        """The ``camkit.FeatureSource`` of a model this family matches (None: found by data flow)."""
        from camkit.capture import CapturePoint
        from camkit.layout import Layout
        from camkit.locate import FeatureSource

        point = CapturePoint.parse(model, self.target_layer(model))
        return FeatureSource(point, Layout.parse(self.feature_layout(model)), classifier=self.classifier_weights(model),
                             reason=f"model family {self.name!r}")


def adapt_model(model: Any) -> Any:
    """``model`` as the first registered family that matches it adapts it (unchanged when none does)."""
    from camkit.plugin_manager import registry

    for family in registry("model_families").values():
        if family.matches(model):
            adapted = family.adapt(model)
            if adapted is not model:
                return adapted
    return model
