"""camkit plugin: evaluation metrics and the perturbations they use.

Metrics (``camkit_register_metrics``): ``pointing_game``, ``energy_pointing_game``,
``box_localization``, ``deletion``, ``insertion``, ``road``, ``average_drop``, ``randomization``.
Each is a ``Metric`` class called with its options; ``evaluate(EvalBatch)`` returns per-sample
values. Perturbations (``camkit_register_perturbations``): ``zeros``, ``mean``, ``blur``,
``mean-pose`` (skeletons), ``road`` (neighbour imputation). See docs/evaluation.md.

This module imports no torch: the classes below import it inside their methods."""

from __future__ import annotations

from typing import Any

from camkit.hookspecs import hookimpl


@hookimpl
def camkit_register_metrics() -> dict[str, Any]:
    import importlib

    # each family module lists its metric classes in METRICS and other names in ALIASES (name -> class)
    registry: dict[str, Any] = {}
    for family in FAMILY_MODULES:
        module = importlib.import_module(f"camkit_plugins.metrics.{family}")
        for metric in module.METRICS:
            registry[metric.name] = metric
        registry.update(getattr(module, "ALIASES", {}))
    return registry


FAMILY_MODULES = ("faithfulness", "faithfulness_correlations", "localization", "sanity", "robustness",
                  "randomisation", "axiomatic", "protocols", "complexity")


@hookimpl
def camkit_register_perturbations() -> dict[str, Any]:
    from camkit_plugins.metrics.perturbations import PERTURBATIONS

    return dict(PERTURBATIONS)
