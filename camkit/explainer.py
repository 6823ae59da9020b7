"""The public entry point: ``camkit.explain`` and the reusable ``Explainer``."""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from camkit.adapters import ModelInputs, describe, select_output
from camkit.capture import CapturePoint, FeatureCapture, capture_features, evaluation_mode
from camkit.contraction import _check_finite, class_activation_map, postprocess
from camkit.layout import Layout, layout_for_rank
from camkit.locate import FeatureSource, fold_tokens, input_layout_for, input_sizes_for
from camkit.methods import CamMethod, InputMapMethod, WeightContext, Weights, method_factory
from camkit.plugin_manager import UnknownNameError, get_plugin_manager
from camkit.targets import Target, resolve_targets  # noqa: F401  (resolve_targets: public name)

if TYPE_CHECKING:  # importing camkit stays torch-free
    import numpy as np
    from torch import Tensor, nn


@dataclass
class CamResult:
    """Maps and what produced them. Everything stays a torch tensor on the input's device.

    ``maps``: ``(N, *sites)`` for one target per sample, ``(N, K, *sites)`` for top-k / all classes;
    ``map_letters`` names those axes (``"NHW"``, ``"NKHW"``, ``"NTV"`` ...). ``targets``: ``(N,)`` or
    ``(N, K)`` class ids (None for a callable target without class ids). ``logits``: the model's
    (selected) output, ``(N, num_classes)`` for a classifier. ``target_scores``: what the maps explain,
    the target's raw score per map (a logit for class ids)."""

    maps: Tensor
    targets: Tensor | None
    logits: Any  # a tensor for classifiers; the selected model output in general
    method: str
    layer: str
    layout: str
    map_letters: str
    target_scores: Tensor | None = None

    @property
    def probabilities(self) -> Tensor:
        return self.logits.float().softmax(dim=-1)

    @property
    def scores(self) -> Tensor | None:
        """Probability of each target class, shaped like ``targets``; for a callable target without
        class ids, its scores (``target_scores``)."""
        if self.targets is None:
            return self.target_scores
        probs = self.probabilities
        idx = self.targets if self.targets.ndim == 2 else self.targets[:, None]
        out = probs.gather(1, idx)
        return out if self.targets.ndim == 2 else out[:, 0]

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def to(self, device: Any) -> "CamResult":
        def move(value: Any) -> Any:
            return value.to(device) if hasattr(value, "to") else value

        return replace(self, maps=self.maps.to(device), targets=move(self.targets), logits=move(self.logits),
                       target_scores=move(self.target_scores))

    def cpu(self) -> "CamResult":
        return self.to("cpu")

    def numpy(self) -> "np.ndarray":
        """The maps as a float32 numpy array (on the CPU)."""
        return self.maps.detach().float().cpu().numpy()

    # -- pictures (camkit.display): overlays, a labelled grid, Jupyter's rich display
    def overlays(self, images: Any = None, alpha: float = 0.5, graph: Any = None) -> list:
        """One PIL picture per map (``camkit.display.overlays``): each layout's natural picture."""
        from camkit.display import overlays

        return overlays(self, images, alpha, graph)

    def show(self, images: Any = None, alpha: float = 0.5, classes: Sequence[str] | None = None,
             columns: int | None = None, graph: Any = None) -> Any:
        """A grid of the overlays titled ``"<class> <probability>"`` (``camkit.display.show``)."""
        from camkit.display import show

        return show(self, images, alpha, classes, columns, graph)

    def __repr__(self) -> str:
        from camkit.display import describe

        return describe(self)

    def _repr_png_(self) -> bytes:
        from camkit.display import result_gallery

        return result_gallery(self)._repr_png_()

    def _repr_html_(self) -> str:
        from camkit.display import result_gallery

        return result_gallery(self)._repr_html_()


def _check_classifier(weights: Any, num_channels: int, num_classes: int | None) -> Any:
    if weights is None:
        raise ValueError(f"no recognisable classifier for CAM: expected a Linear (or 1x1 conv) with {num_channels} "
                         f"inputs run after global average pooling; pass classifier_weights=... or use a gradient "
                         f"method such as 'gradcam'")
    if weights.ndim != 2 or weights.shape[1] != num_channels:
        raise ValueError(f"classifier weights of shape {tuple(weights.shape)} do not match the "
                         f"{num_channels} channels of the features")
    if num_classes is not None and weights.shape[0] != num_classes:
        # e.g. GAP -> Linear -> activation -> Linear: the first Linear is no class matrix
        raise ValueError(f"classifier weights of shape {tuple(weights.shape)} give {weights.shape[0]} scores but the "
                         f"model outputs {num_classes}: the head after pooling is not a single linear layer, so "
                         f"CAM does not apply; pass classifier_weights=... or use a gradient method such as "
                         f"'gradcam'")
    return weights.detach()


