"""Maps where people look at them: overlays and labelled grids for notebooks (and the explorer app).

    import camkit
    camkit.overlay(photo, result.maps[0])          # a PIL image: JET(map) blended over the photo
    result.show(photos, classes=names)             # a labelled grid; renders in Jupyter
    camkit.compare({"cam": r1, "gradcam": r2}, photos, classes=names)   # methods side by side

Pictures come in as numpy arrays, PIL images or tensors, in any value range (uint8, floats in [0, 1],
normalised inputs: stretched to [0, 255]), channels first or last, grey or RGB. Each layout gets its
natural picture: pictures (``HW``) an overlay, volumes (``DHW``) a montage of slices, 1-D signals
(``T`` or ``L``) the signal drawn over a band coloured by the map, skeletons (``TV``) the joint x time
heat map and, given the clip, the skeleton drawn at key frames. Importing this module imports neither
torch nor matplotlib (only numpy).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from camkit.kernels import JET_SIZE, NumpyKernel, jet_table

if TYPE_CHECKING:
    from PIL import Image

    from camkit.explainer import CamResult

REPR_SAMPLES = 16  # a result shown by Jupyter's rich display: its first samples only
SLICES = 8  # slices in a volume montage
TITLE_SIZE = 12  # pixels of a tile's title text
MIN_TILE = 128  # pixels: smaller pictures are enlarged (by a whole factor) in a grid
MAX_TILE = 360  # pixels: taller pictures are shrunk in a grid (their overlays keep their size)


def to_array(value: Any) -> np.ndarray:
    """A numpy copy of an array, tensor (any device, any float type) or PIL image."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point() and value.element_size() < 4:  # bfloat16 has no numpy type
            value = value.float()
        return value.numpy()
    if hasattr(value, "getbands"):  # a PIL image
        return np.asarray(value.convert("RGB") if value.mode not in ("L", "RGB") else value)
    return np.asarray(value)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """uint8 as is; booleans to 0 / 255; floats in [0, 1] scaled by 255; other values in [0, 255] rounded;
    anything else (normalised inputs, 16-bit pictures) stretched from its minimum to its maximum."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    v = np.nan_to_num(values.astype(np.float64))
    low, high = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if low >= 0.0 and high <= 1.0 and np.issubdtype(values.dtype, np.floating):
        v = v * 255.0
    elif not (low >= 0.0 and high <= 255.0):
        v = (v - low) * (255.0 / (high - low)) if high > low else np.zeros_like(v)
    return np.floor(v + 0.5).clip(0, 255).astype(np.uint8)


def to_picture(image: Any) -> np.ndarray:
    """One picture as ``(H, W, 3)`` uint8 RGB: ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C = 1, 3 or 4
    (alpha dropped), any value range (``to_uint8``)."""
    values = to_array(image)
    if values.ndim == 3 and values.shape[-1] not in (1, 3, 4) and values.shape[0] in (1, 3, 4):
        values = values.transpose(1, 2, 0)  # channels first
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[-1] not in (1, 3, 4):
        raise ValueError(f"a picture is (H, W), (H, W, C) or (C, H, W) with 1, 3 or 4 channels; got shape "
                         f"{tuple(values.shape)}")
    values = to_uint8(values[..., :3])
    return np.ascontiguousarray(np.repeat(values, 3, axis=-1) if values.shape[-1] == 1 else values)


def unit_map(cam: Any) -> np.ndarray:
    """A map as float32 in [0, 1]: NaN as 0; values already in [0, 1] (normalised maps) kept as they are,
    others (raw maps) min-max scaled."""
    values = np.nan_to_num(to_array(cam).astype(np.float32))
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0.0 and high <= 1.0:
        return values
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def resized(cam: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``cam`` linearly resampled to ``shape`` (the kernels' resampling, axis by axis)."""
    sizes = {axis: int(size) for axis, size in enumerate(shape) if cam.shape[axis] != size}
    return NumpyKernel().resample(cam, sizes) if sizes else cam


