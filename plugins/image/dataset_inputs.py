"""What `camkit explain` and `camkit eval image` go through: picture files, folder trees, class folders,
``mnist:DIR``, a registered data set or a text file listing paths, as one ordered list of images with
their labels when known.

Every rank of a ``torchrun`` job builds the same list (sorted, deterministic), so a shard is a set of
positions in it and output names are decided before sharding."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from camkit_plugins.image.datasets import IMAGE_SUFFIXES

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass
class ImageInputs:
    """One entry per image, in a fixed order.

    ``names``: what the manifest calls each image (the file path, or ``<dataset>/<split>/<index>``);
    ``files``: the file of each, ``None`` for in-memory pictures; ``stems``: output file names (unique);
    ``labels``: class names (``None`` per image, or for all, when unknown); ``pictures``: uint8 (N, 3, H, W)
    for in-memory data sets; ``masks``: boolean (N, H, W) object masks and ``boxes`` (N, 4) x0, y0, x1, y1
    when the data set has them (the shapes set)."""

    names: list[str] = field(default_factory=list)
    files: list[Path | None] = field(default_factory=list)
    stems: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    pictures: Any = None
    masks: Any = None
    boxes: Any = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and all(label is not None for label in self.labels)

    def label_indices(self, classes: Sequence[str]) -> list[int]:
        """The labels as indices into the model's ``classes``; a label the model does not have is an error."""
        if not self.labelled:
            unlabelled = [name for name, label in zip(self.names, self.labels) if label is None]
            raise ValueError(f"labels are unknown for {len(unlabelled)} image(s) (e.g. {unlabelled[0]}): labels come "
                             "from root/<class>/<file> folders named after the model's classes, mnist:DIR or "
                             "--dataset")
        position = {name: i for i, name in enumerate(classes)}
        outside = sorted({str(label) for label in self.labels if label not in position})
        if outside:
            raise ValueError(f"label(s) {', '.join(outside[:5])} are not classes of the model "
                             f"({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''})")
        return [position[str(label)] for label in self.labels]


def _unique_stems(stems: Sequence[str]) -> list[str]:
    from camkit_plugins.image.explain_files import unique_stem

    used: set[str] = set()
    return [unique_stem(stem, used) for stem in stems]


def _pictures_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def folder_inputs(root: Path, classes: Sequence[str] | None) -> ImageInputs:
    """The pictures under ``root`` at any depth (sorted; hidden entries skipped). Labelled when every
    picture sits in a top-level folder named after one of the model's ``classes`` (``root/<class>/...``)."""
    files = _pictures_in(root)
    labels: list[str | None] = [None] * len(files)
    if classes:
        tops = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None for p in files]
        if all(top is not None and top in set(classes) for top in tops):
            labels = list(tops)
    return ImageInputs([str(p) for p in files], list(files), [p.stem for p in files], labels)


def list_file_inputs(path: Path) -> ImageInputs:
    """A text file with one picture path a line (blank lines and ``#`` comments skipped; relative paths
    are relative to the file's folder). A missing file is an error naming its line."""
    files: list[Path | None] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        file = Path(text).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            raise FileNotFoundError(f"{path}:{number}: {text}: no such file")
        files.append(file)
    return ImageInputs([str(p) for p in files], files, [p.stem for p in files if p], [None] * len(files))


def dataset_inputs(name: str, split: str = "test", seed: int = 0, **options: Any) -> ImageInputs:
    """A registered data set (``camkit list datasets``) at ``split``, as `inputs_of_dataset`."""
    from camkit.plugin_manager import lookup

    data = lookup("datasets", name)(split, seed=seed, **options)
    if not len(data):
        raise ValueError(f"--dataset {name} --split {split}: the split has no images")
    return inputs_of_dataset(data, f"{name}/{split}")


def inputs_of_dataset(data: Any, prefix: str) -> ImageInputs:
    """A data set whose items carry a normalised ``input`` (C, H, W) (and ``label``, ``mask``, ``box`` when it
    has them): the pictures back as uint8 (grey repeated to RGB), labels by class name, named
    ``<prefix>/<index>`` (output stems ``<prefix with _>_<index>``)."""
    import torch

    from camkit_plugins.image.render import denormalise_to_uint8

    count = len(data)
    items = [data[i] for i in range(count)]
    pictures = denormalise_to_uint8(torch.stack([item["input"] for item in items]), data.mean, data.std)
    if pictures.shape[1] == 1:
        pictures = pictures.expand(-1, 3, -1, -1).contiguous()
    width = len(str(max(count - 1, 0)))
    labels = [data.classes[int(item["label"])] if "label" in item else None for item in items]
    masks = torch.stack([torch.as_tensor(item["mask"]).bool() for item in items]) if "mask" in items[0] else None
    boxes = torch.tensor([list(item["box"]) for item in items]) if "box" in items[0] else None
    stem = prefix.replace("/", "_")
    return ImageInputs([f"{prefix}/{i}" for i in range(count)], [None] * count,
                       [f"{stem}_{i:0{width}d}" for i in range(count)], labels, pictures, masks, boxes)


def _concatenate(parts: Sequence[ImageInputs]) -> ImageInputs:
    if len(parts) == 1:
        return parts[0]
    if any(part.pictures is not None for part in parts):
        raise ValueError("a data set (mnist:DIR, --dataset) cannot be mixed with other inputs: explain them in "
                         "separate runs")
    joined = ImageInputs()
    for part in parts:
        joined.names += part.names
        joined.files += part.files
        joined.stems += part.stems
        joined.labels += part.labels
    return joined


def resolve_inputs(specs: Sequence[str], classes: Sequence[str] | None = None, dataset: str | None = None,
                   split: str = "test", seed: int = 0) -> ImageInputs:
    """The images of the command line: each of ``specs`` a picture file, a folder (recursive), ``mnist:DIR``
    (its t10k test split) or a text file listing paths; or ``dataset`` (a registered name) at ``split``.
    Output stems are made unique over the whole list (``x``, ``x_2``, ...)."""
    if dataset is not None:
        if specs:
            raise ValueError(f"--dataset {dataset}: give either --dataset or input files, not both")
        found = dataset_inputs(dataset, split, seed)
    else:
        if not specs:
            raise ValueError("no inputs: name picture files, folders, mnist:DIR, a list file, or --dataset NAME")
        parts = []
        for spec in specs:
            if spec.startswith("mnist:"):
                parts.append(dataset_inputs("mnist", "test", seed, root=spec.split(":", 1)[1]))
                continue
            path = Path(spec).expanduser()
            if path.is_dir():
                parts.append(folder_inputs(path, classes))
            elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
                parts.append(list_file_inputs(path))
            elif path.exists():
                parts.append(ImageInputs([str(path)], [path], [path.stem], [None]))
            else:
                raise FileNotFoundError(f"{path}: no such file or directory")
        found = _concatenate(parts)
    if not len(found):
        raise ValueError(f"no pictures ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, specs))}")
    found.stems = _unique_stems(found.stems)
    return found
