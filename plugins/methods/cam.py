"""CAM (Zhou et al. 2016): the weights are the classifier's row of the target class."""

import warnings
from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, HeadMismatchWarning, WeightContext, Weights

# logits - GAP(features) @ W^T must be the same bias for every sample, up to rounding
HEAD_TOLERANCE = {"float16": 5e-2, "bfloat16": 5e-2}
DEFAULT_HEAD_TOLERANCE = 1e-3


def check_gap_linear_head(ctx: WeightContext, matrix: Any) -> None:
    """Warn when the logits are not ``mean over sites of the features`` times ``matrix`` plus the
    classifier's bias: CAM's identity (mean of the map = class score - bias) then fails. With the bias
    known one sample suffices; without it (``classifier_weights=``) the biases implied by two samples
    must agree."""
    pooled = ctx.sum_over_sites(ctx.features.float(), keep_targets=False) / ctx.num_sites
    bias = ctx.logits.float() - pooled @ matrix.float().T  # (N, classes): the bias on every row for GAP + linear
    known = ctx.classifier_bias()
    if known is not None:
        reference = known.float().to(bias.device)[None]
    elif ctx.logits.shape[0] >= 2:
        reference = bias[:1]
    else:
        return
    spread = float((bias - reference).abs().amax())
    scale = float(ctx.logits.float().abs().amax()) + 1e-6
    tolerance = HEAD_TOLERANCE.get(str(ctx.logits.dtype).removeprefix("torch."), DEFAULT_HEAD_TOLERANCE)
    if not spread <= tolerance * scale:  # NaN-safe
        warnings.warn(HeadMismatchWarning(
            f"the logits are not global average pooling of layer {ctx.layer!r} followed by the classifier CAM "
            f"uses (they deviate by up to {spread / scale:.1%} of the largest logit): something between pooling "
            f"and the classifier (a LayerNorm, an activation, an attention pool) makes CAM maps no longer the "
            f"class evidence; use a gradient method such as 'gradcam'"), stacklevel=4)


class Cam(CamMethod):
    name = "cam"
    description = "classifier row of the class after global average pooling"
    needs_gradients = False

    def weights(self, ctx: WeightContext) -> Weights:
        matrix = ctx.classifier(ctx.features.shape[ctx.layout.channel_axis])  # (classes, C)
        matrix = matrix.to(ctx.features.device)
        check_gap_linear_head(ctx, matrix)
        ids = ctx.targets
        if ids.ndim == 2 and bool((ids == ids[:1]).all()):  # same classes for all (e.g. "all"): no copy per sample
            return Weights.per_class(matrix[ids[0]])
        return Weights.channel(matrix[ids])


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"cam": Cam}