_LOCATED: "weakref.WeakKeyDictionary[Any, dict[Any, FeatureSource]]" = weakref.WeakKeyDictionary()
_LOCATED_LOCK = threading.Lock()


def family_source(model: Any) -> FeatureSource | None:
    """The feature source a registered model family gives ``model``, if one matches."""
    from camkit.plugin_manager import registry

    for family in registry("model_families").values():
        if family.matches(model):
            return family.locate(model)
    return None


def locate_features(model: Any, batch: ModelInputs) -> FeatureSource:
    """Where the CAM features of ``model`` come from, for inputs like ``batch``: a model family's answer,
    else one traced forward of the first sample (cached per model, module set and input signature)."""
    signature = (tuple(id(m) for m in model.modules()),
                 tuple((k, tuple(t.shape[1:]), t.dtype, t.device.type) for k, t in batch.named_tensors().items()),
                 batch.primary)
    with _LOCATED_LOCK:
        cached = _LOCATED.get(model, {}).get(signature)
    if cached is not None:
        return cached
    import torch

    # outside inference mode (a caller's, or a method's asking for the classifier): the tracer follows
    # in-place changes by version counters, which inference tensors do not have; a gathered sample is a copy
    with torch.inference_mode(False):
        one = batch.select(torch.zeros(1, dtype=torch.long, device=batch.tensor.device))
        source = get_plugin_manager().hook.camkit_locate_features(model=model, inputs=one)
    if source is None:  # pragma: no cover - the built-in generic locator always answers
        raise ValueError(f"no plugin could locate the features of {type(model).__name__}; pass layer=...")
    with _LOCATED_LOCK:
        _LOCATED.setdefault(model, {})[signature] = source
    return source


