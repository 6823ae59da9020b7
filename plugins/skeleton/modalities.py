"""The four input modalities of modern skeleton pipelines, computed from joint coordinates.

``(N, C, T, V, M)`` in, same shape out (REFERENCE.md §6): ``joint`` as is; ``bone`` = joint minus
its parent joint (the centre joint's bone is zero); ``joint-motion`` = x[t+1] - x[t] (the last frame
zero); ``bone-motion`` = the motion of the bones. Called "modalities" so they are not confused with
RA-GCN's streams. pyskl fuses the four models' scores 2 : 2 : 1 : 1.
"""

from __future__ import annotations

from typing import Any, Sequence

from camkit.plugin_manager import UnknownNameError

MODALITIES = ("joint", "bone", "joint-motion", "bone-motion")
#: pyskl's late-fusion weights of the four modalities.
FUSION_WEIGHTS = {"joint": 2.0, "bone": 2.0, "joint-motion": 1.0, "bone-motion": 1.0}


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise UnknownNameError.of("modality", modality, MODALITIES)
    return modality


def bones(x: Any, parents: Sequence[int]) -> Any:
    """Each joint minus its parent (``parents[v]``; a joint that is its own parent gets zero)."""
    import torch

    index = torch.as_tensor(list(parents), device=x.device)
    return x - x.index_select(3, index)


def motion(x: Any) -> Any:
    """``x[:, :, t + 1] - x[:, :, t]``, with zeros in the last frame."""
    out = x.new_zeros(x.shape)
    out[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    return out


def to_modality(x: Any, modality: str, parents: Sequence[int]) -> Any:
    """Joint coordinates ``(N, C, T, V, M)`` as ``modality``."""
    check_modality(modality)
    if modality.startswith("bone"):
        x = bones(x, parents)
    return motion(x) if modality.endswith("motion") else x
