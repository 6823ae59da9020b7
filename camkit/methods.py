"""The interface of a CAM method: a provider of weights for the contraction.

A method is registered by a plugin::

    @camkit.hookimpl
    def camkit_register_methods():
        return {"mycam": MyCam}          # a class (or factory) called with the method options

and implements ``weights(ctx) -> Weights``. ``ctx`` (a ``WeightContext``) gives the captured
features, their layout, the targets, the logits, the gradients of the target scores (computed on
demand, only if the method sets ``needs_gradients = True``), their Hessian times the features (only with
``needs_hessian = True``) and a way to run the model again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping

from camkit.layout import Layout

if TYPE_CHECKING:  # importing camkit stays torch-free
    from torch import Tensor, nn

    from camkit.explainer import CamResult, Explainer


@dataclass(frozen=True)
class Weights:
    """What a method returns: one kind of weights for ``class_activation_map``
    (``"channel"`` (N, [K,] C), ``"site"`` (features' shape, or N, K, ...) or ``"class"`` (K, C)), or
    ``"map"``: the map itself, (N, [K,] *sites), for the few methods whose map is no sum over channels
    (KPCA-CAM's kernel projection, LeGrad's attention gradients); it skips the contraction only."""

    kind: str
    tensor: Tensor

    KINDS = ("channel", "site", "class", "map")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"weights kind {self.kind!r}: expected one of {', '.join(self.KINDS)}")

    @property
    def keyword(self) -> str:
        """The keyword of ``class_activation_map`` taking these weights."""
        return f"{self.kind}_weights"

    @classmethod
    def channel(cls, tensor: Tensor) -> "Weights":
        return cls("channel", tensor)

    @classmethod
    def site(cls, tensor: Tensor) -> "Weights":
        return cls("site", tensor)

    @classmethod
    def per_class(cls, tensor: Tensor) -> "Weights":
        return cls("class", tensor)

    @classmethod
    def direct_map(cls, tensor: Tensor) -> "Weights":
        return cls("map", tensor)


@dataclass
class WeightContext:
    """Everything a method may use. ``targets`` is ``(N,)`` or ``(N, K)`` class ids."""

    model: nn.Module
    inputs: Tensor
    layer: str
    layout: Layout
    features: Tensor
    logits: Any  # the scored output: (N, classes) logits for a classifier, any output for callable targets
    targets: Tensor | None  # None for a callable target without class ids
    input_size: Mapping[str, int]
    input_layout: Layout
    classifier: Callable[[int], Tensor]
    forward: Callable[..., Any]  # forward(inputs, owners=None): the scored output for a new primary input
    _gradient_fn: Callable[[], Tensor] | None = field(default=None, repr=False)
    _gradients: Tensor | None = field(default=None, repr=False)
    _hessian_fn: Callable[[], Tensor] | None = field(default=None, repr=False)
    target_scores: Tensor | None = None  # (N,) or (N, K): what the maps explain (a logit for class ids)
    classifier_bias: Callable[[], Tensor | None] = lambda: None  # the bias of ``classifier``'s layer, if known
    other_inputs: bool = False  # the model takes other per-sample inputs beside ``inputs`` (see ``forward``)
    # how ``features`` were read from the layer's output (e.g. tokens folded into a grid), or None
    feature_transform: Callable[[Any], Any] | None = None
    # methods that record the core's forward (``records_forward``): what ``recording`` gave, and the
    # scored output with its autograd graph back to the inputs
    recorded: Any = None
    scored: Any = None

    @property
    def target_shape(self) -> tuple[int, ...]:
        """``(N,)`` for one target per sample, ``(N, K)`` for K (class ids or any other target)."""
        scores = self.target_scores if self.target_scores is not None else self.targets
        assert scores is not None, "a WeightContext has target scores or class ids"
        return tuple(scores.shape)

    @property
    def multi_target(self) -> bool:
        return len(self.target_shape) == 2

    @property
    def gradients(self) -> Any:
        """d score[target] / d features: the features' shape, or ``(N, K, ...)`` for K targets."""
        if self._gradients is None:
            if self._gradient_fn is None:
                raise RuntimeError("this method did not declare needs_gradients = True")
            self._gradients = self._gradient_fn()
        return self._gradients

    @property
    def hessian_times_features(self) -> Any:
        """H f, with H the Hessian of score[target] with respect to the features: a Hessian-vector product,
        shaped like ``gradients`` (zero where the score is linear in the features)."""
        if self._hessian_fn is None:
            raise RuntimeError("this method did not declare needs_hessian = True")
        return self._hessian_fn()

    def sum_over_sites(self, tensor: Any, keep_targets: bool | None = None) -> Any:
        """Sum a features-shaped (or ``(N, K, ...)``) tensor over its site axes -> ``(N, [K,] C)``."""
        has_k = self.multi_target if keep_targets is None else keep_targets
        letters = "nk" + self.layout.subscripts.replace("n", "") if has_k else self.layout.subscripts
        import torch

        return torch.einsum(f"{letters}->{'nk' if has_k else 'n'}c", tensor)

    def as_site_tensor(self, channel_values: Any) -> Any:
        """View ``(N, C)`` or ``(N, K, C)`` values so they broadcast against the features
        (or against ``(N, K, ...)`` gradients): size 1 on every site axis."""
        has_k = channel_values.ndim == 3
        letters = self.layout.letters if not has_k else "NK" + self.layout.letters.replace("N", "")
        shape = [1] * len(letters)
        shape[letters.index("N")] = channel_values.shape[0]
        shape[letters.index("C")] = channel_values.shape[-1]
        if has_k:
            shape[1] = channel_values.shape[1]
        return channel_values.reshape(shape)

    @property
    def num_sites(self) -> int:
        n = 1
        for letter in self.layout.site_letters:
            n *= int(self.features.shape[self.layout.letters.index(letter)])
        return n

    def expand_features(self) -> Any:
        """The features shaped like ``gradients``: as they are for one target per sample,
        ``(N, 1, ...)`` (batch first) for K targets."""
        if not self.multi_target:
            return self.features
        return self.features.movedim(self.layout.batch_axis, 0).unsqueeze(1)


class HeadMismatchWarning(UserWarning):
    """The model's logits are not global average pooling of the features followed by the classifier
    CAM uses (e.g. a LayerNorm or a ReLU between them), so CAM maps are not the class evidence."""


class CamMethod:
    """Base class of methods. Subclasses set ``name``, ``needs_gradients`` and implement ``weights``."""

    name: str = ""
    description: str = ""  # one line for ``camkit list methods``
    needs_gradients: bool = False
    # second order: the gradients are taken with create_graph=True and ``ctx.hessian_times_features`` is available
    needs_hessian: bool = False
    # runs the model again on perturbed inputs (Score-CAM): refused with eval_mode=False, where the
    # masked batches would update BatchNorm's running statistics
    runs_model: bool = False
    # watches the core's forward, which then records autograd from the input: inside ``recording``,
    # whose value reaches ``weights`` as ``ctx.recorded`` (and the scored output as ``ctx.scored``)
    records_forward: bool = False
    # a wrapper around another method: named "<base>+<name>" (e.g. "gradcam+sess"), built with base=<base>
    wraps: bool = False

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"method {self.name!r} takes no options, got {', '.join(options)}")

    def weights(self, ctx: WeightContext) -> Weights:  # pragma: no cover - interface
        raise NotImplementedError

    def recording(self, model: nn.Module, layer: str, inputs: Tensor) -> ContextManager[Any]:
        """Entered around the core's forward of ``inputs`` when ``records_forward``: hooks or a torch
        function mode that note what the method needs (removed on exit); its value is ``ctx.recorded``."""
        return contextlib.nullcontext()


class InputMapMethod(CamMethod):
    """A method whose maps come from the whole model at the input's resolution (FullGrad's bias gradients,
    guided backpropagation, SESS's sliding windows), not from weighting one layer's features: the
    ``Explainer`` hands it the batch, ``explain(explainer, inputs, targets, topk) -> CamResult``, and its
    options (layer, layout, input_layout, relu, normalize, output_size, reduce, eval_mode, output) are the
    method's to honour (``explainer.finish`` applies the post-processing ones)."""

    def explain(self, explainer: "Explainer", inputs: Any, targets: Any, topk: int | None) -> "CamResult":
        raise NotImplementedError  # pragma: no cover - interface

    def weights(self, ctx: WeightContext) -> Weights:
        raise TypeError(f"{self.name} computes its maps from the whole model: it gives no weights for one layer's "
                        f"features (use it through camkit.explain or an Explainer)")


def method_factory(name: str) -> Callable[..., CamMethod]:
    """The registered factory of the method ``name``, called with the method's options. ``"<base>+<wrapper>"``
    (``"gradcam+sess"``, ``"gradcam++" + "+sess"``) is the wrapper method (``wraps = True``) around ``<base>``:
    ``wrapper(base="<base>", **options)``. An unknown name is an ``UnknownNameError`` listing close matches."""
    import functools

    from camkit.plugin_manager import lookup, registry

    methods = registry("methods")
    base, plus, wrapper = name.rpartition("+")
    if name not in methods and plus and base and getattr(methods.get(wrapper), "wraps", False):
        method_factory(base)  # the base must exist too
        return functools.partial(methods[wrapper], base=base)
    return lookup("methods", name)
