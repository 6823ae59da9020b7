"""Robustness metrics (Quantus 0.6's family of 8): how much a map changes when the input changes a little.

Every one re-explains perturbed inputs through the batch's one re-explanation path,
``batch.explain(model, inputs, targets)`` (any camkit method, the bench's method and options), one call per
noise draw holding the whole batch (the draw of every sample batched together). Every random draw comes
from ``sample_generator(batch.seed, sample id, "<metric>:noise")`` on the CPU, drawn in order per sample, so
a sample's values do not depend on the batch it is in, the world size or the device.

Quantus conventions kept (so a Quantus user changes nothing but the call): parameter names and defaults,
the noise ranges, the norms. Faults fixed by default (``convention="quantus"`` reproduces them):
``normalise=True`` divides by each map's own max |a| (Quantus: by the max over the whole batch, so a
sample's value depends on the others); a draw that changes the prediction is left out of the max / mean
when ``return_nan_when_prediction_changes`` (Quantus: one such draw turns the whole sample into NaN);
Consistency discretises a map by its ``n`` most relevant sites (Quantus's ``top_n_sign``: the signs of the
first ``n`` values in raster order, the top-left pixels) and a sample with no other sample sharing its
explanation is NaN (Quantus: 0)."""

from __future__ import annotations

from typing import Any

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues, check_options

CONVENTIONS = ("camkit", "quantus")
NORMS = ("fro", "l2", "linf")


# ---------------------------------------------------------------- shared by the re-explaining families


def batch_first(x: Any, layout: Any) -> Any:
    return x.movedim(layout.batch_axis, 0)


def from_batch_first(x: Any, layout: Any) -> Any:
    return x.movedim(0, layout.batch_axis)


def reexplain(batch: EvalBatch, inputs: Any, model: Any = None, targets: Any = None) -> Any:
    """Maps of ``inputs`` (the batch's layout, N samples) for the batch's targets by the batch's method,
    as ``(N, S)`` float64 on the inputs' device."""
    model = batch.model if model is None else model
    targets = batch.targets if targets is None else targets
    if batch.explain is None:
        raise ValueError("this metric re-explains inputs: the batch needs explain(model, inputs, targets)")
    maps = batch.explain(model, inputs, targets)
    n = batch_first(inputs, batch.input_layout).shape[0]
    if maps.shape[0] != n:
        raise ValueError(f"explain returned {maps.shape[0]} maps for {n} inputs")
    return maps.reshape(n, -1).to(device=batch.maps.device).double()


def model_outputs(model: Any, inputs: Any, layout: Any, chunk_size: int = 256) -> Any:
    """``(N, classes)`` float64 outputs of ``model`` on ``inputs`` (any layout), forwarded in chunks."""
    import torch

    from camkit.capture import evaluation_mode

    xb = batch_first(inputs, layout)
    out = []
    with torch.inference_mode(), evaluation_mode(model):
        for start in range(0, xb.shape[0], chunk_size):
            out.append(model(from_batch_first(xb[start:start + chunk_size], layout)).double())
    return torch.cat(out)


def postprocess(flat_maps: Any, normalise: bool, absolute: bool, convention: str) -> Any:
    """Quantus's order: divide by the max |a| (each map's own; ``convention="quantus"``: the whole batch's),
    then take |a| if asked. An all-zero map (or batch) is left as it is."""
    if normalise:
        if convention == "quantus":
            peak = flat_maps.abs().amax().expand(flat_maps.shape[0], 1)
        else:
            peak = flat_maps.abs().amax(dim=1, keepdim=True)
        flat_maps = flat_maps / peak.where(peak > 0, peak.new_ones(()))
    return flat_maps.abs() if absolute else flat_maps


def vector_norm(values: Any, kind: str) -> Any:
    """Per-row norm of ``(N, D)``: Quantus's ``fro_norm`` and ``l2_norm`` are both the L2 norm of the
    flattened map, ``linf`` its max |value|."""
    import torch

    return torch.linalg.vector_norm(values, ord=float("inf") if kind == "linf" else 2, dim=1)


