"""Guided backpropagation and Guided Grad-CAM: their home is the method plugin
``camkit_plugins.methods.guided`` (methods ``"guided-backprop"``, ``"guided-gradcam"``); this module keeps
the functions importable from ``camkit.guided``."""

from camkit_plugins.methods.guided import GuidedResult, guided_backprop, guided_gradcam, input_gradient_pass

__all__ = ["GuidedResult", "guided_backprop", "guided_gradcam", "input_gradient_pass"]
