"""Explaining picture files with a trained checkpoint: files read (and, on the CPU, decoded) in
DataLoader workers, JPEGs decoded in batches on the device (nvjpeg on a GPU), CAMs in batches,
overlays blended in torch and written by a thread pool while the next batch computes."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from camkit_plugins.image.datasets import (
    IMAGE_SUFFIXES,
    CorruptImageError,
    apply_orientation,
    decode_image_file,
    exif_orientation,
    prepare_image,
    torchvision_decoding,
)


def collect_image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named on the command line plus the pictures inside named directories (sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    if not found:
        raise ValueError(f"no pictures ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return found


JPEG_MAGIC = b"\xff\xd8\xff"
DECODE_MODES = ("auto", "workers", "device")


class PictureFiles:
    """One file per item: ``{"path", "picture": uint8 (3, H, W), "input": model input}``, or
    ``{"path", "error"}`` for a file that cannot be read (so the caller can report it by name).

    With ``jpeg_bytes=True`` a JPEG (found by its magic bytes, not its suffix) is only read:
    ``{"path", "jpeg": uint8 bytes, "orientation": EXIF 1-8}``, for `decode_jpeg_items` to decode a whole
    batch on the device."""

    def __init__(self, files: Sequence[Path], size: int, mean: Sequence[float], std: Sequence[float],
                 in_channels: int, jpeg_bytes: bool = False) -> None:
        self.files, self.size, self.mean, self.std, self.in_channels = list(files), size, mean, std, in_channels
        self.jpeg_bytes = jpeg_bytes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        if self.jpeg_bytes:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                return {"path": str(path), "error": str(CorruptImageError(path, f"{type(exc).__name__}: {exc}"))}
            if data.startswith(JPEG_MAGIC):
                import torch

                return {"path": str(path), "jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8),
                        "orientation": exif_orientation(data)}
        try:
            picture = decode_image_file(path)
        except CorruptImageError as exc:
            return {"path": str(path), "error": str(exc)}
        return self.prepared(str(path), picture)

    def prepared(self, path: str, picture: Any) -> dict[str, Any]:
        """The item of a decoded picture (on any device): the picture and the model input."""
        grey = self.in_channels == 1
        source = picture.float().mean(dim=0, keepdim=True).round().to(picture.dtype) if grey else picture
        return {"path": path, "picture": picture, "input": prepare_image(source, self.size, self.mean, self.std)}


def decode_jpeg_items(items: list[dict[str, Any]], files: PictureFiles, device: Any) -> list[dict[str, Any]]:
    """Items with ``"jpeg"`` bytes decoded in one batched call on ``device`` (nvjpeg on a GPU) and
    prepared there; the others are returned as they are. A batch with a bad file fails as a whole
    (torchvision returns no partial result), so it is decoded again file by file; a file the device
    cannot decode goes to the CPU decoders, which name it if they cannot either. Pictures are turned
    upright by their EXIF orientation, as the CPU decoders do."""
    encoded = [index for index, item in enumerate(items) if "jpeg" in item]
    if not encoded:
        return items
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        decoded = decode_jpeg([items[i]["jpeg"] for i in encoded], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        decoded = []
    out = list(items)
    for position, index in enumerate(encoded):
        path = items[index]["path"]
        if decoded:
            out[index] = files.prepared(path, apply_orientation(decoded[position], items[index]["orientation"]))
            continue
        try:
            picture = apply_orientation(decode_jpeg(items[index]["jpeg"], mode=ImageReadMode.RGB, device=device),
                                        items[index]["orientation"])
        except RuntimeError:  # a bad file, or a JPEG flavour the device decoder lacks (nvjpeg: e.g. CMYK)
            try:
                picture = decode_image_file(path)  # the CPU decoders (upright already); the error names the file
            except CorruptImageError as exc:
                out[index] = {"path": path, "error": str(exc)}
                continue
        out[index] = files.prepared(path, picture)
    return out


def use_device_decode(decode: str, device: Any) -> bool:
    """Whether JPEGs are decoded on ``device`` in batches: "auto" does it on CUDA devices only."""
    import torch

    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r}: choose one of {', '.join(DECODE_MODES)}")
    if torchvision_decoding() is None:  # a torchvision without its decoders: PIL in the workers
        if decode == "device":
            raise ValueError("decode='device' needs torchvision.io.decode_jpeg, which this torchvision no longer has")
        return False
    return decode == "device" or (decode == "auto" and torch.device(device).type == "cuda")


def _keep_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


@dataclass
class ExplainReport:
    """What `explain_files` did: overlays written, unreadable files (with the reason), throughput."""

    written: list[Path] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    images_per_second: float = 0.0
    cards: list[Any] = field(default_factory=list)  # one page.Card per overlay, for index.html


class OverlayWriteError(OSError):
    """Some output files could not be written: ``failures`` lists ``(path, exception)`` for every one
    (the first exception is also the ``__cause__``); ``report`` is what was done otherwise. The message
    is one line naming the first few."""

    SHOWN = 3

    def __init__(self, failures: list[tuple[Path, BaseException]], report: "ExplainReport") -> None:
        self.failures, self.report = failures, report
        named = "; ".join(f"{path}: {type(exc).__name__}: {exc}" for path, exc in failures[:self.SHOWN])
        more = f"; and {len(failures) - self.SHOWN} more" if len(failures) > self.SHOWN else ""
        super().__init__(f"could not write {len(failures)} file(s): {' '.join(named.split())}{more}")


MAX_PENDING_WRITES = 32  # writes in flight at once: each holds an overlay, so memory stays bounded


def _settle(pending: deque[tuple[Path, Future]], failures: list[tuple[Path, BaseException]], limit: int) -> None:
    """Forget finished writes (recording failures by file name), then wait for the oldest until at most
    ``limit`` are pending: the futures, and the overlays they hold, do not pile up with the file count."""
    for _ in range(len(pending)):
        path, future = pending.popleft()
        if future.done():
            _record(path, future, failures)
        else:
            pending.append((path, future))
    while len(pending) > limit:
        path, future = pending.popleft()
        _record(path, future, failures)


def _record(path: Path, future: Future, failures: list[tuple[Path, BaseException]]) -> None:
    error = future.exception()  # waits for it to finish
    if error is not None:
        failures.append((path, error))


def unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``, ... : the first not in ``used`` (which it joins), so inputs
    with the same name in different folders (or named like another's suffixed name) never share outputs."""
    candidate, count = stem, 1
    while candidate in used:
        count += 1
        candidate = f"{stem}_{count}"
    used.add(candidate)
    return candidate


