"""Finer-CAM (Zhang et al., CVPR 2025): Grad-CAM of the target's score minus that of the classes the
model finds most similar, so the map shows what tells the class apart from its look-alikes:

    S = S_c - alpha * sum_j pi_j S_cj,        w_k = mean_s dS / df_k(s),    M_c(s) = sum_k w_k f_k(s),

with c_1..c_m the ``comparisons`` classes whose logits are closest to S_c and pi_j their softmax
probabilities normalised over the m (held constant). alpha = 0 is Grad-CAM.

pytorch-grad-cam's ``FinerCAM`` differentiates through the softmax weights pi_j as well; camkit treats
them as a fixed choice of comparison (the gradient of the difference of scores, as in the paper's
equation). Cost: one more forward and one backward per target (a rerun with this method's own
hook: the core hands out gradients of the target scores only)."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


def most_similar_classes(logits: Any, ids: Any, count: int) -> Any:
    """``(N, K, count)`` for each target, the other classes with the closest logits (closest first)."""
    import torch

    distance = (logits[:, None, :] - logits.gather(1, ids)[:, :, None]).abs()
    distance.scatter_(2, ids[:, :, None], torch.inf)  # never compare a class with itself
    return distance.topk(count, dim=2, largest=False).indices


class FinerCam(CamMethod):
    name = "finercam"
    description = "Grad-CAM of the score minus those of the most similar classes"
    needs_gradients = False
    runs_model = True

    def __init__(self, alpha: float = 1.0, comparisons: int = 3) -> None:
        if int(comparisons) < 1:
            raise ValueError(f"comparisons must be at least 1, got {comparisons}")
        self.alpha = float(alpha)
        self.comparisons = int(comparisons)

    def weights(self, ctx: WeightContext) -> Weights:
        from camkit_plugins.methods._replace import require_logit_targets, rerun_gradients

        require_logit_targets(ctx, self.name)
        ids = ctx.targets if ctx.multi_target else ctx.targets[:, None]
        logits = ctx.logits.float()
        count = min(self.comparisons, logits.shape[1] - 1)
        if count < 1:
            raise ValueError("finercam needs a model with at least two classes")
        others = most_similar_classes(logits, ids, count)  # (N, K, m)
        pi = logits.softmax(dim=1)[:, None, :].expand(-1, ids.shape[1], -1).gather(2, others)
        pi = pi / pi.sum(dim=2, keepdim=True)

        def score(out: Any) -> Any:  # (N, K) differences of scores, pi held constant
            # runs outside inference mode: plain copies of tensors made in it may enter autograd
            main, near, weight = ids.clone(), others.clone(), pi.clone()
            out = out.float()
            similar = out[:, None, :].expand(-1, main.shape[1], -1).gather(2, near)
            return out.gather(1, main) - self.alpha * (weight * similar).sum(dim=2)

        _, g = rerun_gradients(ctx, ctx.inputs, score, self.name)
        w = ctx.sum_over_sites(g, keep_targets=True) / ctx.num_sites  # (N, K, C)
        w = w.to(ctx.features.dtype)
        return Weights.channel(w if ctx.multi_target else w[:, 0])


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"finercam": FinerCam}
