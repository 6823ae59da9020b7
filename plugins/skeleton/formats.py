"""Readers for the data formats of the reference skeleton pipelines (REFERENCE.md §6).

* ``pyskl``: the pyskl / mmaction2 annotation pickle (NTU 3-D or COCO-17 2-D keypoints with scores);
* ``ctrgcn``: CTR-GCN's ``.npz`` (also InfoGCN, HD-GCN);
* ``kinetics-json``: the Kinetics-skeleton per-clip JSON files and their label index (OpenPose-18).

(ST-GCN's label pickles are read by ``data.build_skeleton_npy``.) Pickles are read with an unpickler
that builds only containers, numbers, text and numpy arrays: a data file cannot run code.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from camkit.plugin_manager import UnknownNameError
from camkit_plugins.skeleton.data import SkeletonDataset, _check_split, make_pipeline, with_split
from camkit_plugins.skeleton.preprocess import order_bodies_by_motion

#: What a data pickle may contain besides containers, numbers and text: numpy arrays and scalars.
_PICKLE_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it holds a {module}.{name}, and only data (numbers, text, lists, "
                                         f"dicts, numpy arrays) is read from a pickle")
        return super().find_class(module, name)


def load_pickle(path: str | Path) -> Any:
    """A pickle of plain data and numpy arrays; anything else is a ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, "rb") as file:
            return _DataUnpickler(file).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as exc:
        raise ValueError(f"{path}: cannot read this pickle: {exc}") from None


def graph_for_joints(joints: int, path: Path) -> str:
    """The built-in graph with this many joints."""
    graphs = {25: "ntu25", 18: "openpose18", 17: "coco17"}
    if joints not in graphs:
        raise ValueError(f"{path}: {joints} joints match no built-in graph (25: NTU, 18: OpenPose, 17: COCO); "
                         f"pass graph=... with a custom graph")
    return graphs[joints]


def fit_bodies(clip: np.ndarray, bodies: int) -> np.ndarray:
    """``(C, T, V, M)`` with exactly ``bodies`` bodies: the most active kept, missing ones zero."""
    if clip.shape[-1] > bodies:
        clip = order_bodies_by_motion(clip)[..., :bodies]
    if clip.shape[-1] < bodies:
        clip = np.concatenate([clip, np.zeros((*clip.shape[:-1], bodies - clip.shape[-1]), clip.dtype)], axis=-1)
    return clip


def _class_names(count: int, names: dict[int, str] | None = None) -> list[str]:
    return [(names or {}).get(i, f"class {i}") for i in range(count)]


# ---------------------------------------------------------------- pyskl / mmaction2 annotation pickle


def resolve_pyskl_split(split: str, names: Sequence[str], protocol: str | None, path: Path) -> str:
    """The pyskl split to read: ``split`` itself when the file has it (``xsub_val``), else camkit's
    ``train`` / ``val`` / ``test`` mapped to ``{protocol}_train`` / ``{protocol}_val`` (``protocol``
    may be left out when the file has one ``*_train`` / ``*_val`` pair)."""
    if split in names:
        return split
    if split not in ("train", "val", "test"):
        raise UnknownNameError.of("split", split, sorted(names), where=str(path))
    pairs = sorted(n[: -len("_train")] for n in names if n.endswith("_train") and n[: -len("_train")] + "_val" in names)
    if protocol is None:
        if len(pairs) != 1:
            raise ValueError(f"{path}: pass protocol= ({', '.join(pairs) or 'none found'}) or name a split "
                             f"({', '.join(sorted(names))})")
        protocol = pairs[0]
    wanted = f"{protocol}_{'train' if split == 'train' else 'val'}"
    if wanted not in names:
        raise UnknownNameError.of("split", wanted, sorted(names), where=str(path))
    return wanted


def pyskl_clip(annotation: dict[str, Any], path: Path) -> np.ndarray:
    """``(C, T, V, M)`` from one annotation: ``keypoint`` (M, T, V, C), plus ``keypoint_score``
    (M, T, V) as a last channel; 2-D pixel coordinates are scaled to [-1, 1] by ``img_shape``."""
    keypoint = np.asarray(annotation["keypoint"], dtype=np.float32)
    if keypoint.ndim != 4:
        raise ValueError(f"{path}: {annotation.get('frame_dir')}: keypoint must be (M, T, V, C), got {keypoint.shape}")
    if "keypoint_score" in annotation:
        score = np.asarray(annotation["keypoint_score"], dtype=np.float32)
        if score.shape != keypoint.shape[:3]:
            raise ValueError(f"{path}: {annotation.get('frame_dir')}: keypoint_score {score.shape} does not match "
                             f"keypoint {keypoint.shape}")
        if "img_shape" in annotation:
            height, width = annotation["img_shape"][:2]
            keypoint = keypoint / np.array([width / 2, height / 2], dtype=np.float32) - 1
        keypoint = np.concatenate([keypoint, score[..., None]], axis=-1)
    return keypoint.transpose(3, 1, 2, 0)