class Explainer:
    """Class activation maps for one model, method and layer, reusable across batches.

    Used as a context manager it keeps its hook registered for the block (removed on exit);
    otherwise every call registers and removes it. ``explainer(inputs, targets=None, topk=None)``
    returns a ``CamResult``.

    Options: ``layer`` (a module, a dotted name (its output), ``"name:input"`` (its input) or a
    ``CapturePoint``; None: the tensor global average pooling receives, found by data flow), ``layout``
    of its features (found with the layer, else guessed from the rank), ``input_layout`` of the primary
    input, ``relu``, ``normalize`` (per-map min-max), ``upsample`` (resample continuous axes to the
    input's size) or ``output_size`` (``{"H": 224, "W": 224}``), ``reduce`` (reducible axes to average,
    e.g. ``"M"``), ``classifier_weights`` (for CAM on models with an unusual head), ``method_options``
    (passed to the method), ``eval_mode`` (run in eval mode; the model's own train/eval flags are
    restored after), ``feature_transform`` (a re-indexing applied to the captured features and their
    gradients, e.g. ``tokens_to_grid`` for vision transformers; found automatically for token models),
    ``output`` (which part of a non-tensor model output the targets score: a key, attribute, index or
    callable) and ``primary_input`` (for models taking several inputs: the index or key of the one whose
    first axis is the batch and whose size maps are resampled to; default the first tensor)."""

    def __init__(
        self,
        model: nn.Module,
        method: str | CamMethod = "cam",
        layer: Any = None,
        layout: str | Layout | None = None,
        *,
        input_layout: str | Layout | None = None,
        relu: bool = True,
        normalize: bool = True,
        upsample: bool = True,
        output_size: Mapping[str, int] | None = None,
        reduce: str = "",
        classifier_weights: Any = None,
        method_options: Mapping[str, Any] | None = None,
        eval_mode: bool = True,
        feature_transform: Callable[[Any], Any] | None = None,
        output: Any = None,
        primary_input: int | str | None = None,
    ) -> None:
        import torch

        if isinstance(model, torch.jit.ScriptModule):
            raise TypeError("a TorchScript model cannot be explained: TorchScript modules take no forward hooks, "
                            "which capture the features; use the eager model (or a torch.export archive, "
                            "torch.export.unflatten(...))")
        from camkit.families import adapt_model

        self.model = model = adapt_model(model)  # e.g. an Ultralytics YOLO object: its network, scored outputs
        self.method_name, self.method = self._method(method, method_options)
        if not eval_mode and getattr(self.method, "runs_model", False):
            raise ValueError(f"{self.method_name} runs the model on masked inputs; with eval_mode=False those "
                             f"forwards would update BatchNorm's running statistics and change the model: keep "
                             f"eval_mode=True")
        self.point = CapturePoint.parse(model, layer) if layer is not None else None
        self.layout = Layout.parse(layout) if layout is not None else None
        self.input_layout = Layout.parse(input_layout, channels=False) if input_layout is not None else None
        self.relu, self.normalize, self.upsample = relu, normalize, upsample
        self.output_size = dict(output_size) if output_size else None
        self.reduce = reduce
        self.classifier_weights = classifier_weights
        self.eval_mode = eval_mode
        self.feature_transform = feature_transform
        self.output = output
        self.primary_input = primary_input
        self._source: FeatureSource | None = None
        self._stack: contextlib.ExitStack | None = None
        self._capture: FeatureCapture | None = None

    # -- hooks kept for a block
    def __enter__(self) -> "Explainer":
        if self._stack is not None:
            raise RuntimeError("this Explainer is already active")
        self._stack = contextlib.ExitStack()
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack, self._capture = self._stack, None, None
        if stack is not None:
            stack.close()

    @property
    def layer_name(self) -> str | None:
        return str(self.point) if self.point is not None else None

    def with_method(self, method: str | CamMethod, method_options: Mapping[str, Any] | None = None,
                    **settings: Any) -> "Explainer":
        """A new (closed) explainer with this one's model, layer and options but ``method`` (and any of the
        post-processing ``settings``: relu, normalize, upsample, output_size, reduce), for methods built on
        another method's maps (Guided Grad-CAM, SESS)."""
        other = copy.copy(self)
        other._stack = other._capture = None
        other.method_name, other.method = self._method(method, method_options)
        unknown = set(settings) - {"relu", "normalize", "upsample", "output_size", "reduce"}
        if unknown:
            raise TypeError(f"with_method takes post-processing settings only, got {', '.join(sorted(unknown))}")
        for name, value in settings.items():
            setattr(other, name, dict(value) if name == "output_size" and value else value)
        return other

    @staticmethod
    def _method(method: str | CamMethod, options: Mapping[str, Any] | None) -> tuple[str, CamMethod]:
        if isinstance(method, str):
            factory = method_factory(method)
            _check_method_options(method, factory, options or {})
            return method, factory(**dict(options or {}))
        if options:
            raise TypeError("method options go with a method name, not with a method object")
        return getattr(method, "name", type(method).__name__), method

    def input_layout_of(self, inputs: Any) -> Layout:
        """The layout of the primary input for an ``InputMapMethod``: as given, else the one a model family's
        features imply (``NCTVM`` for ST-GCN), else ``input_layout_for``'s (waveforms ``NL``, HF clips ``NTCHW``)."""
        if self.input_layout is not None:
            return self.input_layout
        family = family_source(self.model)
        return input_layout_for(self.model, inputs, family.layout if family is not None else None)

    def finish(self, maps: Any, map_letters: str, input_layout: Layout, *, targets: Any, logits: Any,
               target_scores: Any, layer: str) -> CamResult:
        """The ``CamResult`` of an ``InputMapMethod``'s maps on the input's sites (``map_letters`` the input's
        without C, e.g. ``"NHW"`` / ``"NKHW"``): ReLU, reduction, resampling to ``output_size`` and
        normalisation as this explainer's options say."""
        maps = postprocess(maps, map_letters, layout=input_layout, relu=self.relu, normalize=self.normalize,
                           size=self.output_size, reduce=self.reduce)
        kept = "".join(ch for ch in map_letters if ch not in self.reduce)
        return CamResult(maps=maps, targets=targets, logits=logits, method=self.method_name, layer=layer,
                         layout=str(input_layout), map_letters=kept, target_scores=target_scores)

    # -- one batch, as named steps
    def __call__(self, inputs: Any, targets: Any = None, *, topk: int | None = None) -> CamResult:
        import torch

        if isinstance(self.method, InputMapMethod):  # maps from the whole model, not from one layer
            if not isinstance(inputs, torch.Tensor):
                raise ValueError(f"{self.method_name} computes its maps on the sites of one input tensor; got "
                                 f"{describe(inputs)} (models taking several inputs need a method that weights "
                                 f"one layer's features, such as 'gradcam')")
            return self.method.explain(self, inputs, targets, topk)
        batch = ModelInputs.of(inputs, self.primary_input)
        point, layout, transform = self._where(batch)
        needs_grad = self.method.needs_gradients
        records = getattr(self.method, "records_forward", False)
        with contextlib.ExitStack() as stack:
            if needs_grad or records:  # a caller's inference_mode would forbid the autograd graph
                stack.enter_context(torch.inference_mode(False))
            stack.enter_context(evaluation_mode(self.model, self.eval_mode))
            capture = self._capture_for_call(stack, point)
            run = _requiring_grad(batch) if records else batch
            with self.method.recording(self.model, str(point), run.tensor) if records \
                    else contextlib.nullcontext() as recorded:
                output = capture.run(lambda: run(self.model), grad_from_here=needs_grad, record=records)
            scored = select_output(output, self.output)
            layout, transform = self._view(capture.features, layout, transform, batch)
            features, raw = self._features(capture, layout, transform, batch)
            target = self._targets(targets, topk, scored, grad=needs_grad)
            ctx = self._context(batch, features, raw, scored, target, layout, transform, str(point))
            if records:
                ctx.recorded, ctx.scored = recorded, scored
            try:
                with torch.no_grad() if needs_grad else torch.inference_mode():
                    weights = self._weights(ctx, target)
                    maps = self._maps(ctx, weights, target)
            finally:
                if records:  # an open Explainer keeps its capture: not the recorded graph with it
                    capture.features = None
        return CamResult(maps=maps, targets=target.class_ids, logits=_detached(scored), method=self.method_name,
                         layer=str(point), layout=str(layout), target_scores=target.scores.detach(),
                         map_letters=layout.map_letters(target.multi, self.reduce))

    def _where(self, batch: ModelInputs) -> tuple[CapturePoint, Layout | None, Callable[[Any], Any] | None]:
        """The capture point, its layout and feature transform: as given, else located by data flow. An
        explicit layer costs no extra forward: only a model family may name its layout."""
        point, layout, transform = self.point, self.layout, self.feature_transform
        if point is None:
            source = self._located(batch)
            return source.point, layout or source.layout, transform or source.transform
        if layout is None and transform is None:
            family = family_source(self.model)
            if family is not None and family.point == point:
                return point, family.layout, family.transform
        return point, layout, transform

    def _located(self, batch: ModelInputs) -> FeatureSource:
        if self._source is None:
            self._source = locate_features(self.model, batch)
        return self._source

    def _capture_for_call(self, stack: contextlib.ExitStack, point: CapturePoint) -> FeatureCapture:
        if self._stack is None:
            return stack.enter_context(capture_features(self.model, point))
        if self._capture is None or self._capture.point != point:
            self._capture = self._stack.enter_context(capture_features(self.model, point, restore_grad_mode=False))
        return self._capture

    @staticmethod
    def _view(raw: Any, layout: Layout | None, transform: Callable[[Any], Any] | None,
              batch: ModelInputs) -> tuple[Layout, Callable[[Any], Any] | None]:
        """The layout (and transform) of captured features: as given, tokens of an image folded into its
        patch grid, else the channels-first layout of their rank."""
        if layout is not None:
            return layout, transform
        if transform is None and raw.ndim == 3 and batch.tensor.ndim in (4, 5):  # a picture's or a clip's tokens
            folded = fold_tokens(raw.shape[1], input_sizes_for(None, batch.tensor))
            if folded is not None:
                return folded[1], folded[0]
        return layout_for_rank((transform(raw) if transform else raw).ndim), transform

    def _features(self, capture: FeatureCapture, layout: Layout, transform: Callable[[Any], Any] | None,
                  batch: ModelInputs) -> tuple[Any, Any]:
        """``(features as the layout sees them, detached; the captured tensor autograd knows)``."""
        raw = capture.features
        features = transform(raw) if transform else raw
        layout.check(features.shape, f"features of {capture.layer_name!r}")
        n_feat = features.shape[layout.batch_axis]
        if n_feat != batch.batch_size:
            raise ValueError(f"features of {capture.layer_name!r} have batch size {n_feat} on axis N of layout "
                             f"{layout} but the inputs have {batch.batch_size}; if the model folds axes into the "
                             f"batch, choose a layer (or layout) that exposes them")
        _check_finite(features.detach(), f"features of {capture.layer_name!r}")
        return features.detach(), raw

    def _targets(self, targets: Any, topk: int | None, scored: Any, grad: bool) -> "Target":
        import torch

        with torch.enable_grad() if grad else contextlib.nullcontext():
            return Target.resolve(targets, topk, scored)

    def _context(self, batch: ModelInputs, features: Any, raw: Any, scored: Any, target: "Target",
                 layout: Layout, transform: Callable[[Any], Any] | None, layer: str) -> WeightContext:
        input_layout = self.input_layout or input_layout_for(self.model, batch.tensor, layout)
        input_layout.check(batch.tensor.shape, "inputs")
        needs_grad = self.method.needs_gradients
        second_order = getattr(self.method, "needs_hessian", False)
        derivatives = functools.cache(lambda: _target_gradients(target, raw, layout, layer, transform, second_order))
        return WeightContext(
            model=self.model, inputs=batch.tensor, layer=layer, layout=layout, features=features,
            logits=_detached(scored), targets=target.class_ids, input_size=input_layout.sizes(batch.tensor.shape),
            input_layout=input_layout,
            classifier=functools.partial(self._classifier, batch=batch, scored=scored, target=target),
            classifier_bias=functools.partial(self._classifier_bias, batch),
            forward=functools.partial(self._plain_forward, batch),
            _gradient_fn=(lambda: derivatives()[0]) if needs_grad else None,
            _hessian_fn=(lambda: derivatives()[1]) if needs_grad and second_order else None,
            target_scores=target.scores.detach(), other_inputs=len(batch.named_tensors()) > 1,
            feature_transform=transform,
        )

    def _weights(self, ctx: WeightContext, target: "Target") -> Weights:
        weights = self.method.weights(ctx)
        if weights.kind == "class" and not (target.multi and weights.tensor.shape[0] == target.scores.shape[1]):
            raise ValueError("class weights (K, C) are for K targets shared by every sample")
        return weights

    def _maps(self, ctx: WeightContext, weights: Weights, target: "Target") -> Any:
        """The contraction, then ReLU, reduction, resampling and normalisation. float16 features are summed
        and post-processed in float32 (no overflow), and normalised maps come back in float16."""
        import torch

        half = ctx.features.dtype == torch.float16
        if weights.kind == "map":  # the method's own map (KPCA-CAM, LeGrad): no contraction
            maps = _checked_direct_map(weights.tensor, ctx, target.multi, self.method_name)
            maps = maps.float() if half else maps
        else:
            maps = class_activation_map(ctx.features, ctx.layout, weights, dtype=torch.float32 if half else None)
        maps = postprocess(maps, ctx.layout.map_letters(target.multi), layout=ctx.layout, relu=self.relu,
                           normalize=self.normalize, size=self._size(ctx.layout, ctx.input_size), reduce=self.reduce)
        return maps.to(ctx.features.dtype) if half and self.normalize else maps

    def _classifier(self, num_channels: int, batch: ModelInputs, scored: Any, target: "Target") -> Any:
        if target.class_ids is None:
            raise ValueError(f"{self.method_name} reads the classifier's rows, so it needs class-id targets (ints, "
                             f"topk, 'all', camkit.targets.ClassScore); for other targets use a gradient method "
                             f"such as 'gradcam'")
        if getattr(scored, "ndim", 0) != 2:
            raise ValueError(f"CAM needs a classifier's (N, classes) logits; the model output is "
                             f"{describe(scored)}: use a gradient method such as 'gradcam' with a callable target")
        weights = self.classifier_weights
        if weights is None:
            weights = self._located(batch).classifier
            if weights is None and self._located(batch).no_classifier:
                raise ValueError(self._located(batch).no_classifier)
        return _check_classifier(weights, num_channels, scored.shape[-1])

    def _classifier_bias(self, batch: ModelInputs) -> Any:
        """The bias of the located classifier (unknown for ``classifier_weights=``)."""
        if self.classifier_weights is not None:
            return None
        bias = self._located(batch).classifier_bias
        return None if bias is None else bias.detach()

    def _size(self, layout: Layout, input_sizes: Mapping[str, int]) -> dict[str, int] | None:
        if self.output_size is not None:
            return self.output_size
        if not self.upsample:
            return None
        return {ch: input_sizes[ch] for ch in layout.continuous_letters if ch in input_sizes and ch not in self.reduce}

    def _plain_forward(self, batch: ModelInputs, inputs: Any, owners: Any = None) -> Any:
        """The scored output for ``inputs`` in place of the primary input (perturbation methods such as
        Score-CAM); other inputs follow ``owners`` (the sample each row comes from)."""
        return select_output(batch.with_primary(inputs, owners)(self.model), self.output)