class NoiseSource:
    """Additive noise per sample, drawn in order from each sample's own generator (CPU, so the same on any
    device): ``uniform`` U(-lower_bound, lower_bound), or U(lower_bound, upper_bound) with an upper bound;
    ``gaussian`` N(perturb_mean, perturb_std^2)."""

    def __init__(self, kind: str, lower_bound: float = 0.2, upper_bound: float | None = None,
                 perturb_mean: float = 0.0, perturb_std: float = 0.1) -> None:
        check_options("perturb_func", kind, ("uniform", "gaussian"))
        if kind == "uniform" and upper_bound is not None and upper_bound <= lower_bound:
            raise ValueError(f"upper_bound={upper_bound} must exceed lower_bound={lower_bound}")
        self.kind, self.lower, self.upper = kind, float(lower_bound), upper_bound
        self.mean, self.std = float(perturb_mean), float(perturb_std)

    def generators(self, batch: EvalBatch, stream: str) -> list[Any]:
        from camkit_plugins.metrics.base import sample_generator

        return [sample_generator(batch.seed, int(i), stream) for i in batch.indices.reshape(-1).tolist()]

    def draw(self, generators: list[Any], shape: tuple[int, ...]) -> Any:
        """``(N, *shape)`` float32 CPU noise, one row from each generator."""
        import torch

        rows = []
        for generator in generators:
            if self.kind == "gaussian":
                rows.append(self.mean + self.std * torch.randn(shape, generator=generator))
            else:
                low, high = (-self.lower, self.lower) if self.upper is None else (self.lower, float(self.upper))
                rows.append(low + (high - low) * torch.rand(shape, generator=generator))
        return torch.stack(rows)

    def options(self) -> dict[str, Any]:
        if self.kind == "gaussian":
            return {"perturb_func": "gaussian", "perturb_mean": self.mean, "perturb_std": self.std}
        return {"perturb_func": "uniform", "lower_bound": self.lower, "upper_bound": self.upper}


# ---------------------------------------------------------------- noise-based robustness


