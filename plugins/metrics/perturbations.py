"""Ways to remove sites from an input, for deletion / insertion / ROAD.

A perturbation is called as ``perturbation.apply(inputs, removed, layout, indices)``: ``removed`` is
a boolean tensor broadcastable to ``inputs`` (True = remove this site), ``indices`` the samples'
global ids (to seed noise). Most perturbations replace removed sites by a fixed ``fill`` computed
once per sample (``precomputable``), which the curves reuse across all their steps."""

from __future__ import annotations

from typing import Any

from camkit.layout import Layout


class Perturbation:
    """Base: ``fill(inputs, layout, indices)`` gives the replacement values (inputs' shape)."""

    name: str = ""
    precomputable: bool = True

    def fill(self, inputs: Any, layout: Layout, indices: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, inputs: Any, removed: Any, layout: Layout, indices: Any, fill: Any = None) -> Any:
        import torch

        if fill is None:
            fill = self.fill(inputs, layout, indices)
        return torch.where(removed, fill, inputs)

    def options(self) -> dict[str, Any]:
        return {}


class Zeros(Perturbation):
    """Removed sites become 0 (in the tensor's space: the data set mean when inputs are standardised)."""

    name = "zeros"

    def fill(self, inputs: Any, layout: Layout, indices: Any) -> Any:
        import torch

        return torch.zeros_like(inputs)


class Mean(Perturbation):
    """Removed sites take the sample's per-channel mean over all its sites."""

    name = "mean"

    def fill(self, inputs: Any, layout: Layout, indices: Any) -> Any:
        dims = tuple(i for i, ch in enumerate(layout.letters) if ch not in "NC")
        return inputs.mean(dim=dims, keepdim=True).expand_as(inputs)


class MeanPose(Perturbation):
    """Skeletons: a removed (frame, joint) takes the joint's mean position over the clip's frames, so
    the joint stays where it usually is but carries no motion. Needs a ``T`` axis."""

    name = "mean-pose"

    def fill(self, inputs: Any, layout: Layout, indices: Any) -> Any:
        if "T" not in layout.letters:
            raise ValueError(f"mean-pose needs a time axis T; the input layout is {layout}")
        return inputs.mean(dim=layout.letters.index("T"), keepdim=True).expand_as(inputs)


class Blur(Perturbation):
    """Removed sites take a Gaussian blur of the input over its continuous axes (H, W, T, ...)."""

    name = "blur"

    def __init__(self, sigma: float = 5.0) -> None:
        if sigma <= 0:
            raise ValueError(f"blur sigma must be positive, got {sigma}")
        self.sigma = float(sigma)

    def fill(self, inputs: Any, layout: Layout, indices: Any) -> Any:
        import torch
        import torch.nn.functional as F

        out = inputs
        for letter in layout.continuous_letters:
            axis = layout.letters.index(letter)
            size = inputs.shape[axis]
            radius = max(1, min(int(3 * self.sigma), size - 1))
            taps = torch.arange(-radius, radius + 1, device=inputs.device, dtype=inputs.dtype)
            kernel = torch.exp(-0.5 * (taps / self.sigma) ** 2)
            kernel = (kernel / kernel.sum()).view(1, 1, -1)
            moved = out.movedim(axis, -1)
            flat = moved.reshape(-1, 1, size)
            flat = F.conv1d(F.pad(flat, (radius, radius), mode="replicate"), kernel)
            out = flat.reshape(moved.shape).movedim(-1, axis)
        return out

    def options(self) -> dict[str, Any]:
        return {"sigma": self.sigma}


