"""LeGrad (Bousselham et al. 2024, "LeGrad: an explainability method for vision transformers via feature
formation sensitivity"), for vision transformers: how sensitive the target score is to every attention
weight. With A^l the attention probabilities of block l ((heads, T, T) per sample, softmax over keys),

    E^l = (1/h) sum_heads relu(dS_c / dA^l),    M(s) = (1/L) sum_l r(E^l)[p + s],

where r takes the query rows (``rows="mean"``: the mean over all T query tokens, as the authors' code does;
``rows="class"``: the class token's row alone) and s runs over the T - p patch tokens after the p prefix
tokens (class, registers), folded into the patch grid of the captured features (the token grid camkit
finds for transformers). ``layers`` picks blocks by index in call order (default: all).

The attention probabilities are caught during the explained forward itself (``records_forward``: the
core then records autograd from the input; one backward per target follows) as the outputs of every
``softmax`` call giving (N, heads, T, T) or (N heads, T, T): ``nn.Softmax``, ``F.softmax`` and
``Tensor.softmax`` alike. ``nn.MultiheadAttention`` (torchvision's ViT) is asked for its weights during that
forward (``need_weights=True``, by hooks removed after it), which makes it compute them with an explicit
softmax instead of its fused fast path; the tensor it multiplies the values with is taken. A fused
``F.scaled_dot_product_attention`` (timm's default, Hugging Face's "sdpa") never forms the probabilities:
during that forward it runs written out (``explicit_attention``: softmax(q k^T * scale + mask) v, the same
values up to rounding), so its probabilities exist and are taken.

By default every block's gradient is that of the model's output score S_c, which needs nothing
model-specific. The paper (and torchcam) scores each block's own output tokens through the head,
S_c^l = P(z^l)_c, and differentiates S_c^l with respect to A^l only: pass that projection P, from a block's
output tokens (N, T, C) to logits (N, classes), as ``score_projection`` (e.g. for timm
``lambda z: model.forward_head(model.norm(z))``). The blocks are the siblings of the captured layer (the
located default: the input of the last block). The map is no sum over channels of the features, so the
method returns it directly (``Weights.direct_map``)."""

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights

FUSED_ATTENTION = ("_native_multi_head_attention",)  # scaled_dot_product_attention is written out instead
SDPA_ARGUMENTS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
ROWS = ("mean", "class")


@dataclass
class AttentionRecord:
    """What one forward showed: every attention matrix a softmax produced (call order), the fused attention
    kernels called instead, and the outputs of the watched blocks."""

    attention: list[Any] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)
    block_outputs: list[Any] = field(default_factory=list)

    def check(self) -> None:
        if self.fused or not self.attention:  # a fused block would silently drop out of the mean over blocks
            why = (f"it calls {sorted(set(self.fused))}, fused kernels that never form them" if self.fused
                   else "no softmax (or scaled_dot_product_attention) in its forward gave (N, heads, T, T) "
                        "matrices")
            raise ValueError(f"legrad needs the attention probabilities of every block, but {why}; it is for "
                             f"vision transformers whose attention is a softmax, F.scaled_dot_product_attention "
                             f"or nn.MultiheadAttention")


@contextlib.contextmanager
def watching_attention(model: Any, samples: int, blocks: Sequence[Any] = ()) -> Iterator[AttentionRecord]:
    """Inside the block, forwards of ``model`` (with autograd on) note into the record every (N, heads, T, T)
    or (N heads, T, T) softmax output, the probabilities of every ``F.scaled_dot_product_attention`` (run
    written out, ``explicit_attention``), ``nn.MultiheadAttention``'s weights (asked for by temporary hooks)
    and the outputs of ``blocks``; every hook is removed on exit."""
    import torch
    from torch.overrides import TorchFunctionMode

    from camkit.capture import function_name

    record = AttentionRecord()

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = function_name(func)
            if name == "scaled_dot_product_attention":  # fused kernels never form the probabilities
                attention, out = explicit_attention(**dict(zip(SDPA_ARGUMENTS, args)), **(kwargs or {}))
                record.attention.append(attention)
                return out
            out = func(*args, **(kwargs or {}))
            if name == "softmax" and is_attention(out, samples):
                record.attention.append(out)
            elif name in FUSED_ATTENTION:
                record.fused.append(name)
            return out

    with contextlib.ExitStack() as stack:
        for module in model.modules():
            if isinstance(module, torch.nn.MultiheadAttention):
                stack.callback(module.register_forward_pre_hook(_with_weights, with_kwargs=True).remove)
                stack.callback(module.register_forward_hook(
                    lambda m, i, out: record.attention.append(_used_weights(out))).remove)
        for block in blocks:
            stack.callback(block.register_forward_hook(
                lambda m, i, out: record.block_outputs.append(out[0] if isinstance(out, tuple) else out)).remove)
        stack.enter_context(Watch())
        yield record


