"""HiResCAM (Draelos & Carin 2020): the gradient itself as a per-site weight (element-wise
product with the features, summed over channels), faithful to the model's computation."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class HiResCam(CamMethod):
    name = "hirescam"
    description = "the gradient itself as a per-site weight"
    needs_gradients = True

    def weights(self, ctx: WeightContext) -> Weights:
        return Weights.site(ctx.gradients)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"hirescam": HiResCam}
