"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): a channel's weight is the relative drop of the
target score when the channel is zeroed,

    w_k = (S_c - S_c^(k)) / S_c,        M_c(s) = sum_k w_k f_k(s).

When the logits are global average pooling of the layer followed by one linear layer W (checked
with one extra forward of randomly rescaled channels), the drop is exact in closed form:
S_c - S_c^(k) = W_ck mean_s f_k(s), so no ablation forward is needed. Otherwise every
(sample, channel) pair is ablated, ``chunk_size`` pairs per forward (the model runs again from its
input: the core has no way yet to run only the layers after the target). ``closed_form``: "auto",
True (trust the head) or False (always ablate). A zero score gives zero weights (a constant map).

pytorch-grad-cam ablates to 0 only when the chunk's minimum activation is 0 and otherwise to
``min - 1e7``; camkit always zeroes the channel, as the paper does."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


class AblationCam(CamMethod):
    name = "ablationcam"
    description = "relative score drop when each channel is zeroed (closed form for GAP + linear)"
    needs_gradients = False
    runs_model = True

    def __init__(self, chunk_size: int = 64, closed_form: "bool | str" = "auto") -> None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if closed_form not in ("auto", True, False):
            raise ValueError(f"closed_form must be 'auto', True or False, got {closed_form!r}")
        self.chunk_size = int(chunk_size)
        self.closed_form = closed_form

    def weights(self, ctx: WeightContext) -> Weights:
        import torch

        from camkit_plugins.methods._replace import require_logit_targets

        require_logit_targets(ctx, self.name)
        ids = ctx.targets if ctx.multi_target else ctx.targets[:, None]
        scores = ctx.logits.float().gather(1, ids)  # (N, K)
        drops = self._closed_form_drops(ctx, ids) if self.closed_form is not False else None
        if drops is None:
            drops = scores[:, :, None] - self._ablated_scores(ctx, ids)  # (N, K, C)
        w = torch.where(scores[:, :, None] != 0, drops / torch.where(scores != 0, scores, 1)[:, :, None], 0)
        w = w.to(ctx.features.dtype)
        return Weights.channel(w if ctx.multi_target else w[:, 0])

    def _closed_form_drops(self, ctx: WeightContext, ids: Any) -> Any:
        """``(N, K, C)`` exact score drops for a GAP + linear head, or None when the head is not one."""
        from camkit_plugins.methods._replace import gap_linear_head

        head = gap_linear_head(ctx, self.name, trust=self.closed_form is True)
        if head is None:
            return None
        matrix, pooled = head
        return matrix[ids] * pooled[:, None, :]

    def _ablated_scores(self, ctx: WeightContext, ids: Any) -> Any:
        """``(N, K, C)`` target scores with channel k zeroed, all pairs batched ``chunk_size`` at a time."""
        import torch

        from camkit_plugins.methods._replace import replaced_features

        layout, in_layout = ctx.layout, ctx.input_layout
        f = ctx.features.movedim(layout.batch_axis, 0)  # batch first
        channel_axis = layout.channel_axis if layout.channel_axis > layout.batch_axis else layout.channel_axis + 1
        n, channels = f.shape[0], f.shape[channel_axis]
        x = ctx.inputs.movedim(in_layout.batch_axis, 0)
        out = torch.empty(n * channels, ids.shape[1], device=f.device, dtype=torch.float32)
        keep_shape = [1] * f.ndim
        keep_shape[0], keep_shape[channel_axis] = -1, channels
        chunk: dict[str, Any] = {}

        with replaced_features(ctx, lambda features: chunk["features"], self.name):
            for start in range(0, n * channels, self.chunk_size):
                pairs = torch.arange(start, min(start + self.chunk_size, n * channels), device=f.device)
                owner, channel = pairs // channels, pairs % channels
                keep = torch.ones(len(pairs), channels, device=f.device, dtype=f.dtype)
                keep[torch.arange(len(pairs), device=f.device), channel] = 0
                chunk["features"] = (f[owner] * keep.view(keep_shape)).movedim(0, layout.batch_axis)
                logits = ctx.forward(x[owner].movedim(0, in_layout.batch_axis), owners=owner).float()
                out[start:start + len(pairs)] = logits.gather(1, ids[owner])
        return out.view(n, channels, -1).transpose(1, 2)  # (N, K, C)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"ablationcam": AblationCam}
