"""Helpers for methods that run the model again with the target layer's output replaced or that
need gradients the core does not hand out (a rerun with a hook of their own)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from camkit.methods import WeightContext


@contextlib.contextmanager
def replaced_output(ctx: WeightContext, replace: Callable[[Any], Any]) -> Iterator[None]:
    """Inside the block, every forward of ``ctx.model`` hands the layers after ``ctx.layer`` the tensor
    ``replace(output)`` instead of the layer's output. The hook is removed on exit, also on errors."""
    from camkit.capture import CapturePoint, resolve_layer

    point = CapturePoint.parse(ctx.model, ctx.layer)
    _, module = resolve_layer(ctx.model, point.module)
    if point.kind == "output":
        handle = module.register_forward_hook(lambda m, i, output: replace(output))
    elif point.kind == "input":
        def replace_input(module: Any, args: Any, kwargs: Any) -> Any:
            if args:  # the first positional argument, else the first keyword, as the capture reads it
                return (replace(args[0]), *args[1:]), kwargs
            key = next(iter(kwargs))
            return args, {**kwargs, key: replace(kwargs[key])}

        handle = module.register_forward_pre_hook(replace_input, with_kwargs=True)
    else:
        raise ValueError(f"this method replaces the features in a rerun, which needs a module's output or input; "
                         f"the features here are {point} (a function call): pass layer=<module name>")
    try:
        yield
    finally:
        handle.remove()


def feature_view(ctx: WeightContext, output: Any, method: str) -> Any:
    """The layer's ``output`` as the features see it (through ``ctx.feature_transform``), checked against
    ``ctx.features`` (any batch size: a rerun may hold another number of samples)."""
    view = ctx.feature_transform(output) if ctx.feature_transform is not None else output
    batch = ctx.layout.batch_axis
    if view.ndim != ctx.features.ndim or any(a != b for i, (a, b) in enumerate(zip(view.shape, ctx.features.shape))
                                             if i != batch):
        raise ValueError(f"{method} reruns the model and reads layer {ctx.layer!r}, whose output "
                         f"{tuple(output.shape)} gives features {tuple(view.shape)}, not shaped like "
                         f"{tuple(ctx.features.shape)}")
    return view


class NotAnElementMap(ValueError):
    """A ``feature_transform`` that computes values: features cannot be written back through it."""


def source_index(ctx: WeightContext, output: Any, method: str) -> Any:
    """For every feature element, the flat index of the element of the layer's ``output`` it is read from:
    ``feature_transform`` applied to the positions, and checked on ``output`` itself. Only a transform that
    selects and rearranges elements (slicing, reshaping, permuting: camkit's token grids) has one."""
    import torch

    transform = ctx.feature_transform
    assert transform is not None
    positions = torch.arange(output.numel(), device=output.device).view(output.shape)
    wrong = (f"{method} writes features back into the output of layer {ctx.layer!r}, which needs a "
             f"feature_transform that only selects and rearranges elements (slicing, reshape, permute)")
    try:
        index = transform(positions)
    except (RuntimeError, TypeError) as exc:
        raise NotAnElementMap(f"{wrong}; applied to element positions it failed: {exc}") from exc
    selects = index.dtype == torch.long and index.numel() > 0 and 0 <= int(index.min()) \
        and int(index.max()) < output.numel() and torch.equal(output.flatten()[index], transform(output))
    if not selects:
        raise NotAnElementMap(f"{wrong}; {getattr(transform, '__qualname__', transform)!r} computes new values")
    return index


@contextlib.contextmanager
def replaced_features(ctx: WeightContext, replace: Callable[[Any], Any], method: str) -> Iterator[None]:
    """Inside the block, every forward of ``ctx.model`` hands the layers after ``ctx.layer`` its output with
    the features (as ``ctx.features`` sees them) replaced by ``replace(features)``: through
    ``feature_transform`` and back (see ``source_index``) when there is one."""
    indices: dict[tuple[Any, ...], Any] = {}  # one check per output shape

    def swap(output: Any) -> Any:
        features = replace(feature_view(ctx, output, method))
        if ctx.feature_transform is None:
            return features
        key = (tuple(output.shape), output.device)
        if key not in indices:
            indices[key] = source_index(ctx, output, method)
        written = output.flatten().clone()
        written[indices[key].flatten()] = features.flatten().to(written.dtype)
        return written.view_as(output)

    with replaced_output(ctx, swap):
        yield


