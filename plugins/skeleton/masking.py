"""RA-GCN activation masks: which (time-block, joint) cells a later stream may not see.

A mask is computed per sample from one stream's class activation map (ReLU, max-normalised), by a
rule that selects cells; by default the selected (most activated) cells are zeroed, with
``direction="keep"`` only they are kept. Masks are never parameters or buffers: they are recomputed
on every forward pass.

With ``absent_counts=True`` the count rules (``topk``, ``joints``) spend their budget on absent joints
first (joints whose input is zero in every frame: occluded or untracked): they carry nothing, so
hiding them costs nothing, and only the rest of the budget is taken from the map. Without it, a clip
whose best cue is occluded gets its *remaining* cue masked by the CAM (which then points at it), and
later streams see neither cue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from camkit.plugin_manager import UnknownNameError

RULES = ("threshold", "topk", "quantile", "joints")
DIRECTIONS = ("mask", "keep")


@dataclass(frozen=True)
class MaskRule:
    """``rule``: ``threshold`` (cells whose normalised map >= amount), ``topk`` (the ``amount``
    highest cells), ``quantile`` (cells at or above the per-sample ``amount`` quantile) or ``joints``
    (the ``amount`` joints with the highest summed map, over all frames). Cells with a map of zero
    are never selected. ``direction``: ``mask`` zeroes the selected cells, ``keep`` everything else.
    ``absent_counts``: absent joints (given to ``select``) are selected first by ``topk`` / ``joints``
    and count toward ``amount``; the threshold rules ignore it."""

    rule: str = "threshold"
    amount: float = 0.5
    direction: str = "mask"
    absent_counts: bool = False

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise UnknownNameError.of("mask rule", self.rule, RULES)
        if self.direction not in DIRECTIONS:
            raise UnknownNameError.of("mask direction", self.direction, DIRECTIONS)
        if self.rule in ("threshold", "quantile") and not 0 < self.amount <= 1:
            raise ValueError(f"mask rule {self.rule!r} needs 0 < amount <= 1, got {self.amount}")
        if self.rule in ("topk", "joints") and (self.amount < 1 or int(self.amount) != self.amount):
            raise ValueError(f"mask rule {self.rule!r} needs a whole count >= 1 as amount, got {self.amount}")

    def select(self, cam: Any, absent: Any = None) -> Any:
        """Boolean ``(N, T', V)``: the cells this rule picks in each sample's map ``cam`` (N, T', V).
        ``absent``: optional bool ``(N, V)``, joints missing from the input (used when ``absent_counts``)."""
        import torch

        if cam.ndim != 3:
            raise ValueError(f"a mask is computed from (N, T', V) maps, got shape {tuple(cam.shape)}")
        cam = max_normalise(cam)
        positive = cam > 0
        n, t, v = cam.shape
        if self.absent_counts and absent is not None and self.rule in ("topk", "joints"):
            # absent joints rank above every map value (normalised to <= 1), so they take the budget first
            gone = absent.to(device=cam.device, dtype=torch.bool)[:, None, :].expand(n, t, v)
            ranked = cam.masked_fill(gone, 2.0 if self.rule == "topk" else 2.0 * t)
            chosen = MaskRule(self.rule, self.amount, self.direction).select_ranked(ranked)
            return chosen & (positive | gone) if self.rule == "topk" else \
                chosen & (positive.any(dim=1, keepdim=True) | gone)
        chosen = self.select_ranked(cam)
        return chosen & positive if self.rule != "joints" else chosen & positive.any(dim=1, keepdim=True)

    def select_ranked(self, cam: Any) -> Any:
        """The rule applied to an already normalised map (no ReLU / positivity filter)."""
        import torch

        n, t, v = cam.shape
        if self.rule == "threshold":
            chosen = cam >= self.amount
        elif self.rule == "quantile":
            cut = torch.quantile(cam.reshape(n, -1).float(), self.amount, dim=1)
            chosen = cam >= cut.to(cam.dtype)[:, None, None]
        elif self.rule == "topk":
            k = min(int(self.amount), t * v)
            idx = cam.reshape(n, -1).topk(k, dim=1).indices
            chosen = torch.zeros(n, t * v, dtype=torch.bool, device=cam.device).scatter_(1, idx, True).view(n, t, v)
        else:
            k = min(int(self.amount), v)
            idx = cam.sum(dim=1).topk(k, dim=1).indices
            joints = torch.zeros(n, v, dtype=torch.bool, device=cam.device).scatter_(1, idx, True)
            chosen = joints[:, None, :].expand(n, t, v)
        return chosen

    def cell_mask(self, cam: Any, absent: Any = None) -> Any:
        """Float ``(N, T', V)``: 1 where the next stream sees the input, 0 where it is hidden."""
        chosen = self.select(cam, absent)
        visible = ~chosen if self.direction == "mask" else chosen
        return visible.to(cam.dtype)


def max_normalise(cam: Any) -> Any:
    """ReLU, then each sample divided by its maximum (all-zero maps stay zero)."""
    cam = cam.clamp_min(0)
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)
    return cam / peak.view(-1, *([1] * (cam.ndim - 1)))


def frames_from_cells(mask: Any, frames: int) -> Any:
    """Stretch an ``(N, T', V)`` cell mask to ``(N, frames, V)``: cell t covers frames
    ``[t*frames/T', (t+1)*frames/T')`` (nearest, never interpolated)."""
    import torch

    cells = mask.shape[1]
    index = torch.div(torch.arange(frames, device=mask.device) * cells, frames, rounding_mode="floor")
    return mask.index_select(1, index)