def colourise(cam: Any) -> np.ndarray:
    """``(..., 3)`` uint8: the JET colour of each value of a map (``unit_map``), as every overlay uses."""
    index = np.floor(NumpyKernel.jet_indices(unit_map(cam))).astype(np.int64).clip(0, JET_SIZE - 1)
    return np.floor(jet_table()[index] * 255.0 + 0.5).astype(np.uint8)


def overlay(image: Any, cam: Any, alpha: float = 0.5) -> "Image.Image":
    """JET(``cam``) x ``alpha`` + picture x (1 - ``alpha``) as a PIL image the size of the picture (the map is
    resampled to it; see ``to_picture`` and ``unit_map`` for what each accepts). The numbers of
    ``camkit explain``'s overlays (``camkit.kernels``)."""
    from PIL import Image

    picture = to_picture(image)
    cam = np.squeeze(unit_map(cam))
    if cam.ndim != 2:
        raise ValueError(f"an overlay needs a 2-D map, got shape {tuple(cam.shape)}")
    cam = resized(cam, picture.shape[:2])
    blended = NumpyKernel().overlay(picture.transpose(2, 0, 1)[None], cam[None], alpha)
    return Image.fromarray(blended[0].transpose(1, 2, 0))


def label_text(name: str, probability: float) -> str:
    """``"dog 97.31%"``, as on every overlay camkit writes."""
    from camkit_plugins.image.render import label_text as text

    return text(name, probability)


@dataclass
class Gallery:
    """Pictures with their titles, shown as a grid of ``columns``: ``image`` (one PIL picture), ``save(path)``,
    and Jupyter's rich display (``_repr_png_``, ``_repr_html_``)."""

    tiles: list["Image.Image"]
    titles: list[str]
    columns: int = 4
    note: str = ""
    _image: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.tiles) != len(self.titles):
            raise ValueError(f"{len(self.tiles)} pictures but {len(self.titles)} titles")
        self.columns = max(1, min(int(self.columns), len(self.tiles) or 1))

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> "Image.Image":
        return self.tiles[index]

    def __repr__(self) -> str:
        shown = ", ".join(self.titles[:3]) + (", ..." if len(self.titles) > 3 else "")
        return f"<camkit Gallery: {len(self.tiles)} picture(s) in {self.columns} column(s): {shown}>"

    @property
    def image(self) -> "Image.Image":
        """The grid: every tile in a cell of the largest tile's size, its title above it."""
        if self._image is None:
            self._image = _compose(self.tiles, self.titles, self.columns)
        return self._image

    def save(self, path: str | Path) -> Path:
        """Write the grid (format from the suffix), atomically."""
        from camkit.io import atomic_path

        path = Path(path)
        with atomic_path(path) as temporary:
            self.image.save(temporary, format=_format_of(path))
        return path

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        data = base64.b64encode(self._repr_png_()).decode("ascii")
        note = f"<div>{html.escape(self.note)}</div>" if self.note else ""
        return f'{note}<img src="data:image/png;base64,{data}" alt="{html.escape(repr(self))}"/>'


def _format_of(path: Path) -> str:
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
    if path.suffix.lower() not in formats:
        raise ValueError(f"{path}: write a gallery as {', '.join(formats)}")
    return formats[path.suffix.lower()]


def _shrunk(tile: "Image.Image") -> "Image.Image":
    from PIL import Image

    scale = MAX_TILE / tile.height  # by height: wide figures (skeletons, signals) stay legible
    if scale >= 1.0:
        return tile
    return tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))),
                       Image.Resampling.LANCZOS)


