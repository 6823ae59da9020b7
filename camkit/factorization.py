"""Deep Feature Factorization: its home is the method plugin ``camkit_plugins.methods.dff`` (method
``"dff"``); this module keeps the functions importable from ``camkit.factorization``."""

from camkit_plugins.methods.dff import FactorizationResult, deep_feature_factorization, nonnegative_factorization

__all__ = ["FactorizationResult", "deep_feature_factorization", "nonnegative_factorization"]
