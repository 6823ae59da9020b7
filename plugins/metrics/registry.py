"""One way to make a metric from its name and options, for the bench and for Python users:
``make_metric("deletion", steps=20)``, ``make_metric("quantus:FaithfulnessCorrelation", nr_runs=20)``.

An unknown metric name or an option the metric does not take is one ``UnknownNameError`` naming the
close matches, raised before any work (the bench checks its whole grid this way). No torch import."""

from __future__ import annotations

import inspect
from typing import Any

from camkit.plugin_manager import UnknownNameError


def metric_class(name: str) -> Any:
    """The class registered as ``name`` (``camkit list metrics``); ``quantus:<Class>`` names are handled by
    ``make_metric``."""
    from camkit.plugin_manager import lookup

    return lookup("metrics", name)


def accepted_options(cls: Any) -> list[str] | None:
    """The keyword options ``cls(...)`` takes, from its signature; None when it takes any keyword
    (``**options`` in a subclass's own ``__init__``). A metric without its own ``__init__`` takes none."""
    from camkit_plugins.metrics.base import Metric

    init = getattr(cls, "__init__", None)
    if init is Metric.__init__:
        return []
    try:
        parameters = list(inspect.signature(init).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):  # a builtin or C signature: let the call check
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_options(name: str, accepted: list[str] | None, options: dict[str, Any]) -> None:
    """Every option in ``accepted`` (when known), else an ``UnknownNameError`` naming close matches."""
    if accepted is None:
        return
    for option in options:
        if option not in accepted:
            if not accepted:
                raise UnknownNameError(f"metric {name!r} takes no options, got {option!r}")
            raise UnknownNameError.of("option", option, accepted, where=f"metric {name!r}")


def make_metric(name: str, **options: Any) -> Any:
    """An instance of metric ``name`` with ``options``, each checked against the class's signature first
    (close matches named). ``quantus:<Class>`` wraps Quantus's metric of that name
    (``camkit_plugins.metrics.quantus_metrics``)."""
    from camkit_plugins.metrics.quantus_metrics import PREFIX, QuantusMetric

    if name.startswith(PREFIX):
        return QuantusMetric(name[len(PREFIX):], **options)
    cls = metric_class(name)
    check_options(name, accepted_options(cls), options)
    return cls(**options)
