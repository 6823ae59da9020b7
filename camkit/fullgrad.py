"""FullGrad: its home is the method plugin ``camkit_plugins.methods.fullgrad`` (method ``"fullgrad"``);
this module keeps the function importable as ``camkit.fullgrad.fullgrad``."""

from camkit_plugins.methods.fullgrad import BIAS_TYPES, fullgrad

__all__ = ["BIAS_TYPES", "fullgrad"]
