"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): the input-gradient term plus the bias-gradient term of
every convolution and batch norm, each made absolute and normalised per sample, summed:

    M_c = sum over channels of  post(|dS_c/dx * x|)  +  sum_l sum over channels of  resample(post(|dS_c/dz_l * b_l|)),

with z_l the output of layer l, b_l its bias (a batch norm's in eval mode: beta - gamma mu / sqrt(var + eps)),
post(t) = (t - min) / (max + eps) taken over each sample's channels and sites (the authors' code, eps 1e-6),
then the whole map min-max normalised. Sums over channels are taken before resampling (linear, so equal)
and one backward gives every gradient. An input-resolution map, not a contraction of one layer: the
method ``fullgrad`` (``camkit.explain(..., "fullgrad")``, ``camkit explain --method fullgrad``, ``camkit
bench``) and the function ``fullgrad`` compute the same maps.

pytorch-grad-cam's ``FullGrad`` normalises every channel of every layer separately (then sums), adds 1e-7
(``per_channel=True, eps=1e-7`` reproduces it) and resizes each channel with OpenCV; the authors resample
with ``align_corners=True``, camkit with ``align_corners=False`` like its other maps. Layouts:
channels-first 1D/2D/3D convolutional models; not for models that fold axes into the batch (ST-GCN folds
persons), which is an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from camkit.hookspecs import hookimpl
from camkit.layout import layout_for_rank
from camkit.methods import InputMapMethod

if TYPE_CHECKING:
    from camkit.explainer import CamResult, Explainer

BIAS_TYPES = ("Conv1d", "Conv2d", "Conv3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
EPS = 1e-6  # the authors' post-processing; pytorch-grad-cam's scale_cam_image adds 1e-7


def _bias(module: Any) -> Any:
    import torch

    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):  # eval-mode statistics folded into one bias
        norm: Any = module
        return norm.bias - norm.running_mean * norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return module.bias


def _post(t: Any, per_channel: bool = False, eps: float = EPS) -> Any:
    """abs, then per sample (or per sample and channel) minus the minimum, divided by the maximum + eps."""
    t = t.abs()
    keep = 2 if per_channel else 1
    shape = (*t.shape[:keep], *[1] * (t.ndim - keep))
    t = t - t.flatten(keep).amin(keep).view(shape)
    return t / (t.flatten(keep).amax(keep).view(shape) + eps)


def fullgrad(model: Any, inputs: Any, targets: Any = None, *, topk: int | None = None, eval_mode: bool = True,
             per_channel: bool = False, eps: float = EPS, output: Any = None) -> "CamResult":
    """FullGrad maps ``(N, *sites)`` (``(N, K, *sites)`` for K targets) at the input's resolution, as a
    ``CamResult`` (``method="fullgrad"``, ``layer`` lists the bias layers used). ``targets`` as for
    ``camkit.explain`` (class ids, ``topk``, or a callable target; ``output`` picks the scored part of a
    non-tensor output). ``per_channel``: normalise every channel separately, pytorch-grad-cam's convention;
    ``eps``: added to each term's maximum (1e-6, the authors'; 1e-7 is pytorch-grad-cam's)."""
    from camkit.contraction import postprocess

    found = _fullgrad_maps(model, inputs, targets, topk, eval_mode, per_channel, eps, output)
    from camkit.explainer import CamResult

    maps = postprocess(found["maps"], found["map_letters"], layout=found["layout"], relu=False, normalize=True)
    return CamResult(maps=maps, targets=found["targets"], logits=found["logits"], method="fullgrad",
                     layer=found["layer"], layout=str(found["layout"]), map_letters=found["map_letters"],
                     target_scores=found["target_scores"])


def _bias_layers(model: Any) -> list[tuple[str, Any]]:
    import torch

    layers = [(name, m) for name, m in model.named_modules()
              if type(m).__name__ in BIAS_TYPES and getattr(m, "bias", None) is not None]
    if isinstance(model, torch.nn.modules.batchnorm._BatchNorm) or not layers:
        raise ValueError(f"model {type(model).__name__} has no convolution or batch norm with a bias: FullGrad "
                         f"has no bias-gradient terms to add")
    return layers


