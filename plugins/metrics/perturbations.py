"""Ways to remove sites from an input, for every perturbation metric (``plugins/metrics/engine.py``).

A perturbation is called as ``perturbation.apply(inputs, removed, layout, indices, draws=...)``:
``removed`` is a boolean tensor broadcastable to ``inputs`` (True = remove this element), ``indices``
the samples' global ids and ``draws`` the number of each perturbed copy of its sample (both seed the
random ones, so a draw never depends on the batch). Most perturbations replace removed elements by a
fixed ``fill`` computed once per sample (``precomputable``), which the schedules reuse across their steps.

Quantus's ``perturb_baseline`` names map onto them (``engine.baseline``): ``"black"`` = ``minimum`` (the
sample's), ``"white"`` = ``maximum``, ``"mean"``, ``"uniform"`` (one U(low, high) value per sample and
draw), a number = that constant."""

from __future__ import annotations

from typing import Any

from camkit.layout import Layout


class Perturbation:
    """Base: ``fill(inputs, layout, indices)`` gives the replacement values (inputs' shape)."""

    name: str = ""
    precomputable: bool = True

    def fill(self, inputs: Any, layout: Layout, indices: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, inputs: Any, removed: Any, layout: Layout, indices: Any, fill: Any = None,
              draws: Any = None) -> Any:
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


class Constant(Perturbation):
    """Removed elements become ``value`` (Quantus: a number as ``perturb_baseline``)."""

    name = "constant"

    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)

    def fill(self, inputs: Any, layout: Layout, indices: Any) -> Any:
        import torch

        return torch.full_like(inputs, self.value)

    def options(self) -> dict[str, Any]:
        return {"value": self.value}


