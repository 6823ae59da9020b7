"""Quantus 0.6 metrics inside camkit: ``quantus:<ClassName>`` in ``camkit bench`` or ``make_metric``.

For what camkit does not implement itself, or to put Quantus's number beside camkit's on the same maps.
``QuantusMetric`` hands Quantus numpy copies of the batch (images ``NCHW``; the maps as attributions
``(N, 1, H, W)``; the ground-truth mask as ``s_batch`` when the batch has one) and the bench's own
method as ``explain_func`` (for the metrics that re-explain), and returns Quantus's per-sample scores
(``return_aggregate=False``) as camkit per-sample values. Under numpy >= 2.4 it restores ``np.trapz``,
which Quantus's AUC helpers call. Quantus draws from numpy's global random state: the wrapper seeds it
from the bench seed and the batch's first sample id and restores it afterwards (reproducible for a fixed
batch size; camkit's own metrics do not depend on the batch size). Quantus's faults stay in its numbers
(see docs/evaluation.md). No torch or Quantus import at module import."""

from __future__ import annotations

import inspect
from typing import Any

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues

PREFIX = "quantus:"
INSTALL = "pip install quantus==0.6.0 --no-deps && pip install pandas cachetools"
# set by the wrapper: the bench needs one value per sample and no progress bars
FIXED = {"return_aggregate": False, "display_progressbar": False}
CALL_OPTIONS = ("softmax", "channel_first", "batch_size", "model_predict_kwargs", "explain_func_kwargs")
# metrics whose __call__ needs data a bench batch does not have (Focus: the mosaics' positions)
NOT_IN_BENCH = {"Focus": "its custom_batch (the mosaics' positions); use camkit's focus"}


def import_quantus() -> Any:
    """The ``quantus`` module with ``np.trapz`` restored under numpy >= 2.4; a clear error without it."""
    import numpy as np

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz, removed in numpy 2.4
    try:
        import quantus
    except ImportError as exc:
        raise ModuleNotFoundError(f"quantus: metrics need Quantus 0.6 ({INSTALL}); importing it failed: {exc}") from exc
    return quantus


def quantus_classes() -> dict[str, Any]:
    """Quantus's registered metric classes by class name (``quantus.AVAILABLE_METRICS``)."""
    quantus = import_quantus()
    return {cls.__name__: cls for family in quantus.AVAILABLE_METRICS.values() for cls in family.values()}


