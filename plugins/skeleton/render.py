"""Pictures of joint-by-time maps: a time x joint heat map, and skeleton drawings at key frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from camkit.io import write_atomic
from camkit_plugins.skeleton.graph import get_graph


def save_figure(fig: Any, path: str | Path, dpi: int = 90) -> None:
    """Write a matplotlib figure atomically (format from the suffix): a kill leaves no half picture."""
    write_atomic(path, lambda temporary: fig.savefig(temporary, dpi=dpi))


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)


def _check_map(cam: np.ndarray, joints: int) -> np.ndarray:
    if cam.ndim != 2 or cam.shape[1] != joints:
        raise ValueError(f"expected a (T, V={joints}) map, got shape {cam.shape}; reduce persons with reduce='M'")
    return cam


def render_joint_time(cam: Any, path: str | Path | None = None, graph: Any = "ntu25", title: str = "",
                      truth: Any = None) -> Any:
    """Heat map of a ``(T, V)`` map: joints (named) down, frames across. ``truth``: an optional bool
    ``(T, V)`` mask outlined on top. Saved as PNG when ``path`` is given; returns the figure."""
    from camkit.display import figure_and_axes

    g = get_graph(graph)
    cam = _check_map(_as_numpy(cam), g.num_joints)
    fig, ax = figure_and_axes(figsize=(6, 0.15 * g.num_joints + 1.0))
    image = ax.imshow(cam.T, aspect="auto", cmap="inferno", interpolation="nearest", vmin=0)
    if truth is not None:
        ax.contour(_check_map(_as_numpy(truth), g.num_joints).T.astype(float), levels=[0.5], colors="cyan",
                   linewidths=0.8)
    ax.set_yticks(range(g.num_joints), g.joints, fontsize=6)
    ax.set_xlabel("frame")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def key_frames(cam: np.ndarray, count: int) -> list[int]:
    """``count`` frames spread over the clip's activity, the most activated frame among them."""
    energy = cam.sum(axis=1)
    active = np.flatnonzero(energy > 0)
    lo, hi = (active[0], active[-1]) if active.size else (0, len(energy) - 1)
    frames = np.linspace(lo, hi, count).round().astype(int)
    peak = int(energy.argmax())
    frames[np.abs(frames - peak).argmin()] = peak
    return sorted(set(frames.tolist()))  # fewer than count only when the activity is shorter


def render_skeleton(sequence: Any, cam: Any, path: str | Path | None = None, graph: Any = "ntu25",
                    frames: Sequence[int] | int = 4, title: str = "", person: int = 0,
                    gif: str | Path | None = None) -> Any:
    """Skeleton at a few key frames side by side, joints coloured and sized by the map.

    ``sequence``: the input ``(C, T, V, M)`` (x, y used); ``cam``: ``(T, V)``. ``frames``: frame indices
    or a count of key frames. ``gif``: also write an animated GIF of every frame."""
    from camkit.display import figure_and_axes

    g = get_graph(graph)
    seq = _as_numpy(sequence)
    if seq.ndim != 4 or seq.shape[2] != g.num_joints:
        raise ValueError(f"expected a (C, T, V={g.num_joints}, M) sequence, got shape {seq.shape}")
    cam = _check_map(_as_numpy(cam), g.num_joints)
    if cam.shape[0] != seq.shape[1]:
        raise ValueError(f"map has {cam.shape[0]} frames but the sequence {seq.shape[1]}: upsample the map in time")
    peak = max(float(cam.max()), 1e-12)
    xy = seq[:2, :, :, person]
    present = np.abs(xy).sum(axis=(0, 2)) > 0  # padding frames are all zeros
    chosen = key_frames(cam * present[:, None], frames) if isinstance(frames, int) else list(frames)
    span = xy[:, present] if present.any() else xy
    limits = [(span[i].min() - .1, span[i].max() + .1) for i in range(2)]

    def draw(ax: Any, t: int) -> None:
        ax.clear()
        for i, j in g.bones:
            ax.plot(xy[0, t, [i, j]], xy[1, t, [i, j]], color="0.6", lw=1, zorder=1)
        ax.scatter(xy[0, t], xy[1, t], c=cam[t], cmap="inferno", vmin=0, vmax=peak, s=8 + 80 * cam[t] / peak,
                   edgecolors="k", linewidths=0.3, zorder=2)
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"frame {t}", fontsize=8)

    fig, axes = figure_and_axes(1, len(chosen), figsize=(2 * len(chosen), 2.8), squeeze=False)
    for ax, t in zip(axes[0], chosen):
        draw(ax, t)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    if gif is not None:
        from matplotlib.animation import FuncAnimation, PillowWriter

        anim_fig, anim_ax = figure_and_axes(figsize=(2.5, 3))
        animation = FuncAnimation(anim_fig, lambda t: draw(anim_ax, t), frames=int(present.sum()) or seq.shape[1])
        write_atomic(gif, lambda temporary: animation.save(str(temporary), writer=PillowWriter(fps=10)))
    return fig