class _NoiseRobustness(Metric):
    """Shared loop: for each of ``nr_samples`` draws, perturb every input of the batch with its own noise,
    re-explain the batch once (and forward it once when the prediction or the output is needed), score each
    sample, then reduce over the draws (max or mean)."""

    family = "robustness"
    primary = ""
    higher_is_better = False
    reduction = "max"
    needs_outputs = False

    def __init__(self, nr_samples: int = 200, abs: bool = False, normalise: bool = False,
                 return_nan_when_prediction_changes: bool = False, convention: str = "camkit",
                 perturb_func: str = "uniform", lower_bound: float = 0.2, upper_bound: float | None = None,
                 perturb_mean: float = 0.0, perturb_std: float = 0.1) -> None:
        if int(nr_samples) < 1:
            raise ValueError(f"nr_samples must be >= 1, got {nr_samples}")
        check_options("convention", convention, CONVENTIONS)
        self.nr_samples, self.abs, self.normalise = int(nr_samples), bool(abs), bool(normalise)
        self.return_nan_when_prediction_changes = bool(return_nan_when_prediction_changes)
        self.convention = convention
        self.noise_source = NoiseSource(perturb_func, lower_bound, upper_bound, perturb_mean, perturb_std)

    def noise(self, batch: EvalBatch, draw: int, generators: list[Any], shape: tuple[int, ...]) -> Any:
        """Draw ``draw``'s ``(N, *shape)`` noise (a hook: parity tests inject Quantus's draws here)."""
        return self.noise_source.draw(generators, shape)

    def score(self, batch: EvalBatch, a: Any, a_p: Any, x: Any, x_p: Any, out: Any, out_p: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - interface

    def forward(self, batch: EvalBatch, inputs: Any) -> Any:
        """The model's outputs on ``inputs`` (RRS also keeps the hidden representation of that pass)."""
        return model_outputs(batch.model, inputs, batch.input_layout, batch.chunk_size)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        layout = batch.input_layout
        x = batch.inputs
        xb = batch_first(x, layout)
        n = xb.shape[0]
        a = postprocess(batch.flat_maps().double(), self.normalise, self.abs, self.convention)
        track = self.return_nan_when_prediction_changes
        out = self.forward(batch, x) if (track or self.needs_outputs) else None
        generators = self.noise_source.generators(batch, f"{self.name}:noise")
        scores = torch.empty(n, self.nr_samples, dtype=torch.float64, device=a.device)
        changed = torch.zeros(n, self.nr_samples, dtype=torch.bool, device=a.device)
        for draw in range(self.nr_samples):
            noise = self.noise(batch, draw, generators, tuple(xb.shape[1:]))
            xp = from_batch_first(xb + noise.to(device=x.device, dtype=x.dtype), layout)
            a_p = postprocess(reexplain(batch, xp), self.normalise, self.abs, self.convention)
            out_p = self.forward(batch, xp) if out is not None else None
            scores[:, draw] = self.score(batch, a, a_p, xb.reshape(n, -1).double(),
                                         batch_first(xp, layout).reshape(n, -1).double(), out, out_p).to(a.device)
            if track and out is not None and out_p is not None:
                changed[:, draw] = (out_p.argmax(dim=1) != out.argmax(dim=1)).to(a.device)
        return MetricValues({self.primary: self.reduce(scores, changed)})

    def reduce(self, scores: Any, changed: Any) -> Any:
        """Max (or mean) over the draws. Draws that changed the prediction are left out (camkit) or make the
        sample NaN (``convention="quantus"``); otherwise NaN draws are skipped as Quantus's nanmax does."""
        import torch

        nan = torch.full_like(scores, float("nan"))
        if self.convention == "quantus" and changed.any():
            scores = torch.where(changed, nan, scores)
            return scores.amax(dim=1) if self.reduction == "max" else scores.mean(dim=1)
        scores = torch.where(changed, nan, scores)
        if self.reduction == "mean":
            return torch.nanmean(scores, dim=1)
        finite = ~torch.isnan(scores)
        best = torch.where(finite, scores, torch.full_like(scores, -float("inf"))).amax(dim=1)
        return torch.where(finite.any(dim=1), best, torch.full_like(best, float("nan")))

    def options(self) -> dict[str, Any]:
        return {"nr_samples": self.nr_samples, "abs": self.abs, "normalise": self.normalise,
                "return_nan_when_prediction_changes": self.return_nan_when_prediction_changes,
                "convention": self.convention, **self.noise_source.options()}


class _Sensitivity(_NoiseRobustness):
    """||a - a'|| / ||a|| per draw (Yeh et al. 2019), norms ``norm_numerator`` / ``norm_denominator``."""

    def __init__(self, nr_samples: int = 200, lower_bound: float = 0.2, upper_bound: float | None = None,
                 norm_numerator: str = "fro", norm_denominator: str = "fro", abs: bool = False,
                 normalise: bool = False, return_nan_when_prediction_changes: bool = False,
                 perturb_func: str = "uniform", perturb_std: float = 0.1, perturb_mean: float = 0.0,
                 zero_norm: str = "nan", convention: str = "camkit") -> None:
        super().__init__(nr_samples, abs, normalise, return_nan_when_prediction_changes, convention, perturb_func,
                         lower_bound, upper_bound, perturb_mean, perturb_std)
        check_options("norm_numerator", norm_numerator, NORMS)
        check_options("norm_denominator", norm_denominator, NORMS)
        check_options("zero_norm", zero_norm, ("nan", "one"))
        self.norm_numerator, self.norm_denominator, self.zero_norm = norm_numerator, norm_denominator, zero_norm

    def score(self, batch: EvalBatch, a: Any, a_p: Any, x: Any, x_p: Any, out: Any, out_p: Any) -> Any:
        numerator = vector_norm(a - a_p, self.norm_numerator)
        denominator = vector_norm(a, self.norm_denominator)
        if self.zero_norm == "one":  # captum: an all-zero map is divided by 1
            return numerator / denominator.where(denominator > 0, denominator.new_ones(()))
        return numerator / denominator.where(denominator > 0, denominator.new_full((), float("nan")))

    def options(self) -> dict[str, Any]:
        return {**super().options(), "norm_numerator": self.norm_numerator,
                "norm_denominator": self.norm_denominator, "zero_norm": self.zero_norm}


class MaxSensitivity(_Sensitivity):
    """Max-Sensitivity (Yeh et al., NeurIPS 2019): the largest relative change of the map,
    max over ``nr_samples`` draws of ||a(x) - a(x + d)||_F / ||a(x)||_F, d ~ U(-``lower_bound``,
    ``lower_bound``) per input element (U(lower_bound, upper_bound) with ``upper_bound``; ``perturb_func=
    "gaussian"``: N(``perturb_mean``, ``perturb_std``^2)). Lower is better.

    Cost: ``nr_samples`` re-explanations of the batch (+ ``nr_samples`` forwards with
    ``return_nan_when_prediction_changes``). Options (Quantus's names and defaults): ``nr_samples=200``,
    ``lower_bound=0.2``, ``upper_bound=None``, ``norm_numerator`` / ``norm_denominator`` ``"fro"`` (or
    ``"l2"``, ``"linf"``), ``abs=False``, ``normalise=False``, ``return_nan_when_prediction_changes=False``
    (draws that change the top-1 class are left out), ``zero_norm="nan"`` (an all-zero map is NaN;
    ``"one"``: divided by 1, captum's rule), ``convention``. NaN: all-zero map, or every draw left out.

    ``sensitivity_max`` is this metric with captum's defaults (``n_perturb_samples=10``,
    ``perturb_radius=0.02``, ``zero_norm="one"``)."""

    name = "max_sensitivity"
    quantus_name = "MaxSensitivity"
    primary = "max_sensitivity"
    reduction = "max"


class AvgSensitivity(_Sensitivity):
    """Avg-Sensitivity (Yeh et al., NeurIPS 2019): as ``max_sensitivity`` but the mean over the draws
    (Quantus's defaults: ``nr_samples=200``, ``lower_bound=0.2``). Cost: ``nr_samples`` re-explanations.
    Lower is better. NaN: all-zero map, or every draw left out."""

    name = "avg_sensitivity"
    quantus_name = "AvgSensitivity"
    primary = "avg_sensitivity"
    reduction = "mean"


class SensitivityMax(MaxSensitivity):
    """captum's ``sensitivity_max``: ``max_sensitivity`` with captum's defaults, ``n_perturb_samples=10``
    draws of U(-``perturb_radius``, ``perturb_radius``) noise, ``perturb_radius=0.02``, ``norm_ord="fro"``,
    an all-zero map divided by 1. Cost: ``n_perturb_samples`` re-explanations."""

    name = "sensitivity_max"
    quantus_name = ""
    primary = "sensitivity_max"

    def __init__(self, n_perturb_samples: int = 10, perturb_radius: float = 0.02, norm_ord: str = "fro") -> None:
        super().__init__(nr_samples=n_perturb_samples, lower_bound=perturb_radius, norm_numerator=norm_ord,
                         norm_denominator=norm_ord, zero_norm="one")


class LocalLipschitzEstimate(_NoiseRobustness):
    """Local Lipschitz Estimate (Alvarez-Melis & Jaakkola 2018): max over ``nr_samples`` draws of
    ||a(x) - a(x + d)||_2 / (||d||_2 + 1e-10), d ~ N(``perturb_mean``, ``perturb_std``^2) per input
    element. Lower is better.

    Cost: ``nr_samples`` re-explanations (+ ``nr_samples`` forwards with
    ``return_nan_when_prediction_changes``). Options (Quantus's defaults): ``nr_samples=200``,
    ``perturb_mean=0``, ``perturb_std=0.1``, ``abs=False``, ``normalise=True`` (each map divided by its max
    |a|; Quantus: by the batch's), ``return_nan_when_prediction_changes=False``, ``convention``."""

    name = "local_lipschitz_estimate"
    quantus_name = "LocalLipschitzEstimate"
    primary = "local_lipschitz_estimate"

    def __init__(self, nr_samples: int = 200, perturb_mean: float = 0.0, perturb_std: float = 0.1,
                 abs: bool = False, normalise: bool = True, return_nan_when_prediction_changes: bool = False,
                 convention: str = "camkit") -> None:
        super().__init__(nr_samples, abs, normalise, return_nan_when_prediction_changes, convention, "gaussian",
                         perturb_mean=perturb_mean, perturb_std=perturb_std)

    def score(self, batch: EvalBatch, a: Any, a_p: Any, x: Any, x_p: Any, out: Any, out_p: Any) -> Any:
        return vector_norm(a - a_p, "l2") / (vector_norm(x - x_p, "l2") + 1e-10)


class _RelativeStability(_NoiseRobustness):
    """Agarwal et al. 2022: the relative change of the map over the relative change of the input (RIS),
    the output logits (ROS) or a hidden representation (RRS), max over draws of U(0.02, 0.2) noise, draws
    that change the prediction left out. ||(e - e') / e||_2 with e = eps_min where e == 0."""

    def __init__(self, nr_samples: int = 200, abs: bool = False, normalise: bool = False, eps_min: float = 1e-6,
                 return_nan_when_prediction_changes: bool = True, lower_bound: float = 0.02,
                 upper_bound: float = 0.2, convention: str = "camkit") -> None:
        super().__init__(nr_samples, abs, normalise, return_nan_when_prediction_changes, convention, "uniform",
                         lower_bound, upper_bound)
        self.eps_min = float(eps_min)

    def relative(self, value: Any, perturbed: Any) -> Any:
        return vector_norm((value - perturbed) / (value + (value == 0) * self.eps_min), "l2")

    def ratio(self, a: Any, a_p: Any, denominator: Any) -> Any:
        return self.relative(a, a_p) / (denominator + (denominator == 0) * self.eps_min)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "eps_min": self.eps_min}