def _requiring_grad(batch: ModelInputs) -> ModelInputs:
    """``batch`` with a copy of its (floating-point) primary input that requires grad, so the recorded
    graph reaches every layer even when the parameters are frozen."""
    x = batch.tensor
    return batch.with_primary(x.detach().clone().requires_grad_(True)) if x.is_floating_point() else batch


def _check_method_options(name: str, factory: Any, options: Mapping[str, Any]) -> None:
    """An option the method's constructor does not take is a ValueError naming close matches (not a
    TypeError from deep inside), so the command line reports it as a user's mistake."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a factory without a signature: let it check its own options
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [key for key, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in options:
        if key not in known:
            raise UnknownNameError.of(f"{name} option", key, known)


def _detached(value: Any) -> Any:
    from camkit.adapters import detached

    return detached(value)  # also a detector's list of dicts


def _checked_direct_map(maps: Any, ctx: WeightContext, multi: bool, method: str) -> Any:
    """A method's own map, checked against the sites of the features: ``(N, [K,] *sites)``, finite."""
    f, layout = ctx.features, ctx.layout
    sites = tuple(f.shape[layout.letters.index(ch)] for ch in layout.site_letters)
    expected = (f.shape[layout.batch_axis], *ctx.target_shape[1:], *sites)
    if tuple(maps.shape) != expected:
        raise ValueError(f"{method} returned a map of shape {tuple(maps.shape)}; the features {tuple(f.shape)} in "
                         f"layout {layout} with {'K targets' if multi else 'one target'} per sample need {expected}")
    _check_finite(maps, f"maps of {method}")
    return maps


