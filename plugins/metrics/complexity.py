"""Complexity metrics (Quantus 0.6's three): how concentrated a map is, from the map alone (no ground
truth, no forward pass). ``sparseness`` (Gini index, Chalasani et al. 2020), ``complexity`` (entropy,
Bhatt et al. 2020), ``effective_complexity`` (features above a threshold, Nguyen & Martinez 2020).

Quantus's parameter names and defaults (``abs=True``, ``normalise=True``); a feature is a map site
(``features="site"``) or an input element (``"element"``, as Quantus counts a channel-expanded map:
the entropy grows by log(channels), the count by the channels, the Gini index does not change).
``convention="quantus"`` reproduces Quantus's numbers where it differs (see each class)."""

from __future__ import annotations

from typing import Any

from camkit_plugins.metrics.base import EvalBatch, MetricValues
from camkit_plugins.metrics.localization import AttributionMetric


class ComplexityMetric(AttributionMetric):
    family = "complexity"
    requires = ()

    def __init__(self, abs: bool = True, normalise: bool = True, features: str = "site",
                 convention: str = "camkit") -> None:
        self._setup(abs, normalise, features, convention)


class Sparseness(ComplexityMetric):
    """Sparseness (Chalasani et al., "Concise explanations of neural networks using adversarial training",
    ICML 2020; Quantus ``Sparseness``): ``gini``, the Gini index of the map's values
    ``sum_i (2i - F - 1) a_(i) / (F sum_i a_i)`` over the values sorted ascending; 1 when one feature holds
    everything, 0 for a uniform map.

    Parameters: ``abs=True``; ``normalise=True`` (no effect); ``features`` (no effect: the index does not
    change when every value is repeated); ``convention``: ``"quantus"`` adds 1e-7 to every value first as
    Quantus does (after normalising by the batch's maximum), so an all-zero map scores 0 there and NaN here
    (no relevance: undefined). Higher is sparser."""

    name = "sparseness"
    quantus_name = "Sparseness"
    primary = "gini"
    higher_is_better = True

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:
        import torch

        if self.convention == "quantus":
            a = a + 1e-7
        values = a.sort(dim=1).values
        f = values.shape[1]
        weights = 2 * torch.arange(1, f + 1, device=a.device, dtype=a.dtype) - f - 1
        total = values.sum(dim=1)
        gini = (weights * values).sum(dim=1) / (f * total)
        return MetricValues({"gini": torch.where(total != 0, gini, torch.full_like(gini, float("nan")))})


class Complexity(ComplexityMetric):
    """Complexity (Bhatt et al., "Evaluating and aggregating feature-based model explanations", IJCAI 2020;
    Quantus ``Complexity``): ``entropy`` of the map's fractional contributions ``p_i = |a_i| / sum |a|``,
    ``-sum p_i ln p_i`` (0 ln 0 = 0); ln F for a uniform map, 0 for one feature.

    Parameters: ``abs=True``; ``normalise=True`` (no effect); ``features`` (``"element"`` adds ln of the
    input elements per site); ``convention`` (Quantus adds 1e-12 inside the log: equal within it). NaN for
    an all-zero map. Lower is simpler."""

    name = "complexity"
    quantus_name = "Complexity"
    primary = "entropy"
    higher_is_better = False

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:
        import torch

        total = a.abs().sum(dim=1, keepdim=True)
        p = a / total
        if self.convention == "quantus":
            entropy = -(p * torch.log(p + 1e-12)).sum(dim=1)
        else:
            entropy = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), 0 * p).sum(dim=1)
        return MetricValues({"entropy": torch.where(total[:, 0] > 0, entropy, torch.full_like(entropy, float("nan")))})


class EffectiveComplexity(ComplexityMetric):
    """Effective complexity (Nguyen & Martinez, "On quantitative aspects of model interpretability", 2020;
    Quantus ``EffectiveComplexity``): ``count``, the number of features whose (normalised) value exceeds
    ``eps``.

    Parameters: ``eps=1e-5``; ``abs=True``; ``normalise=True`` (each map divided by its own largest ``|a|``,
    so the count is a property of the map); ``features`` (``"element"`` counts input elements);
    ``convention``: ``"quantus"`` divides by the largest ``|a|`` of the whole batch as Quantus 0.6 does, so
    a sample's count changes with the other samples in its batch. Lower is simpler."""

    name = "effective_complexity"
    quantus_name = "EffectiveComplexity"
    primary = "count"
    higher_is_better = False

    def __init__(self, eps: float = 1e-5, abs: bool = True, normalise: bool = True, features: str = "site",
                 convention: str = "camkit") -> None:
        super().__init__(abs, normalise, features, convention)
        self.eps = float(eps)

    def score(self, a: Any, truth: Any, batch: EvalBatch) -> MetricValues:
        return MetricValues({"count": (a > self.eps).sum(dim=1).double()})

    def options(self) -> dict[str, Any]:
        return {**super().options(), "eps": self.eps}


METRICS = (Sparseness, Complexity, EffectiveComplexity)
