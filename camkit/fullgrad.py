"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): the input-gradient term plus the bias-gradient term of
every convolution and batch norm, each made absolute and normalised per sample, summed:

    M_c = sum over channels of  post(|dS_c/dx * x|)  +  sum_l sum over channels of  resample(post(|dS_c/dz_l * b_l|)),

with z_l the output of layer l, b_l its bias (a batch norm's in eval mode: beta - gamma mu / sqrt(var + eps)),
post(t) = (t - min) / max taken over each sample's channels and sites (the authors' code), then the
whole map min-max normalised. Sums over channels are taken before resampling (linear, so equal) and
one backward gives every gradient. An input-resolution map, not a contraction of one layer, so a
function here rather than a weight method.

pytorch-grad-cam's ``FullGrad`` normalises every channel of every layer separately (then sums) and
resizes each channel with OpenCV; the authors resample with ``align_corners=True``, camkit with
``align_corners=False`` like its other maps. Layouts: channels-first 1D/2D/3D convolutional models;
not for models that fold axes into the batch (ST-GCN folds persons), which is an error.
"""

from __future__ import annotations

from typing import Any

from camkit.layout import layout_for_rank

BIAS_TYPES = ("Conv1d", "Conv2d", "Conv3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d")


def _bias(module: Any) -> Any:
    import torch

    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # eval-mode statistics folded into one bias
        norm: Any = module
        return norm.bias - norm.running_mean * norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return module.bias


def _post(t: Any, per_channel: bool = False) -> Any:
    """abs, then per sample (or per sample and channel) minus the minimum, divided by the maximum."""
    t = t.abs()
    keep = 2 if per_channel else 1
    shape = (*t.shape[:keep], *[1] * (t.ndim - keep))
    t = t - t.flatten(keep).amin(keep).view(shape)
    return t / (t.flatten(keep).amax(keep).view(shape) + 1e-6)


def fullgrad(model: Any, inputs: Any, targets: Any = None, *, topk: int | None = None, eval_mode: bool = True,
             per_channel: bool = False) -> Any:
    """FullGrad maps ``(N, *sites)`` (``(N, K, *sites)`` for K targets) at the input's resolution, as a
    ``CamResult`` (``method="fullgrad"``, ``layer`` lists the bias layers used). ``per_channel``:
    normalise every channel separately, pytorch-grad-cam's convention (its maps then agree to ~1e-7)."""
    import torch

    from camkit.contraction import postprocess
    from camkit.explainer import CamResult
    from camkit.guided import input_gradient_pass

    layers = [(name, m) for name, m in model.named_modules()
              if type(m).__name__ in BIAS_TYPES and getattr(m, "bias", None) is not None]
    if isinstance(model, torch.nn.modules.batchnorm._BatchNorm) or not layers:
        raise ValueError(f"model {type(model).__name__} has no convolution or batch norm with a bias: FullGrad "
                         f"has no bias-gradient terms to add")
    layout = layout_for_rank(inputs.ndim)
    outputs: list[Any] = []

    def keep(module: Any, args: Any, out: Any) -> Any:
        outputs.append((module, out))
        return out.clone()  # an in-place op after the layer (ReLU(inplace=True)) must not rewrite `out`

    handles = [m.register_forward_hook(keep) for _, m in layers]
    try:
        with input_gradient_pass(model, inputs, targets, topk, eval_mode) as (x, logits, ids, columns):
            for module, out in outputs:
                if out.shape[0] != x.shape[0] or out.ndim != x.ndim:
                    raise ValueError(f"a {type(module).__name__} outputs {tuple(out.shape)} for inputs "
                                     f"{tuple(x.shape)}: FullGrad needs layers that keep the batch and the site axes")
            tensors = [x] + [out for _, out in outputs]
            per_target = []
            for j in range(columns.shape[1]):
                grads = torch.autograd.grad(logits.gather(1, columns[:, j:j + 1]).sum(), tensors,
                                            retain_graph=j < columns.shape[1] - 1, allow_unused=True)
                per_target.append(_one_target(x, grads, outputs, per_channel))
    finally:
        for handle in handles:
            handle.remove()
    maps = torch.stack(per_target, dim=1) if ids.ndim == 2 else per_target[0]
    letters = ("NK" if ids.ndim == 2 else "N") + layout.site_letters
    maps = postprocess(maps.detach(), letters, layout=layout, relu=False, normalize=True)
    return CamResult(maps=maps, targets=ids, logits=logits.detach(), method="fullgrad",
                     layer=",".join(name for name, _ in layers), layout=str(layout), map_letters=letters)


def _one_target(x: Any, grads: Any, outputs: Any, per_channel: bool) -> Any:
    """``(N, *sites)`` sum of the post-processed input and bias terms for one target."""
    from camkit.kernels import select_kernel

    sizes = {axis: x.shape[axis] for axis in range(2, x.ndim)}
    total = _post(grads[0] * x.detach(), per_channel).sum(dim=1)
    kernel = select_kernel(x)
    for (module, out), g in zip(outputs, grads[1:]):
        if g is None:  # a layer whose output does not reach the logits (e.g. an unused branch)
            continue
        bias = _bias(module).detach().view(1, -1, *[1] * (out.ndim - 2))
        term = _post(g * bias, per_channel).sum(dim=1)  # (N, *layer sites)
        total = total + kernel.resample(term, {axis - 1: s for axis, s in sizes.items()})
    return total