class RelativeInputStability(_RelativeStability):
    """Relative Input Stability (Agarwal et al. 2022): max over draws of
    ||(a - a')/a||_2 / max(||(x - x')/x||_2, eps_min). Lower is better.

    Cost: ``nr_samples`` re-explanations + ``nr_samples`` forwards (prediction check). Options (Quantus's
    defaults): ``nr_samples=200``, noise U(``lower_bound``=0.02, ``upper_bound``=0.2), ``eps_min=1e-6``,
    ``abs=False``, ``normalise=False``, ``return_nan_when_prediction_changes=True`` (draws that change the
    top-1 class are left out; NaN when all are; Quantus: NaN as soon as one is), ``convention``."""

    name = "relative_input_stability"
    quantus_name = "RelativeInputStability"
    primary = "relative_input_stability"

    def score(self, batch: EvalBatch, a: Any, a_p: Any, x: Any, x_p: Any, out: Any, out_p: Any) -> Any:
        return self.ratio(a, a_p, self.relative(x, x_p))


class RelativeOutputStability(_RelativeStability):
    """Relative Output Stability (Agarwal et al. 2022): max over draws of
    ||(a - a')/a||_2 / max(||h(x) - h(x')||_2, eps_min), h = the model's logits. Lower is better.
    Cost: ``nr_samples`` re-explanations + ``nr_samples`` forwards; options as ``relative_input_stability``."""

    name = "relative_output_stability"
    quantus_name = "RelativeOutputStability"
    primary = "relative_output_stability"
    needs_outputs = True

    def score(self, batch: EvalBatch, a: Any, a_p: Any, x: Any, x_p: Any, out: Any, out_p: Any) -> Any:
        return self.ratio(a, a_p, vector_norm(out - out_p, "l2"))


