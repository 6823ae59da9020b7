"""Skeleton data: NTU ``.skeleton`` files, ST-GCN-style ``.npy`` arrays and a procedural NTU-25 generator.

Every dataset yields ``{"input": float tensor (C, T, V, M), "label": int}`` (plus ``"mask"``, a bool
``(T, V)`` ground-truth relevance map, for generated clips) and has ``classes``, ``input_layout``
(``"NCTVM"``), ``domain`` (``"skeleton"``), ``graph`` and ``sample_shape`` (C, T, V, M). Readers
return clips of their own length; a :class:`ClipPipeline` fits them to the model's window (with
``test_clips=K``, a test item is ``(K, C, T, V, M)``). The other formats are in ``formats.py``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from camkit.plugin_manager import UnknownNameError
from camkit_plugins.skeleton.graph import NTU25_PARTS
from camkit_plugins.skeleton.preprocess import ClipPipeline, body_activity

SPLITS = ("train", "val", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UnknownNameError.of("split", split, SPLITS)


class SkeletonDataset(Dataset):
    """Items from ``load(i) -> (C, T, V, M) array`` and integer labels (optionally ground-truth masks).

    ``pipeline`` (a :class:`ClipPipeline`) fits each clip to the model's window, pre-normalises and
    augments it (``training``: the random choices of a training split); ``coordinates``: how many
    leading channels are coordinates (the rest, e.g. a keypoint score, are not rotated or scaled);
    ``source(i)`` names where sample ``i`` comes from, for error messages."""

    input_layout = "NCTVM"
    domain = "skeleton"

    def __init__(self, load: Callable[[int], np.ndarray], labels: Sequence[int], classes: Sequence[str],
                 sample_shape: tuple[int, int, int, int], masks: np.ndarray | None = None, graph: Any = "ntu25",
                 pipeline: ClipPipeline | None = None, training: bool = False, coordinates: int | None = None,
                 source: Callable[[int], str] | None = None) -> None:
        self._load = load
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.masks = masks
        self.graph = graph
        self.pipeline = pipeline
        self.training = training
        self.coordinates = coordinates if coordinates is not None else self.sample_shape[0]
        self.source = source or (lambda i: f"sample {i}")
        if pipeline is not None and pipeline.prenormalise and (self.sample_shape[0] != 3 or self.sample_shape[2] != 25):
            raise ValueError("prenormalise=true needs 3-D NTU-25 joints (x, y, z); this data is "
                             f"{self.sample_shape[0]} channels x {self.sample_shape[2]} joints")
        bad = self.labels[(self.labels < 0) | (self.labels >= len(self.classes))]
        if bad.size:
            raise ValueError(f"labels {sorted(set(bad.tolist()))[:10]} are outside 0..{len(self.classes) - 1} "
                             f"({len(self.classes)} classes)")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        from camkit.validation import require_finite

        clip = np.array(self._load(index), dtype=np.float32)
        require_finite(clip, f"skeleton data of {self.source(index)}")
        if self.pipeline is not None:
            clip = self.pipeline(clip, self.training, self.coordinates)
        item = {"input": torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)),
                "label": int(self.labels[index])}
        if self.masks is not None:
            item["mask"] = torch.from_numpy(np.asarray(self.masks[index], dtype=bool))
        return item


def with_split(path: str, split: str) -> Path:
    """``path`` with ``{split}`` replaced by the split's name (one option serves every split)."""
    return Path(path.replace("{split}", split))


def make_pipeline(split: str, default_frames: int, options: dict[str, Any]) -> tuple[ClipPipeline, bool]:
    """The clip pipeline of ``options`` (frames defaulting to ``default_frames``) and whether the split trains."""
    return ClipPipeline(**{"frames": default_frames, **options}), split == "train"


# ---------------------------------------------------------------- NTU .skeleton text files

NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
#: Cross-subject training subjects: NTU-60's 20, plus NTU-120's 33 (all above 40, so one list serves both).
NTU_TRAIN_SUBJECTS = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38,
                      45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
                      89, 91, 92, 93, 94, 95, 97, 98, 100, 103)
#: Cross-view (NTU-60) training cameras; cross-setup (NTU-120) trains on even setup ids.
NTU_TRAIN_CAMERAS = (2, 3)
NTU_PROTOCOLS = ("xsub", "xview", "xset", "random", "all")


class _Lines:
    """Numbered lines of a text file, read as rows of numbers with errors naming file and line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = path.read_text().splitlines()
        self.position = 0

    def numbers(self, count: int, what: str) -> list[str]:
        while self.position < len(self.lines) and not self.lines[self.position].strip():
            self.position += 1
        if self.position >= len(self.lines):
            raise ValueError(f"{self.path}:{self.position + 1}: file ends where {what} was expected")
        line_no = self.position + 1
        fields = self.lines[self.position].split()
        self.position += 1
        if len(fields) != count:
            raise ValueError(f"{self.path}:{line_no}: expected {count} value(s) for {what}, got {len(fields)}")
        for field in fields:
            try:
                value = float(field)
            except ValueError:
                raise ValueError(f"{self.path}:{line_no}: {what}: {field!r} is not a number") from None
            if not np.isfinite(value):
                raise ValueError(f"{self.path}:{line_no}: {what}: {field!r} is not a finite number")
        return fields

    def count(self, what: str, limit: int | None = None) -> int:
        field = self.numbers(1, what)[0]
        line_no = self.position
        if not field.isdigit() or (limit is not None and int(field) > limit):
            bound = f" (at most {limit})" if limit is not None else ""
            raise ValueError(f"{self.path}:{line_no}: {what} must be a whole number{bound}, got {field!r}")
        return int(field)


def read_skeleton_file(path: str | Path, frames: int | None = None, bodies: int = 2, joints: int = 25) -> np.ndarray:
    """An NTU ``.skeleton`` file as a float32 ``(3, T, joints, bodies)`` array of x, y, z (metres).

    ``T`` is the clip's own frame count, or ``frames``: shorter clips are then zero-padded and a
    longer one is an error (the datasets fit long clips to the window instead). When more than
    ``bodies`` bodies appear, the most active ones (largest joint variance over time) are kept, in
    order of activity. A value that is not a finite number is an error naming file and line."""
    path = Path(path)
    lines = _Lines(path)
    frame_count = lines.count("the frame count")
    if frames is not None and frame_count > frames:
        raise ValueError(f"{path}: {frame_count} frames do not fit in frames={frames}; raise frames")
    length = frame_count if frames is None else frames
    tracks: dict[str, np.ndarray] = {}
    for frame in range(frame_count):
        body_count = lines.count(f"the body count of frame {frame + 1}", limit=8)
        for _ in range(body_count):
            body_id = lines.numbers(10, "a body info line (10 values)")[0]
            joint_count = lines.count("the joint count")
            if joint_count != joints:
                raise ValueError(f"{path}:{lines.position}: expected {joints} joints, got {joint_count}")
            xyz = np.array([lines.numbers(12, "a joint line (12 values)")[:3] for _ in range(joints)], dtype=np.float32)
            track = tracks.setdefault(body_id, np.zeros((length, joints, 3), dtype=np.float32))
            track[frame] = xyz
    rest = [i + 1 for i in range(lines.position, len(lines.lines)) if lines.lines[i].strip()]
    if rest:
        raise ValueError(f"{path}:{rest[0]}: unexpected data after the last of {frame_count} frames")
    activity = {body: body_activity(track) for body, track in tracks.items()}
    chosen = sorted(tracks, key=lambda body: -activity[body])[:bodies]
    if len(tracks) > bodies:
        warnings.warn(f"{path}: {len(tracks)} bodies tracked, kept the {bodies} most active "
                      f"(raise bodies= to keep more)", RuntimeWarning, stacklevel=2)
    out = np.zeros((3, length, joints, bodies), dtype=np.float32)
    for slot, body in enumerate(chosen):
        out[..., slot] = tracks[body].transpose(2, 0, 1)
    return out


def ntu_label(path: str | Path) -> int:
    """0-based action class from an NTU file name (``...A013.skeleton`` -> 12)."""
    return _ntu_code(path)[4] - 1


def _ntu_code(path: str | Path) -> tuple[int, int, int, int, int]:
    """(setup, camera, subject, replication, action) from an NTU file name."""
    match = NTU_NAME.search(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: file name has no NTU SsssCcccPpppRrrrAaaa code")
    return tuple(int(g) for g in match.groups())  # type: ignore[return-value]


def in_ntu_training_set(path: str | Path, protocol: str) -> bool:
    """Whether the NTU file belongs to the training side of ``xsub``, ``xview`` or ``xset``."""
    setup, camera, subject, _, _ = _ntu_code(path)
    if protocol == "xsub":
        return subject in NTU_TRAIN_SUBJECTS
    if protocol == "xview":
        return camera in NTU_TRAIN_CAMERAS
    return setup % 2 == 0


def read_missing_list(paths: str) -> set[str]:
    """Sample names (``S001C002P005R002A008``) from text files, one per line, ``,``-separated paths;
    the official lists of samples with missing skeletons look like this."""
    names: set[str] = set()
    for name in paths.split(","):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such missing-skeleton list")
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            match = NTU_NAME.search(entry)
            if match is None:
                raise ValueError(f"{path}:{number}: {entry!r} is not an NTU sample name (SsssCcccPpppRrrrAaaa)")
            names.add(match.group(0))
    return names


def _split_files(files: list[Path], split: str, protocol: str, seed: int, val_fraction: float) -> list[Path]:
    if protocol not in NTU_PROTOCOLS:
        raise UnknownNameError.of("NTU protocol", protocol, NTU_PROTOCOLS)
    if protocol == "all":
        return files
    if protocol == "random":
        order = np.random.default_rng(seed).permutation(len(files))
        n_test = int(round(len(files) * val_fraction))
        test = {int(i) for i in order[:n_test]}
        training = [f for i, f in enumerate(files) if i not in test]
        testing = [f for i, f in enumerate(files) if i in test]
    else:
        training = [f for f in files if in_ntu_training_set(f, protocol)]
        testing = [f for f in files if not in_ntu_training_set(f, protocol)]
    if split == "test":
        return testing
    order = np.random.default_rng(seed + 1).permutation(len(training))
    n_val = int(round(len(training) * val_fraction))
    val = set(order[:n_val].tolist())
    return [f for i, f in enumerate(training) if (i in val) == (split == "val")]


def build_ntu_skeleton(split: str = "train", seed: int = 0, root: str | None = None, bodies: int = 2,
                       protocol: str = "xsub", num_classes: int = 60, val_fraction: float = 0.1,
                       missing: str | None = None, **pipeline: Any) -> SkeletonDataset:
    """Registered as ``ntu-skeleton``: a folder of NTU ``.skeleton`` files, parsed lazily.

    ``protocol``: ``xsub`` (cross-subject; NTU-60's and NTU-120's training subjects), ``xview``
    (NTU-60 cross-view: cameras 2, 3), ``xset`` (NTU-120 cross-setup: even setups), ``random`` or
    ``all``; ``val`` is a seeded ``val_fraction`` of the training files. ``missing``: the official
    missing-skeleton list(s) (text files of sample names, ``,``-separated); those samples are skipped.
    Clip options (``frames`` (300), ``sampling``, ``prenormalise`` ...): :class:`ClipPipeline`."""
    _check_split(split)
    if root is None:
        raise ValueError("ntu-skeleton needs root=FOLDER with .skeleton files")
    folder = Path(root)
    files = sorted(folder.glob("*.skeleton"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .skeleton files")
    if missing is not None:
        skipped = read_missing_list(missing)
        files = [f for f in files if f.stem not in skipped]
    chosen = _split_files(files, split, protocol, seed, val_fraction)
    labels = [ntu_label(f) for f in chosen]
    too_big = [f.name for f, label in zip(chosen, labels) if label >= num_classes]
    if too_big:
        raise ValueError(f"{too_big[0]}: action beyond num_classes={num_classes}; pass num_classes=120 for NTU-120")
    classes = [f"A{i + 1:03d}" for i in range(num_classes)]
    clips, training = make_pipeline(split, 300, pipeline)
    return SkeletonDataset(lambda i: read_skeleton_file(chosen[i], None, bodies), labels, classes,
                           (3, clips.frames, 25, bodies), pipeline=clips, training=training,
                           source=lambda i: str(chosen[i]))


# ---------------------------------------------------------------- ST-GCN-style .npy arrays


def read_labels(path: str | Path) -> np.ndarray:
    """Integer labels from ``.npy``, ST-GCN's ``.pkl`` (a pickled ``(sample_names, labels)``) or a text
    file with one label per line."""
    path = Path(path)
    if path.suffix == ".npy":
        labels = np.load(path, allow_pickle=False)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: expected a 1-D integer array of labels, got {labels.dtype} {labels.shape}")
        return labels.astype(np.int64)
    if path.suffix == ".pkl":
        from camkit_plugins.skeleton.formats import load_pickle

        content = load_pickle(path)
        if not (isinstance(content, (tuple, list)) and len(content) == 2 and len(content[0]) == len(content[1])):
            raise ValueError(f"{path}: expected ST-GCN's pickled (sample_names, labels) pair of equal lengths")
        values = np.asarray(content[1])
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{path}: the labels are not whole numbers ({values.dtype})")
        return values.astype(np.int64)
    values = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append(int(line.strip()))
        except ValueError:
            raise ValueError(f"{path}:{number}: {line.strip()!r} is not an integer label") from None
    return np.asarray(values, dtype=np.int64)


LABEL_SUFFIXES = (".pkl", ".npy", ".txt")


def build_skeleton_npy(split: str = "train", seed: int = 0, root: str | None = None, data: str | None = None,
                       labels: str | None = None, classes: Sequence[str] | None = None,
                       graph: Any = "ntu25", **pipeline: Any) -> SkeletonDataset:
    """Registered as ``stgcn-npy`` and ``skeleton-npy``: ST-GCN's ``(N, C, T, V, M)`` ``.npy``
    (memory-mapped) and its labels.

    Either ``root`` holding ``{split}_data.npy`` and ``{split}_label.pkl`` (ST-GCN's pickled
    ``(names, labels)``), ``.npy`` or ``.txt``, or explicit ``data`` and ``labels`` paths (``{split}``
    in them is replaced by the split). ``classes`` defaults to ``class 0 .. class max(label)``. Clip
    options as :class:`ClipPipeline`; ``frames`` defaults to the array's ``T``."""
    _check_split(split)
    if root is not None:
        data = data or str(Path(root) / f"{split}_data.npy")
        if labels is None:
            candidates = [Path(root) / f"{split}_label{ext}" for ext in LABEL_SUFFIXES]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise FileNotFoundError(f"{root}: no {' or '.join(c.name for c in candidates)}")
            labels = str(found[0])
    if data is None or labels is None:
        raise ValueError("skeleton-npy needs root=FOLDER or both data=FILE.npy and labels=FILE")
    data_path, label_path = with_split(data, split), with_split(labels, split)
    array = np.load(data_path, mmap_mode="r", allow_pickle=False)
    if array.ndim != 5:
        raise ValueError(f"{data_path}: expected an (N, C, T, V, M) array, got shape {array.shape}")
    label_array = read_labels(label_path)
    if len(label_array) != array.shape[0]:
        raise ValueError(f"{label_path} has {len(label_array)} labels but {data_path} has {array.shape[0]} samples")
    names = list(classes) if classes is not None else [f"class {i}" for i in range(int(label_array.max()) + 1)]
    clips, training = make_pipeline(split, array.shape[2], pipeline)
    c, _, v, m = array.shape[1:]
    return SkeletonDataset(lambda i: array[i], label_array, names, (c, clips.frames, v, m), graph=graph,
                           pipeline=clips, training=training, source=lambda i: f"{data_path} sample {i}")