def _compose(tiles: Sequence["Image.Image"], titles: Sequence[str], columns: int) -> "Image.Image":
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=TITLE_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [tuple(int(round(v)) for v in measure.multiline_textbbox((0, 0), title, font=font, spacing=3))
             if title else (0, 0, 0, 0) for title in titles]
    band = max((box[3] for box in boxes), default=0) + 6
    tallest = max((tile.height for tile in tiles), default=1)
    zoom = max(1, -(-MIN_TILE // tallest))  # small pictures (32-px tests, MNIST) enlarged, pixels kept sharp
    tiles = [tile.resize((tile.width * zoom, tile.height * zoom), Image.Resampling.NEAREST) if zoom > 1 else tile
             for tile in tiles]
    tiles = [_shrunk(tile) for tile in tiles]
    width = max([tile.width for tile in tiles] + [box[2] + 4 for box in boxes] + [1])
    height = max(tile.height for tile in tiles) + band if tiles else band
    rows = max(1, -(-len(tiles) // columns))
    pad = 6
    sheet = Image.new("RGB", (columns * (width + pad) + pad, rows * (height + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (tile, title) in enumerate(zip(tiles, titles)):
        left, top = pad + (index % columns) * (width + pad), pad + (index // columns) * (height + pad)
        draw.multiline_text((left + 2, top + 2), title, fill="black", font=font, spacing=3)
        sheet.paste(tile.convert("RGB"), (left, top + band))
    return sheet


# ---------------------------------------------------------------- pictures of each layout


def _sites(result: "CamResult") -> str:
    return result.map_letters.replace("N", "").replace("K", "")


def _per_map(result: "CamResult") -> tuple[np.ndarray, int]:
    """The maps as ``(N * K, *sites)`` float32 (sample-major) and K (1 for one target per sample)."""
    maps = result.numpy()
    if "K" not in result.map_letters:
        return maps, 1
    return maps.reshape(maps.shape[0] * maps.shape[1], *maps.shape[2:]), int(maps.shape[1])


def _items(images: Any, count: int, item_ranks: tuple[int, ...]) -> list[Any]:
    """``count`` items from a batch (first axis) or a list; for one sample, also the item alone."""
    if hasattr(images, "getbands") or (count == 1 and not isinstance(images, (list, tuple))
                                       and np.ndim(images) in item_ranks):
        images = [images]
    if len(images) != count:
        raise ValueError(f"{len(images)} picture(s) for a result of {count} sample(s)")
    return [images[i] for i in range(count)]


def titles_of(result: "CamResult", classes: Sequence[str] | None = None) -> list[str]:
    """One ``"<class> <probability>"`` per map (sample-major), ``"#<id>"`` without class names; for targets
    without class ids, the target's score."""
    if result.targets is None:
        scores = to_array(result.target_scores).reshape(-1) if result.target_scores is not None else None
        return [f"score {s:.4g}" for s in scores] if scores is not None else [""] * len(_per_map(result)[0])
    ids = to_array(result.targets).reshape(-1)
    probabilities = to_array(result.scores).reshape(-1) if _is_classifier(result) else None
    names = [classes[int(i)] if classes is not None else f"#{int(i)}" for i in ids]
    if probabilities is None:
        return names
    return [label_text(name, float(p)) for name, p in zip(names, probabilities)]


def _is_classifier(result: "CamResult") -> bool:
    return getattr(result.logits, "ndim", 0) == 2


def overlays(result: "CamResult", images: Any = None, alpha: float = 0.5, graph: Any = None) -> list["Image.Image"]:
    """One picture per map (sample-major: N, or N x K for several targets per sample), each layout's natural
    picture: ``HW`` maps blended over ``images`` (or coloured alone without them), ``DHW`` a montage of
    ``SLICES`` slices, ``T``/``L`` the signal over a coloured band, ``TV`` the joint x time heat map (and
    with the clips ``(C, T, V[, M])`` as ``images``, the skeleton drawn at key frames beside it; ``graph``:
    the skeleton's graph, default ``ntu25`` for 25 joints)."""
    maps, k = _per_map(result)
    sites = _sites(result)
    if len(sites) == 2 and "V" not in sites and "G" not in sites:
        draw, ranks = (lambda item, cam: overlay(item, cam, alpha) if item is not None else _coloured(cam)), (2, 3)
    elif sites == "DHW":
        draw, ranks = (lambda item, cam: volume_montage(cam, item, alpha)), (3, 4)
    elif len(sites) == 1:
        draw, ranks = (lambda item, cam: signal_picture(cam, item)), (1, 2)
    elif len(sites) == 2:
        draw, ranks = (lambda item, cam: skeleton_picture(cam, item, graph)), (3, 4)
    else:
        raise ValueError(f"no picture for maps of layout {result.map_letters!r}: camkit shows HW, DHW, T, L and "
                         f"TV maps; use result.numpy() for others")
    items = _items(images, len(result), ranks) if images is not None else [None] * len(result)
    return [draw(items[index // k], cam) for index, cam in enumerate(maps)]


def _coloured(cam: Any) -> "Image.Image":
    from PIL import Image

    return Image.fromarray(colourise(cam))


def show(result: "CamResult", images: Any = None, alpha: float = 0.5, classes: Sequence[str] | None = None,
         columns: int | None = None, graph: Any = None) -> Gallery:
    """The pictures of ``overlays`` titled ``"<class> <probability>"``, in a grid: one row per sample for
    several targets per sample, else ``columns`` (default 4) across."""
    tiles = overlays(result, images, alpha, graph)
    k = len(tiles) // max(1, len(result))
    multi = "K" in result.map_letters
    return Gallery(tiles, titles_of(result, classes), columns or (k if multi else 4),
                   note=f"{result.method} on {result.layer}")


def compare(results: Mapping[str, "CamResult"], images: Any = None, alpha: float = 0.5,
            classes: Sequence[str] | None = None, graph: Any = None) -> Gallery:
    """Several results on the same samples side by side: one row per sample, one column per result (its key,
    e.g. the method, in the title above ``"<class> <probability>"``)."""
    if not results:
        raise ValueError("compare needs at least one result")
    names = list(results)
    counts = {name: len(result) for name, result in results.items()}
    if len(set(counts.values())) != 1 or any("K" in r.map_letters for r in results.values()):
        raise ValueError(f"compare needs one map per sample and the same samples in every result; got {counts}")
    pictures = {name: overlays(result, images, alpha, graph) for name, result in results.items()}
    labels = {name: titles_of(result, classes) for name, result in results.items()}
    tiles, titles = [], []
    for index in range(counts[names[0]]):
        for name in names:
            tiles.append(pictures[name][index])
            titles.append(f"{name}\n{labels[name][index]}")
    return Gallery(tiles, titles, len(names), note=", ".join(names))


def describe(result: "CamResult") -> str:
    """One line: ``CamResult(gradcam on 'layer4', maps NHW (2, 224, 224), targets [281, 243])``."""
    targets = "" if result.targets is None else f", targets {to_array(result.targets).tolist()}"
    if len(targets) > 80:
        targets = targets[:76] + " ...]"
    return (f"CamResult({result.method} on {result.layer!r}, maps {result.map_letters} "
            f"{tuple(result.maps.shape)}{targets})")


def result_gallery(result: "CamResult") -> Gallery:
    """What Jupyter shows for a result: the maps of its first ``REPR_SAMPLES`` samples, coloured."""
    shown = result if len(result) <= REPR_SAMPLES else _first(result, REPR_SAMPLES)
    gallery = show(shown)
    gallery.note = describe(result) + ("" if shown is result else f" (first {REPR_SAMPLES} samples shown)")
    return gallery


def _first(result: "CamResult", count: int) -> "CamResult":
    from dataclasses import replace

    def head(value: Any) -> Any:
        return value[:count] if value is not None and hasattr(value, "shape") else value

    return replace(result, maps=result.maps[:count], targets=head(result.targets), logits=head(result.logits),
                   target_scores=head(result.target_scores))


# ---------------------------------------------------------------- volumes, signals, skeletons


def volume_montage(cam: Any, volume: Any = None, alpha: float = 0.5, slices: int = SLICES) -> "Image.Image":
    """``slices`` evenly spaced depth slices of a ``(D, H, W)`` map side by side, each blended over the same
    slice of ``volume`` (``(D, H, W)`` or ``(C, D, H, W)``, any value range) when given."""
    from PIL import Image

    cam = unit_map(cam)
    if cam.ndim != 3:
        raise ValueError(f"a volume montage needs a (D, H, W) map, got shape {tuple(cam.shape)}")
    depth = cam.shape[0]
    chosen = sorted(set(np.linspace(0, depth - 1, min(slices, depth)).round().astype(int).tolist()))
    grey = None
    if volume is not None:
        values = to_array(volume)
        values = values.mean(axis=0) if values.ndim == 4 else values
        if values.ndim != 3 or values.shape[0] != depth:
            raise ValueError(f"a volume of shape {tuple(to_array(volume).shape)} for a map of {depth} slices")
        grey = to_uint8(values)  # one range for the whole volume: slices stay comparable
    pictures = [np.asarray(overlay(grey[d], resized(cam[d], grey.shape[1:]), alpha)) if grey is not None
                else colourise(cam[d]) for d in chosen]
    gap = np.full((pictures[0].shape[0], 2, 3), 255, np.uint8)
    row = np.concatenate([part for picture in pictures for part in (picture, gap)][:-1], axis=1)
    return Image.fromarray(row)


def signal_picture(cam: Any, signal: Any = None) -> "Image.Image":
    """A 1-D map as a coloured band under the signal (``(L,)`` or ``(C, L)``, resampled to the map's length
    when they differ), as a PIL image."""
    cam = np.squeeze(unit_map(cam))
    if cam.ndim != 1:
        raise ValueError(f"a signal picture needs a 1-D map, got shape {tuple(cam.shape)}")
    figure, axis = figure_and_axes(figsize=(4.0, 1.6), dpi=80)
    length = len(cam)
    low, high = 0.0, 1.0
    if signal is not None:
        values = to_array(signal).astype(np.float32)
        values = values[None] if values.ndim == 1 else values
        if values.ndim != 2:
            raise ValueError(f"a signal is (L,) or (C, L), got shape {tuple(values.shape)}")
        for channel in values:
            axis.plot(np.linspace(0, length - 1, channel.shape[0]), channel, color="black", lw=0.8)
        low, high = float(values.min()), float(values.max())
        pad = 0.05 * (high - low) or 0.5
        low, high = low - pad, high + pad
    axis.imshow(cam[None], aspect="auto", cmap="jet", vmin=0.0, vmax=1.0, alpha=0.6,
                extent=(-0.5, length - 0.5, low, high))
    axis.set_xlim(-0.5, length - 0.5)
    axis.set_ylim(low, high)
    axis.set_yticks([] if signal is None else axis.get_yticks())
    figure.tight_layout(pad=0.3)
    return _figure_picture(figure)


def skeleton_picture(cam: Any, clip: Any = None, graph: Any = None) -> "Image.Image":
    """A ``(T, V)`` map as its joint x time heat map, with the skeleton drawn at key frames beside it when the
    ``clip`` (``(C, T, V)`` or ``(C, T, V, M)``) is given. ``graph``: default ``ntu25`` for 25 joints, else
    joints without bones."""
    from PIL import Image

    from camkit.plugin_manager import lookup

    cam = to_array(cam).astype(np.float32)
    if cam.ndim != 2:
        raise ValueError(f"a skeleton picture needs a (T, V) map, got shape {tuple(cam.shape)}")
    graph = graph if graph is not None else ("ntu25" if cam.shape[1] == 25 else {"joints": cam.shape[1], "bones": []})
    figures = [lookup("renderers", "joint-time")(cam, None, graph)]
    if clip is not None:
        values = to_array(clip).astype(np.float32)
        values = values[..., None] if values.ndim == 3 else values
        figures.append(lookup("renderers", "skeleton")(values, resized(cam, (values.shape[1], cam.shape[1])),
                                                        None, graph))
    pictures = [np.asarray(_figure_picture(figure)) for figure in figures]
    height = max(picture.shape[0] for picture in pictures)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in pictures]
    return Image.fromarray(np.concatenate(padded, axis=1))


def figure_and_axes(nrows: int = 1, ncols: int = 1, **options: Any) -> tuple[Any, Any]:
    """``plt.subplots`` without pyplot: a figure on its own Agg canvas, so no backend is chosen or changed
    and pyplot holds no reference (a notebook's inline plots stay as they are; the figure goes with its last
    reference). ``figsize`` and ``dpi`` go to the figure, the rest to ``Figure.subplots``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=options.pop("figsize", None), dpi=options.pop("dpi", None))
    FigureCanvasAgg(figure)
    return figure, figure.subplots(nrows, ncols, **options)


def _figure_picture(figure: Any) -> "Image.Image":
    from PIL import Image

    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())