def build_pyskl(split: str = "train", seed: int = 0, path: str | None = None, protocol: str | None = None,
                bodies: int = 2, num_classes: int | None = None, graph: Any = None,
                **pipeline: Any) -> SkeletonDataset:
    """Registered as ``pyskl``: a pyskl / mmaction2 annotation pickle ``{"split": {name: [frame_dir]},
    "annotations": [{"frame_dir", "label", "keypoint" (M, T, V, C), "keypoint_score"?, ...}]}``.

    ``split``: a split of the file (``xsub_train``, ``xset_val`` ...) or camkit's ``train`` / ``val`` /
    ``test`` with ``protocol`` (``xsub``, ``xview``, ``xset``): ``val`` and ``test`` both read
    ``{protocol}_val``. 2-D keypoints get their score as a third channel (x, y, score); ``graph``
    defaults from the joint count (25 NTU, 17 COCO). Clip options as :class:`ClipPipeline` (``frames``
    100, pyskl's window)."""
    if path is None:
        raise ValueError("pyskl needs path=FILE.pkl (the annotation pickle)")
    file = Path(path)
    content = load_pickle(file)
    if not isinstance(content, dict) or not {"split", "annotations"} <= set(content):
        raise ValueError(f"{file}: not a pyskl annotation pickle (a dict with 'split' and 'annotations')")
    broken = next((i for i, a in enumerate(content["annotations"])
                   if not isinstance(a, dict) or not {"frame_dir", "label", "keypoint"} <= set(a)), None)
    if broken is not None:
        raise ValueError(f"{file}: annotation {broken} lacks frame_dir, label or keypoint")
    name = resolve_pyskl_split(split, list(content["split"]), protocol, file)
    wanted = set(content["split"][name])
    annotations = [a for a in content["annotations"] if a["frame_dir"] in wanted]
    if not annotations:
        raise ValueError(f"{file}: split {name!r} has no annotations")
    count = num_classes if num_classes is not None else 1 + max(int(a["label"]) for a in content["annotations"])
    first = pyskl_clip(annotations[0], file)
    channels, joints = first.shape[0], first.shape[2]
    clips, training = make_pipeline("train" if name.endswith("_train") else "val", 100, pipeline)
    return SkeletonDataset(lambda i: fit_bodies(pyskl_clip(annotations[i], file), bodies),
                           [int(a["label"]) for a in annotations], _class_names(count),
                           (channels, clips.frames, joints, bodies), graph=graph or graph_for_joints(joints, file),
                           pipeline=clips, training=training,
                           coordinates=channels - 1 if "keypoint_score" in annotations[0] else channels,
                           source=lambda i: f"{file} clip {annotations[i]['frame_dir']}")


# ---------------------------------------------------------------- CTR-GCN .npz


def build_ctrgcn(split: str = "train", seed: int = 0, path: str | None = None, num_classes: int | None = None,
                 **pipeline: Any) -> SkeletonDataset:
    """Registered as ``ctrgcn``: CTR-GCN's ``.npz`` with ``x_train`` / ``x_test`` (N, T, 150) = 2 bodies
    x 25 joints x xyz and one-hot (or integer) ``y_train`` / ``y_test``; ``val`` and ``test`` read the
    test arrays. Clip options as :class:`ClipPipeline` (``frames`` 64, CTR-GCN's window)."""
    _check_split(split)
    if path is None:
        raise ValueError("ctrgcn needs path=FILE.npz")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    side = "train" if split == "train" else "test"
    with np.load(file, allow_pickle=False) as archive:
        missing = [k for k in (f"x_{side}", f"y_{side}") if k not in archive.files]
        if missing:
            raise ValueError(f"{file}: no {', '.join(missing)} (has {', '.join(archive.files)})")
        x, y = archive[f"x_{side}"], archive[f"y_{side}"]
    if x.ndim != 3 or x.shape[2] != 150:
        raise ValueError(f"{file}: x_{side} must be (N, T, 150) = 2 bodies x 25 joints x xyz, got {x.shape}")
    labels = y.argmax(axis=1) if y.ndim == 2 else y
    if len(labels) != len(x):
        raise ValueError(f"{file}: {len(labels)} labels in y_{side} for {len(x)} clips in x_{side}")
    clips_array = x.reshape(len(x), x.shape[1], 2, 25, 3).transpose(0, 4, 1, 3, 2)  # (N, 3, T, 25, 2)
    count = num_classes if num_classes is not None else (y.shape[1] if y.ndim == 2 else int(labels.max()) + 1)
    clips, training = make_pipeline(split, 64, pipeline)
    return SkeletonDataset(lambda i: clips_array[i], labels, _class_names(count), (3, clips.frames, 25, 2),
                           pipeline=clips, training=training, source=lambda i: f"{file} x_{side}[{i}]")


