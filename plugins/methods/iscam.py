"""IS-CAM, integrated Score-CAM (Naidu et al. 2020): Score-CAM's score integrated along the path from
the zero mask to the full mask,

    w_k = (1/N) sum_{i=1..N} softmax(S(x * (i/N) m_k))_c,        M_c(s) = sum_k w_k f_k(s),

with m_k the channel's upsampled, min-max normalised activation (as in Score-CAM) and N = num_samples.
N = 1 is Score-CAM. Cost: N Score-CAMs; ``chunk_size`` (sample, channel) pairs per forward.

torchcam's ``ISCAM`` accumulates the coefficient (its i-th mask is (1 + 2 + ... + i)/N m_k, up to 5.5 m_k
for N = 10) and, as its Score-CAM, takes a softmax over channels; camkit follows the paper's path."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class IsCam(CamMethod):
    name = "iscam"
    description = "Score-CAM integrated along scaled masks"
    needs_gradients = False
    runs_model = True

    def __init__(self, num_samples: int = 10, chunk_size: int = 256, progress: bool = False) -> None:
        from camkit_plugins.methods.scorecam import check_chunk_size

        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.num_samples = int(num_samples)
        self.chunk_size, self.progress = check_chunk_size(chunk_size), progress

    def weights(self, ctx: WeightContext) -> Weights:
        from camkit_plugins.methods.scorecam import as_weights, masked_input_scores

        steps = [lambda masks, i=i: masks * (i / self.num_samples) for i in range(1, self.num_samples + 1)]
        return as_weights(ctx, masked_input_scores(ctx, self.chunk_size, steps, progress=self.progress, desc=self.name))


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"iscam": IsCam}