class QuantusMetric(Metric):
    """Quantus's metric ``quantus_name`` (its class name, e.g. ``"FaithfulnessCorrelation"``) with its own
    constructor ``options`` (Quantus's names and defaults; ``return_aggregate`` and
    ``display_progressbar`` are set by the wrapper, ``disable_warnings`` defaults to True) and ``call``:
    keyword arguments of its ``__call__`` (``softmax``, ``channel_first``, ``batch_size``,
    ``model_predict_kwargs``, ``explain_func_kwargs``; Quantus's defaults otherwise).

    Values: ``score`` ``(N,)`` when Quantus gives one number per sample; a curve per sample (``(N, S)``, as
    PixelFlipping) gives ``curve`` and ``score`` = its trapezoidal area on [0, 1]; a dict of per-sample
    lists (as MPRT, one per layer) gives ``layers`` and ``score`` = their mean. A metric that returns only
    aggregated numbers (ROAD's ``{percentage: mean}``) is an error. Cost: what Quantus needs (see its docs),
    on Quantus's numpy path."""

    primary = "score"

    def __init__(self, quantus_name: str, call: dict[str, Any] | None = None, **options: Any) -> None:
        from camkit_plugins.metrics.registry import check_options

        classes = quantus_classes()
        if quantus_name not in classes:
            from camkit.plugin_manager import UnknownNameError

            raise UnknownNameError.of("Quantus metric", quantus_name, sorted(classes))
        if quantus_name in NOT_IN_BENCH:
            raise ValueError(f"{PREFIX}{quantus_name} needs {NOT_IN_BENCH[quantus_name]}")
        cls = classes[quantus_name]
        accepted = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                    if name != "self" and p.kind is not p.VAR_KEYWORD and name not in FIXED]
        check_options(PREFIX + quantus_name, [*accepted, "call"], options)
        unknown_call = sorted(set(call or {}) - set(CALL_OPTIONS))
        if unknown_call:
            from camkit.plugin_manager import UnknownNameError

            raise UnknownNameError.of("call option", unknown_call[0], CALL_OPTIONS, where=f"{PREFIX}{quantus_name}")
        self.cls, self.quantus_name, self.name = cls, quantus_name, PREFIX + quantus_name
        self.settings, self.call = {"disable_warnings": True, **options}, dict(call or {})
        direction = getattr(cls, "score_direction", None)
        self.higher_is_better = getattr(direction, "name", "HIGHER") != "LOWER"
        self.family = getattr(getattr(cls, "evaluation_category", None), "name", "").lower()
        # Quantus's localisation metrics read the mask (s_batch): the bench skips them, with a note, on
        # data sets without one
        self.requires = ("ground_truth",) if self.family == "localisation" else ()

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import numpy as np
        import torch

        from camkit.capture import evaluation_mode

        if batch.input_layout.letters != "NCHW" or batch.map_letters != "NHW":
            raise ValueError(f"{self.name}: Quantus's image metrics take NCHW inputs and NHW maps, got "
                             f"{batch.input_layout.letters} and {batch.map_letters}")
        n = batch.inputs.shape[0]
        x = batch.inputs.detach().float().cpu().numpy().copy()
        y = batch.targets.detach().cpu().numpy().copy()
        a = batch.maps.detach().float().cpu().numpy()[:, None].copy()
        s = None
        if batch.mask is not None or batch.box is not None:
            s = batch.ground_truth_mask().cpu().numpy()[:, None].astype(np.float32)
        device = batch.inputs.device

        def explain_func(model: Any, inputs: Any, targets: Any, **_: Any) -> Any:
            inputs = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=device)
            targets = torch.as_tensor(np.asarray(targets), device=device).long().reshape(-1)
            maps = batch.explain(model, inputs, targets)
            return maps.detach().float().cpu().numpy()[:, None]

        state = np.random.get_state()
        try:
            np.random.seed(self.numpy_seed(batch))
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), evaluation_mode(batch.model):
                metric = self.cls(**self.settings, **FIXED)
                scores = metric(model=batch.model, x_batch=x, y_batch=y, a_batch=a, s_batch=s,
                                explain_func=explain_func, device=str(device), **self.call)
        finally:
            np.random.set_state(state)
        return self._per_sample(scores, n)

    def numpy_seed(self, batch: EvalBatch) -> int:
        """The seed of numpy's global state while Quantus runs: the bench seed and the batch's first sample id."""
        import zlib

        return zlib.crc32(f"{self.name}:{int(batch.seed)}:{int(batch.indices.reshape(-1)[0])}".encode())

    def _per_sample(self, scores: Any, n: int) -> MetricValues:
        import numpy as np
        import torch

        from camkit_plugins.metrics.base import curve_auc

        if isinstance(scores, dict):
            columns = {str(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in scores.items()}
            if not columns or any(c.shape != (n,) for c in columns.values()):
                raise QuantusOutputError(f"{self.name} returned aggregated values ({len(columns)} entries, not one "
                                         f"list of {n} per entry): it cannot give per-sample values for the bench")
            layers = torch.from_numpy(np.stack(list(columns.values()), axis=1))
            return MetricValues({"score": layers.mean(dim=1), "layers": layers}, {"layers": list(columns)})
        try:
            values = torch.from_numpy(np.asarray(scores, dtype=np.float64))
        except ValueError as exc:  # ragged curves
            raise QuantusOutputError(f"{self.name} returned per-sample results of different lengths: {exc}") from exc
        if values.shape[:1] != (n,) or values.dim() > 2:
            raise QuantusOutputError(f"{self.name} returned values of shape {tuple(values.shape)} for {n} samples")
        if values.dim() == 2:
            return MetricValues({"score": curve_auc(values), "curve": values})
        return MetricValues({"score": values})

    def options(self) -> dict[str, Any]:
        return {"quantus": self.quantus_name, **{k: _plain(v) for k, v in self.settings.items()},
                **({"call": self.call} if self.call else {})}


class QuantusOutputError(ValueError):
    """Quantus ran to the end, but its result is not one value (or curve) per sample: the bench cannot use
    it (a timing of the call still stands)."""


def _plain(value: Any) -> Any:
    """A callable option recorded by its name (the report's settings are JSON)."""
    return getattr(value, "__name__", repr(value)) if callable(value) else value
