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
    from camkit_plugins.metrics.faithfulness import AverageDrop, Deletion, Insertion, RoadMetric
    from camkit_plugins.metrics.localization import BoxLocalization, EnergyPointingGame, PointingGame
    from camkit_plugins.metrics.sanity import Randomization

    metrics = (PointingGame, EnergyPointingGame, BoxLocalization, Deletion, Insertion, RoadMetric,
               AverageDrop, Randomization)
    return {metric.name: metric for metric in metrics}


@hookimpl
def camkit_register_perturbations() -> dict[str, Any]:
    from camkit_plugins.metrics.perturbations import PERTURBATIONS

    return dict(PERTURBATIONS)
