"""Guided Backpropagation (Springenberg et al. 2015) and Guided Grad-CAM (Selvaraju et al. 2017).

Guided backpropagation is the gradient of the target score with respect to the input where every
ReLU passes back only positive gradients at positive inputs:

    dL/dx_in = [x_in > 0] * relu(dL/dx_out)        (instead of [x_in > 0] * dL/dx_out).

Guided Grad-CAM multiplies it by the (upsampled, normalised) Grad-CAM map of the same target:
``guided(x) * M_c`` broadcast over the input's channels. Both are input-resolution maps, not a
contraction of one layer's features, so they are functions here rather than weight methods.

ReLUs are found as ``torch.nn.ReLU`` / ``ReLU6`` modules (hooks, removed on exit; the model is not
modified; a ReLU6's own backward keeps its upper cut-off);
a model whose ReLUs are all functional (``F.relu``) is an error, since no ReLU would be guided.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

from camkit.layout import Layout, layout_for_rank


@dataclass
class GuidedResult:
    """``maps`` ``(N, C_in, *sites)`` or ``(N, K, C_in, *sites)`` for K targets, shaped like the input
    (``map_letters`` names the axes, e.g. ``"NCHW"`` / ``"NKCHW"``); ``targets`` and ``logits`` as for
    ``CamResult``."""

    maps: Any
    targets: Any
    logits: Any
    map_letters: str


@contextlib.contextmanager
def input_gradient_pass(model: Any, inputs: Any, targets: Any, topk: int | None,
                        eval_mode: bool) -> Iterator[tuple[Any, Any, Any, Any]]:
    """``(x, logits, ids, columns)`` of a forward that records autograd from a copy ``x`` of the inputs
    (also inside the caller's inference_mode); ``columns`` is ``(N, K)`` class ids, K >= 1."""
    import torch

    from camkit.capture import evaluation_mode
    from camkit.explainer import resolve_targets

    with torch.inference_mode(False), torch.enable_grad(), evaluation_mode(model, eval_mode):
        x = inputs.detach().clone().requires_grad_(True)
        logits = model(x)
        ids = resolve_targets(targets, logits.detach(), topk)
        yield x, logits, ids, ids.unsqueeze(1) if ids.ndim == 1 else ids


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
                    input_layout: "str | Layout | None" = None, eval_mode: bool = True) -> GuidedResult:
    """Guided-backpropagation gradients of the target scores with respect to ``inputs`` (layout
    ``input_layout``, default channels-first by rank: ``NCL``, ``NCHW``, ``NCDHW``)."""
    import torch

    relus = [m for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))]
    if not relus:
        raise ValueError(f"model {type(model).__name__} has no torch.nn.ReLU (or ReLU6) modules: guided "
                         f"backpropagation needs them to guide (functional F.relu calls cannot be hooked)")
    guided = _guided_relu()
    handles = [m.register_forward_hook(lambda mod, args, out: guided.apply(out)) for m in relus]
    layout = Layout.parse(input_layout) if input_layout is not None else layout_for_rank(inputs.ndim)
    layout.check(inputs.shape, "inputs")
    try:
        with input_gradient_pass(model, inputs, targets, topk, eval_mode) as (x, logits, ids, columns):
            grads = [torch.autograd.grad(logits.gather(1, columns[:, j:j + 1]).sum(), x,
                                         retain_graph=j < columns.shape[1] - 1)[0] for j in range(columns.shape[1])]
    finally:
        for handle in handles:
            handle.remove()
    batch_axis, letters = layout.batch_axis, layout.letters
    if ids.ndim == 1:
        return GuidedResult(grads[0], ids, logits.detach(), letters)
    stacked = torch.stack([g.movedim(batch_axis, 0) for g in grads], dim=1)
    return GuidedResult(stacked, ids, logits.detach(), "NK" + letters.replace("N", ""))


def guided_gradcam(model: Any, inputs: Any, layer: Any = None, targets: Any = None, layout: Any = None, *,
                   topk: int | None = None, method: str = "gradcam", **options: Any) -> GuidedResult:
    """Guided backpropagation times the Grad-CAM (or ``method``) map at the input's resolution,
    broadcast over the input's channels. ``options`` as for ``Explainer``."""
    from camkit.explainer import Explainer

    cam = Explainer(model, method, layer, layout, **options)(inputs, targets, topk=topk)
    input_layout = Layout.parse(options.get("input_layout") or "NC" + Layout.parse(cam.layout).site_letters)
    guided = guided_backprop(model, inputs, cam.targets, input_layout=input_layout,
                             eval_mode=options.get("eval_mode", True))
    # the map's letters are the input's without C: put a size-1 channel axis where the input has it
    maps = cam.maps
    channel = guided.map_letters.index("C")
    if cam.map_letters.replace("K", "") != guided.map_letters.replace("K", "").replace("C", ""):
        raise ValueError(f"the {method} map has axes {cam.map_letters}, the input {guided.map_letters}: they do not "
                         f"line up (reduce= or a feature transform changed the sites)")
    return GuidedResult(guided.maps * maps.unsqueeze(channel), cam.targets, cam.logits, guided.map_letters)
