"""RA-GCN's robustness protocol (Song et al., ICIP 2019 / TCSVT 2020; REFERENCE.md §3, §6).

* body parts zeroed in every frame and every body: left arm, right arm, two hands, two legs, trunk;
* a contiguous block of 10 / 20 / 30 / 40 / 50 frames, centred in each clip's own frames (or on a
  fixed frame: the released code centres on frame 50 of its 300-frame clips);
* v2's joint jitter and frame jitter (Gaussian noise on a random share of joints or frames) and
  random occlusion (a random share of (frame, joint) cells zeroed).

:func:`paper_table` lays the results out as the ICIP 2019 table, next to the published numbers.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from camkit.plugin_manager import UnknownNameError
from camkit_plugins.skeleton.evaluation import occlude_joints
from camkit_plugins.skeleton.graph import NTU25_PARTS, skeleton_layout

FRAME_BLOCKS = (10, 20, 30, 40, 50)
#: Columns of the ICIP 2019 occlusion table and the condition each one reads.
PAPER_COLUMNS = (("none", "accuracy"), ("left arm", "accuracy left arm"), ("right arm", "accuracy right arm"),
                 ("hands", "accuracy two hands"), ("legs", "accuracy two legs"), ("trunk", "accuracy trunk"),
                 *((str(n), f"accuracy {n} frames") for n in FRAME_BLOCKS))
#: Published NTU-60 cross-subject top-1 (%) in that layout (REFERENCE.md §6).
PAPER_REFERENCE = {
    "ST-GCN (paper)": (80.7, 71.4, 60.5, 62.6, 77.4, 50.2, 69.3, 57.0, 44.5, 34.5, 24.0),
    "RA-GCN 3s (paper)": (85.9, 73.4, 60.4, 73.5, 81.8, 70.6, 81.9, 75.0, 66.3, 54.4, 40.6),
}
#: The kinds of noise :func:`jitter` adds.
JITTER_KINDS = ("joint", "frame", "occlusion")
#: v2 noise conditions: (name, kind, probability, sigma).
JITTER = (("joint jitter p=0.1 σ=0.05", "joint", 0.1, 0.05), ("joint jitter p=0.1 σ=0.1", "joint", 0.1, 0.1),
          ("frame jitter p=0.1 σ=0.05", "frame", 0.1, 0.05), ("frame jitter p=0.1 σ=0.1", "frame", 0.1, 0.1),
          ("random occlusion p=0.05", "occlusion", 0.05, 0.0), ("random occlusion p=0.1", "occlusion", 0.1, 0.0))


def block_start(x: torch.Tensor, count: int, centre: int | None) -> torch.Tensor:
    """``(N,)`` first frame of a ``count``-frame block centred on ``centre`` or, when ``None``, on the
    middle of each sample's non-empty frames; clamped so the block stays inside the clip."""
    n, _, t = x.shape[:3]
    if centre is None:
        present = x.abs().sum(dim=(1, 3, 4)) > 0  # (N, T)
        frame = torch.arange(t, device=x.device).expand(n, t)
        first = torch.where(present, frame, t).amin(dim=1)
        last = torch.where(present, frame, -1).amax(dim=1)
        middle = torch.where(last >= 0, (first + last + 1) // 2, t // 2)
    else:
        middle = torch.full((n,), int(centre), device=x.device)
    return (middle - count // 2).clamp(0, max(t - count, 0))


def occlude_frame_block(x: torch.Tensor, count: int, centre: int | None = None) -> torch.Tensor:
    """Zero ``count`` consecutive frames of every sample (all joints and bodies), see :func:`block_start`."""
    t = x.shape[2]
    start = block_start(x, count, centre)
    frame = torch.arange(t, device=x.device)
    hidden = (frame[None] >= start[:, None]) & (frame[None] < start[:, None] + count)  # (N, T)
    return x * skeleton_layout().broadcast((~hidden).to(x.dtype), "NT")


def jitter(x: torch.Tensor, kind: str, probability: float, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise (std ``sigma``) on every channel of a random ``probability`` share of the joints
    (``kind="joint"``: per frame, joint and body) or of the frames (``"frame"``: all joints and bodies);
    ``"occlusion"``: that share of (frame, joint) cells zeroed in every body. Padding frames stay zero."""
    if kind not in JITTER_KINDS:
        raise UnknownNameError.of("jitter", kind, JITTER_KINDS)
    n, c, t, v, m = x.shape
    present = (x != 0).any(dim=1, keepdim=True).to(x.dtype)  # noise never fills the zero padding
    if kind == "occlusion":
        hidden = (torch.rand(n, 1, t, v, 1, generator=generator) < probability).to(x.device)
        return x * (~hidden).to(x.dtype)
    shape = (n, 1, t, v, m) if kind == "joint" else (n, 1, t, 1, 1)
    chosen = (torch.rand(*shape, generator=generator) < probability).to(x)  # CPU draws: the generator's device
    noise = torch.randn(n, c, t, v, m, generator=generator).to(x) * sigma
    return x + noise * chosen * present


def ragcn_conditions(dataset: Any, centre: int | None = None) -> dict[str, Any]:
    """``{name: corrupt(x, y, generator)}`` of RA-GCN's protocol (NTU-25 joints needed for the parts)."""
    if dataset.sample_shape[2] != 25:
        raise ValueError(f"RA-GCN's protocol occludes NTU-25 body parts; this data has {dataset.sample_shape[2]} "
                         "joints")
    conditions: dict[str, Any] = {"clean": lambda x, y, g: x}
    for part, joints in NTU25_PARTS.items():
        conditions[part] = (lambda js: lambda x, y, g: occlude_joints(x, js))(joints)
    for count in FRAME_BLOCKS:
        conditions[f"{count} frames"] = (lambda k: lambda x, y, g: occlude_frame_block(x, k, centre))(count)
    for name, kind, probability, sigma in JITTER:
        conditions[name] = (lambda k, p, s: lambda x, y, g: jitter(x, k, p, s, g))(kind, probability, sigma)
    return conditions


def paper_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown: the ICIP 2019 occlusion table (top-1 %) with our models' rows under the published
    ones, then a second table of the v2 jitter / random-occlusion conditions (no published numbers)."""
    head = "| model | " + " | ".join(name for name, _ in PAPER_COLUMNS) + " |"
    lines = ["Occlusion (top-1 %; published rows: NTU-60 cross-subject, ICIP 2019)", "", head,
             "|---|" + "---:|" * len(PAPER_COLUMNS)]
    lines += [f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |"
              for name, values in PAPER_REFERENCE.items()]
    for model, metrics in results.items():
        lines.append(f"| {model} | " + " | ".join(_percent(metrics, key) for _, key in PAPER_COLUMNS) + " |")
    names = [name for name, *_ in JITTER]
    lines += ["", "Jitter and random occlusion (top-1 %)", "", "| model | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for model, metrics in results.items():
        lines.append(f"| {model} | " + " | ".join(_percent(metrics, f"accuracy {name}") for name in names) + " |")
    return "\n".join(lines) + "\n"


def _percent(metrics: Mapping[str, float], key: str) -> str:
    return f"{100 * metrics[key]:.1f}" if key in metrics else "–"
