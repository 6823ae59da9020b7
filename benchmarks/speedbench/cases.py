"""What ``benchmarks/speed.py`` measures: the methods, toolkits and bars, a case and a result row, the
models and the map normalisation every runner shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

CAMKIT_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "eigencam")
# issue 12's methods: timed when named with --methods (fullgrad is camkit.fullgrad, not a weight method)
NEW_METHODS = ("gradcam-elementwise", "eigengradcam", "fem", "ablationcam", "finercam", "smoothgradcam++", "sscam",
               "iscam", "fullgrad", "kpcacam", "shapleycam", "legrad", "segeigencam")
# vision-transformer methods: a case of their own on torchvision's ViT-B/16 (random weights, a random head)
VIT_METHODS = ("legrad",)  # timed with the paper's per-block scores, torchcam's projection
VIT_MODEL = "vit_b_16"
# masked or ablated forwards per (sample, channel): a small case of their own on a CPU
PERTURBATION_METHODS = ("scorecam", "sscam", "iscam")
TOOLKITS = ("pytorch-grad-cam", "torchcam", "captum")
# --quick compares only these (toolkit, method) pairs: the headline ones
QUICK_PAIRS = frozenset({("pytorch-grad-cam", "gradcam"), ("torchcam", "cam"), ("torchcam", "gradcam"),
                         ("captum", "gradcam"), ("pytorch-grad-cam", "scorecam"),
                         # issue 12's pairs (their methods run only when named with --methods)
                         ("pytorch-grad-cam", "gradcam-elementwise"), ("pytorch-grad-cam", "eigengradcam"),
                         ("pytorch-grad-cam", "fem"), ("pytorch-grad-cam", "ablationcam"),
                         ("pytorch-grad-cam", "fullgrad"),
                         ("torchcam", "smoothgradcam++"), ("torchcam", "sscam"), ("torchcam", "iscam"),
                         ("pytorch-grad-cam", "kpcacam"), ("pytorch-grad-cam", "shapleycam"), ("torchcam", "legrad"),
                         ("pytorch-grad-cam", "finercam"), ("pytorch-grad-cam", "segeigencam")})
# maps of random-weight models agree to float rounding when the formula is the same
AGREEMENT_TOLERANCE = 1e-3
# known formula differences, so a large difference there is reported, not treated as a bug
KNOWN_DIFFERENCES = {
    ("pytorch-grad-cam", "scorecam"): "softmax over the channel scores; align_corners=True upsampling of the masks",
    ("pytorch-grad-cam", "gradcam++"): "adds 1e-6 to the alpha denominator, not small next to the tiny gradients",
    ("torchcam", "gradcam++"): "alpha stays g^2: `alpha[mask].div_` divides a copy; sums g^3 * f over sites",
    ("torchcam", "scorecam"): "softmax over the channel scores (target score minus the baseline's), not over classes",
    ("pytorch-grad-cam", "eigencam"): "centres each channel before the SVD (another principal direction); sign left "
                                      "arbitrary",
    ("pytorch-grad-cam", "eigengradcam"): "centres each channel of g * f before the SVD; sign left arbitrary",
    ("pytorch-grad-cam", "fullgrad"): "normalises every channel of every layer separately (camkit: per sample, as the "
                                      "authors' code; per_channel=True agrees to ~1e-7)",
    ("torchcam", "smoothgradcam++"): "other noise draws; ReLU of the last noisy sample's gradient, not of the mean",
    ("pytorch-grad-cam", "finercam"): "differentiates through the softmax weights of the comparison classes",
    ("pytorch-grad-cam", "segeigencam"): "centres each channel of |g| * f before the SVD",
    ("torchcam", "sscam"): "other noise draws; softmax over the channel scores, not over classes",
    ("torchcam", "iscam"): "accumulated coefficient ((1 + ... + i) / N times the mask); softmax over the channel "
                           "scores",
}
# The targets: (name, camkit method, Row measure or "speedup:<toolkit>", comparison, bar).
GPU_TARGETS = (
    ("cam throughput vs plain forward", "cam", "throughput_vs_forward", ">=", 0.98),
    ("gradcam throughput vs plain forward", "gradcam", "throughput_vs_forward", ">=", 0.9),
    ("gradcam peak memory vs inference", "gradcam", "memory_vs_forward", "<=", 1.2),
    ("scorecam speed-up vs pytorch-grad-cam, same batch", "scorecam", "speedup:pytorch-grad-cam", ">=", 10.0),
)
CPU_TARGETS = (
    ("cam time vs its own forward", "cam", "own_forward_ratio", "<=", 1.05),
    ("gradcam time vs its own forward", "gradcam", "own_forward_ratio", "<=", 1.15),
)
# issue 12's bars: checked (and listed) only in runs that timed the method
NEW_METHOD_TARGETS = (
    ("gradcam-elementwise time vs its own forward", "gradcam-elementwise", "own_forward_ratio", "<=", 1.15),
    ("eigengradcam time vs its own forward", "eigengradcam", "own_forward_ratio", "<=", 1.15),
    ("shapleycam time vs its own forward", "shapleycam", "own_forward_ratio", "<=", 1.15),
    ("segeigencam time vs its own forward", "segeigencam", "own_forward_ratio", "<=", 1.15),
    ("ablationcam speed-up vs pytorch-grad-cam, same batch", "ablationcam", "speedup:pytorch-grad-cam", ">=", 20.0),
    ("fullgrad speed-up vs pytorch-grad-cam, same batch", "fullgrad", "speedup:pytorch-grad-cam", ">=", 2.0),
    ("smoothgradcam++ speed-up vs torchcam, same batch", "smoothgradcam++", "speedup:torchcam", ">=", 2.0),
    ("sscam speed-up vs torchcam, same batch", "sscam", "speedup:torchcam", ">=", 2.0),
    ("iscam speed-up vs torchcam, same batch", "iscam", "speedup:torchcam", ">=", 2.0),
)
# the case each target is stated for (Score-CAM: any batch of its own case, the same for both toolkits)
GPU_HEADLINE = {"model": "resnet50", "batch": 256, "dtype": "fp32", "size": 224}
CPU_HEADLINE = {"model": "resnet18", "batch": 8, "dtype": "fp32", "size": 224}


@dataclass
class Case:
    device: str
    model: str
    batch: int
    dtype: str
    size: int = 224


@dataclass
class Row:
    device: str
    model: str
    batch: int
    dtype: str
    size: int
    tool: str
    method: str
    seconds: float
    images_per_s: float
    throughput_vs_forward: float = float("nan")  # forward time / this time (1.0 = free maps)
    time_vs_forward: float = float("nan")
    own_forward_ratio: float | None = None  # camkit, CPU: call time / the forward inside the same call
    cpu_seconds: float = float("nan")  # process CPU time: steadier than wall time on a shared machine
    cpu_time_vs_forward: float = float("nan")
    peak_memory_mb: float | None = None
    memory_vs_forward: float | None = None
    max_abs_diff: float | None = None  # vs camkit's maps of the same method
    agrees: bool | None = None
    note: str = ""
    camkit_speedup: dict[str, float] = field(default_factory=dict)  # other tool's time / camkit's time
    rounds: int | None = None  # timed rounds behind the medians (Score-CAM cases have their own count)


# ---------------------------------------------------------------------------------------------- models


def build_model(name: str, device: str, dtype: str) -> torch.nn.Module:
    """A random-weight torchvision classifier (seeded), wrapped for autocast when dtype is not fp32."""
    import torchvision

    from camkit_plugins.gpu.accelerate import accelerate

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(device)
    if name.startswith("vit_"):  # torchvision starts the head at zero: every map would be constant
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return accelerate(model, dtype=dtype) if dtype != "fp32" else model


def inner(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "model", model)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation of (N, H, W) maps (for the toolkits that stop before it)."""
    flat = maps.flatten(1)
    lo, hi = torch.aminmax(flat, dim=1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)

