"""Feature-tensor layouts: one letter per axis, e.g. ``NCHW``, ``NHWC``, ``NCL``, ``NCTVM``.

``N`` is the batch axis and ``C`` the channel axis (summed against the weights). Every other
letter is a *site* axis and has a kind:

* continuous (``H W D T L``): resampled with linear / bilinear / trilinear interpolation;
* discrete (``V`` joints, ``G`` graph nodes): never interpolated;
* reducible (``M`` persons): discrete, and may be averaged away after weighting.

Plugins add letters through ``camkit_register_axes`` and names through
``camkit_register_layouts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

CONTINUOUS = "continuous"
DISCRETE = "discrete"
REDUCIBLE = "reducible"
AXIS_KINDS = (CONTINUOUS, DISCRETE, REDUCIBLE)

BUILTIN_AXES: dict[str, str] = {
    "H": CONTINUOUS,  # height
    "W": CONTINUOUS,  # width
    "D": CONTINUOUS,  # depth
    "T": CONTINUOUS,  # time
    "L": CONTINUOUS,  # sequence / signal length
    "V": DISCRETE,  # skeleton joints (vertices)
    "G": DISCRETE,  # graph nodes
    "M": REDUCIBLE,  # persons / bodies
}
RESERVED = {"N", "C", "K"}  # batch, channel, and K = targets axis of maps


def axis_kinds() -> dict[str, str]:
    """Built-in axis letters plus those registered by plugins."""
    kinds = dict(BUILTIN_AXES)
    from camkit.plugin_manager import registry

    for letter, kind in registry("axes").items():
        if len(letter) != 1 or not letter.isupper() or letter in RESERVED:
            raise ValueError(f"axis letter {letter!r} must be one upper-case letter other than N, C, K")
        if kind not in AXIS_KINDS:
            raise ValueError(f"axis {letter!r}: kind must be one of {AXIS_KINDS}, got {kind!r}")
        if letter in BUILTIN_AXES and BUILTIN_AXES[letter] != kind:
            raise ValueError(f"axis {letter!r} is built in as {BUILTIN_AXES[letter]!r}; cannot redefine it")
        kinds[letter] = kind
    return kinds


@dataclass(frozen=True)
class Layout:
    """A parsed layout string. ``Layout.parse("NHWC")`` or ``Layout.parse("skeleton")``."""

    letters: str
    kinds: tuple[str, ...]  # kind of every site letter, in order of ``site_letters``

    @classmethod
    def parse(cls, spec: "str | Layout", channels: bool = True) -> "Layout":
        """``channels=False``: the channel axis may be missing (an input such as a waveform ``NL``)."""
        if isinstance(spec, Layout):
            return spec
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"layout must be a non-empty string such as 'NCHW', got {spec!r}")
        from camkit.plugin_manager import registry

        named = registry("layouts")
        letters = named.get(spec, spec)
        kinds = axis_kinds()
        problems = []
        if not letters.isalpha() or not letters.isupper():
            problems.append("use upper-case axis letters")
        if len(set(letters)) != len(letters):
            problems.append("an axis letter appears twice")
        if letters.count("N") != 1:
            problems.append("it needs exactly one batch axis N")
        if letters.count("C") != 1 and (channels or letters.count("C") > 1):
            problems.append("it needs exactly one channel axis C")
        unknown = [ch for ch in letters if ch not in kinds and ch not in ("N", "C")]
        if unknown:
            problems.append(f"unknown axis letter(s) {''.join(unknown)!r} (known: N C {' '.join(sorted(kinds))})")
        if problems:
            raise ValueError(f"malformed layout {spec!r}: " + "; ".join(problems))
        site_letters = [ch for ch in letters if ch not in ("N", "C")]
        return cls(letters, tuple(kinds[ch] for ch in site_letters))

    # -- axes
    @property
    def rank(self) -> int:
        return len(self.letters)

    @property
    def batch_axis(self) -> int:
        return self.letters.index("N")

    @property
    def channel_axis(self) -> int:
        if "C" not in self.letters:
            raise ValueError(f"layout {self.letters!r} has no channel axis C")
        return self.letters.index("C")

    @property
    def site_letters(self) -> str:
        return "".join(ch for ch in self.letters if ch not in ("N", "C"))

    def kind(self, letter: str) -> str:
        return dict(zip(self.site_letters, self.kinds))[letter]

    @property
    def continuous_letters(self) -> str:
        return "".join(ch for ch, k in zip(self.site_letters, self.kinds) if k == CONTINUOUS)

    @property
    def reducible_letters(self) -> str:
        return "".join(ch for ch, k in zip(self.site_letters, self.kinds) if k == REDUCIBLE)

    def broadcast(self, tensor: Any, letters: str) -> Any:
        """View ``tensor``, whose axes are ``letters`` (some of this layout's, any order: a ``"NHW"`` map, a
        ``"NTV"`` skeleton mask, an ``"NV"`` joint mask), so that it broadcasts against tensors of this
        layout: each axis moves to its place, every other axis gets size 1. The one place a per-site map
        is spread onto inputs or features (masks, occlusions, Score-CAM, metrics)."""
        missing = [ch for ch in letters if ch not in self.letters]
        if missing or len(letters) != tensor.ndim:
            raise ValueError(f"axes {letters!r} of a tensor of shape {tuple(tensor.shape)} do not fit layout "
                             f"{self.letters!r}" + (f": {''.join(missing)!r} not in it" if missing else ""))
        order = sorted(range(len(letters)), key=lambda i: self.letters.index(letters[i]))
        shape = [1] * self.rank
        for i in order:
            shape[self.letters.index(letters[i])] = tensor.shape[i]
        return tensor.permute(order).reshape(shape)

    def map_letters(self, multi_target: bool = False, reduce: str = "") -> str:
        """Letters of a map computed from these features: batch first, ``K`` for several targets per
        sample, then the sites in order, without the ``reduce``d ones (``"NKHW"``, ``"NTV"``)."""
        return ("NK" if multi_target else "N") + "".join(ch for ch in self.site_letters if ch not in reduce)

    # -- einsum subscripts (no hand-written broadcasting anywhere)
    @property
    def subscripts(self) -> str:
        return self.letters.lower()

    # -- checks
    def check(self, shape: Sequence[int], what: str = "features") -> None:
        """Raise a ``ValueError`` naming the layout and the shape when they do not fit."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != self.rank:
            raise ValueError(f"{what} of shape {shape} (rank {len(shape)}) do not match layout "
                             f"{self.letters!r} (rank {self.rank})")
        if "C" in self.letters and shape[self.channel_axis] < 1:
            raise ValueError(f"{what} of shape {shape} have no channels on axis C of layout {self.letters!r}")

    def sizes(self, shape: Sequence[int]) -> dict[str, int]:
        """``{letter: size}`` for a tensor of this layout."""
        self.check(shape, "tensor")
        return dict(zip(self.letters, (int(s) for s in shape)))

    def __str__(self) -> str:
        return self.letters


def default_input_layout(feature_layout: Layout) -> Layout:
    """Channels-first input with the feature sites in the same order (``NHWC`` features -> ``NCHW``)."""
    return Layout.parse("NC" + feature_layout.site_letters)


def layout_for_rank(rank: int) -> Layout:
    """The conventional channels-first layout of a feature tensor of this rank."""
    by_rank = {3: "NCL", 4: "NCHW", 5: "NCDHW"}
    if rank not in by_rank:
        raise ValueError(f"cannot guess a layout for a rank-{rank} feature tensor; pass layout=...")
    return Layout.parse(by_rank[rank])