def rerun_gradients(ctx: WeightContext, inputs: Any, score: Callable[[Any], Any], method: str) -> tuple[Any, Any]:
    """``(features, gradients)`` of the target layer for ``inputs``: one extra forward and one backward per
    column of ``score(logits)`` (``(N,)`` or ``(N, K)``), with a hook of this method's own, for gradients
    of scores the core does not compute (other classes, noisy inputs). Gradients are shaped like
    ``ctx.gradients`` (the features' shape, or ``(N, K, ...)`` batch first), through ``feature_transform``
    as the core's are. Never touches ``.grad``."""
    import torch

    seen: dict[str, Any] = {}
    view = ctx.feature_transform or (lambda tensor: tensor)

    def leaf(output: Any) -> Any:
        feature_view(ctx, output, method)
        seen["f"] = output.detach().clone().requires_grad_(True)
        torch.set_grad_enabled(True)  # autograd records only the layers after the target (restored below)
        return seen["f"].clone()

    with torch.inference_mode(False), torch.no_grad(), replaced_output(ctx, leaf):
        x = inputs.clone() if inputs.is_inference() else inputs
        try:
            scores = score(ctx.forward(x))
        finally:
            torch.set_grad_enabled(False)
        with torch.enable_grad():
            if scores.ndim == 1:
                return view(seen["f"].detach()), view(torch.autograd.grad(scores.sum(), seen["f"])[0])
            k = scores.shape[1]
            grads = [view(torch.autograd.grad(scores[:, j].sum(), seen["f"], retain_graph=j < k - 1)[0])
                     .movedim(ctx.layout.batch_axis, 0) for j in range(k)]
    return view(seen["f"].detach()), torch.stack(grads, dim=1)


def gap_linear_head(ctx: WeightContext, method: str, trust: bool = False) -> tuple[Any, Any] | None:
    """``(W, pooled)``: the classifier matrix ``(classes, C)`` and the features' mean over sites ``(N, C)``
    (float32) when the logits are global average pooling of the layer followed by one linear layer W, else
    None. Unless ``trust``, one forward with every channel rescaled by a random factor in (-1, 1) checks it: for
    GAP + linear the logits move by exactly (pooled' - pooled) W^T (a ``feature_transform`` that computes
    values cannot carry the rescaled features back: None). With ``trust`` a model without a classifier is
    an error."""
    import torch

    from camkit_plugins.methods.cam import DEFAULT_HEAD_TOLERANCE, HEAD_TOLERANCE

    f = ctx.features
    try:
        matrix = ctx.classifier(f.shape[ctx.layout.channel_axis]).to(f.device).float()
    except ValueError:
        if trust:
            raise
        return None
    pooled = ctx.sum_over_sites(f.float(), keep_targets=False) / ctx.num_sites
    if trust:
        return matrix, pooled
    shape = [1] * f.ndim
    shape[ctx.layout.channel_axis] = f.shape[ctx.layout.channel_axis]
    generator = torch.Generator(device=f.device).manual_seed(0)
    # signed: a head linear only where the pooled values are positive (GAP -> ReLU -> linear) fails too
    factors = (2 * torch.rand(shape, generator=generator, device=f.device, dtype=torch.float32) - 1).to(f.dtype)
    try:
        with replaced_features(ctx, lambda features: features * factors, method):
            moved = ctx.forward(ctx.inputs).float()
    except NotAnElementMap:  # the rescaled features cannot reach the head: no closed form, the general path
        return None
    predicted = ctx.logits.float() + (pooled * (factors.flatten().float() - 1)) @ matrix.T
    tolerance = HEAD_TOLERANCE.get(str(f.dtype).removeprefix("torch."), DEFAULT_HEAD_TOLERANCE)
    scale = float(ctx.logits.float().abs().amax()) + 1e-6
    return (matrix, pooled) if bool((moved - predicted).abs().amax() <= tolerance * scale) else None


def require_logit_targets(ctx: WeightContext, method: str) -> None:
    """Methods that score their reruns by the class logit explain the logit: a target that scores something
    else (``ClassProbability``, ``ClassReST``) would be silently replaced, so it is an error."""
    import torch

    if ctx.targets is None or ctx.target_scores is None:
        raise ValueError(f"{method} scores its reruns by a class's logit: it needs class-id targets")
    ids = ctx.targets if ctx.multi_target else ctx.targets[:, None]
    logits = ctx.logits.gather(1, ids)
    if not torch.equal(ctx.target_scores.reshape(logits.shape).to(logits.dtype), logits):
        raise ValueError(f"{method} scores its reruns by the class logit, but the target here scores something "
                         f"else (e.g. ClassProbability); pass class ids (ints, topk, 'all', ClassScore) or use a "
                         f"method that follows any target, such as 'gradcam++'")
