"""The public entry point: ``camkit.explain`` and the reusable ``Explainer``."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from camkit.capture import FeatureCapture, capture_features, evaluation_mode, resolve_layer, trace_target_layer
from camkit.contraction import _check_finite, class_activation_map, postprocess
from camkit.layout import Layout, default_input_layout, layout_for_rank
from camkit.methods import CamMethod, WeightContext
from camkit.plugin_manager import get_plugin_manager, lookup


@dataclass
class CamResult:
    """Maps and what produced them. Everything stays a torch tensor on the input's device.

    ``maps``: ``(N, *sites)`` for one target per sample, ``(N, K, *sites)`` for top-k / all classes;
    ``map_letters`` names those axes (``"NHW"``, ``"NKHW"``, ``"NTV"`` ...). ``targets``: ``(N,)`` or
    ``(N, K)`` class ids. ``logits``: the model's output ``(N, num_classes)``."""

    maps: Any
    targets: Any
    logits: Any
    method: str
    layer: str
    layout: str
    map_letters: str

    @property
    def probabilities(self) -> Any:
        return self.logits.float().softmax(dim=-1)

    @property
    def scores(self) -> Any:
        """Probability of each target class, shaped like ``targets``."""
        probs = self.probabilities
        idx = self.targets if self.targets.ndim == 2 else self.targets[:, None]
        out = probs.gather(1, idx)
        return out if self.targets.ndim == 2 else out[:, 0]

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def to(self, device: Any) -> "CamResult":
        return replace(self, maps=self.maps.to(device), targets=self.targets.to(device), logits=self.logits.to(device))

    def cpu(self) -> "CamResult":
        return self.to("cpu")

    def numpy(self) -> Any:
        """The maps as a float32 numpy array (on the CPU)."""
        return self.maps.detach().float().cpu().numpy()


def resolve_targets(targets: Any, logits: Any, topk: int | None = None) -> Any:
    """Class ids ``(N,)`` or ``(N, K)`` from ``targets`` (None: predicted; int; one id per sample;
    ``"all"``; an ``(N, K)`` array) or ``topk``."""
    import torch

    n, num_classes = logits.shape
    device = logits.device
    if topk is not None:
        if targets is not None:
            raise ValueError("pass either targets or topk, not both")
        if not 1 <= int(topk) <= num_classes:
            raise ValueError(f"topk={topk} must be between 1 and the number of classes ({num_classes})")
        return logits.topk(int(topk), dim=1).indices
    if targets is None:
        return logits.argmax(dim=1)
    if isinstance(targets, str):
        if targets != "all":
            raise ValueError(f"targets={targets!r}: the only named choice is 'all'")
        return torch.arange(num_classes, device=device).expand(n, num_classes)
    if isinstance(targets, bool):
        raise TypeError("targets must be class ids, not a bool")
    if isinstance(targets, int):
        ids = torch.full((n,), targets, dtype=torch.long, device=device)
    else:
        ids = torch.as_tensor(targets, device=device)
        if ids.is_inference():  # made under inference_mode: a plain copy can take part in autograd
            ids = ids.clone()
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"targets must be integer class ids, got dtype {ids.dtype}")
        ids = ids.long()
        if ids.ndim == 0:
            ids = ids.expand(n)
        if ids.ndim not in (1, 2) or ids.shape[0] != n:
            raise ValueError(f"got {ids.shape[0] if ids.ndim else 1} target(s) of shape {tuple(ids.shape)} for a batch "
                             f"of {n}: pass one class id per sample, (N, K) ids, an int, topk=k or 'all'")
    bad = (ids < 0) | (ids >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"class id(s) {sorted(set(ids[bad].tolist()))} out of range: the model has {num_classes} classes")
    return ids


def _classifier_finder(model: Any, explicit: Any) -> Any:
    def classifier(num_channels: int, num_classes: int | None = None) -> Any:
        if explicit is not None:
            weights = explicit
        else:
            weights = get_plugin_manager().hook.camkit_find_classifier(model=model, num_channels=num_channels)
        if weights is None:
            raise ValueError(f"model {type(model).__name__} has no recognisable classifier for CAM: expected a Linear "
                             f"(or 1x1 conv) with {num_channels} inputs after global average pooling; "
                             f"pass classifier_weights=... or use a gradient method such as 'gradcam'")
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
    return classifier