class RelativeRepresentationStability(_RelativeStability):
    """Relative Representation Stability (Agarwal et al. 2022): max over draws of
    ||(a - a')/a||_2 / max(||(L(x) - L(x'))/L(x)||_2, eps_min), L = a hidden representation: the
    outputs of ``layer_names`` (dotted module names, ``"name:input"`` for a module's input), flattened and
    concatenated, or with ``layer_names=None`` the layer camkit explains by default (the features
    camkit's locator finds). Quantus's ``layer_indices`` (positions among the model's non-Sequential
    modules) is accepted too. Forward hooks are removed after each pass. Lower is better.

    Cost: ``nr_samples`` re-explanations + ``nr_samples`` forwards (representation and prediction in one
    pass); options as ``relative_input_stability`` plus ``layer_names=None``, ``layer_indices=None``.
    Quantus's default (no layer named) concatenates every module's output, an unbounded memory cost
    camkit does not copy."""

    name = "relative_representation_stability"
    quantus_name = "RelativeRepresentationStability"
    primary = "relative_representation_stability"
    needs_outputs = True

    def __init__(self, nr_samples: int = 200, abs: bool = False, normalise: bool = False, eps_min: float = 1e-6,
                 return_nan_when_prediction_changes: bool = True, lower_bound: float = 0.02,
                 upper_bound: float = 0.2, layer_names: list[str] | None = None,
                 layer_indices: list[int] | None = None, convention: str = "camkit") -> None:
        super().__init__(nr_samples, abs, normalise, eps_min, return_nan_when_prediction_changes, lower_bound,
                         upper_bound, convention)
        if layer_names is not None and layer_indices is not None:
            raise ValueError("pass layer_names or layer_indices, not both")
        self.layer_names = list(layer_names) if layer_names is not None else None
        self.layer_indices = list(layer_indices) if layer_indices is not None else None
        self._points: Any = None
        self._reference: Any = None
        self._representation: Any = None

    def points(self, batch: EvalBatch) -> list[Any]:
        import torch

        from camkit.capture import evaluation_mode
        from camkit.locate import trace_features

        model = batch.model
        if self.layer_indices is not None:
            hidden = [name for name, module in model.named_modules()
                      if not isinstance(module, (type(model), torch.nn.Sequential))]
            try:
                return [hidden[i] for i in self.layer_indices]
            except IndexError:
                raise ValueError(f"layer_indices {self.layer_indices} out of range: the model has "
                                 f"{len(hidden)} non-Sequential modules") from None
        if self.layer_names is not None:
            return list(self.layer_names)
        first = from_batch_first(batch_first(batch.inputs, batch.input_layout)[:1], batch.input_layout)
        with torch.no_grad(), evaluation_mode(model):  # a train-mode forward would update BatchNorm statistics
            return [trace_features(model, lambda: model(first)).point]

    def forward(self, batch: EvalBatch, inputs: Any) -> Any:
        """Outputs of ``inputs`` and, kept in ``self._representation``, their ``(N, D)`` hidden
        representation, from one forward pass per chunk."""
        import contextlib

        import torch

        from camkit.capture import capture_features, evaluation_mode

        if self._points is None:
            self._points = self.points(batch)
        layout = batch.input_layout
        xb = batch_first(inputs, layout)
        outs, reps = [], []
        with torch.inference_mode(), evaluation_mode(batch.model):
            for start in range(0, xb.shape[0], batch.chunk_size):
                chunk = from_batch_first(xb[start:start + batch.chunk_size], layout)
                with contextlib.ExitStack() as stack:  # hooks removed on exit, also on errors
                    captures = [stack.enter_context(capture_features(batch.model, point)) for point in self._points]
                    outs.append(batch.model(chunk).double())
                    reps.append(torch.cat([c.features.reshape(c.features.shape[0], -1).double()
                                           for c in captures], dim=1))
        self._representation = torch.cat(reps)
        if self._reference is None:  # the first pass of an evaluation is the unperturbed batch's
            self._reference = self._representation
        return torch.cat(outs)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        self._points, self._reference = None, None
        try:
            return super().evaluate(batch)
        finally:
            self._points = self._reference = self._representation = None

    def score(self, batch: EvalBatch, a: Any, a_p: Any, x: Any, x_p: Any, out: Any, out_p: Any) -> Any:
        return self.ratio(a, a_p, self.relative(self._reference, self._representation))

    def options(self) -> dict[str, Any]:
        return {**super().options(), "layer_names": self.layer_names, "layer_indices": self.layer_indices}


