"""The interface of a model family (registered through ``camkit_register_model_families``)."""

from __future__ import annotations

from typing import Any


class ModelFamily:
    """Recognises models of one kind and knows where their CAM comes from.

    Subclasses override ``matches``, ``target_layer`` and, when it is not channels-first,
    ``feature_layout``; ``classifier_weights`` returns the ``(classes, channels)`` matrix after
    global average pooling, or ``None`` to let the generic finder look."""

    name: str = ""
    layout: str = "NCHW"

    def matches(self, model: Any) -> bool:
        raise NotImplementedError

    def target_layer(self, model: Any) -> str:
        raise NotImplementedError

    def feature_layout(self, model: Any) -> str:
        return self.layout

    def classifier_weights(self, model: Any) -> Any:
        return None
