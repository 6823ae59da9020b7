"""Axiomatic metrics (Quantus 0.6's family of 3): does a map obey a property every attribution should?
Completeness (the map sums to the output difference), Non-Sensitivity (features without attribution do not
move the output, and the others do) and Input Invariance (a constant input shift absorbed by the first
layer's bias does not change the map).

Baselines follow Quantus: ``perturb_baseline="black"`` is each sample's minimum over all its elements
(not 0). Quantus's faults fixed: Completeness tests ``sum(a) == f(x) - f(x')`` with exact float equality, which
float32 sums essentially never meet, and its baseline input x' replaces only the first S of the C x S input
elements (channel 0 of an image) when the map has S sites; camkit compares within ``rtol`` / ``atol``, reports
the gap, and replaces every element (``convention="quantus"`` reproduces both)."""

from __future__ import annotations

from typing import Any

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues, check_options
from camkit_plugins.metrics.robustness import (
    BASELINES,
    CONVENTIONS,
    baseline_fill,
    batch_first,
    from_batch_first,
    model_outputs,
    postprocess,
    reexplain,
)


def target_scores(batch: EvalBatch, inputs: Any, softmax: bool) -> Any:
    """``(N,)`` float64 output for each sample's target: the logit, or with ``softmax`` the probability."""
    out = model_outputs(batch.model, inputs, batch.input_layout, batch.chunk_size)
    if softmax:
        out = out.softmax(dim=1)
    return out.gather(1, batch.targets.to(out.device).reshape(-1, 1))[:, 0]


def _check_baseline(value: Any) -> None:
    if isinstance(value, str):
        check_options("perturb_baseline", value, BASELINES)


class Completeness(Metric):
    """Completeness (Sundararajan et al., ICML 2017): the map's sum equals the change of the output between
    the input and a baseline, sum(a) = f(x) - f(x'), x' = the baseline everywhere. Values: ``completeness``
    (1 when it holds within ``rtol`` / ``atol``, else 0; higher is better) and ``completeness_gap``
    (sum(a) - (f(x) - f(x')), signed).

    Cost: 2 forwards. Options (Quantus's names and defaults): ``abs=False``, ``normalise=True`` (each map by
    its own max |a|: Quantus's default, which makes the test meaningless for most maps; pass
    ``normalise=False`` with unnormalised maps, e.g. the method option ``normalize=False``),
    ``perturb_baseline="black"`` (``"white"``, ``"mean"``, ``"zero"`` or a number), ``output_func="identity"``,
    ``softmax=False`` (logits), ``rtol=1e-5``, ``atol=1e-8`` (numpy's ``isclose``), ``convention``
    (``"quantus"``: exact float equality, only channel 0 replaced by the baseline, and the batch-wide max for
    ``normalise``)."""

    name = "completeness"
    family = "axiomatic"
    quantus_name = "Completeness"
    primary = "completeness"
    higher_is_better = True

    def __init__(self, abs: bool = False, normalise: bool = True, perturb_baseline: str | float = "black",
                 output_func: str = "identity", softmax: bool = False, rtol: float = 1e-5, atol: float = 1e-8,
                 convention: str = "camkit") -> None:
        _check_baseline(perturb_baseline)
        check_options("output_func", output_func, ("identity",))
        check_options("convention", convention, CONVENTIONS)
        if rtol < 0 or atol < 0:
            raise ValueError(f"rtol and atol must be >= 0, got {rtol}, {atol}")
        self.abs, self.normalise, self.perturb_baseline = bool(abs), bool(normalise), perturb_baseline
        self.output_func, self.softmax, self.rtol, self.atol = output_func, bool(softmax), float(rtol), float(atol)
        self.convention = convention

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        a = postprocess(batch.flat_maps().double(), self.normalise, self.abs, self.convention)
        layout = batch.input_layout
        baseline = baseline_fill(batch.inputs, layout, self.perturb_baseline).expand_as(batch.inputs)
        if self.convention == "quantus":  # Quantus replaces only the first S of the C x S input elements
            xb = batch_first(batch.inputs, layout)
            flat = xb.reshape(xb.shape[0], -1).clone()
            flat[:, :a.shape[1]] = batch_first(baseline, layout).reshape(xb.shape[0], -1)[:, :a.shape[1]]
            baseline = from_batch_first(flat.view_as(xb), layout)
        difference = target_scores(batch, batch.inputs, self.softmax) - target_scores(batch, baseline, self.softmax)
        difference = difference.to(a.device)
        total = a.sum(dim=1)
        if self.convention == "quantus":  # Quantus: numpy's float32 sum, compared exactly with a float32 difference
            import torch

            total32 = torch.from_numpy(a.float().cpu().numpy().sum(axis=-1)).to(a.device)
            holds = total32 == difference.float()
        else:
            holds = (total - difference).abs() <= self.atol + self.rtol * difference.abs()
        return MetricValues({"completeness": holds.double(), "completeness_gap": total - difference})

    def options(self) -> dict[str, Any]:
        return {"abs": self.abs, "normalise": self.normalise, "perturb_baseline": self.perturb_baseline,
                "output_func": self.output_func, "softmax": self.softmax, "rtol": self.rtol, "atol": self.atol,
                "convention": self.convention}