# ---------------------------------------------------------------- deterministic robustness


class Continuity(Metric):
    """Continuity (Montavon et al. 2018): translate the input along ``axis`` in ``nr_steps`` steps
    (shifts -L + k·dx, k = 1..nr_steps, dx = (2L + 1) // nr_steps, L the axis length; vacated positions
    filled with the per-sample minimum, Quantus's ``perturb_baseline="black"``), re-explain, and take the
    max over steps of ||a(x) - a(x')||_1 / (||x - x'||_2 + 1e-9). Lower is better.

    Cost: ``nr_steps`` re-explanations (+ ``nr_steps`` forwards with
    ``return_nan_when_prediction_changes``). Options (Quantus's defaults): ``nr_steps=28``, ``abs=True``,
    ``normalise=True`` (each map by its own max |a|; Quantus: the batch's), ``perturb_baseline="black"``
    (or ``"white"``: the per-sample max, ``"mean"``, a number), ``return_nan_when_prediction_changes=False``
    (a step whose top-1 class differs from the unperturbed input's is left out; ``convention="quantus"``:
    NaN as soon as one differs from the explained class), ``axis=None`` (the input's last continuous axis:
    W for images, L for signals, T for skeleton clips), ``convention``. Deterministic."""

    name = "continuity"
    family = "robustness"
    quantus_name = "Continuity"
    primary = "continuity"
    higher_is_better = False

    def __init__(self, nr_steps: int = 28, abs: bool = True, normalise: bool = True,
                 perturb_baseline: str | float = "black", return_nan_when_prediction_changes: bool = False,
                 axis: str | None = None, convention: str = "camkit") -> None:
        if int(nr_steps) < 1:
            raise ValueError(f"nr_steps must be >= 1, got {nr_steps}")
        check_options("convention", convention, CONVENTIONS)
        if isinstance(perturb_baseline, str):
            check_options("perturb_baseline", perturb_baseline, BASELINES)
        self.nr_steps, self.abs, self.normalise = int(nr_steps), bool(abs), bool(normalise)
        self.perturb_baseline, self.axis, self.convention = perturb_baseline, axis, convention
        self.return_nan_when_prediction_changes = bool(return_nan_when_prediction_changes)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        layout = batch.input_layout
        letter = self.axis or (layout.continuous_letters[-1:] if layout.continuous_letters else "")
        if not letter or letter not in layout.letters:
            raise ValueError(f"continuity translates along an axis of the input layout {layout.letters!r}; "
                             f"axis={self.axis!r} is not one (pass axis=...)")
        dim = layout.letters.index(letter)
        x = batch.inputs
        length = x.shape[dim]
        dx = (2 * length + 1) // self.nr_steps
        fill = baseline_fill(x, layout, self.perturb_baseline)
        n = batch_first(x, layout).shape[0]
        a = postprocess(batch.flat_maps().double(), self.normalise, self.abs, self.convention)
        track = self.return_nan_when_prediction_changes
        top1 = None
        if track:  # Quantus compares with the explained class, camkit with the unperturbed prediction
            top1 = (batch.targets.to(x.device).reshape(-1) if self.convention == "quantus"
                    else model_outputs(batch.model, x, layout, batch.chunk_size).argmax(dim=1))
        scores = torch.empty(n, self.nr_steps, dtype=torch.float64, device=a.device)
        changed = torch.zeros_like(scores, dtype=torch.bool)
        for step in range(self.nr_steps):
            xp = translate(x, fill, dim, -length + (step + 1) * dx)
            a_p = postprocess(reexplain(batch, xp), self.normalise, self.abs, self.convention)
            distance = torch.linalg.vector_norm(batch_first(x - xp, layout).reshape(n, -1).double(), dim=1)
            scores[:, step] = (a - a_p).abs().sum(dim=1) / (distance.to(a.device) + 1e-9)
            if track:
                out_p = model_outputs(batch.model, xp, layout, batch.chunk_size)
                changed[:, step] = (out_p.argmax(dim=1) != top1).to(a.device)
        return MetricValues({"continuity": _max_over_kept(scores, changed, self.convention)})

    def options(self) -> dict[str, Any]:
        return {"nr_steps": self.nr_steps, "abs": self.abs, "normalise": self.normalise,
                "perturb_baseline": self.perturb_baseline, "axis": self.axis, "convention": self.convention,
                "return_nan_when_prediction_changes": self.return_nan_when_prediction_changes}