# ---------------------------------------------------------------- procedural NTU-25 generator

L_ARM, R_ARM = NTU25_PARTS["left arm"], NTU25_PARTS["right arm"]
GROUPS = {"left arm": L_ARM, "right arm": R_ARM, "legs": NTU25_PARTS["two legs"], "trunk": NTU25_PARTS["trunk"]}

#: Each class: two cues (motions of different body-part groups); each cue identifies its class alone.
SYNTHETIC_CLASSES: tuple[tuple[str, tuple[str, str]], ...] = (
    ("wave left hand", ("left wave", "nod")),
    ("wave right hand", ("right wave", "shake head")),
    ("kick left", ("left kick", "left side raise")),
    ("kick right", ("right kick", "right side raise")),
    ("raise both arms", ("left overhead", "right overhead")),
    ("bow", ("bow", "squat")),
    ("clap", ("left clap", "right clap")),
    ("jump", ("hop", "bounce")),
)


def rest_pose() -> np.ndarray:
    """A standing NTU-25 pose ``(25, 3)`` in metres: x to the subject's left, y up, z forward."""
    p = np.zeros((25, 3))
    p[[0, 1, 20, 2, 3]] = [[0, 0, 0], [0, .25, 0], [0, .5, 0], [0, .58, 0], [0, .72, 0]]
    left = {4: (.18, .48, 0), 5: (.22, .22, 0), 6: (.24, -.02, 0), 7: (.25, -.08, 0), 21: (.26, -.15, 0),
            22: (.21, -.08, .04), 12: (.1, -.02, 0), 13: (.11, -.45, 0), 14: (.12, -.85, 0), 15: (.12, -.9, .12)}
    mirror = {4: 8, 5: 9, 6: 10, 7: 11, 21: 23, 22: 24, 12: 16, 13: 17, 14: 18, 15: 19}
    for joint, xyz in left.items():
        p[joint] = xyz
        p[mirror[joint]] = (-xyz[0], xyz[1], xyz[2])
    return p