class Road(Perturbation):
    """ROAD-style removal (Rong et al. 2022): a removed site takes the weighted mean of its
    neighbours along the continuous axes (weights 1/distance²: 1/6 direct, 1/12 diagonal in 2-D),
    removed neighbours included, plus Gaussian noise of std ``noise``, so the removal leaks less of
    the mask's shape than a constant. ROAD solves that linear system; here a coarse-to-fine fill
    (averages of the kept sites over 2, 4, 8 ... site blocks) starts ``iterations`` Jacobi steps of
    it: a few passes instead of one per site of the largest hole."""

    name = "road"
    precomputable = False

    def __init__(self, noise: float = 0.01, iterations: int = 4) -> None:
        if noise < 0 or iterations < 0:
            raise ValueError(f"road needs noise >= 0 and iterations >= 0, got {noise} and {iterations}")
        self.noise, self.iterations = float(noise), int(iterations)

    def apply(self, inputs: Any, removed: Any, layout: Layout, indices: Any, fill: Any = None) -> Any:
        import torch
        import torch.nn.functional as F

        cont = layout.continuous_letters
        if not 1 <= len(cont) <= 3:
            raise ValueError(f"road imputes along 1 to 3 continuous axes; layout {layout} has {len(cont)}")
        axes = [layout.letters.index(ch) for ch in cont]
        last = list(range(-len(axes), 0))
        moved = inputs.movedim(axes, last)
        spatial = tuple(moved.shape[-len(axes):])
        x = moved.reshape(-1, 1, *spatial).float()
        known = (~removed.expand_as(inputs)).movedim(axes, last).reshape(-1, 1, *spatial).float()
        values = _coarse_to_fine_fill(x * known, known)
        offsets = torch.stack(torch.meshgrid(*[torch.arange(-1.0, 2.0)] * len(axes), indexing="ij"), 0)
        dist2 = (offsets ** 2).sum(0)
        kernel = torch.where(dist2 > 0, 1.0 / dist2.clamp_min(1), torch.zeros_like(dist2)).to(x.device)[None, None]
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(axes) - 1]
        norm = conv(torch.ones_like(x[:1]), kernel, padding=1)  # fewer neighbours at the border
        for _ in range(self.iterations):
            values = torch.where(known > 0, x, conv(values, kernel, padding=1) / norm)
        imputed = values.to(inputs.dtype).reshape(moved.shape).movedim(last, axes)
        if self.noise > 0:
            imputed = imputed + self.noise * _per_sample_noise(inputs, layout, indices)
        return torch.where(removed, imputed, inputs)

    def options(self) -> dict[str, Any]:
        return {"noise": self.noise, "iterations": self.iterations}


def _coarse_to_fine_fill(weighted: Any, known: Any) -> Any:
    """Fill the holes of ``weighted / known`` ((B, 1, *spatial)) with the mean of the kept values in
    the smallest enclosing 2^k block that has one (push-pull); kept values unchanged; 0 if none."""
    import torch
    import torch.nn.functional as F

    dims = weighted.ndim - 2
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    size = tuple(weighted.shape[2:])
    if max(size) <= 1 or bool(known.all()):
        return weighted / known.clamp_min(1e-12)
    coarse = _coarse_to_fine_fill(pool(weighted, 2, ceil_mode=True), pool(known, 2, ceil_mode=True))
    up = F.interpolate(coarse, size=size, mode="nearest")
    return torch.where(known > 0, weighted / known.clamp_min(1e-12), up)


# torch's CPU generator keeps 32 bits of a seed: 3e9 + index stays clear of the baselines' and the
# tie-breaking's seed * 1_000_003 + index streams for suite seeds below ~2900 and a million samples
NOISE_SEED_OFFSET = 3_000_000_000


def _per_sample_noise(inputs: Any, layout: Layout, indices: Any) -> Any:
    """Standard normal noise shaped like ``inputs``, seeded by each sample's global id in a stream of
    its own (so the noise on the removed sites cannot echo the random baseline map that chose them)."""
    import torch

    batch_axis = layout.batch_axis
    moved_shape = inputs.movedim(batch_axis, 0).shape
    noise = torch.empty(moved_shape, dtype=inputs.dtype)
    for row, index in enumerate(indices.tolist()):
        generator = torch.Generator().manual_seed(NOISE_SEED_OFFSET + int(index))
        noise[row] = torch.randn(moved_shape[1:], generator=generator, dtype=inputs.dtype)
    return noise.to(inputs.device).movedim(0, batch_axis)


PERTURBATIONS = {cls.name: cls for cls in (Zeros, Mean, MeanPose, Blur, Road)}
