"""FEM, the feature explanation method (Fuad et al., IPTA 2020), gradient-free and class-agnostic.
A channel's sites are "on" where its activation exceeds the k-sigma threshold, and the channel's
weight is the share of its sites that are on:

    w_k = mean_s [f_k(s) > mu_k + k sigma_k],    mu_k, sigma_k = mean and (population) std over sites,
    M(s) = sum_k w_k f_k(s).

As pytorch-grad-cam's ``FEM`` (k = 2). Every target of a sample gets the same map."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class Fem(CamMethod):
    name = "fem"
    description = "gradient-free: share of each channel above mean + k std"
    needs_gradients = False

    def __init__(self, k: float = 2.0) -> None:
        self.k = float(k)

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        layout = ctx.layout
        f = ctx.features.movedim((layout.batch_axis, layout.channel_axis), (0, 1)).flatten(2).float()
        std, mean = torch.std_mean(f, dim=2, correction=0, keepdim=True)
        w = (f > mean + self.k * std).float().mean(dim=2).to(ctx.features.dtype)  # (N, C)
        if ctx.multi_target:
            w = w[:, None, :].expand(-1, ctx.targets.shape[1], -1)
        return Weights.channel(w)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"fem": Fem}