def explicit_attention(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                       is_causal: bool = False, scale: float | None = None,
                       enable_gqa: bool = False) -> tuple[Any, Any]:
    """``(probabilities, output)`` of ``F.scaled_dot_product_attention`` written out: softmax(q k^T * scale
    + mask) and its product with v (the same values up to rounding; no dropout: explanations are of the
    model in eval mode)."""
    import math

    import torch

    if dropout_p:
        raise ValueError(f"legrad explains the model in eval mode, but scaled_dot_product_attention was called "
                         f"with dropout_p={dropout_p}; keep eval_mode=True")
    if enable_gqa and key.shape[-3] != query.shape[-3]:  # grouped-query attention: heads share keys
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
    scores = query @ key.transpose(-2, -1) * (1 / math.sqrt(query.shape[-1]) if scale is None else scale)
    if is_causal:
        allowed = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    attention = scores.softmax(dim=-1)
    return attention, attention @ value


def attention_probabilities(ctx: WeightContext, inputs: Any, blocks: Sequence[Any] = ()) -> tuple[Any,
                                                                                                 AttentionRecord]:
    """``(output, record)``: a forward of ``inputs`` of its own with autograd on, watched (for a LeGrad
    called outside the core, which otherwise records its forward)."""
    import torch

    n = inputs.shape[ctx.input_layout.batch_axis]
    with torch.inference_mode(False), torch.enable_grad(), watching_attention(ctx.model, n, blocks) as record:
        x = inputs.clone() if inputs.is_inference() else inputs
        if x.is_floating_point():  # the graph reaches every block even with frozen parameters
            x = x.detach().requires_grad_(True)
        output = ctx.forward(x)
    return output, record


def sibling_blocks(model: Any, layer: str) -> list[Any]:
    """The children of the container holding the captured layer's module (a ViT's blocks)."""
    from camkit.capture import CapturePoint, resolve_layer

    point = CapturePoint.parse(model, layer)
    if point.kind not in ("input", "output") or "." not in point.module:
        raise ValueError(f"legrad with score_projection scores the outputs of the transformer blocks holding the "
                         f"features; the features here are {point}: use the located default (a block's input)")
    return list(resolve_layer(model, point.module.rsplit(".", 1)[0])[1].children())


def is_attention(tensor: Any, samples: int) -> bool:
    """Square attention matrices over the last two axes: (N, heads, T, T) or (N heads, T, T)."""
    shape = getattr(tensor, "shape", ())
    if len(shape) < 3 or shape[-1] != shape[-2]:
        return False
    return (len(shape) == 4 and shape[0] == samples) or (len(shape) == 3 and shape[0] % samples == 0)


def _with_weights(module: Any, args: Any, kwargs: Any) -> tuple[Any, Any]:
    """``nn.MultiheadAttention`` called with ``need_weights=True, average_attn_weights=False`` (positional
    slots 4 and 6, or keywords): it then forms the probabilities with an explicit softmax."""
    args, kwargs = list(args), dict(kwargs)
    for slot, key, value in ((4, "need_weights", True), (6, "average_attn_weights", False)):
        if len(args) > slot:
            args[slot] = value
        else:
            kwargs[key] = value
    return tuple(args), kwargs


def _used_weights(output: Any) -> Any:
    """The (N heads, T, T) probabilities ``nn.MultiheadAttention`` multiplied the values with: its returned
    (N, heads, T, T) weights are a view of them, and only the viewed tensor lies on the score's path."""
    weights = output[1]
    return weights._base if weights._base is not None else weights


