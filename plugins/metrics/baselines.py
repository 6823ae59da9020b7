"""Baseline maps every report shows next to the methods: a centre Gaussian and a random map.

Both ignore the model. The random map is seeded by each sample's global id, so it does not depend
on batching or on how the data are sharded across processes."""

from __future__ import annotations

from typing import Any

from camkit.layout import Layout
from camkit.plugin_manager import UnknownNameError

BASELINES = ("center", "random")


def center_maps(shape: tuple[int, ...], map_letters: str, device: Any = "cpu", sigma: float = 0.25) -> Any:
    """``(N, *sites)`` Gaussian centred on the continuous axes (std = ``sigma`` x the axis length),
    constant along discrete axes (joints), peak 1."""
    import torch

    from camkit.layout import CONTINUOUS, axis_kinds

    kinds = axis_kinds()
    out = torch.ones(shape[1:], device=device)
    for axis, letter in enumerate(map_letters[1:]):
        if kinds.get(letter) != CONTINUOUS:
            continue
        size = shape[axis + 1]
        coords = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2.0
        profile = torch.exp(-0.5 * (coords / (sigma * size)) ** 2)
        view = [1] * (len(shape) - 1)
        view[axis] = size
        out = out * profile.view(view)
    return out.expand(shape).clone()


def random_maps(shape: tuple[int, ...], indices: Any, seed: int = 0, device: Any = "cpu") -> Any:
    """``(N, *sites)`` uniform [0, 1) noise; row i seeded by ``(seed, indices[i])``."""
    import torch

    rows = []
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(index))
        rows.append(torch.rand(shape[1:], generator=generator))
    return torch.stack(rows).to(device)


def baseline_maps(name: str, like: Any, map_letters: str, indices: Any, seed: int = 0) -> Any:
    """Maps of the baseline ``name`` with the shape and device of ``like``."""
    shape = tuple(like.shape)
    if name == "center":
        return center_maps(shape, map_letters, like.device)
    if name == "random":
        return random_maps(shape, indices, seed, like.device)
    raise UnknownNameError.of("baseline", name, BASELINES)


def map_letters_for(input_layout: Layout) -> str:
    """Letters of maps at input resolution with reducible axes averaged away (``NCTVM`` -> ``NTV``)."""
    return "N" + "".join(ch for ch in input_layout.site_letters if ch not in input_layout.reducible_letters)
