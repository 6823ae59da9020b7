"""Skeleton graphs as data (NTU RGB+D 25, OpenPose 18, COCO 17, any edge list) and the ST-GCN partitions.

Only numpy here: the adjacency is a plain ``(K, V, V)`` array, normalised ``A D^-1`` so that every
column sums to one over the partitions (each node averages its neighbourhood).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from camkit.plugin_manager import UnknownNameError

NTU25_JOINTS = (
    "spine base", "spine mid", "neck", "head", "left shoulder", "left elbow", "left wrist", "left hand",
    "right shoulder", "right elbow", "right wrist", "right hand", "left hip", "left knee", "left ankle",
    "left foot", "right hip", "right knee", "right ankle", "right foot", "spine shoulder", "left hand tip",
    "left thumb", "right hand tip", "right thumb",
)
NTU25_BONES = (
    (0, 1), (1, 20), (2, 20), (3, 2), (4, 20), (5, 4), (6, 5), (7, 6), (8, 20), (9, 8), (10, 9), (11, 10),
    (12, 0), (13, 12), (14, 13), (15, 14), (16, 0), (17, 16), (18, 17), (19, 18), (21, 22), (22, 7),
    (23, 24), (24, 11),
)
OPENPOSE18_JOINTS = (
    "nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder", "left elbow",
    "left wrist", "right hip", "right knee", "right ankle", "left hip", "left knee", "left ankle",
    "right eye", "left eye", "right ear", "left ear",
)
OPENPOSE18_BONES = (
    (4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5), (8, 2), (5, 1), (2, 1),
    (0, 1), (15, 0), (14, 0), (17, 15), (16, 14),
)

COCO17_JOINTS = (
    "nose", "left eye", "right eye", "left ear", "right ear", "left shoulder", "right shoulder", "left elbow",
    "right elbow", "left wrist", "right wrist", "left hip", "right hip", "left knee", "right knee", "left ankle",
    "right ankle",
)
COCO17_BONES = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9), (8, 10),
    (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)

#: Body-part sets of NTU-25 used for occlusion tests (REFERENCE.md).
NTU25_PARTS: dict[str, tuple[int, ...]] = {
    "left arm": (4, 5, 6, 7, 21, 22),
    "right arm": (8, 9, 10, 11, 23, 24),
    "two hands": (21, 22, 23, 24),
    "two legs": (12, 13, 14, 15, 16, 17, 18, 19),
    "trunk": (0, 1, 2, 3, 20),
}

PARTITIONS = ("uniform", "distance", "spatial")


@dataclass(frozen=True)
class SkeletonGraph:
    """Joints (names), bones (undirected edges) and the centre joint used by the spatial partition."""

    name: str
    joints: tuple[str, ...]
    bones: tuple[tuple[int, int], ...]
    center: int

    def __post_init__(self) -> None:
        v = len(self.joints)
        bad = [edge for edge in self.bones if len(edge) != 2 or not all(0 <= j < v for j in edge) or edge[0] == edge[1]]
        if bad:
            raise ValueError(f"graph {self.name!r}: edges {bad} are not pairs of distinct joints in 0..{v - 1}")
        if not 0 <= self.center < v:
            raise ValueError(f"graph {self.name!r}: centre joint {self.center} is not in 0..{v - 1}")

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def hop_distance(self, max_hop: int = 1) -> np.ndarray:
        """``(V, V)`` number of bones between joints, ``inf`` beyond ``max_hop``."""
        v = self.num_joints
        link = np.eye(v, dtype=bool)
        for i, j in self.bones:
            link[i, j] = link[j, i] = True
        distance = np.full((v, v), np.inf)
        reach = np.eye(v, dtype=bool)
        distance[reach] = 0
        for hop in range(1, max_hop + 1):
            reach = (reach.astype(int) @ link.astype(int)) > 0
            distance[reach & np.isinf(distance)] = hop
        return distance

    def adjacency(self, partition: str = "spatial", max_hop: int = 1, dilation: int = 1) -> np.ndarray:
        """``(K, V, V)`` normalised adjacency, ``A[k, v, w]``: weight of joint v in the average at w.

        ``uniform``: K = 1; ``distance``: K = max_hop + 1 (one partition per hop); ``spatial``: root,
        neighbours farther from the centre, neighbours closer to it (K = 3 for max_hop = 1)."""
        if partition not in PARTITIONS:
            raise UnknownNameError.of("partition", partition, PARTITIONS)
        hops = self.hop_distance(max_hop)
        valid = range(0, max_hop + 1, dilation)
        within = np.isin(hops, list(valid))
        normalised = _normalise_columns(within.astype(np.float64))
        if partition == "uniform":
            return normalised[None].astype(np.float32)
        if partition == "distance":
            return np.stack([normalised * (hops == hop) for hop in valid]).astype(np.float32)
        centre = hops[:, self.center]  # distance of every joint to the centre (inf when unreachable)
        parts = []
        for hop in valid:
            at_hop = hops == hop
            # [v, w]: joint v contributes to w; grouped by v's distance to the centre relative to w's
            same = at_hop & (centre[:, None] == centre[None, :])
            outer = at_hop & (centre[:, None] > centre[None, :])  # v farther from the centre than w
            inner = at_hop & (centre[:, None] < centre[None, :])
            if hop == 0:
                parts.append(normalised * same)
            else:
                parts += [normalised * (same | outer), normalised * inner]
        return np.stack(parts).astype(np.float32)

    def parents(self) -> tuple[int, ...]:
        """Each joint's parent: its neighbour one bone closer to the centre (the smallest index on a tie);
        the centre, and joints not connected to it, are their own parent (their bone is zero).

        For graphs whose bones are trees listed as (child, parent) towards the centre (NTU-25,
        OpenPose-18) this is the second joint of each bone."""
        hops = self.hop_distance(self.num_joints)
        centre = hops[:, self.center]
        parent = list(range(self.num_joints))
        for i, j in sorted(self.bones):
            for child, candidate in ((i, j), (j, i)):
                closer = centre[candidate] == centre[child] - 1
                if closer and (parent[child] == child or candidate < parent[child]):
                    parent[child] = candidate
        return tuple(parent)


def _normalise_columns(a: np.ndarray) -> np.ndarray:
    """``A D^-1`` with D the column sums: each column averages (isolated columns stay zero)."""
    degree = a.sum(axis=0)
    inverse = np.where(degree > 0, 1.0 / np.where(degree > 0, degree, 1.0), 0.0)
    return a * inverse[None, :]


NTU25 = SkeletonGraph("ntu25", NTU25_JOINTS, NTU25_BONES, center=20)
OPENPOSE18 = SkeletonGraph("openpose18", OPENPOSE18_JOINTS, OPENPOSE18_BONES, center=1)
COCO17 = SkeletonGraph("coco17", COCO17_JOINTS, COCO17_BONES, center=0)
GRAPHS = {"ntu25": NTU25, "openpose18": OPENPOSE18, "coco17": COCO17}


def skeleton_layout() -> Any:
    """The layout of skeleton clips and features, ``NCTVM``: masks over ``"NV"`` or ``"NTV"`` are spread
    onto clips with ``skeleton_layout().broadcast(mask, "NTV")``."""
    from camkit.layout import Layout

    return Layout.parse("NCTVM")


def get_graph(spec: "str | os.PathLike[str] | SkeletonGraph | Mapping[str, Any]") -> SkeletonGraph:
    """A graph by name (``"ntu25"``, ``"openpose18"``, ``"coco17"``), as is, from ``{"joints": names or count,
    "bones": [[i, j], ...], "center": c}`` (a custom edge list; JSON-friendly for checkpoints) or from a
    JSON file holding that object (a path ending in ``.json``; its name defaults to the file's stem)."""
    if isinstance(spec, SkeletonGraph):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        if spec in GRAPHS:
            return GRAPHS[str(spec)]
        if str(spec).endswith(".json") or Path(spec).is_file():
            return read_graph_file(spec)
        raise UnknownNameError.of("skeleton graph", str(spec), sorted(GRAPHS),
                                  alternative="a dict with joints, bones, center, or a .json file holding one")
    if isinstance(spec, Mapping):
        missing = [key for key in ("joints", "bones") if key not in spec]
        if missing:
            raise ValueError(f"a custom graph needs {', '.join(missing)}")
        joints = spec["joints"]
        names: Sequence[str] = [f"joint {i}" for i in range(joints)] if isinstance(joints, int) else list(joints)
        bones = tuple((int(i), int(j)) for i, j in spec["bones"])
        return SkeletonGraph(str(spec.get("name", "custom")), tuple(names), bones, int(spec.get("center", 0)))
    raise TypeError(f"a graph is a name, a JSON file, a SkeletonGraph or a dict, got {type(spec).__name__}")


def read_graph_file(path: "str | os.PathLike[str]") -> SkeletonGraph:
    """The graph in a JSON file ``{"joints": ..., "bones": ..., "center": ...}`` (see ``get_graph``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"skeleton graph file {path}: no such file")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"skeleton graph file {path}: not JSON ({exc})") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"skeleton graph file {path}: a JSON object with joints, bones and center, not "
                         f"{type(spec).__name__}")
    try:
        return get_graph({"name": path.stem, **spec})
    except (ValueError, TypeError) as exc:
        raise ValueError(f"skeleton graph file {path}: {exc}") from exc


def portable_graph(spec: Any) -> "str | dict[str, Any]":
    """What a checkpoint records: a built-in graph's name, else the graph itself as a JSON object (so the
    checkpoint does not depend on a graph file staying where it was)."""
    graph = get_graph(spec)
    if GRAPHS.get(graph.name) is graph:
        return graph.name
    return {"name": graph.name, "joints": list(graph.joints), "bones": [list(bone) for bone in graph.bones],
            "center": graph.center}
