"""Per-clip preparation of ``(C, T, V, M)`` skeleton arrays, as the reference pipelines do it.

* Pre-normalisation (pyskl's PreNormalize3D, REFERENCE.md §6): order the bodies by motion, drop the
  frames where the main body is absent, centre every frame on the main body's spine joint, rotate so
  the spine lies along +z and the shoulders along +x.
* Fitting a clip to the model's window of ``frames``: shorter clips are zero-padded (ST-GCN's
  convention); longer ones are sampled: ``uniform`` (one random frame per equal segment) or
  ``crop-resize`` (a random 50-100 % crop, resized linearly) while training, ``centre`` (the middle
  ``frames``), ``uniform`` (the middle frame of each segment) or several clips at test time.
* Training augmentation: a random rotation and a random per-axis scale.

numpy only, except that random draws come from torch's global generator: ``train skeleton --resume``
restores that generator, so a resumed run draws the same crops and rotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from camkit.plugin_manager import UnknownNameError

TRAIN_SAMPLING = ("uniform", "crop-resize")
TEST_SAMPLING = ("centre", "uniform")


def present_frames(clip: np.ndarray, body: int | None = None) -> np.ndarray:
    """Bool ``(T,)``: frames with any non-zero value (of ``body`` only, when given)."""
    part = clip if body is None else clip[..., body]
    return np.abs(part).reshape(part.shape[0], part.shape[1], -1).sum(axis=(0, 2)) > 0


def valid_length(clip: np.ndarray) -> int:
    """Frames up to the last non-empty one (trailing zero padding excluded)."""
    present = np.flatnonzero(present_frames(clip))
    return int(present[-1]) + 1 if present.size else 0


def body_activity(track: np.ndarray) -> float:
    """How much a body ``(T, V, C)`` moves: the summed variance of its coordinates over the frames
    where it is present (0 for a body never present)."""
    present = np.abs(track).reshape(track.shape[0], -1).sum(axis=1) > 0
    return float(track[present].var(axis=0).sum()) if present.any() else 0.0


def order_bodies_by_motion(clip: np.ndarray) -> np.ndarray:
    """The bodies of ``(C, T, V, M)`` reordered, most active first (stable for ties)."""
    activity = [body_activity(clip[..., m].transpose(1, 2, 0)) for m in range(clip.shape[-1])]
    return clip[..., np.argsort(-np.asarray(activity), kind="stable")]


def drop_empty_frames(clip: np.ndarray) -> np.ndarray:
    """Only the frames where the main body (body 0) is present, in order (``T`` may shrink)."""
    return clip[:, present_frames(clip, body=0)]


def centre_on_joint(clip: np.ndarray, joint: int) -> np.ndarray:
    """Every frame shifted so the main body's ``joint`` is at the origin; absent joints stay zero."""
    centre = clip[:, :, joint, 0]  # (C, T)
    present = np.abs(clip).sum(axis=0, keepdims=True) > 0  # (1, T, V, M)
    return (clip - centre[:, :, None, None]) * present


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 3x3 rotation taking the direction of ``a`` to that of ``b`` (Rodrigues' formula)."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis, cosine = np.cross(a, b), float(a @ b)
    if np.linalg.norm(axis) < 1e-8:
        if cosine > 0:
            return np.eye(3)
        other = np.eye(3)[np.argmin(np.abs(a))]  # any axis perpendicular to a: a half turn about it
        perpendicular = np.cross(a, other) / np.linalg.norm(np.cross(a, other))
        return 2 * np.outer(perpendicular, perpendicular) - np.eye(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + cross + cross @ cross / (1 + cosine)


def align_axes(clip: np.ndarray, spine: tuple[int, int] = (0, 1), shoulders: tuple[int, int] = (8, 4)) -> np.ndarray:
    """Rotate ``(3, T, V, M)`` xyz so that, in the main body's first present frame, the spine (joint
    ``spine[0]`` to ``spine[1]``) points along +z and the shoulder line (``shoulders[0]`` to
    ``shoulders[1]``), projected on the xy-plane, along +x. The second turn is about z, so the spine
    stays on z; absent joints stay zero."""
    first = np.flatnonzero(present_frames(clip, body=0))
    if not first.size:
        return clip
    pose = clip[:, first[0], :, 0].T  # (V, 3)
    upward = pose[spine[1]] - pose[spine[0]]
    # an untracked spine or shoulder (zero, or both joints in one place) leaves that turn out
    to_z = rotation_between(upward, np.array([0.0, 0.0, 1.0])) if np.linalg.norm(upward) > 1e-6 else np.eye(3)
    across = to_z @ (pose[shoulders[1]] - pose[shoulders[0]])
    angle = -np.arctan2(across[1], across[0]) if np.linalg.norm(across[:2]) > 1e-6 else 0.0
    about_z = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return np.einsum("kc,ctvm->ktvm", about_z @ to_z, clip).astype(clip.dtype)


def prenormalise(clip: np.ndarray, centre_joint: int = 1, spine: tuple[int, int] = (0, 1),
                 shoulders: tuple[int, int] = (8, 4)) -> np.ndarray:
    """pyskl's PreNormalize3D on ``(3, T, V, M)`` (NTU-25 joint numbers by default); ``T`` may shrink."""
    if clip.shape[0] != 3:
        raise ValueError(f"pre-normalisation rotates 3-D coordinates; this data has {clip.shape[0]} channels")
    clip = drop_empty_frames(order_bodies_by_motion(clip))
    return align_axes(centre_on_joint(clip, centre_joint), spine, shoulders)


# ---------------------------------------------------------------- fitting a clip to the model's window


def pad_frames(clip: np.ndarray, frames: int) -> np.ndarray:
    out = np.zeros((clip.shape[0], frames, *clip.shape[2:]), dtype=clip.dtype)
    out[:, : clip.shape[1]] = clip
    return out


def uniform_indices(length: int, frames: int, random: bool) -> np.ndarray:
    """One frame from each of ``frames`` equal segments of ``length``: a random one, or the middle one."""
    edges = np.linspace(0, length, frames + 1)
    offsets = _uniform_draws(frames) if random else np.full(frames, 0.5)
    return np.minimum((edges[:-1] + offsets * (edges[1:] - edges[:-1])).astype(int), length - 1)


def crop_resize(clip: np.ndarray, frames: int, low: float = 0.5) -> np.ndarray:
    """A random contiguous crop of ``low``-100 % of the clip, linearly resized to ``frames``."""
    length = clip.shape[1]
    share, where = _uniform_draws(2)
    size = max(2, int(round(length * (low + (1 - low) * share))))
    start = int(where * (length - size + 1))
    return resize_frames(clip[:, start:start + size], frames)


def resize_frames(clip: np.ndarray, frames: int) -> np.ndarray:
    """Linear interpolation along time to ``frames`` frames."""
    position = np.linspace(0, clip.shape[1] - 1, frames)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, clip.shape[1] - 1)
    weight = (position - below)[None, :, None, None]
    return (clip[:, below] * (1 - weight) + clip[:, above] * weight).astype(clip.dtype)


def clip_starts(length: int, frames: int, clips: int) -> list[int]:
    """Starts of ``clips`` windows of ``frames`` spread evenly over ``length`` (one: the centre crop)."""
    if clips == 1:
        return [(length - frames) // 2]
    return [int(round(s)) for s in np.linspace(0, length - frames, clips)]


def _uniform_draws(count: int) -> np.ndarray:
    import torch

    return torch.rand(count, dtype=torch.float64).numpy()


# ---------------------------------------------------------------- augmentation


def random_rotation(clip: np.ndarray, max_angle: float, coordinates: int) -> np.ndarray:
    """Rotate the first ``coordinates`` channels: 3-D, about x, y and z by angles uniform in
    ``±max_angle`` (radians); 2-D, in the image plane."""
    angles = (_uniform_draws(3) * 2 - 1) * max_angle
    if coordinates == 2:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        matrix = np.array([[c, -s], [s, c]])
    else:
        cx, cy, cz = np.cos(angles)
        sx, sy, sz = np.sin(angles)
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        matrix = rz @ ry @ rx
    out = clip.copy()
    out[:coordinates] = np.einsum("kc,ctvm->ktvm", matrix, clip[:coordinates])
    return out


def random_scale(clip: np.ndarray, amount: float, coordinates: int) -> np.ndarray:
    """Each coordinate axis scaled by a factor uniform in ``1 ± amount``."""
    factors = 1 + (_uniform_draws(coordinates) * 2 - 1) * amount
    out = clip.copy()
    out[:coordinates] *= factors[:, None, None, None].astype(clip.dtype)
    return out


@dataclass(frozen=True)
class ClipPipeline:
    """What every skeleton dataset does to a clip between reading and batching.

    ``frames``: the model's window; ``sampling``: ``uniform`` or ``crop-resize`` for clips longer than
    the window while training; ``test_sampling``: ``centre`` or ``uniform`` for the other splits;
    ``test_clips``: with more than one, a long test clip gives that many windows ``(K, C, T, V, M)``,
    spread over the clip, whose scores the evaluation averages; ``prenormalise``: pyskl's
    pre-normalisation (NTU-25, 3-D); ``rotate`` (radians) and ``scale``: training augmentation."""

    frames: int = 300
    sampling: str = "uniform"
    test_sampling: str = "centre"
    test_clips: int = 1
    prenormalise: bool = False
    rotate: float = 0.0
    scale: float = 0.0

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")
        if self.sampling not in TRAIN_SAMPLING:
            raise UnknownNameError.of("sampling", self.sampling, TRAIN_SAMPLING)
        if self.test_sampling not in TEST_SAMPLING:
            raise UnknownNameError.of("test_sampling", self.test_sampling, TEST_SAMPLING)
        if self.test_clips < 1:
            raise ValueError(f"test_clips must be at least 1, got {self.test_clips}")
        if self.rotate < 0 or not 0 <= self.scale < 1:
            raise ValueError(f"rotate must be >= 0 and 0 <= scale < 1, got rotate={self.rotate}, scale={self.scale}")

    def __call__(self, clip: np.ndarray, training: bool, coordinates: int = 3) -> np.ndarray:
        """``(C, T_any, V, M)`` -> ``(C, frames, V, M)``, or ``(K, C, frames, V, M)`` for ``test_clips=K``."""
        if self.prenormalise:
            clip = prenormalise(clip)
        clip = clip[:, : valid_length(clip)]
        if training:
            clip = self._augment(self._fit_training(clip), coordinates)
        else:
            clip = self._fit_test(clip)
        return clip

    def _fit_training(self, clip: np.ndarray) -> np.ndarray:
        if clip.shape[1] <= self.frames:
            return pad_frames(clip, self.frames)
        if self.sampling == "crop-resize":
            return crop_resize(clip, self.frames)
        return clip[:, uniform_indices(clip.shape[1], self.frames, random=True)]

    def _fit_test(self, clip: np.ndarray) -> np.ndarray:
        length = clip.shape[1]
        if length <= self.frames:
            windows = [pad_frames(clip, self.frames)] * self.test_clips
        elif self.test_sampling == "uniform":
            windows = [clip[:, uniform_indices(length, self.frames, random=False)]] * self.test_clips
        else:
            starts = clip_starts(length, self.frames, self.test_clips)
            windows = [clip[:, start:start + self.frames] for start in starts]
        return windows[0] if self.test_clips == 1 else np.stack(windows)

    def _augment(self, clip: np.ndarray, coordinates: int) -> np.ndarray:
        if self.rotate > 0:
            clip = random_rotation(clip, self.rotate, coordinates)
        if self.scale > 0:
            clip = random_scale(clip, self.scale, coordinates)
        return clip

