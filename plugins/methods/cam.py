"""CAM (Zhou et al. 2016): the weights are the classifier's row of the target class."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class Cam(CamMethod):
    name = "cam"
    needs_gradients = False

    def weights(self, ctx: WeightContext) -> Weights:
        matrix = ctx.classifier(ctx.features.shape[ctx.layout.channel_axis])  # (classes, C)
        matrix = matrix.to(ctx.features.device)
        ids = ctx.targets
        if ids.ndim == 2 and bool((ids == ids[:1]).all()):  # same classes for all (e.g. "all"): no copy per sample
            return Weights.per_class(matrix[ids[0]])
        return Weights.channel(matrix[ids])


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"cam": Cam}