class _SampleStatistic(Perturbation):
    """Removed elements take one statistic of the whole sample (all channels and sites)."""

    def fill(self, inputs: Any, layout: Layout, indices: Any) -> Any:
        flat = inputs.movedim(layout.batch_axis, 0).reshape(inputs.shape[layout.batch_axis], -1)
        value = self.statistic(flat)
        return layout.broadcast(value, "N").expand_as(inputs)

    def statistic(self, flat: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class Black(_SampleStatistic):
    """Quantus's ``"black"``: removed elements take the sample's minimum (not 0: standardised inputs
    are negative where the image is dark)."""

    name = "minimum"

    def statistic(self, flat: Any) -> Any:
        return flat.amin(dim=1)


class White(_SampleStatistic):
    """Quantus's ``"white"``: removed elements take the sample's maximum."""

    name = "maximum"

    def statistic(self, flat: Any) -> Any:
        return flat.amax(dim=1)


class SampleMean(_SampleStatistic):
    """Quantus's ``"mean"`` outside IROF: removed elements take the mean of all the sample's elements
    (``mean`` takes it per channel)."""

    name = "sample-mean"

    def statistic(self, flat: Any) -> Any:
        return flat.mean(dim=1)


class Uniform(Perturbation):
    """Quantus's ``"uniform"``: removed elements of a perturbed copy take one value drawn from
    U(``low``, ``high``) for that copy (per sample and draw, seeded by ``(seed, sample id, draw)``)."""

    name = "uniform"
    precomputable = False

    def __init__(self, low: float = 0.0, high: float = 1.0, seed: int = 0) -> None:
        if not high > low:
            raise ValueError(f"uniform needs high > low, got low={low}, high={high}")
        self.low, self.high, self.seed = float(low), float(high), int(seed)

    def values(self, indices: Any, draws: Any) -> Any:
        """``(M,)`` fill value of each perturbed copy (a test may replace this to inject Quantus's draws)."""
        import torch

        from camkit_plugins.metrics.base import sample_generator

        draws = torch.zeros_like(indices) if draws is None else draws
        out = [torch.rand((), generator=sample_generator(self.seed, int(i), f"uniform:{int(d)}"), dtype=torch.float64)
               for i, d in zip(indices.tolist(), draws.tolist())]
        return self.low + (self.high - self.low) * torch.stack(out) if out else torch.empty(0, dtype=torch.float64)

    def apply(self, inputs: Any, removed: Any, layout: Layout, indices: Any, fill: Any = None,
              draws: Any = None) -> Any:
        import torch

        value = self.values(torch.as_tensor(indices).reshape(-1).cpu(), None if draws is None else draws.cpu())
        value = layout.broadcast(value.to(device=inputs.device, dtype=inputs.dtype), "N")
        return torch.where(removed, value, inputs)

    def options(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "seed": self.seed}


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
    """ROAD's noisy linear imputation (Rong et al., ICML 2022): a removed element takes the weighted mean
    of its neighbours along the continuous axes (weights 1/distance²: 1/6 direct, 1/12 diagonal in 2-D,
    fewer at the border), removed neighbours included, plus Gaussian noise of std ``noise``, so the
    removal leaks less of the mask's shape than a constant.

    ``exact=True`` solves that linear system (the one Quantus hands to a sparse LU per image and
    percentage) by conjugate gradients preconditioned with a multigrid V-cycle, batched on the inputs'
    device, to a relative residual of ``tolerance`` (1e-6: far below the noise). ``exact=False`` runs
    ``iterations`` Jacobi steps from a coarse-to-fine fill (averages of the kept elements over 2, 4, 8 ...
    blocks): a few passes, close but not equal. ``seed`` (set by the metrics to the batch's) seeds the
    noise with the sample id."""

    name = "road"
    precomputable = False

    def __init__(self, noise: float = 0.01, iterations: int = 4, exact: bool = False,
                 tolerance: float = 1e-6, max_iterations: int = 5000, seed: int = 0) -> None:
        if noise < 0 or iterations < 0:
            raise ValueError(f"road needs noise >= 0 and iterations >= 0, got {noise} and {iterations}")
        self.noise, self.iterations, self.exact = float(noise), int(iterations), bool(exact)
        self.seed = int(seed)  # the metrics set the batch's seed
        self.tolerance, self.max_iterations = float(tolerance), int(max_iterations)

    def apply(self, inputs: Any, removed: Any, layout: Layout, indices: Any, fill: Any = None,
              draws: Any = None) -> Any:
        import torch

        cont = layout.continuous_letters
        if not 1 <= len(cont) <= 3:
            raise ValueError(f"road imputes along 1 to 3 continuous axes; layout {layout} has {len(cont)}")
        axes = [layout.letters.index(ch) for ch in cont]
        last = list(range(-len(axes), 0))
        moved = inputs.movedim(axes, last)
        spatial = tuple(moved.shape[-len(axes):])
        dtype = torch.float64 if self.exact else torch.float32
        x = moved.reshape(-1, 1, *spatial).to(dtype)
        known = (~removed.expand_as(inputs)).movedim(axes, last).reshape(-1, 1, *spatial).to(dtype)
        steps = torch.arange(-1.0, 2.0, dtype=torch.float64)
        offsets = torch.stack(torch.meshgrid(*[steps] * len(axes), indexing="ij"), 0)
        dist2 = (offsets ** 2).sum(0)
        kernel = torch.where(dist2 > 0, 1.0 / dist2.clamp_min(1), torch.zeros_like(dist2))
        kernel = (kernel / kernel.sum()).to(device=x.device, dtype=dtype)[None, None]
        neighbours = _neighbour_sum(kernel)
        if self.exact:
            values = _multigrid_solve(x, known, kernel, self.tolerance, self.max_iterations,
                                      group=len(x) // max(1, inputs.shape[layout.batch_axis]))
        else:
            values = _coarse_to_fine_fill(x * known, known)
            norm = neighbours(torch.ones_like(x[:1]))  # fewer neighbours at the border
            for _ in range(self.iterations):
                values = torch.where(known > 0, x, neighbours(values) / norm)
        imputed = values.to(inputs.dtype).reshape(moved.shape).movedim(last, axes)
        if self.noise > 0:
            imputed = imputed + self.noise * self.noise_field(inputs, layout, indices, draws)
        return torch.where(removed, imputed, inputs)

    def noise_field(self, inputs: Any, layout: Layout, indices: Any, draws: Any) -> Any:
        """Standard normal noise shaped like ``inputs``, one field per sample id and ``seed`` (the same at every
        step of a curve); a test may replace this to inject Quantus's draws."""
        return _per_sample_noise(inputs, layout, indices, self.seed)

    def options(self) -> dict[str, Any]:
        return {"noise": self.noise, "iterations": self.iterations, "exact": self.exact}


SWEEPS = 2
# On a CPU the solve streams each grid through some thirty passes per iteration: grids are solved a few
# at a time so that their arrays stay in the cache (224-px grids: 2.3x faster than 48 at once).
CPU_CHUNK_ELEMENTS = 300_000


def _neighbour_sum(kernel: Any) -> Any:
    """``v -> kernel * v`` (zero padding) for ``(B, 1, *spatial)`` grids. The 2-D ROAD kernel (1/6 direct,
    1/12 diagonal) is ``([1, 2, 1] x [1, 2, 1] - 4 delta) / 12``: six shifted adds, four times faster on
    a CPU than a one-channel convolution; other kernels run as one depthwise convolution over the grids."""
    import torch
    import torch.nn.functional as F

    dims = kernel.ndim - 2
    road = torch.tensor([[1.0, 2.0, 1.0], [2.0, 0.0, 2.0], [1.0, 2.0, 1.0]], dtype=kernel.dtype) / 12.0
    if dims == 2 and torch.allclose(kernel[0, 0].cpu(), road):
        def separable(v: Any) -> Any:
            # six passes, in place on fresh tensors and without padding (each pass counts on a CPU):
            # r = [1, 2, 1] v / 6 along W, then r + (r above + r below) / 2 - v / 3 along H
            r = torch.mul(v, 1.0 / 3.0)
            r[..., 1:].add_(v[..., :-1], alpha=1.0 / 6.0)
            r[..., :-1].add_(v[..., 1:], alpha=1.0 / 6.0)
            total = torch.add(r, v, alpha=-1.0 / 3.0)
            total[..., 1:, :].add_(r[..., :-1, :], alpha=0.5)
            total[..., :-1, :].add_(r[..., 1:, :], alpha=0.5)
            return total
        return separable
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]

    def depthwise(v: Any) -> Any:
        grids = v.reshape(1, -1, *v.shape[2:])
        weight = kernel.to(v.dtype).expand(grids.shape[1], *kernel.shape[1:])
        return conv(grids, weight, padding=1, groups=grids.shape[1]).view(v.shape)
    return depthwise


def _hole_box(known: Any) -> Any:
    """Slices, per spatial axis, of the smallest box holding every unknown element of ``(B, 1, *spatial)``
    grids, grown by one element (the kept neighbours the system reads), clipped to the grid; None if none."""
    unknown = (known < 1).flatten(0, 1).any(dim=0)
    if not bool(unknown.any()):
        return None
    box = []
    for axis in range(unknown.ndim):
        present = unknown.any(dim=tuple(a for a in range(unknown.ndim) if a != axis)) if unknown.ndim > 1 else unknown
        where = present.nonzero().flatten()
        box.append(slice(max(0, int(where[0]) - 1), min(unknown.shape[axis], int(where[-1]) + 2)))
    return tuple(box)


def _multigrid_solve(x: Any, known: Any, kernel: Any, tolerance: float, max_iterations: int,
                     group: int = 1) -> Any:
    """The imputation on ``(B, 1, *spatial)`` grids by conjugate gradients preconditioned with one
    multigrid V-cycle (damped Jacobi smoothing, the same stencil on grids halved down to 4 elements, a
    coarse element unknown where more than half of its children are), started from the coarse-to-fine
    fill: 10 to 30 iterations where plain CG needs hundreds on large holes. On a CPU, a few grids at a time
    (``group`` rows together: one sample's channels); each chunk solved on its holes' bounding box only."""
    import torch

    rows = max(1, CPU_CHUNK_ELEMENTS // max(1, x[0].numel())) if x.device.type == "cpu" else len(x)
    rows = max(group, rows // group * group)  # a sample's rows (its channels share one mask) stay together
    if len(x) > rows:
        return torch.cat([_multigrid_solve(x[i:i + rows], known[i:i + rows], kernel, tolerance, max_iterations,
                                           group) for i in range(0, len(x), rows)])
    box = _hole_box(known)
    if box is None:  # nothing to impute
        return x.clone()
    if any(b.stop - b.start < size for b, size in zip(box, x.shape[2:])):
        # only the holes' bounding box and a ring of kept elements around it enter the system
        window = (slice(None), slice(None), *box)
        solved = x.clone()
        solved[window] = _multigrid_solve(x[window], known[window], kernel, tolerance, max_iterations, group)
        return solved
    import torch.nn.functional as F

    dims = x.ndim - 2
    neighbours, neighbours32 = _neighbour_sum(kernel), _neighbour_sum(kernel.float())
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
    def halving(shape: Any) -> tuple[int, ...]:  # axes longer than 4 are halved, the others kept
        return tuple(2 if size > 4 else 1 for size in shape)

    def restrict(v: Any) -> Any:  # mean of the children, odd sides padded with zeros: P^T / children exactly
        step = halving(v.shape[2:])
        pads = [p for size, k in zip(reversed(v.shape[2:]), reversed(step)) for p in (0, size % k)]
        return pool(F.pad(v, pads), step, step)

    # per level, fine to coarse, in float32 (a preconditioner): the unknown mask, mask x diagonal (the
    # border-aware weight sum), the damped Jacobi weight 0.8 x mask / diagonal and 4 x mask. A coarse element
    # is unknown where most of its children are: "any" grows the holes level by level, and their coarse
    # corrections miss near the edges (224 px: 16.6 -> 11.2 iterations on smooth maps' holes, 49.6 -> 26.6
    # on scattered pixels)
    levels = []
    unknown = (1.0 - known).float()
    while True:
        diagonal = neighbours32(torch.ones_like(unknown[:1]))
        levels.append((unknown, unknown * diagonal, 0.8 * unknown / diagonal, 4.0 * unknown))
        if max(unknown.shape[2:]) <= 4:  # short axes are not halved: a clip of 4 frames still coarsens
            break
        unknown = (restrict(unknown) > 0.5).float()

    def apply(level: int, v: Any) -> Any:  # the operator on a v that is zero off the mask
        mask, scaled = levels[level][:2]
        return torch.addcmul(scaled * v, mask, neighbours32(v), value=-1.0)

    def smooth(level: int, rhs: Any, e: Any, sweeps: int) -> Any:
        weight = levels[level][2]
        for _ in range(sweeps):  # e + w (rhs - A e) with e, rhs zero off the mask: 0.2 e + w (rhs + N e)
            e = weight * rhs if e is None else torch.addcmul(e * 0.2, weight, neighbours32(e).add_(rhs))
        return e

    # the coarsest grid (at most 4 per side, 64 elements) is solved directly: the pseudo-inverse of its operator (with
    # the identity off the mask), per row; a hole with no known element makes it singular
    mask, scaled = (level[:, None] for level in levels[-1][:2])  # (B, 1, 1, *shape): one basis axis added
    shape, size = mask.shape[3:], mask[0].numel()
    basis = torch.eye(size, dtype=mask.dtype, device=mask.device).view(1, size, 1, *shape)
    v = mask * basis
    around = neighbours32(v.reshape(-1, 1, *shape)).view(v.shape)
    columns = (scaled * v - mask * around + (1 - mask) * basis).reshape(len(mask), size, size)
    coarsest = torch.linalg.pinv(columns.transpose(1, 2), hermitian=True)

    def vcycle(level: int, rhs: Any) -> Any:
        if level == len(levels) - 1:
            return (coarsest @ rhs.reshape(len(rhs), -1, 1)).view(rhs.shape) * levels[level][0]
        e = smooth(level, rhs, None, SWEEPS)
        coarse = vcycle(level + 1, restrict(rhs - apply(level, e)) * levels[level + 1][0])
        up = F.interpolate(coarse, scale_factor=[float(k) for k in halving(rhs.shape[2:])], mode="nearest")
        for axis, size in enumerate(rhs.shape[2:]):
            up = up.narrow(axis + 2, 0, size)
        e = e.addcmul_(levels[level][3], up)  # 4 x mask: the stencil's scale doubles with the spacing, 1 / 2²
        return smooth(level, rhs, e, SWEEPS)

    return _solve_imputation(x, known, _coarse_to_fine_fill(x * known, known), neighbours,
                             neighbours(torch.ones_like(x[:1])), tolerance, max_iterations,
                             precondition=lambda r: vcycle(0, r.float()).to(r.dtype))


def _solve_imputation(x: Any, known: Any, start: Any, neighbours: Any, norm: Any, tolerance: float,
                      max_iterations: int, precondition: Any = None) -> Any:
    """Solve ``norm * v_i - sum_j w_ij v_j = 0`` on the unknown elements (known ones fixed to ``x``) by
    conjugate gradients, every row of the batch at once. The system is symmetric positive definite on
    each hole that touches a known element; a row with no known element keeps ``start``."""
    import torch

    unknown = 1.0 - known
    diagonal = unknown * norm

    def operator(v: Any) -> Any:  # A v on the unknowns, (norm - W_uu) v, for a v that is zero off them
        return torch.addcmul(diagonal * v, unknown, neighbours(v), value=-1.0)

    def dot(a: Any, b: Any) -> Any:
        return torch.linalg.vecdot(a.flatten(1), b.flatten(1)).view(-1, *[1] * (a.ndim - 1))

    tiny = torch.finfo(x.dtype).tiny
    rhs = unknown * neighbours(known * x)
    v = unknown * start
    residual = rhs - operator(v)
    solvable = (known.flatten(1).sum(1) > 0).view(-1, *[1] * (x.ndim - 1)).to(x.dtype)
    residual = residual * solvable
    precondition = precondition or (lambda r: r / norm)
    z = precondition(residual)
    direction = z
    rz = dot(residual, z)
    scale = rhs.flatten(1).norm(dim=1).clamp_min(tiny)
    for _ in range(max_iterations):
        if bool((residual.flatten(1).norm(dim=1) <= tolerance * scale).all()):
            break
        a_direction = operator(direction)
        step = rz / dot(direction, a_direction).clamp_min(tiny)
        v = v.addcmul_(step, direction)
        residual = residual.addcmul_(step, a_direction, value=-1.0)
        z = precondition(residual)
        rz_next = dot(residual, z)
        direction = torch.addcmul(z, rz_next / rz.clamp_min(tiny), direction)
        rz = rz_next
    return torch.where(known > 0, x, v)


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
    step = tuple(min(2, side) for side in size)  # an axis of length 1 (one frame) is not pooled
    coarse = _coarse_to_fine_fill(pool(weighted, step, step, ceil_mode=True), pool(known, step, step, ceil_mode=True))
    up = F.interpolate(coarse, size=size, mode="nearest")
    return torch.where(known > 0, weighted / known.clamp_min(1e-12), up)


# torch's CPU generator keeps 32 bits of a seed: 3e9 + index stays clear of the baselines' and the
# tie-breaking's seed * 1_000_003 + index streams for suite seeds below ~2900 and a million samples
NOISE_SEED_OFFSET = 3_000_000_000


def _per_sample_noise(inputs: Any, layout: Layout, indices: Any, seed: int = 0) -> Any:
    """Standard normal noise shaped like ``inputs``, seeded by each sample's global id in a stream of
    its own (so the noise on the removed sites cannot echo the random baseline map that chose them)."""
    import torch

    batch_axis = layout.batch_axis
    moved_shape = inputs.movedim(batch_axis, 0).shape
    noise = torch.empty(moved_shape, dtype=inputs.dtype)
    for row, index in enumerate(indices.tolist()):
        generator = torch.Generator().manual_seed(NOISE_SEED_OFFSET + int(index) + 1_000_003 * int(seed))
        noise[row] = torch.randn(moved_shape[1:], generator=generator, dtype=inputs.dtype)
    return noise.to(inputs.device).movedim(0, batch_axis)


PERTURBATIONS = {cls.name: cls for cls in (Zeros, Constant, Black, White, SampleMean, Uniform, Mean, MeanPose, Blur,
                                            Road)}