def _max_over_kept(scores: Any, changed: Any, convention: str) -> Any:
    import torch

    if convention == "quantus":
        return torch.where(changed, torch.full_like(scores, float("nan")), scores).amax(dim=1)
    kept = torch.where(changed, torch.full_like(scores, -float("inf")), scores).amax(dim=1)
    return torch.where(changed.all(dim=1), torch.full_like(kept, float("nan")), kept)


BASELINES = ("black", "white", "mean", "zero")


def baseline_fill(x: Any, layout: Any, baseline: str | float) -> Any:
    """Quantus's baseline values, one per sample over all its elements, shaped to broadcast against ``x``:
    ``"black"`` the minimum, ``"white"`` the maximum, ``"mean"`` the mean, ``"zero"`` or a number."""
    xb = batch_first(x, layout)
    flat = xb.reshape(xb.shape[0], -1)
    if not isinstance(baseline, str):
        values = flat.new_full((flat.shape[0],), float(baseline))
    elif baseline == "black":
        values = flat.amin(dim=1)
    elif baseline == "white":
        values = flat.amax(dim=1)
    elif baseline == "mean":
        values = flat.mean(dim=1)
    else:
        check_options("perturb_baseline", baseline, BASELINES)
        values = flat.new_zeros((flat.shape[0],))
    return from_batch_first(values.view(-1, *([1] * (xb.ndim - 1))), layout)


