"""Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with the derivatives averaged over noisy copies
x + e_m of the input, e_m ~ N(0, std^2) (in the input's units), m = 1..num_samples:

    D_p = mean_m (dS_c / df)(x + e_m)^p,     alpha = D_2 / (2 D_2 + sum_s f(s) D_3)   (0 where the denominator is 0),
    w_k = sum_s alpha_k(s) relu(D_1,k(s)),   M_c(s) = sum_k w_k f_k(s),

with f the features of the clean input. The noisy copies of all samples go through the model
together, ``chunk_size`` copies per forward. ``seed`` fixes the noise. std = 0 is Grad-CAM++.

When the logits are global average pooling of the layer followed by one linear layer W, the
derivatives do not depend on the input (dS_c / df_k(s) = W_ck / S for S sites), so every noisy copy
has the same ones and Smooth Grad-CAM++ *is* Grad-CAM++: D_p = (W_c / S)^p, no noisy forward needed.
``closed_form``: "auto" (the head checked by one forward of randomly rescaled channels, as
Ablation-CAM does), True (trust the head) or False (always run the noisy copies).

torchcam's ``SmoothGradCAMpp`` weights alpha by the ReLU of the *last* noisy sample's gradient instead
of the mean D_1, and adds 1e-8 to the denominator."""

from typing import Any

from camkit.hookspecs import hookimpl
from camkit.methods import CamMethod, WeightContext, Weights


def input_noise(ctx: WeightContext, num_samples: int, std: float, seed: int | None) -> Any:
    """``(num_samples, *inputs.shape)`` Gaussian noise on the inputs' device (float32)."""
    import torch

    x = ctx.inputs
    generator = None if seed is None else torch.Generator(device=x.device).manual_seed(int(seed))
    return torch.randn((num_samples, *x.shape), generator=generator, device=x.device) * std


class SmoothGradCamPlusPlus(CamMethod):
    name = "smoothgradcam++"
    description = "Grad-CAM++ with derivatives averaged over noisy inputs"
    needs_gradients = False
    runs_model = True

    def __init__(self, num_samples: int = 4, std: float = 0.3, chunk_size: int = 64, seed: int | None = None,
                 closed_form: "bool | str" = "auto") -> None:
        if int(num_samples) < 1 or int(chunk_size) < 1 or std < 0:
            raise ValueError(f"num_samples and chunk_size must be positive and std >= 0, got "
                             f"{num_samples}, {chunk_size}, {std}")
        if closed_form not in ("auto", True, False):
            raise ValueError(f"closed_form must be 'auto', True or False, got {closed_form!r}")
        self.num_samples, self.std, self.chunk_size, self.seed = int(num_samples), float(std), int(chunk_size), seed
        self.closed_form = closed_form

    def weights(self, ctx: WeightContext) -> Weights:
        from camkit_plugins.methods._replace import gap_linear_head, require_logit_targets

        require_logit_targets(ctx, self.name)
        ids = ctx.targets if ctx.multi_target else ctx.targets[:, None]
        head = None if self.closed_form is False else gap_linear_head(ctx, self.name, trust=self.closed_form is True)
        if head is None:
            return self._noisy_weights(ctx, ids)
        # every copy's derivatives are W_c / S at every site: alpha and D_1 are per channel
        d1 = head[0][ids].double() / ctx.num_sites  # (N, K, C)
        d2, d3 = d1 * d1, d1 * d1 * d1
        feature_sums = ctx.sum_over_sites(ctx.features.double(), keep_targets=False)[:, None]  # (N, 1, C)
        w = ctx.num_sites * _alpha(d2, d3, feature_sums) * d1.clamp_min(0)
        w = w.to(ctx.features.dtype)
        return Weights.channel(w if ctx.multi_target else w[:, 0])

    def _noisy_weights(self, ctx: WeightContext, ids: Any) -> Weights:
        import torch

        from camkit_plugins.methods._replace import rerun_gradients

        n, batch_axis = ids.shape[0], ctx.input_layout.batch_axis
        x = ctx.inputs.movedim(batch_axis, 0)
        with torch.inference_mode(False):  # normal tensors: the reruns need not copy them to record autograd
            noise = input_noise(ctx, self.num_samples, self.std, self.seed).movedim(batch_axis + 1, 1)
            copies = noise.add_(x[None]).to(x.dtype).flatten(0, 1)  # (S*N, ...), the noise buffer reused
        owner = torch.arange(n, device=x.device).repeat(self.num_samples)
        sums: list[Any] = [0, 0, 0]  # sum over copies of g, g^2, g^3, per (sample, target): (N, K, ...)
        per_chunk = max(1, self.chunk_size // n) * n  # whole noise draws per forward
        for start in range(0, len(copies), per_chunk):
            rows = slice(start, start + per_chunk)
            ids_rows = ids[owner[rows]]
            _, g = rerun_gradients(ctx, copies[rows].movedim(0, batch_axis),
                                   lambda out, i=ids_rows: out.float().gather(1, i.clone()), self.name)
            g = g.double().unflatten(0, (-1, n))  # (draws, N, K, ...): sums in float64, g^3 is tiny
            g2 = g * g
            sums = [sums[0] + g.sum(dim=0), sums[1] + g2.sum(dim=0), sums[2] + (g2 * g).sum(dim=0)]
        d1, d2, d3 = (s / self.num_samples for s in sums)
        feature_sums = ctx.sum_over_sites(ctx.features.double(), keep_targets=False)[:, None]  # (N, 1, C)
        alpha = _alpha(d2, d3, ctx.as_site_tensor(feature_sums))
        w = ctx.sum_over_sites(alpha * d1.clamp_min(0), keep_targets=True).to(ctx.features.dtype)
        return Weights.channel(w if ctx.multi_target else w[:, 0])


def _alpha(d2: Any, d3: Any, feature_sums: Any) -> Any:
    """Grad-CAM++'s alpha = D_2 / (2 D_2 + sum_s f D_3), 0 where the denominator is 0."""
    import torch

    denominator = 2 * d2 + feature_sums * d3
    return torch.where(denominator != 0, d2 / torch.where(denominator != 0, denominator, 1), 0)


@hookimpl
def camkit_register_methods() -> dict[str, Any]:
    return {"smoothgradcam++": SmoothGradCamPlusPlus}
