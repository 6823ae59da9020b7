"""Shapley-CAM (Cai 2025, "CAMs as Shapley value-based explainers"; pytorch-grad-cam's ``ShapleyCAM``): a
channel's weight is its gradient corrected by a second-order term, from a Taylor approximation of each
channel's Shapley value,

    w_k = (1/Z) sum_s [ g_k(s) - 1/2 (H f)_k(s) ],        M_c(s) = sum_k w_k f_k(s),

with g = dS_c/df, H the Hessian of S_c with respect to the features f (a Hessian-vector product: one more
backward through the gradient's graph) and Z the number of sites. Where S_c is linear in f (a logit after
global average pooling and a linear head) H f = 0 and the map is Grad-CAM's; the paper pairs the method
with the ReST target ``camkit.targets.ClassReST`` (logit plus log-probability), whose softmax term is
curved. Cost: the gradients' backward taken with ``create_graph=True`` plus one Hessian-vector product per
target, all batched (samples are independent in eval mode)."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class ShapleyCam(CamMethod):
    name = "shapleycam"
    description = "gradient minus half the Hessian-vector product H f, averaged over sites"
    needs_gradients = True
    needs_hessian = True

    def weights(self, ctx: WeightContext) -> Weights:
        corrected = ctx.gradients - 0.5 * ctx.hessian_times_features
        return Weights.channel(ctx.sum_over_sites(corrected) / ctx.num_sites)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"shapleycam": ShapleyCam}
