"""Guided Backpropagation (Springenberg et al., ICLR workshop 2015) and Guided Grad-CAM (Selvaraju et al.,
ICCV 2017).

Guided backpropagation is the gradient of the target score with respect to the input where every
ReLU passes back only positive gradients at positive inputs:

    dL/dx_in = [x_in > 0] * relu(dL/dx_out)        (instead of [x_in > 0] * dL/dx_out).

Guided Grad-CAM multiplies it by the (upsampled, normalised) Grad-CAM map of the same target:
``guided(x) * M_c`` broadcast over the input's channels. Both are input-resolution maps, not a
contraction of one layer's features.

ReLUs are found as ``torch.nn.ReLU`` / ``ReLU6`` modules (hooks, removed on exit; the model is not
modified; a ReLU6's own backward keeps its upper cut-off); a model whose ReLUs are all functional
(``F.relu``) is an error, since no ReLU would be guided. pytorch-grad-cam's ``GuidedBackpropReLUModel``
replaces only ``nn.ReLU``: on ReLU6 networks (MobileNet, EfficientNet-Lite) it returns the plain input
gradient wherever no ``nn.ReLU`` is.

The functions ``guided_backprop`` / ``guided_gradcam`` return the gradients per input channel; the
methods ``guided-backprop`` / ``guided-gradcam`` (``camkit.explain(..., "guided-gradcam")``, ``camkit
explain --method``, ``camkit bench``) reduce them to one map per target: the sum over input channels of
their absolute values (``channels="abs-sum"``, captum's "absolute_value" picture) or their maximum
(``"abs-max"``, Simonyan et al.'s saliency map).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from camkit.hookspecs import hookimpl
from camkit.layout import Layout, layout_for_rank
from camkit.methods import InputMapMethod

if TYPE_CHECKING:
    from camkit.explainer import CamResult, Explainer

CHANNEL_REDUCTIONS = ("abs-sum", "abs-max")


@dataclass
class GuidedResult:
    """``maps`` ``(N, C_in, *sites)`` or ``(N, K, C_in, *sites)`` for K targets, shaped like the input
    (``map_letters`` names the axes, e.g. ``"NCHW"`` / ``"NKCHW"``); ``targets``, ``logits`` and
    ``scores`` (the targets' scores) as for ``CamResult``."""

    maps: Any
    targets: Any
    logits: Any
    map_letters: str
    scores: Any = None
    layer: str = "input"  # Guided Grad-CAM: the layer of its map


@contextlib.contextmanager
def input_gradient_pass(model: Any, inputs: Any, targets: Any, topk: int | None, eval_mode: bool,
                        output: Any = None) -> Iterator[tuple[Any, Any, Any]]:
    """``(x, scored output, target)`` of a forward that records autograd from a copy ``x`` of the inputs (also
    inside the caller's inference_mode); ``target`` is a ``camkit.targets.Target`` whose ``scores`` (N,) or
    (N, K) keep their graph (class ids, a top-k, or a callable target; ``output`` picks what they score)."""
    import torch

    from camkit.adapters import select_output
    from camkit.capture import evaluation_mode
    from camkit.targets import Target

    with torch.inference_mode(False), torch.enable_grad(), evaluation_mode(model, eval_mode):
        x = inputs.detach().clone().requires_grad_(True)
        scored = select_output(model(x), output)
        yield x, scored, Target.resolve(targets, topk, scored)


def score_columns(target: Any) -> Any:
    """The target scores as ``(N, K)`` columns, K >= 1: one gradient pass per column."""
    return target.scores if target.multi else target.scores[:, None]


def _guided_relu() -> Any:
    import torch

    class GuidedReLU(torch.autograd.Function):
        """Identity on a ReLU's (non-negative) output; backward keeps positive gradients at positive sites."""

        @staticmethod
        def forward(ctx: Any, out: Any) -> Any:
            ctx.save_for_backward(out > 0)
            return out.clone()

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (positive,) = ctx.saved_tensors
            return grad.clamp_min(0) * positive

    return GuidedReLU


def guided_backprop(model: Any, inputs: Any, targets: Any = None, *, topk: int | None = None,
                    input_layout: "str | Layout | None" = None, eval_mode: bool = True,
                    output: Any = None) -> GuidedResult:
    """Guided-backpropagation gradients of the target scores with respect to ``inputs`` (layout
    ``input_layout``, default channels-first by rank: ``NCL``, ``NCHW``, ``NCDHW``). ``targets`` as for
    ``camkit.explain`` (class ids, ``topk``, or a callable target); ``output`` picks the scored part of a
    non-tensor model output."""
    import torch

    relus = [m for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))]
    if not relus:
        raise ValueError(f"model {type(model).__name__} has no torch.nn.ReLU (or ReLU6) modules: guided "
                         f"backpropagation needs them to guide (functional F.relu calls cannot be hooked)")
    guided = _guided_relu()
    layout = Layout.parse(input_layout) if input_layout is not None else layout_for_rank(inputs.ndim)
    layout.check(inputs.shape, "inputs")
    handles = [m.register_forward_hook(lambda mod, args, out: guided.apply(out)) for m in relus]
    try:
        with input_gradient_pass(model, inputs, targets, topk, eval_mode, output) as (x, scored, target):
            columns = score_columns(target)
            grads = [torch.autograd.grad(columns[:, j].sum(), x, retain_graph=j < columns.shape[1] - 1)[0]
                     for j in range(columns.shape[1])]
    finally:
        for handle in handles:
            handle.remove()
    scores, logits = target.scores.detach(), scored.detach()
    batch_axis, letters = layout.batch_axis, layout.letters
    if not target.multi:
        return GuidedResult(grads[0], target.class_ids, logits, letters, scores)
    stacked = torch.stack([g.movedim(batch_axis, 0) for g in grads], dim=1)
    return GuidedResult(stacked, target.class_ids, logits, "NK" + letters.replace("N", ""), scores)