def _target_gradients(target: "Target", features: Any, layout: Layout, layer: str,
                      transform: Callable[[Any], Any] | None = None, second_order: bool = False) -> tuple[Any, Any]:
    """Gradients of the target scores with respect to the captured features (never ``.backward``), and with
    ``second_order`` the Hessian-vector products H f of the same scores (else None)."""
    import torch

    scores = target.scores
    if scores.grad_fn is None:
        raise RuntimeError(f"the target scores do not depend on {layer!r}: is it part of the forward path "
                           f"(not detached before the head)?")

    def grad_of(column: int | None, retain: bool) -> tuple[Any, Any]:
        try:
            with torch.enable_grad():  # samples are independent in eval mode: one sum serves the batch
                score = (scores if column is None else scores[:, column]).sum()
                (grad,) = torch.autograd.grad(score, features, retain_graph=retain or second_order,
                                              create_graph=second_order, allow_unused=True)
                if grad is None or not second_order:
                    return grad, None
                hvp = None
                if grad.requires_grad:  # else the score is linear in the features: H = 0
                    (hvp,) = torch.autograd.grad(grad, features, grad_outputs=features.detach(), retain_graph=retain,
                                                 allow_unused=True)
                return grad.detach(), torch.zeros_like(grad) if hvp is None else hvp
        except RuntimeError as exc:
            if "inplace" in str(exc) or "in-place" in str(exc):
                raise RuntimeError(f"the output of layer {layer!r} is modified in place later in the model "
                                   f"(e.g. ReLU(inplace=True)); choose the layer after that operation") from exc
            raise

    def checked(found: tuple[Any, Any]) -> tuple[Any, Any]:
        if found[0] is None:
            raise RuntimeError(f"the target scores do not depend on the features of {layer!r}: the model detaches "
                               f"them (or does not use them) before the head; choose a layer the scores depend on")
        return found

    shaped = transform or (lambda g: g)  # gradients follow the features' reshaping
    if scores.ndim == 1:
        grad, hvp = checked(grad_of(None, retain=False))
        return shaped(grad), None if hvp is None else shaped(hvp)
    k = scores.shape[1]
    found = [checked(grad_of(j, retain=j < k - 1)) for j in range(k)]
    grads = torch.stack([shaped(g).movedim(layout.batch_axis, 0) for g, _ in found], dim=1)
    if not second_order:
        return grads, None
    return grads, torch.stack([shaped(h).movedim(layout.batch_axis, 0) for _, h in found], dim=1)