def _arm_pose(rest: np.ndarray, arm: tuple[int, ...], elbow: Sequence[float], wrist: Sequence[float]) -> np.ndarray:
    """Pose with the arm's elbow at shoulder + ``elbow`` and wrist at elbow + ``wrist``; hand follows."""
    shoulder, e, w, hand, tip, thumb = arm
    pose = rest.copy()
    pose[e] = rest[shoulder] + elbow
    pose[w] = pose[e] + wrist
    u = (pose[w] - pose[e]) / np.linalg.norm(pose[w] - pose[e])
    pose[hand], pose[tip], pose[thumb] = pose[w] + .06 * u, pose[w] + .13 * u, pose[w] + .06 * u + (0, 0, .04)
    return pose


def _cue(
    name: str, rest: np.ndarray,
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """``(joints, pose A, pose B, oscillation(phase))``: the clip moves rest -> A, and between A and B."""
    side = 1.0 if name.startswith("left") else -1.0
    arm = L_ARM if side > 0 else R_ARM
    legs = {"left": (13, 14, 15), "right": (17, 18, 19)}
    steady = lambda p: np.zeros_like(p)  # noqa: E731
    if name.endswith("wave"):
        a = _arm_pose(rest, arm, (side * .2, .15, 0), (side * .05, .25, 0))
        b = a.copy()
        b[list(arm[2:])] += (side * .15, 0, 0)
        return arm[1:], a, b, lambda p: (1 + np.sin(2 * np.pi * 3 * p)) / 2
    if name.endswith("overhead"):
        a = _arm_pose(rest, arm, (side * .08, .26, 0), (side * .02, .26, 0))
        return arm[1:], a, a, steady
    if name.endswith("side raise"):
        a = _arm_pose(rest, arm, (side * .26, 0, 0), (side * .25, .02, 0))
        return arm[1:], a, a, steady
    if name.endswith("clap"):
        a = _arm_pose(rest, arm, (side * .05, -.15, .2), (side * .15, .05, .2))
        b = _arm_pose(rest, arm, (side * .02, -.15, .2), (-side * .14, .05, .2))
        return arm[1:], a, b, lambda p: (1 - np.cos(2 * np.pi * 4 * p)) / 2
    if name.endswith("kick"):
        joints = legs["left" if side > 0 else "right"]
        hip = rest[12 if side > 0 else 16]
        b = rest.copy()
        b[joints[0]] = hip + (0, -.3, .25)
        b[joints[1]] = b[joints[0]] + (0, -.25, .35)
        b[joints[2]] = b[joints[1]] + (0, 0, .12)
        return joints, rest, b, lambda p: np.sin(2 * np.pi * p) ** 2
    if name == "squat":
        b = rest.copy()
        b[[13, 17]] += (0, .06, .22)
        return (13, 17), rest, b, lambda p: (1 - np.cos(2 * np.pi * 2 * p)) / 2
    if name == "hop":
        b = rest.copy()
        b[[13, 14, 15, 17, 18, 19]] += (0, .15, .05)
        return (13, 14, 15, 17, 18, 19), rest, b, lambda p: np.abs(np.sin(2 * np.pi * 3 * p))
    if name == "nod":
        b = rest.copy()
        b[3] += (0, -.06, .1)
        b[2] += (0, -.02, .04)
        return (2, 3), rest, b, lambda p: (1 + np.sin(2 * np.pi * 3 * p)) / 2
    if name == "shake head":
        b = rest.copy()
        b[3] += (.1, 0, 0)
        return (3,), rest, b, lambda p: np.sin(2 * np.pi * 3 * p)
    arms = list(L_ARM + R_ARM)  # the arms hang from the spine shoulder: they follow the trunk
    if name == "bow":
        a = rest.copy()
        a[[1, 20, 2, 3]] += [(0, -.02, .08), (0, -.1, .28), (0, -.13, .33), (0, -.18, .42)]
        a[arms] += a[20] - rest[20]
        return (1, 20, 2, 3, *arms), a, a, steady
    if name == "bounce":
        b = rest.copy()
        b[[0, 1, 20, 2, 3, *arms]] += (0, .12, 0)
        return (0, 1, 20, 2, 3, *arms), rest, b, lambda p: np.abs(np.sin(2 * np.pi * 3 * p))
    raise UnknownNameError.of("cue", name, [cue for _, cues in SYNTHETIC_CLASSES for cue in cues])


def _group_of(joints: Sequence[int]) -> str:
    """The body-part group a cue belongs to: that of its first joint (trunk cues carry the arms)."""
    return next(group for group, members in GROUPS.items() if joints[0] in members)


def generate_clip(label: int, rng: np.random.Generator, frames: int = 48, persons: int = 1, noise: float = 0.01,
                  rotation: float = 30.0, distractors: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One clip ``(3, frames, 25, persons)`` of class ``label`` and its relevance mask ``(frames, 25)``.

    The two cues move inside one time window; ``distractors`` body-part groups the class does not
    use sway slowly over the whole clip; the body is rotated about the vertical axis by up to
    ``rotation`` degrees, scaled, shifted, noised, and zero-padded after a random clip length."""
    rest = rest_pose()
    valid = int(rng.integers(int(frames * .75), frames + 1))
    length = int(rng.integers(int(frames * .4), int(frames * .6) + 1))
    start = int(rng.integers(0, valid - length + 1))
    t = np.arange(frames)
    phase = np.clip((t - start) / max(length - 1, 1), 0, 1)
    inside = (t >= start) & (t < start + length)
    envelope = np.clip(4 * np.minimum(phase, 1 - phase), 0, 1) * inside
    motion = np.repeat(rest[None], frames, axis=0)
    relevance = np.zeros((frames, 25), dtype=bool)
    used = set()
    for cue in SYNTHETIC_CLASSES[label][1]:
        joints, a, b, oscillation = _cue(cue, rest)
        used.add(_group_of(joints))
        osc = oscillation(phase) * inside
        idx = list(joints)
        motion[:, idx] += envelope[:, None, None] * ((a - rest)[idx][None] + osc[:, None, None] * (b - a)[idx][None])
        relevance[np.ix_(inside, idx)] = True
    free = [g for g in GROUPS if g not in used]
    for group in rng.choice(free, size=min(distractors, len(free)), replace=False):
        joints = list(GROUPS[group])
        frequency, offset = rng.uniform(.3, 1.0, size=3), rng.uniform(0, 2 * np.pi, size=3)
        sway = rng.uniform(.03, .07) * np.sin(2 * np.pi * frequency[None] * t[:, None] / frames + offset[None])
        motion[:, joints] += sway[:, None, :] * rng.uniform(.5, 1.0, size=(1, len(joints), 1))
    angle = np.deg2rad(rng.uniform(-rotation, rotation))
    rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    motion = motion @ rot.T * rng.uniform(.9, 1.1) + rng.uniform(-.1, .1, size=3) * (1, 0, 1)
    motion += rng.normal(0, noise, size=motion.shape)
    motion[valid:] = 0
    relevance[valid:] = False
    clip = np.zeros((3, frames, 25, persons), dtype=np.float32)
    clip[..., 0] = motion.transpose(2, 0, 1)
    return clip, relevance


class SyntheticSkeletons(SkeletonDataset):
    """Generated NTU-25 clips, balanced over classes, deterministic in (seed, split); ``inputs``
    ``(N, 3, T, 25, M)`` and ``masks`` ``(N, T, 25)`` are whole arrays."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> None:
        super().__init__(lambda i: inputs[i], labels, [name for name, _ in SYNTHETIC_CLASSES], inputs.shape[1:],
                         masks=masks)
        self.inputs = inputs

    def cue_joints(self, label: int) -> tuple[tuple[int, ...], ...]:
        """The joints moved by each of the class's two cues."""
        rest = rest_pose()
        return tuple(tuple(_cue(cue, rest)[0]) for cue in SYNTHETIC_CLASSES[label][1])


def build_skeleton_synthetic(split: str = "train", seed: int = 0, size: int | None = None, frames: int = 48,
                             persons: int = 1, noise: float = 0.01, rotation: float = 30.0,
                             distractors: int = 1) -> SyntheticSkeletons:
    """Registered as ``skeleton-synthetic``: ``size`` clips (default 800 train, 240 val/test) of the
    8 classes in ``SYNTHETIC_CLASSES``; splits use disjoint random streams of the same seed."""
    _check_split(split)
    size = size if size is not None else (800 if split == "train" else 240)
    rng = np.random.default_rng([int(seed), SPLITS.index(split)])
    labels = np.arange(size) % len(SYNTHETIC_CLASSES)
    rng.shuffle(labels)
    clips = np.zeros((size, 3, frames, 25, persons), dtype=np.float32)
    masks = np.zeros((size, frames, 25), dtype=bool)
    for i, label in enumerate(labels):
        clips[i], masks[i] = generate_clip(int(label), rng, frames, persons, noise, rotation, distractors)
    return SyntheticSkeletons(clips, labels, masks)