def guided_gradcam(model: Any, inputs: Any, layer: Any = None, targets: Any = None, layout: Any = None, *,
                   topk: int | None = None, method: str = "gradcam", **options: Any) -> GuidedResult:
    """Guided backpropagation times the Grad-CAM (or ``method``) map at the input's resolution,
    broadcast over the input's channels. ``options`` as for ``Explainer``."""
    from camkit.explainer import Explainer

    return _guided_gradcam(Explainer(model, method, layer, layout, **options), inputs, targets, topk)


def _guided_gradcam(cam_explainer: "Explainer", inputs: Any, targets: Any, topk: int | None) -> GuidedResult:
    """Guided backpropagation times the map of ``cam_explainer`` (which must give input-sized maps) for the
    targets that map chose; a callable target is kept for both."""
    cam = cam_explainer(inputs, targets, topk=topk)
    input_layout = cam_explainer.input_layout or Layout.parse("NC" + Layout.parse(cam.layout).site_letters)
    chosen = targets if callable(targets) and not hasattr(targets, "shape") else cam.targets
    guided = guided_backprop(cam_explainer.model, inputs, chosen, input_layout=input_layout,
                             eval_mode=cam_explainer.eval_mode, output=cam_explainer.output)
    # the map's letters are the input's without C: put a size-1 channel axis where the input has it
    channel = guided.map_letters.index("C")
    if cam.map_letters.replace("K", "") != guided.map_letters.replace("K", "").replace("C", ""):
        raise ValueError(f"the {cam.method} map has axes {cam.map_letters}, the input {guided.map_letters}: they "
                         f"do not line up (reduce= or a feature transform changed the sites)")
    return GuidedResult(guided.maps * cam.maps.unsqueeze(channel), cam.targets, cam.logits, guided.map_letters,
                        guided.scores, cam.layer)


def reduce_channels(result: GuidedResult, how: str) -> tuple[Any, str]:
    """One map per target from per-channel gradients: ``"abs-sum"`` or ``"abs-max"`` over the input channels."""
    axis = result.map_letters.index("C")
    magnitude = result.maps.abs()
    maps = magnitude.sum(dim=axis) if how == "abs-sum" else magnitude.amax(dim=axis)
    return maps, result.map_letters.replace("C", "")


class _GuidedMethod(InputMapMethod):
    def __init__(self, channels: str = "abs-sum") -> None:
        if channels not in CHANNEL_REDUCTIONS:
            raise ValueError(f"channels must be one of {', '.join(CHANNEL_REDUCTIONS)}, got {channels!r}")
        self.channels = channels

    def _finish(self, explainer: "Explainer", found: GuidedResult, inputs: Any) -> "CamResult":
        maps, letters = reduce_channels(found, self.channels)
        return explainer.finish(maps, letters, explainer.input_layout_of(inputs), targets=found.targets,
                                logits=found.logits, target_scores=found.scores, layer=found.layer)


class GuidedBackprop(_GuidedMethod):
    """``guided-backprop``: guided-backpropagation gradients, reduced over the input channels (``channels``)."""

    name = "guided-backprop"
    description = "input gradient through ReLUs that pass back only positive gradients (per-channel |.| summed)"

    def explain(self, explainer: "Explainer", inputs: Any, targets: Any, topk: int | None) -> "CamResult":
        found = guided_backprop(explainer.model, inputs, targets, topk=topk,
                                input_layout=explainer.input_layout_of(inputs), eval_mode=explainer.eval_mode,
                                output=explainer.output)
        return self._finish(explainer, found, inputs)


class GuidedGradCam(_GuidedMethod):
    """``guided-gradcam``: guided backpropagation times the Grad-CAM map (``base``: another method's map) of
    the explainer's layer, reduced over the input channels (``channels``)."""

    name = "guided-gradcam"
    description = "guided backpropagation times the Grad-CAM map (per-channel |.| summed)"

    def __init__(self, channels: str = "abs-sum", base: str = "gradcam") -> None:
        super().__init__(channels)
        self.base = base

    def explain(self, explainer: "Explainer", inputs: Any, targets: Any, topk: int | None) -> "CamResult":
        # the map at the input's own size and sites, normalised: what the guided gradients are multiplied with
        cam = explainer.with_method(self.base, relu=True, normalize=True, upsample=True, output_size=None, reduce="")
        found = _guided_gradcam(cam, inputs, targets, topk)
        return self._finish(explainer, found, inputs)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"guided-backprop": GuidedBackprop, "guided-gradcam": GuidedGradCam}