class Explainer:
    """Class activation maps for one model, method and layer, reusable across batches.

    Used as a context manager it keeps its hook registered for the block (removed on exit);
    otherwise every call registers and removes it. ``explainer(inputs, targets=None, topk=None)``
    returns a ``CamResult``.

    Options: ``layer`` (module or dotted name; None finds the layer feeding global pooling),
    ``layout`` of its features (guessed from the rank when None), ``input_layout`` of the inputs,
    ``relu``, ``normalize`` (per-map min-max), ``upsample`` (resample continuous axes to the
    input's size) or ``output_size`` (``{"H": 224, "W": 224}``), ``reduce`` (reducible axes to
    average, e.g. ``"M"``), ``classifier_weights`` (for CAM on models with an unusual head),
    ``method_options`` (passed to the method), ``eval_mode`` (run in eval mode; the model's own
    train/eval flags are restored after), ``feature_transform`` (a re-indexing applied to the
    captured features and to their gradients before the contraction, e.g. ``tokens_to_grid``
    for vision transformers; ``layout`` then describes its output)."""

    def __init__(
        self,
        model: Any,
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
    ) -> None:
        self.model = model
        if isinstance(method, str):
            self.method_name = method
            self.method = lookup("methods", method)(**dict(method_options or {}))
        else:
            self.method_name = getattr(method, "name", type(method).__name__)
            self.method = method
        self.layer_name: str | None = resolve_layer(model, layer)[0] if layer is not None else None
        self.layout = Layout.parse(layout) if layout is not None else None
        self.input_layout = Layout.parse(input_layout) if input_layout is not None else None
        self.relu, self.normalize, self.upsample = relu, normalize, upsample
        self.output_size = dict(output_size) if output_size else None
        self.reduce = reduce
        self.classifier = _classifier_finder(model, classifier_weights)
        self.eval_mode = eval_mode
        self.feature_transform = feature_transform
        self._stack: contextlib.ExitStack | None = None
        self._capture: FeatureCapture | None = None
        self._family_asked = False

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

    def _target_layer(self, inputs: Any) -> str:
        if not self._family_asked and (self.layer_name is None or self.layout is None):
            self._family_asked = True
            # the model's family (or the module feeding global pooling) names a layer and its layout;
            # an explicitly named layer keeps that layout when it is the same layer (e.g. NCTVM)
            found = get_plugin_manager().hook.camkit_find_target_layer(model=self.model)
            if found is not None:
                name, layout = found
                name = resolve_layer(self.model, name)[0]
                if self.layer_name is None:
                    self.layer_name = name
                if self.layout is None and layout is not None and name == self.layer_name:
                    self.layout = Layout.parse(layout)
        if self.layer_name is None:
            name, rank = trace_target_layer(self.model, inputs[:1])
            self.layer_name = name
            if self.layout is None:
                self.layout = layout_for_rank(rank)
        return self.layer_name

    def _capture_for_call(self, stack: contextlib.ExitStack, layer: str) -> FeatureCapture:
        grad = self.method.needs_gradients
        if self._stack is None:
            return stack.enter_context(capture_features(self.model, layer, grad_from_here=grad))
        if self._capture is None:  # each call restores its own grad mode; this block must not
            self._capture = self._stack.enter_context(capture_features(self.model, layer, restore_grad_mode=False))
        self._capture.grad_from_here = grad
        self._capture.features, self._capture.calls, self._capture.armed = None, 0, True
        return self._capture

    # -- one batch
    def __call__(self, inputs: Any, targets: Any = None, *, topk: int | None = None) -> CamResult:
        import torch

        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor batch, got {type(inputs).__name__}")
        if inputs.ndim < 2 or inputs.shape[0] == 0:
            raise ValueError(f"inputs of shape {tuple(inputs.shape)} are not a non-empty batch")
        layer = self._target_layer(inputs)
        needs_grad = self.method.needs_gradients
        grad_mode = torch.is_grad_enabled()
        with contextlib.ExitStack() as stack:
            stack.enter_context(evaluation_mode(self.model, self.eval_mode))
            capture = self._capture_for_call(stack, layer)
            if needs_grad:  # a caller's inference_mode would forbid the autograd graph after the layer
                stack.enter_context(torch.inference_mode(False))
            try:
                with torch.no_grad() if needs_grad else torch.inference_mode():
                    logits = self.model(inputs)
            finally:
                torch.set_grad_enabled(grad_mode)
                # later forwards (Score-CAM's masked inputs, the caller's own between calls) pass untouched
                capture.armed = False
            if capture.calls != 1:
                raise RuntimeError(f"layer {layer!r} was called {capture.calls} times in one forward pass; "
                                   f"a CAM needs a layer that runs exactly once (not a shared module)")
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                raise TypeError(f"the model must return logits of shape (N, classes), got "
                                f"{getattr(logits, 'shape', type(logits).__name__)}; wrap it to return a tensor")
            raw_features = capture.features
            features = self.feature_transform(raw_features) if self.feature_transform else raw_features
            layout = self.layout or layout_for_rank(features.ndim)
            layout.check(features.shape, f"features of layer {layer!r}")
            n_feat = features.shape[layout.batch_axis]
            if n_feat != inputs.shape[0]:
                raise ValueError(f"features of layer {layer!r} have batch size {n_feat} on axis N of layout {layout} "
                                 f"but the inputs have {inputs.shape[0]}; if the model folds axes into the batch, "
                                 f"choose a layer (or layout) that exposes them")
            _check_finite(features.detach(), f"features of layer {layer!r}")
            ids = resolve_targets(targets, logits.detach(), topk)
            input_layout = self.input_layout or default_input_layout(layout)
            input_layout.check(inputs.shape, "inputs")
            input_sizes = input_layout.sizes(inputs.shape)
            ctx = WeightContext(
                model=self.model, inputs=inputs, layer=layer, layout=layout, features=features.detach(),
                logits=logits.detach(), targets=ids, input_size=input_sizes, input_layout=input_layout,
                classifier=functools.partial(self.classifier, num_classes=logits.shape[-1]),
                forward=self._plain_forward,
                _gradient_fn=(lambda: _target_gradients(logits, raw_features, ids, layout, layer,
                                                                 self.feature_transform)) if needs_grad else None,
            )
            with torch.no_grad() if needs_grad else torch.inference_mode():
                weights = self.method.weights(ctx)
                multi = ids.ndim == 2
                if weights.kind == "class" and not (multi and weights.tensor.shape[0] == ids.shape[1]):
                    raise ValueError("class weights (K, C) are for K targets shared by every sample")
                maps = class_activation_map(ctx.features, layout, **{f"{weights.kind}_weights": weights.tensor})
                letters = ("NK" if multi else "N") + layout.site_letters
                size = self._size(letters, layout, input_sizes)
                maps = postprocess(maps, letters, layout=layout, relu=self.relu, normalize=self.normalize,
                                   size=size, reduce=self.reduce)
                letters = "".join(ch for ch in letters if ch not in self.reduce)
        return CamResult(maps=maps, targets=ids, logits=logits.detach(), method=self.method_name, layer=layer,
                         layout=str(layout), map_letters=letters)

    def _size(self, letters: str, layout: Layout, input_sizes: Mapping[str, int]) -> dict[str, int] | None:
        if self.output_size is not None:
            return self.output_size
        if not self.upsample:
            return None
        return {ch: input_sizes[ch] for ch in layout.continuous_letters
                if ch in input_sizes and ch in letters and ch not in self.reduce}

    def _plain_forward(self, inputs: Any) -> Any:
        """The model's logits for ``inputs`` (used by perturbation methods such as Score-CAM)."""
        return self.model(inputs)