# ---------------------------------------------------------------- Kinetics-skeleton JSON


def read_kinetics_clip(path: Path, bodies: int = 2) -> np.ndarray:
    """One Kinetics-skeleton JSON clip as ``(3, T, 18, bodies)``: (x - 0.5, y - 0.5, score) per
    OpenPose-18 joint (joints with score 0 are zero); in each frame the ``bodies`` skeletons with the
    highest summed score are kept, best first. Frame ``frame_index - first index`` holds each frame."""
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    frames = content.get("data") if isinstance(content, dict) else None
    if not isinstance(frames, list):
        raise ValueError(f"{path}: a Kinetics-skeleton clip is a dict with a 'data' list of frames")
    if not frames:
        return np.zeros((3, 1, 18, bodies), np.float32)
    try:
        return _kinetics_frames(frames, path, bodies)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a Kinetics-skeleton clip (each frame needs frame_index and skeleton, "
                         f"each skeleton pose and score): {exc!r}") from None


def _kinetics_frames(frames: list[Any], path: Path, bodies: int) -> np.ndarray:
    indices = [int(frame["frame_index"]) for frame in frames]
    first = min(indices)
    out = np.zeros((3, max(indices) - first + 1, 18, bodies), np.float32)
    for index, frame in zip(indices, frames):
        people = []
        for person in frame.get("skeleton", []):
            pose, score = np.asarray(person["pose"], np.float32), np.asarray(person["score"], np.float32)
            if pose.shape != (36,) or score.shape != (18,):
                raise ValueError(f"{path}: frame {index}: a skeleton needs 36 pose values and 18 scores, "
                                 f"got {pose.size} and {score.size}")
            xyz = np.stack([pose[0::2] - 0.5, pose[1::2] - 0.5, score])
            xyz[:2, score == 0] = 0
            people.append(xyz)
        people.sort(key=lambda p: -float(p[2].sum()))
        for slot, person in enumerate(people[:bodies]):
            out[:, index - first, :, slot] = person
    return out


def build_kinetics_json(split: str = "train", seed: int = 0, root: str | None = None, labels: str | None = None,
                        bodies: int = 2, num_classes: int | None = None, **pipeline: Any) -> SkeletonDataset:
    """Registered as ``kinetics-json``: a folder of Kinetics-skeleton clips ``{id}.json`` and the label
    index ``{id: {"has_skeleton", "label", "label_index"}}`` (``{split}`` in either path is replaced by
    the split, e.g. ``root=kinetics_{split} labels=kinetics_{split}_label.json``). Clips without a
    skeleton are skipped. OpenPose-18 graph; clip options as :class:`ClipPipeline` (``frames`` 300)."""
    _check_split(split)
    if root is None or labels is None:
        raise ValueError("kinetics-json needs root=FOLDER (the clip JSON files) and labels=FILE (the label index)")
    folder, label_file = with_split(root, split), with_split(labels, split)
    if not label_file.is_file():
        raise FileNotFoundError(f"{label_file}: no such label index")
    index = json.loads(label_file.read_text())
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .json clips")
    unknown = [f.name for f in files if f.stem not in index]
    if unknown:
        raise ValueError(f"{unknown[0]}: not in the label index {label_file}")
    chosen = [f for f in files if index[f.stem].get("has_skeleton", True)]
    label_ids = [int(index[f.stem]["label_index"]) for f in chosen]
    names = {int(entry["label_index"]): str(entry.get("label", "")) or f"class {entry['label_index']}"
             for entry in index.values()}
    count = num_classes if num_classes is not None else max(names) + 1
    clips, training = make_pipeline(split, 300, pipeline)
    return SkeletonDataset(lambda i: read_kinetics_clip(chosen[i], bodies), label_ids, _class_names(count, names),
                           (3, clips.frames, 18, bodies), graph="openpose18", pipeline=clips, training=training,
                           coordinates=2, source=lambda i: str(chosen[i]))