def _fullgrad_maps(model: Any, inputs: Any, targets: Any, topk: int | None, eval_mode: bool, per_channel: bool,
                   eps: float, output: Any) -> dict[str, Any]:
    """The summed terms (not yet normalised), their letters and layout, and what the result reports."""
    import torch

    from camkit.adapters import detached
    from camkit_plugins.methods.guided import input_gradient_pass, score_columns

    layers = _bias_layers(model)
    layout = layout_for_rank(inputs.ndim)
    outputs: list[Any] = []

    def keep(module: Any, args: Any, out: Any) -> Any:
        outputs.append((module, out))
        return out.clone()  # an in-place op after the layer (ReLU(inplace=True)) must not rewrite `out`

    handles = [m.register_forward_hook(keep) for _, m in layers]
    try:
        with input_gradient_pass(model, inputs, targets, topk, eval_mode, output) as (x, scored, target):
            for module, out in outputs:
                if out.shape[0] != x.shape[0] or out.ndim != x.ndim:
                    raise ValueError(f"a {type(module).__name__} outputs {tuple(out.shape)} for inputs "
                                     f"{tuple(x.shape)}: FullGrad needs layers that keep the batch and the site axes")
            tensors = [x] + [out for _, out in outputs]
            columns = score_columns(target)
            per_target = []
            for j in range(columns.shape[1]):
                grads = torch.autograd.grad(columns[:, j].sum(), tensors, retain_graph=j < columns.shape[1] - 1,
                                            allow_unused=True)
                per_target.append(_one_target(x, grads, outputs, per_channel, eps))
    finally:
        for handle in handles:
            handle.remove()
    maps = torch.stack(per_target, dim=1) if target.multi else per_target[0]
    return {"maps": maps.detach(), "map_letters": ("NK" if target.multi else "N") + layout.site_letters,
            "layout": layout, "targets": target.class_ids, "logits": detached(scored),
            "target_scores": target.scores.detach(), "layer": ",".join(name for name, _ in layers)}


def _one_target(x: Any, grads: Any, outputs: Any, per_channel: bool, eps: float) -> Any:
    """``(N, *sites)`` sum of the post-processed input and bias terms for one target."""
    from camkit.kernels import select_kernel

    sizes = {axis: x.shape[axis] for axis in range(2, x.ndim)}
    total = _post(grads[0] * x.detach(), per_channel, eps).sum(dim=1)
    kernel = select_kernel(x)
    for (module, out), g in zip(outputs, grads[1:]):
        if g is None:  # a layer whose output does not reach the logits (e.g. an unused branch)
            continue
        bias = _bias(module).detach().view(1, -1, *[1] * (out.ndim - 2))
        term = _post(g * bias, per_channel, eps).sum(dim=1)  # (N, *layer sites)
        total = total + kernel.resample(term, {axis - 1: s for axis, s in sizes.items()})
    return total


class FullGrad(InputMapMethod):
    """``fullgrad``: the FullGrad map at the input's resolution; options ``per_channel`` and ``eps`` as for
    the function ``fullgrad``. The explainer's layer is not used (every bias layer is)."""

    name = "fullgrad"
    description = "input x gradient plus every conv / batch-norm bias x its gradient, at the input's resolution"

    def __init__(self, per_channel: bool = False, eps: float = EPS) -> None:
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        self.per_channel, self.eps = bool(per_channel), float(eps)

    def explain(self, explainer: "Explainer", inputs: Any, targets: Any, topk: int | None) -> "CamResult":
        found = _fullgrad_maps(explainer.model, inputs, targets, topk, explainer.eval_mode, self.per_channel,
                               self.eps, explainer.output)
        return explainer.finish(found["maps"], found["map_letters"], found["layout"], targets=found["targets"],
                                logits=found["logits"], target_scores=found["target_scores"], layer=found["layer"])


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"fullgrad": FullGrad}