def translate(x: Any, fill: Any, dim: int, shift: int) -> Any:
    """``x`` moved by ``shift`` positions along ``dim`` (positive: towards higher indices), the vacated
    positions filled with ``fill`` (Quantus's ``batched_translation``)."""
    import torch

    length = x.shape[dim]
    out = fill.expand_as(x).clone()
    shift = max(-length, min(length, int(shift)))
    if shift >= 0:
        out.narrow(dim, shift, length - shift).copy_(x.narrow(dim, 0, length - shift))
    else:
        out.narrow(dim, 0, length + shift).copy_(x.narrow(dim, -shift, length + shift))
    return torch.as_tensor(out)


class Consistency(Metric):
    """Consistency (Dasgupta, Frost & Moshkovitz, ICML 2022): the probability that samples with the same
    (discretised) explanation get the same prediction. Per sample i: among the other samples j of the
    evaluated set whose explanation has the same discretised label, the fraction with the same top-1 class.
    Higher is better.

    Discretisation (``discretise_func``): ``"top_n_sites"`` (default) the set of the ``n`` most relevant
    sites (ties by position); ``"top_n_sign"``: Quantus's, the signs of the first ``n`` values of the
    flattened map in raster order (the top-left pixels, whatever the map says). The set is the batch the
    metric is given: evaluate the whole set in one batch for a data-set value. Options: ``n=5``,
    ``abs=True``, ``normalise=True`` (per map), ``convention`` (``"quantus"``: Quantus's discretisation and a
    sample without any partner scores 0 instead of NaN). Cost: one forward (the predictions). NaN: no
    other sample shares the explanation (the probability is undefined)."""

    name = "consistency"
    family = "robustness"
    quantus_name = "Consistency"
    primary = "consistency"
    higher_is_better = True

    def __init__(self, discretise_func: str | None = None, n: int = 5, abs: bool = True, normalise: bool = True,
                 convention: str = "camkit") -> None:
        check_options("convention", convention, CONVENTIONS)
        default = "top_n_sign" if convention == "quantus" else "top_n_sites"
        self.discretise_func = discretise_func or default
        check_options("discretise_func", self.discretise_func, ("top_n_sites", "top_n_sign"))
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.abs, self.normalise, self.convention = int(n), bool(abs), bool(normalise), convention

    def labels(self, flat_maps: Any) -> Any:
        """``(N, n)`` discretised explanations: equal rows = equal explanations."""
        import torch

        if self.discretise_func == "top_n_sign":
            return torch.sign(flat_maps[:, :self.n])
        order = torch.sort(flat_maps, dim=1, descending=True, stable=True).indices[:, :self.n]
        return order.sort(dim=1).values.to(flat_maps.dtype)

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import torch

        a = postprocess(batch.flat_maps().double(), self.normalise, self.abs, self.convention)
        labels = self.labels(a)
        predictions = batch.top1().to(a.device)
        n = a.shape[0]
        same_explanation = (labels[:, None, :] == labels[None, :, :]).all(dim=2)
        same_explanation &= ~torch.eye(n, dtype=torch.bool, device=a.device)
        agree = (same_explanation & (predictions[:, None] == predictions[None, :])).sum(dim=1).double()
        pairs = same_explanation.sum(dim=1).double()
        if self.convention == "quantus":
            return MetricValues({"consistency": agree / (pairs + 1e-9)})
        value = torch.where(pairs > 0, agree / pairs.clamp_min(1), torch.full_like(pairs, float("nan")))
        return MetricValues({"consistency": value})

    def options(self) -> dict[str, Any]:
        return {"discretise_func": self.discretise_func, "n": self.n, "abs": self.abs, "normalise": self.normalise,
                "convention": self.convention}


METRICS = (Continuity, LocalLipschitzEstimate, MaxSensitivity, AvgSensitivity, Consistency, RelativeInputStability,
           RelativeOutputStability, RelativeRepresentationStability, SensitivityMax)