def _group_by_size(pictures: Sequence[Any]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for index, picture in enumerate(pictures):
        groups.setdefault(tuple(picture.shape[1:]), []).append(index)
    return groups


def explain_files(model: Any, config: dict[str, Any], files: Sequence[Path], out: str | Path, method: str = "cam",
                  topk: int | None = None, save_maps: bool = False, grid: bool = True, batch_size: int = 16,
                  workers: int = 2, alpha: float = 0.5, device: str = "cpu", decode: str = "auto",
                  page: bool = True) -> ExplainReport:
    """Overlays ``<name>_pred_<label>.jpg`` (and, with ``topk``, ``<name>_top<k>.png`` with one panel per
    class; with ``save_maps``, ``<name>_maps.npy``) for every readable file; bad files are listed.

    ``decode``: "workers" decodes every file in the DataLoader workers; "device" has the workers only
    read JPEGs and decodes each batch of them on ``device`` (other formats still decode in the workers);
    "auto" is "device" on a CUDA device and "workers" elsewhere.

    Files are written by a thread pool while the next batch computes, at most ``MAX_PENDING_WRITES``
    at a time; a file that cannot be written does not stop the others, and at the end
    ``OverlayWriteError`` names every one that failed.

    ``page``: also ``<name>_map.png`` (the raw top-1 map) per picture and ``index.html`` showing every
    overlay with its label, probability, top-k and raw map (see ``camkit_plugins.image.page``)."""
    import time

    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    import camkit
    from camkit.distributed import local_device
    from camkit.io import output_folder
    from camkit_plugins.image.page import Card, write_raw_map
    from camkit_plugins.image.render import label_text, overlay, overlay_file_name, save_grid, write_overlay

    device = local_device(device)
    out = output_folder(out)
    classes = list(config["classes"])
    size = int(config["input_size"])
    dataset = PictureFiles(files, size, config["mean"], config["std"], int(config.get("in_channels", 3)),
                           jpeg_bytes=use_device_decode(decode, device))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_keep_list)
    model = model.to(device)
    report = ExplainReport()
    pending: deque[tuple[Path, Future]] = deque()
    failures: list[tuple[Path, BaseException]] = []

    def submit(path: Path, function: Any, *args: Any) -> None:
        pending.append((path, writer.submit(function, path, *args)))
        _settle(pending, failures, MAX_PENDING_WRITES)
    grid_pictures, grid_maps, grid_titles = [], [], []
    stems: set[str] = set()
    start = time.perf_counter()
    with camkit.Explainer(model, method=method, layer=config.get("layer"), output=config.get("output")) as explainer, \
            ThreadPoolExecutor(max_workers=2) as writer, tqdm(total=len(dataset), desc="explain", unit="img") as bar:
        for items in loader:
            items = decode_jpeg_items(items, dataset, device)
            good = [item for item in items if "error" not in item]
            report.bad += [item["error"] for item in items if "error" in item]
            if good:
                # device-decoded JPEGs and worker-decoded other formats may sit on different devices
                inputs = torch.stack([item["input"].to(device) for item in good])
                result = explainer(inputs, topk=topk)
                maps = result.maps if result.maps.ndim == 4 else result.maps[:, None]  # (N, K, H, W)
                targets = result.targets if result.targets.ndim == 2 else result.targets[:, None]
                scores = result.scores if result.scores.ndim == 2 else result.scores[:, None]
                pictures = [item["picture"] for item in good]
                for (height, width), indices in _group_by_size(pictures).items():
                    idx = torch.tensor(indices, device=maps.device)
                    top_maps = F.interpolate(maps[idx, :1], size=(height, width), mode="bilinear",
                                             align_corners=False)[:, 0].clamp(0, 1)
                    batch = torch.stack([pictures[i].to(maps.device) for i in indices])
                    blended = overlay(batch, top_maps, alpha).cpu()
                    for row, i in enumerate(indices):
                        stem = unique_stem(Path(good[i]["path"]).stem, stems)
                        good[i]["stem"] = stem
                        label = classes[int(targets[i, 0])]
                        target = out / overlay_file_name(stem, label, float(scores[i, 0]))
                        good[i]["overlay"] = target
                        submit(target, write_overlay, blended[row].permute(1, 2, 0).numpy(),
                               label_text(label, float(scores[i, 0])))
                        report.written.append(target)
                maps_cpu = maps.detach().float().cpu()
                for i, item in enumerate(good):
                    if save_maps:
                        submit(out / f"{item['stem']}_maps.npy", _save_npy, maps_cpu[i])
                    if page:
                        submit(out / f"{item['stem']}_map.png", write_raw_map, maps_cpu[i, 0])
                        report.cards.append(Card(
                            Path(item["path"]).name, item["overlay"].name, classes[int(targets[i, 0])],
                            float(scores[i, 0]), f"{item['stem']}_map.png",
                            [(classes[int(c)], float(p)) for c, p in zip(targets[i], scores[i])],
                            extra=f"{item['stem']}_top{topk}.png" if topk and topk > 1 else None))
                    if topk and topk > 1:
                        small = F.interpolate(item["picture"][None].cpu().float(), size=maps_cpu.shape[-2:],
                                              mode="bilinear", align_corners=False)
                        small = small.round().clamp(0, 255).to(torch.uint8)
                        titles = [label_text(classes[int(c)], float(s)) for c, s in zip(targets[i], scores[i])]
                        submit(out / f"{item['stem']}_top{topk}.png", save_grid,
                               small.expand(len(titles), -1, -1, -1), maps_cpu[i], titles, min(len(titles), 5))
                    if grid and len(grid_pictures) < 9:
                        grid_pictures.append(F.interpolate(item["picture"][None].cpu().float(), size=(size, size),
                                                           mode="bilinear", align_corners=False)[0])
                        grid_maps.append(maps_cpu[i, 0])
                        grid_titles.append(label_text(classes[int(targets[i, 0])], float(scores[i, 0])))
            bar.update(len(items))
            bar.set_postfix(bad=len(report.bad))
        _settle(pending, failures, 0)  # waits for the last writes
    if failures:
        failed = {path for path, _ in failures}
        report.written = [path for path in report.written if path not in failed]
        report.cards = [card for card in report.cards if out / card.overlay not in failed]
    report.images_per_second = len(report.written) / max(time.perf_counter() - start, 1e-9)
    if grid and grid_pictures:
        save_grid(out / "grid.png", torch.stack(grid_pictures).round().clamp(0, 255).to(torch.uint8),
                  torch.stack(grid_maps), grid_titles, ncols=3)
    if page:
        write_explain_page(out, report, method, grid and bool(grid_pictures))
    if failures:
        raise OverlayWriteError(failures, report) from failures[0][1]
    return report


def write_explain_page(out: Path, report: ExplainReport, method: str, grid: bool) -> Path:
    """``out/index.html`` of a `camkit explain` run: every overlay card, the grid, the unreadable files."""
    from camkit_plugins.image.page import Section, write_page

    section = Section(f"{len(report.cards)} picture(s), method {method}", cards=report.cards,
                      figures=[("grid.png", "the first nine maps")] if grid else [])
    if report.bad:
        section.paragraphs.append(f"{len(report.bad)} unreadable file(s): " + "; ".join(report.bad))
    return write_page(out, "camkit explain", [section], "Hover over (or click) a picture to see its raw map.")


def _save_npy(path: Path, maps: Any) -> None:
    from camkit.io import save_numpy_atomic

    save_numpy_atomic(path, maps.numpy())