def _target_gradients(logits: Any, features: Any, ids: Any, layout: Layout, layer: str,
                      transform: Callable[[Any], Any] | None = None) -> Any:
    """Gradients of the target logits with respect to the captured features (never ``.backward``)."""
    import torch

    if logits.grad_fn is None:
        raise RuntimeError(f"the logits do not depend on layer {layer!r}: is it part of the forward path?")

    def grad_of(column: Any, retain: bool) -> Any:
        try:
            with torch.enable_grad():
                score = logits.gather(1, column[:, None]).sum()  # samples are independent in eval mode
                return torch.autograd.grad(score, features, retain_graph=retain)[0]
        except RuntimeError as exc:
            if "inplace" in str(exc) or "in-place" in str(exc):
                raise RuntimeError(f"the output of layer {layer!r} is modified in place later in the model "
                                   f"(e.g. ReLU(inplace=True)); choose the layer after that operation") from exc
            raise

    shaped = transform or (lambda g: g)  # gradients follow the features' reshaping
    if ids.ndim == 1:
        return shaped(grad_of(ids, retain=False))
    k = ids.shape[1]
    grads = [shaped(grad_of(ids[:, j], retain=j < k - 1)).movedim(layout.batch_axis, 0) for j in range(k)]
    return torch.stack(grads, dim=1)


def explain(
    model: Any,
    inputs: Any,
    method: str | CamMethod = "cam",
    layer: Any = None,
    targets: Any = None,
    layout: str | Layout | None = None,
    *,
    topk: int | None = None,
    **options: Any,
) -> CamResult:
    """Class activation maps of ``model`` on the batch ``inputs`` in one call.

    ``method``: a registered name ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
    "scorecam", "eigencam", or a plugin's). ``targets``: None (predicted class), an int, one id per
    sample, an (N, K) array or "all"; or ``topk=k``. Other options as for ``Explainer``."""
    return Explainer(model, method, layer, layout, **options)(inputs, targets, topk=topk)


def available_methods() -> Sequence[str]:
    """Names of the registered CAM methods."""
    from camkit.plugin_manager import registry

    return list(registry("methods"))


def tokens_to_grid(height: int, width: int, prefix_tokens: int = 1) -> Callable[[Any], Any]:
    """A ``feature_transform`` for token features ``(N, L, C)``: drop the ``prefix_tokens`` (class /
    register tokens) and fold the rest into a ``(N, height, width, C)`` grid (layout ``NHWC``)."""

    def transform(tokens: Any) -> Any:
        n, length, channels = tokens.shape
        if length - prefix_tokens != height * width:
            raise ValueError(f"{length} tokens minus {prefix_tokens} prefix token(s) do not fill a "
                             f"{height}x{width} grid")
        return tokens[:, prefix_tokens:].reshape(n, height, width, channels)

    return transform