class LeGrad(CamMethod):
    name = "legrad"
    description = "ViTs: positive gradients of the score w.r.t. every block's attention, on the patches"
    needs_gradients = False
    records_forward = True  # the attention is caught during the core's forward: no forward of its own

    def __init__(self, rows: str = "mean", layers: Sequence[int] | None = None,
                 score_projection: Callable[[Any], Any] | None = None) -> None:
        if rows not in ROWS:
            raise ValueError(f"rows {rows!r}: expected one of {', '.join(ROWS)}")
        if score_projection is not None and not callable(score_projection):
            raise TypeError("score_projection must map a block's output tokens to logits")
        self.rows = rows
        self.layers = None if layers is None else [int(i) for i in layers]
        self.score_projection = score_projection

    def recording(self, model: Any, layer: str, inputs: Any) -> Any:
        blocks = sibling_blocks(model, layer) if self.score_projection is not None else ()
        return watching_attention(model, inputs.shape[0], blocks)

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        if ctx.targets is None or getattr(ctx.logits, "ndim", 0) != 2:
            raise ValueError("legrad differentiates a class's logit: it needs a classifier and class-id targets")
        per_block = self.score_projection is not None
        if ctx.recorded is not None:
            output, record = ctx.scored, ctx.recorded
        else:
            blocks = sibling_blocks(ctx.model, ctx.layer) if per_block else ()
            output, record = attention_probabilities(ctx, ctx.inputs, blocks)
        record.check()
        attention, outputs = record.attention, record.block_outputs
        if per_block and len(outputs) != len(attention):
            raise ValueError(f"legrad with score_projection pairs each block with its attention, but {len(outputs)} "
                             f"blocks ran and {len(attention)} attention matrices were formed")
        if self.layers is not None:
            try:
                attention = [attention[i] for i in self.layers]
                outputs = [outputs[i] for i in self.layers] if per_block else outputs
            except IndexError:
                raise ValueError(f"layers {self.layers}: the model has {len(attention)} attention blocks") from None
        tokens = {a.shape[-1] for a in attention}
        patches = ctx.num_sites
        prefix = next(iter(tokens)) - patches
        if len(tokens) != 1 or prefix < 1:
            raise ValueError(f"legrad maps attention over {sorted(tokens)} tokens onto the {patches} sites of the "
                             f"features: it needs one token count, a class token first and the patch tokens as "
                             f"the sites (the token grid camkit finds for transformers, not layout='NLC')")
        ids = ctx.targets if ctx.multi_target else ctx.targets[:, None]
        with torch.inference_mode(False), torch.enable_grad():
            scores = output.float().gather(1, ids.clone())
            maps = []
            for j in range(ids.shape[1]):
                if per_block:  # S_c^l = P(z^l)_c against A^l alone: each gradient stays inside its block
                    block_scores = [self.score_projection(z).float().gather(1, ids[:, j:j + 1].clone()).sum()
                                    for z in outputs]
                    grads = tuple(torch.autograd.grad(s, a, retain_graph=True, allow_unused=True)[0]
                                  for s, a in zip(block_scores, attention))
                else:
                    grads = torch.autograd.grad(scores[:, j].sum(), attention, retain_graph=j < ids.shape[1] - 1,
                                                allow_unused=True)
                relevance = 0
                for g, a in zip(grads, attention):
                    g = torch.zeros_like(a) if g is None else g.detach()
                    e = g.float().clamp_min(0).unflatten(0, (ids.shape[0], -1)).flatten(1, -3).mean(dim=1)  # heads
                    relevance = relevance + (e.mean(dim=1) if self.rows == "mean" else e[:, 0])
                maps.append(relevance[:, prefix:] / len(attention))
        layout = ctx.layout
        sites = [ctx.features.shape[layout.letters.index(ch)] for ch in layout.site_letters]
        found = torch.stack(maps, dim=1).view(ids.shape[0], ids.shape[1], *sites).to(ctx.features.device)
        return Weights.direct_map(found if ctx.multi_target else found[:, 0])


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"legrad": LeGrad}