class NonSensitivity(Metric):
    """Non-Sensitivity (Nguyen & Martinez 2020): the number of features that break the rule "a feature
    has zero attribution exactly when removing it leaves the output unchanged". Each group of
    ``features_in_step`` features (in flattened order) is replaced by the baseline on its own; a violation
    is a group whose output change |f(x) - f(x_g)| < ``eps`` disagrees with "all its attributions < eps".
    Value ``non_sensitivity`` (a count; lower is better).

    Features: ``features="site"`` (default) one map site broadcast over the channels (and persons); with
    ``"element"`` one channel of one site, as Quantus (the map broadcast onto the input).

    Cost: ceil(F / ``features_in_step``) forwards per sample, F = the number of features, forwarded
    ``batch.chunk_size`` at a time. Options (Quantus's defaults): ``eps=1e-5``, ``features_in_step=1``
    (Quantus crashes for any other value: it compares one prediction per group with one attribution per
    feature), ``abs=True``, ``normalise=True``, ``perturb_baseline="black"``, ``softmax=True`` (probabilities),
    ``features``, ``convention``."""

    name = "non_sensitivity"
    family = "axiomatic"
    quantus_name = "NonSensitivity"
    primary = "non_sensitivity"
    higher_is_better = False

    def __init__(self, eps: float = 1e-5, features_in_step: int = 1, abs: bool = True, normalise: bool = True,
                 perturb_baseline: str | float = "black", softmax: bool = True, features: str = "site",
                 convention: str = "camkit") -> None:
        _check_baseline(perturb_baseline)
        check_options("features", features, ("site", "element"))
        check_options("convention", convention, CONVENTIONS)
        if int(features_in_step) < 1:
            raise ValueError(f"features_in_step must be >= 1, got {features_in_step}")
        self.eps, self.features_in_step = float(eps), int(features_in_step)
        self.abs, self.normalise, self.perturb_baseline = bool(abs), bool(normalise), perturb_baseline
        self.softmax, self.features, self.convention = bool(softmax), features, convention

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        from camkit.capture import evaluation_mode
        from camkit_plugins.metrics.base import to_input_shape

        layout, x = batch.input_layout, batch.inputs
        xb = batch_first(x, layout)
        n = xb.shape[0]
        a = postprocess(batch.flat_maps().double(), self.normalise, self.abs, self.convention)
        if self.features == "element":  # one attribution per input element, in the input's flattened order
            spread = to_input_shape(a.view(n, *batch.site_shape), batch.map_letters, layout).expand(x.shape)
            a = batch_first(spread, layout).reshape(n, -1)
        features = a.shape[1]
        step = self.features_in_step
        groups = -(-features // step)
        quiet = torch.nn.functional.pad(a < self.eps, (0, groups * step - features), value=True)
        quiet = quiet.view(n, groups, step).all(dim=2)
        fill = batch_first(baseline_fill(x, layout, self.perturb_baseline).expand_as(x), layout)
        reference = target_scores(batch, x, self.softmax)
        targets = batch.targets.to(x.device).reshape(-1)
        unchanged = torch.empty(n * groups, dtype=torch.bool, device=x.device)
        with torch.inference_mode(), evaluation_mode(batch.model):
            for start in range(0, n * groups, batch.chunk_size):
                pairs = torch.arange(start, min(start + batch.chunk_size, n * groups), device=x.device)
                owner, group = pairs // groups, pairs % groups
                position = torch.arange(features, device=x.device)
                removed = (position[None, :] // step) == group[:, None]
                if self.features == "element":
                    removed = removed.view(len(pairs), *xb.shape[1:])
                else:
                    removed = batch_first(to_input_shape(removed.view(len(pairs), *batch.site_shape),
                                                         batch.map_letters, layout), layout)
                perturbed = torch.where(removed, fill[owner], xb[owner])
                out = batch.model(from_batch_first(perturbed, layout)).double()
                if self.softmax:
                    out = out.softmax(dim=1)
                scores = out.gather(1, targets[owner][:, None])[:, 0]
                unchanged[pairs] = (scores - reference.to(x.device)[owner]).abs() < self.eps
        violations = (unchanged.view(n, groups) ^ quiet.to(x.device)).sum(dim=1).double()
        return MetricValues({"non_sensitivity": violations.to(a.device)})

    def options(self) -> dict[str, Any]:
        return {"eps": self.eps, "features_in_step": self.features_in_step, "abs": self.abs,
                "normalise": self.normalise, "perturb_baseline": self.perturb_baseline, "softmax": self.softmax,
                "features": self.features, "convention": self.convention}


class InputInvariance(Metric):
    """Input Invariance (Kindermans et al. 2017/2019): shift the input by the constant ``input_shift`` and
    absorb the shift in the first layer's bias (b' = b - shift x the sum of the weights per output channel),
    so the shifted model computes the same function; a method is input-invariant when the map does not
    change. Values ``input_invariance`` (1 when every site agrees within ``atol`` + ``rtol`` |a|, as
    numpy's ``isclose``; higher is better) and ``max_difference``.

    The first layer is ``layer`` (a dotted name) or the model's first Conv1d/2d/3d or Linear module; one
    without a bias (a convolution before BatchNorm) gets one in the copy. With zero padding the border of a
    convolution still sees the unshifted padding, so a map may change there (Kindermans et al.'s
    construction holds exactly for unpadded layers). ``convention="quantus"`` corrects the bias as Quantus
    does (its first named submodule, the bias from the smallest output value of the layer on the constant
    shift, border values included).

    Cost: 1 re-explanation of a deep copy of the model (the user's model is untouched). Options (Quantus's
    defaults): ``input_shift=-1``, ``abs=False``, ``normalise=False``, ``atol=1e-4``, ``rtol=1e-5``,
    ``layer=None``, ``convention``. Quantus also leaves the first element of every input unshifted (its
    ``perturb_batch`` passes ``indices[i][1:]``); ``convention="quantus"`` reproduces that too."""

    name = "input_invariance"
    family = "axiomatic"
    quantus_name = "InputInvariance"
    primary = "input_invariance"
    higher_is_better = True

    def __init__(self, input_shift: float = -1, abs: bool = False, normalise: bool = False, atol: float = 1e-4,
                 rtol: float = 1e-5, layer: str | None = None, convention: str = "camkit") -> None:
        check_options("convention", convention, CONVENTIONS)
        self.input_shift, self.abs, self.normalise = float(input_shift), bool(abs), bool(normalise)
        self.atol, self.rtol, self.layer, self.convention = float(atol), float(rtol), layer, convention

    def first_layer(self, model: Any) -> tuple[str, Any]:
        import torch

        from camkit.capture import resolve_layer

        if self.layer is not None:
            return resolve_layer(model, self.layer)
        if self.convention == "quantus":
            return list(model.named_modules())[1]
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
                return name, module
        raise ValueError(f"model {type(model).__name__} has no Conv or Linear layer to absorb the input shift")

    def shifted_model(self, batch: EvalBatch) -> Any:
        import copy

        import torch

        model = copy.deepcopy(batch.model)
        name, layer = self.first_layer(model)
        if getattr(layer, "weight", None) is None or not hasattr(layer, "bias"):
            raise ValueError(f"input_invariance: layer {name!r} ({type(layer).__name__}) has no weight and bias to "
                             f"absorb the input shift; pass layer=... naming a Conv or Linear layer")
        if layer.bias is None:
            if self.convention == "quantus":
                raise ValueError(f"input_invariance: layer {name!r} has no bias (Quantus fails here too); use "
                                 f"convention='camkit', which gives the copy one")
            layer.bias = torch.nn.Parameter(layer.weight.new_zeros(layer.weight.shape[0]))  # the copy only
        with torch.no_grad():
            if self.convention == "quantus":
                first = batch_first(batch.inputs, batch.input_layout)[:1]
                delta = torch.full_like(from_batch_first(first, batch.input_layout), self.input_shift)
                response = layer(delta)[0].reshape(layer.bias.shape[0], -1)
                lowest = torch.stack([torch.unique(row)[0] for row in response])
                layer.bias.copy_(2 * layer.bias - lowest)
            else:
                layer.bias.sub_(self.input_shift * layer.weight.sum(dim=tuple(range(1, layer.weight.ndim))))
        return model

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        a = postprocess(batch.flat_maps().double(), self.normalise, self.abs, self.convention)
        layout = batch.input_layout
        xb = batch_first(batch.inputs, layout)
        moved = (xb + self.input_shift).reshape(xb.shape[0], -1)
        if self.convention == "quantus":  # Quantus's perturb_batch drops index 0: element 0 stays put
            moved[:, 0] = xb.reshape(xb.shape[0], -1)[:, 0]
        shifted = reexplain(batch, from_batch_first(moved.view_as(xb), layout), self.shifted_model(batch))
        a_shifted = postprocess(shifted, self.normalise, self.abs, self.convention)
        difference = (a - a_shifted).abs()
        holds = (difference <= self.atol + self.rtol * a_shifted.abs()).all(dim=1)
        return MetricValues({"input_invariance": holds.double(), "max_difference": difference.amax(dim=1)})

    def options(self) -> dict[str, Any]:
        return {"input_shift": self.input_shift, "abs": self.abs, "normalise": self.normalise, "atol": self.atol,
                "rtol": self.rtol, "layer": self.layer, "convention": self.convention}


METRICS = (Completeness, NonSensitivity, InputInvariance)
