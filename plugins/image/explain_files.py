"""Explaining picture files with a trained checkpoint: files read (and, on the CPU, decoded) in
DataLoader workers, JPEGs decoded in batches on the device (nvjpeg on a GPU), CAMs in batches,
overlays blended in torch and written by a thread pool while the next batch computes."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from camkit.plugin_manager import UnknownNameError
from camkit_plugins.image.dataset_inputs import ImageInputs
from camkit_plugins.image.datasets import (
    IMAGE_SUFFIXES,
    CorruptImageError,
    apply_orientation,
    decode_image_file,
    exif_orientation,
    prepare_image,
    torchvision_decoding,
)
from camkit_plugins.image.explain_run import OUTPUT_KEYS, RunFolder


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
    """One file per item: ``{"path", "index", "picture": uint8 (3, H, W), "input": model input}``, or
    ``{"path", "index", "error"}`` for a file that cannot be read (so the caller can report it by name).

    ``pictures``: uint8 (N, 3, H, W) of in-memory data sets; the entries of ``files`` that are ``None`` take
    their picture from it (``names`` then say what to call them). With ``jpeg_bytes=True`` a JPEG (found by
    its magic bytes, not its suffix) is only read: ``{"path", "index", "jpeg": uint8 bytes, "orientation":
    EXIF 1-8}``, for `decode_jpeg_items` to decode a whole batch on the device."""

    def __init__(self, files: Sequence[Path | None], size: int, mean: Sequence[float], std: Sequence[float],
                 in_channels: int, jpeg_bytes: bool = False, pictures: Any = None,
                 names: Sequence[str] | None = None) -> None:
        self.files, self.size, self.mean, self.std, self.in_channels = list(files), size, mean, std, in_channels
        self.jpeg_bytes, self.pictures = jpeg_bytes, pictures
        self.names = [str(f) for f in self.files] if names is None else list(names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        if path is None:
            return self.prepared(self.names[index], self.pictures[index], index)
        if self.jpeg_bytes:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                return {"path": str(path), "index": index,
                        "error": str(CorruptImageError(path, f"{type(exc).__name__}: {exc}"))}
            if data.startswith(JPEG_MAGIC):
                import torch

                return {"path": str(path), "index": index, "jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8),
                        "orientation": exif_orientation(data)}
        try:
            picture = decode_image_file(path)
        except CorruptImageError as exc:
            return {"path": str(path), "index": index, "error": str(exc)}
        return self.prepared(str(path), picture, index)

    def prepared(self, path: str, picture: Any, index: int = 0) -> dict[str, Any]:
        """The item of a decoded picture (on any device): the picture and the model input."""
        grey = self.in_channels == 1
        source = picture.float().mean(dim=0, keepdim=True).round().to(picture.dtype) if grey else picture
        return {"path": path, "index": index, "picture": picture,
                "input": prepare_image(source, self.size, self.mean, self.std)}


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
            out[index] = files.prepared(path, apply_orientation(decoded[position], items[index]["orientation"]),
                                        items[index]["index"])
            continue
        try:
            picture = apply_orientation(decode_jpeg(items[index]["jpeg"], mode=ImageReadMode.RGB, device=device),
                                        items[index]["orientation"])
        except RuntimeError:  # a bad file, or a JPEG flavour the device decoder lacks (nvjpeg: e.g. CMYK)
            try:
                picture = decode_image_file(path)  # the CPU decoders (upright already); the error names the file
            except CorruptImageError as exc:
                out[index] = {"path": path, "index": items[index]["index"], "error": str(exc)}
                continue
        out[index] = files.prepared(path, picture, items[index]["index"])
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
    """What `explain_files` did: overlays written, unreadable files (with the reason), throughput.

    ``explained``: images explained by this run (all ranks); ``skipped``: images an earlier run had
    finished; ``images_per_second``: this process's rate; ``total_images_per_second``: all ranks' images
    over the slowest rank's time; ``records``: the manifest rows (rank 0: every image; other ranks: theirs)."""

    written: list[Path] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    images_per_second: float = 0.0
    cards: list[Any] = field(default_factory=list)  # one page.Card per overlay, for index.html
    explained: int = 0
    skipped: int = 0
    total_images_per_second: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)


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


class OutputWriter:
    """Files written by a thread pool while the next batch computes, at most ``MAX_PENDING_WRITES`` in
    flight; an image's record goes to the journal once every file of that image is written (so a kill
    never journals an image whose files are not all there). Failures are collected by file name."""

    def __init__(self, journal: Any = None) -> None:
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.pending: deque[tuple[Path, Future, str]] = deque()
        self.failures: list[tuple[Path, BaseException]] = []
        self.journal = journal
        self.open: dict[str, list[Any]] = {}  # image name -> [files in flight, failed, record or None]

    def submit(self, name: str, path: Path, function: Any, *args: Any) -> None:
        self.open.setdefault(name, [0, False, None])[0] += 1
        self.pending.append((path, self.pool.submit(function, path, *args), name))
        self.settle(MAX_PENDING_WRITES)

    def finish_image(self, name: str, record: dict[str, Any]) -> None:
        """No more files for ``name``: journal ``record`` when its files are all written."""
        state = self.open.setdefault(name, [0, False, None])
        state[2] = record
        self._maybe_journal(name)

    def settle(self, limit: int) -> None:
        """Forget finished writes, then wait for the oldest until at most ``limit`` are pending: the
        futures, and the overlays they hold, do not pile up with the file count."""
        for _ in range(len(self.pending)):
            path, future, name = self.pending.popleft()
            if future.done():
                self._collect(path, future, name)
            else:
                self.pending.append((path, future, name))
        while len(self.pending) > limit:
            self._collect(*self.pending.popleft())

    def _collect(self, path: Path, future: Future, name: str) -> None:
        error = future.exception()  # waits for it to finish
        state = self.open[name]
        state[0] -= 1
        if error is not None:
            self.failures.append((path, error))
            state[1] = True
        self._maybe_journal(name)

    def _maybe_journal(self, name: str) -> None:
        count, failed, record = self.open[name]
        if count == 0 and record is not None:
            del self.open[name]
            if not failed and self.journal is not None:
                self.journal.append(record)

    def close(self) -> None:
        self.settle(0)
        self.pool.shutdown()


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


TARGET_MODES = ("auto", "predicted", "label")
MAP_DTYPES = ("float32", "float16")
GRID_SIZE = 9


def rank_positions(count: int, batch_size: int, rank: int, world: int) -> list[int]:
    """This rank's positions among ``count``: the list is cut into batches of ``batch_size`` and rank r takes
    batches r, r + world, r + 2 world, ... . Every batch then holds the same images whatever the world size,
    so the maps (and files) of a torchrun job are byte-identical to those of one process."""
    starts = range(rank * batch_size, count, world * batch_size)
    return [position for start in starts for position in range(start, min(start + batch_size, count))]


def shard_loader(inputs: ImageInputs, config: dict[str, Any], batch_size: int, workers: int,
                 distributed: Any) -> tuple[Any, list[int]]:
    """A DataLoader over this rank's share of ``inputs`` (`rank_positions`), pictures prepared as ``config``
    says, and the positions it covers."""
    from torch.utils.data import DataLoader, Subset

    dataset = PictureFiles(inputs.files, int(config["input_size"]), config["mean"], config["std"],
                           int(config.get("in_channels", 3)), pictures=inputs.pictures, names=inputs.names)
    positions = rank_positions(len(inputs), batch_size, distributed.rank, distributed.world)
    loader = DataLoader(Subset(dataset, positions), batch_size=batch_size, num_workers=workers,
                        collate_fn=_keep_list)
    return loader, positions


def inputs_of_files(files: Sequence[Path | str]) -> ImageInputs:
    """Plain file paths as `ImageInputs` (unlabelled; output names made unique in order)."""
    paths = [Path(f) for f in files]
    used: set[str] = set()
    return ImageInputs([str(p) for p in paths], list(paths), [unique_stem(p.stem, used) for p in paths],
                       [None] * len(paths))


def resolve_target_mode(targets: str, inputs: ImageInputs, topk: int | None, save_masks: bool) -> str:
    """"auto" explains the labels when masks are asked for and the labels are known, else the prediction."""
    if targets not in TARGET_MODES:
        raise UnknownNameError.of("targets", targets, TARGET_MODES)
    mode = targets if targets != "auto" else ("label" if save_masks and inputs.labelled and not topk else "predicted")
    if mode == "label" and topk:
        raise ValueError(f"--targets label explains each image's label; --topk {topk} explains the top classes: "
                         "choose one")
    return mode


def check_explain_options(batch_size: int, map_dtype: str, background: float, scales: Sequence[float]) -> None:
    if batch_size < 1:  # torch's DataLoader's words, before the shards are cut
        raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
    if map_dtype not in MAP_DTYPES:
        raise UnknownNameError.of("map dtype", map_dtype, MAP_DTYPES)
    if not 0.0 <= background <= 1.0:
        raise ValueError(f"--background {background}: a threshold on maps in [0, 1]")
    if any(float(s) <= 0 for s in scales):
        raise ValueError(f"--scales {','.join(map(str, scales))}: scales must be positive")


@dataclass
class ExplainRun:
    """What every step of one `explain_files` call shares."""

    model: Any
    config: dict[str, Any]
    inputs: ImageInputs
    out: Path
    device: Any
    method: str
    topk: int | None
    mode: str
    label_ids: list[int] | None
    augment: dict[str, Any] | None
    outputs: dict[str, Any]  # save_maps, overlays, page, save_masks, background, map_dtype, alpha, grid
    classes: list[str] = field(default_factory=list)
    method_options: dict[str, Any] = field(default_factory=dict)


def explain_files(model: Any, config: dict[str, Any], files: Sequence[Path] | ImageInputs, out: str | Path,
                  method: str = "cam", topk: int | None = None, save_maps: bool = False, grid: bool = True,
                  batch_size: int = 16, workers: int = 2, alpha: float = 0.5, device: str = "cpu",
                  decode: str = "auto", page: bool = True, *, overlays: bool = True, map_dtype: str = "float32",
                  targets: str = "auto", save_masks: bool = False, background: float = 0.2,
                  scales: Sequence[float] = (), flip: bool = False, manifest: str = "jsonl", restart: bool = False,
                  resume: bool = False, progress: bool = True, distributed: Any = None,
                  method_options: Mapping[str, Any] | None = None) -> ExplainReport:
    """Explain every image of ``files`` (paths, or `ImageInputs` from `resolve_inputs`: folders, class
    folders, ``mnist:DIR``, a registered data set, a list file) and write, per image named ``<name>``:
    the overlay ``<name>_pred_<label>_<pp.pp>pct.jpg`` (unless ``overlays=False``), with ``topk``
    ``<name>_top<k>.png`` (one panel per class), with ``save_maps`` ``<name>_maps.npy`` ((K, size, size)
    in [0, 1], ``map_dtype`` "float32" or "float16"), with ``page`` ``<name>_map.png`` (the raw top map)
    and ``index.html``, with ``save_masks`` ``<name>_mask.png`` (a pseudo-mask in PASCAL VOC's palette:
    per pixel 1 + the class of the strongest map when it exceeds ``background``, else 0), ``grid.png``
    (the first nine) and ``manifest.jsonl`` or ``.csv`` (``manifest``). Unreadable files are listed.

    ``method_options``: the method's own options (``camkit.Explainer(method_options=...)``).

    ``targets``: "predicted" (the top class, or the ``topk``), "label" (each image's label: labelled inputs
    only) or "auto" (the labels when ``save_masks`` and labels are known, else the prediction).
    ``scales`` / ``flip``: test-time augmentation (``camkit.explain(augment=...)``): the maps of the
    image rescaled by each factor (1 is the image itself) and mirrored, averaged, as the WSSS papers do.

    Under ``torchrun`` each rank explains every ``world``-th batch (`rank_positions`) on its own device
    (``cuda`` is ``cuda:LOCAL_RANK``) and rank 0 writes the manifest, grid and page. A rerun in the same
    ``out`` skips the images an earlier run finished (`explain_run.RunFolder`): ``resume=True`` insists there
    is such a run, ``restart=True`` redoes everything; other settings than the earlier run's are an error.
    ``distributed``: a ``camkit.distributed.Distributed`` to use (default: join the job, leave it after).

    ``decode``: "workers" decodes every file in the DataLoader workers; "device" has the workers only
    read JPEGs and decodes each batch of them on ``device`` (other formats still decode in the workers);
    "auto" is "device" on a CUDA device and "workers" elsewhere. Files are written by a thread pool while
    the next batch computes (`OutputWriter`); a file that cannot be written does not stop the others, and
    at the end ``OverlayWriteError`` names every one that failed."""
    from camkit.distributed import joined, local_device
    from camkit.io import output_folder

    inputs = files if isinstance(files, ImageInputs) else inputs_of_files(files)
    check_explain_options(batch_size, map_dtype, background, scales)
    mode = resolve_target_mode(targets, inputs, topk, save_masks)
    classes = list(config["classes"])
    label_ids = inputs.label_indices(classes) if mode == "label" else None
    device = local_device(device)
    extra_scales = [float(s) for s in scales if float(s) != 1.0]
    augment = ({"flips": "W" if flip else "", "scales": extra_scales, "convention": "irn"}
               if extra_scales or flip else None)  # the WSSS papers' multi-scale inference
    outputs = {"save_maps": save_maps, "overlays": overlays, "page": page and overlays, "save_masks": save_masks,
               "background": background, "map_dtype": map_dtype, "alpha": alpha, "grid": grid}
    settings = {"method": method, "layer": config.get("layer"), "topk": topk, "targets": mode,
                "scales": sorted({1.0, *extra_scales}), "flip": flip, "classes": classes,
                "input_size": int(config["input_size"]), "mean": list(config["mean"]), "std": list(config["std"]),
                "model": config.get("model"), **{k: v for k, v in outputs.items() if k != "grid"},
                **({"method_options": dict(method_options)} if method_options else {})}
    with joined(device, distributed) as distributed:
        out = output_folder(out)
        run_folder = RunFolder(out, settings, distributed.rank)
        done = _prepare_run_folder(run_folder, distributed, restart, resume)
        run = ExplainRun(model.to(device), config, inputs, out, device, method, topk, mode, label_ids, augment,
                         outputs, classes, dict(method_options or {}))
        pending = [i for i, name in enumerate(inputs.names) if name not in done]
        mine = [pending[p] for p in rank_positions(len(pending), batch_size, distributed.rank, distributed.world)]
        report, grid_cells, failures = _explain_shard(run, run_folder, mine, batch_size, workers, decode, progress,
                                                      distributed)
        report.skipped = len(inputs) - len(pending)
        _gather_and_finish(run, run_folder, report, grid_cells, list(done.values()), distributed, manifest)
    if failures:
        raise OverlayWriteError(failures, report) from failures[0][1]
    return report


def _prepare_run_folder(run_folder: RunFolder, distributed: Any, restart: bool, resume: bool) -> dict[str, Any]:
    """Rank 0 checks the settings (and on ``restart`` clears the journals) before any rank reads what is
    done; an error there is raised on every rank, so none waits for the others forever."""
    import shutil

    problem = None
    if distributed.rank == 0:
        try:
            run_folder.check_settings(restart, resume)
            run_folder.remove_temporaries()
            if restart and run_folder.journal_folder.is_dir():
                shutil.rmtree(run_folder.journal_folder)
        except (ValueError, OSError) as exc:
            problem = exc
    message = distributed.broadcast(None if problem is None else str(problem))  # also a barrier
    if problem is not None:
        raise problem
    if message is not None:
        raise ValueError(message)
    return run_folder.completed()


def _explain_shard(run: ExplainRun, run_folder: RunFolder, positions: list[int], batch_size: int, workers: int,
                   decode: str, progress: bool, distributed: Any) -> tuple[ExplainReport, list[Any], list[Any]]:
    """This rank's images: read, explained batch by batch, written; records journaled as they complete."""
    import contextlib
    import time

    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    import camkit

    size = int(run.config["input_size"])
    dataset = PictureFiles(run.inputs.files, size, run.config["mean"], run.config["std"],
                           int(run.config.get("in_channels", 3)), jpeg_bytes=use_device_decode(decode, run.device),
                           pictures=run.inputs.pictures, names=run.inputs.names)
    loader = DataLoader(Subset(dataset, positions), batch_size=batch_size, num_workers=workers,
                        collate_fn=_keep_list)
    report = ExplainReport()
    grid_cells: list[Any] = []
    journal = run_folder.journal()
    writer = OutputWriter(journal)
    rank_text = f" [rank {distributed.rank}/{distributed.world}]" if distributed.world > 1 else ""
    start = time.perf_counter()
    try:
        # augmented maps come from camkit.explain, which hooks the layer itself
        held = contextlib.nullcontext() if run.augment else camkit.Explainer(
            run.model, method=run.method, layer=run.config.get("layer"), output=run.config.get("output"),
            method_options=run.method_options)
        with held as explainer, \
                tqdm(total=len(positions), desc=f"explain{rank_text}", unit="img", position=distributed.rank,
                     disable=not progress) as bar:
            for items in loader:
                items = decode_jpeg_items(items, dataset, run.device)
                good = [item for item in items if "error" not in item]
                report.bad += [item["error"] for item in items if "error" in item]
                if good:
                    result = _explain_batch(run, explainer, camkit, good)
                    _write_batch(run, writer, report, grid_cells, good, result)
                bar.update(len(items))
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(bad=len(report.bad), total=f"{bar.n * distributed.world / elapsed:.1f} img/s")
    finally:
        writer.close()
        journal.close()
    report.explained = len(positions) - len(report.bad)
    report.images_per_second = report.explained / max(time.perf_counter() - start, 1e-9)
    failed = {path for path, _ in writer.failures}
    report.written = [path for path in report.written if path not in failed]
    report.cards = [card for card in report.cards if run.out / card.overlay not in failed]
    report.records = [record for record in report.records
                      if not any(run.out / record[key] in failed for key in OUTPUT_KEYS if record.get(key))]
    return report, grid_cells, writer.failures


def _explain_batch(run: ExplainRun, explainer: Any, camkit: Any, good: list[dict[str, Any]]) -> Any:
    """The maps of a batch: (N, K, size, size), targets (N, K) and probabilities (N, classes)."""
    import torch

    # device-decoded JPEGs and worker-decoded other formats may sit on different devices
    inputs = torch.stack([item["input"].to(run.device) for item in good])
    targets = None
    if run.label_ids is not None:
        targets = torch.tensor([run.label_ids[item["index"]] for item in good], device=run.device)
    if run.augment:
        return camkit.explain(run.model, inputs, run.method, run.config.get("layer"), targets, topk=run.topk,
                              augment=run.augment, output=run.config.get("output"), method_options=run.method_options)
    return explainer(inputs, targets, topk=run.topk)


def _write_batch(run: ExplainRun, writer: OutputWriter, report: ExplainReport, grid_cells: list[Any],
                 good: list[dict[str, Any]], result: Any) -> None:
    """One batch handed to the writer: masks and overlays at each picture's size (`_write_at_picture_size`),
    then per image the maps, raw map and top-k panel, and its record."""
    import torch
    import torch.nn.functional as F

    from camkit_plugins.image.page import Card, write_raw_map
    from camkit_plugins.image.render import label_text

    classes, out, outputs = run.classes, run.out, run.outputs
    maps = result.maps if result.maps.ndim == 4 else result.maps[:, None]  # (N, K, H, W)
    targets = result.targets if result.targets.ndim == 2 else result.targets[:, None]
    scores = result.scores if result.scores.ndim == 2 else result.scores[:, None]
    probabilities = result.probabilities
    records: list[dict[str, Any]] = [{} for _ in good]
    _write_at_picture_size(run, writer, report, good, maps, targets, scores, records)
    maps_cpu = maps.detach().float().cpu()
    stored = maps_cpu.to(getattr(torch, outputs["map_dtype"]))
    for i, item in enumerate(good):
        index, record = item["index"], records[i]
        stem = run.inputs.stems[index]
        predicted = int(probabilities[i].argmax())
        titles = [label_text(classes[int(c)], float(s)) for c, s in zip(targets[i], scores[i])]
        if outputs["save_maps"]:
            record["map"] = f"{stem}_maps.npy"
            writer.submit(item["path"], out / record["map"], _save_npy, stored[i])
        if outputs["page"]:
            record["raw_map"] = f"{stem}_map.png"
            writer.submit(item["path"], out / record["raw_map"], write_raw_map, maps_cpu[i, 0])
        if run.topk and run.topk > 1 and outputs["overlays"]:
            record["panel"] = f"{stem}_top{run.topk}.png"
            small = F.interpolate(item["picture"][None].cpu().float(), size=maps_cpu.shape[-2:], mode="bilinear",
                                  align_corners=False).round().clamp(0, 255).to(torch.uint8)
            writer.submit(item["path"], out / record["panel"], _save_panel, small.expand(len(titles), -1, -1, -1),
                          maps_cpu[i], titles)
        record = {"file": run.inputs.names[index], "label": run.inputs.labels[index] if run.inputs.labels else None,
                  "predicted": classes[predicted], "probability": float(probabilities[i, predicted]),
                  "target": classes[int(targets[i, 0])], "targets": [classes[int(c)] for c in targets[i]],
                  "target_ids": [int(c) for c in targets[i]], "scores": [float(s) for s in scores[i]],
                  "stem": stem, **{key: record.get(key) for key in OUTPUT_KEYS}}
        report.records.append(record)
        if record["overlay"] and outputs["page"]:
            report.cards.append(card_of(record, Card))
        writer.finish_image(item["path"], record)
        if outputs["grid"] and len(grid_cells) < GRID_SIZE:
            size = int(run.config["input_size"])
            grid_cells.append((index, F.interpolate(item["picture"][None].cpu().float(), size=(size, size),
                                                    mode="bilinear", align_corners=False)[0],
                               maps_cpu[i, 0], titles[0]))


def _write_at_picture_size(run: ExplainRun, writer: OutputWriter, report: ExplainReport, good: list[dict[str, Any]],
                           maps: Any, targets: Any, scores: Any, records: list[dict[str, Any]]) -> None:
    """Pseudo-masks and overlays, made from the maps resized to each picture's own size: pictures of one
    size are blended in one call on the maps' device."""
    import torch
    import torch.nn.functional as F

    from camkit_plugins.image.masks import write_mask
    from camkit_plugins.image.render import label_text, overlay, overlay_file_name, write_overlay

    pictures = [item["picture"] for item in good]
    for (height, width), indices in _group_by_size(pictures).items():
        idx = torch.tensor(indices, device=maps.device)
        if run.outputs["save_masks"]:
            sized = F.interpolate(maps[idx], size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
            masks = pseudo_mask_batch(sized, targets[idx], run.outputs["background"])
            for row, i in enumerate(indices):
                records[i]["mask"] = f"{run.inputs.stems[good[i]['index']]}_mask.png"
                writer.submit(good[i]["path"], run.out / records[i]["mask"], write_mask, masks[row])
        if run.outputs["overlays"]:
            top_maps = F.interpolate(maps[idx, :1], size=(height, width), mode="bilinear",
                                     align_corners=False)[:, 0].clamp(0, 1)
            batch = torch.stack([pictures[i].to(maps.device) for i in indices])
            blended = overlay(batch, top_maps, run.outputs["alpha"]).cpu()
            for row, i in enumerate(indices):
                label, score = run.classes[int(targets[i, 0])], float(scores[i, 0])
                name = overlay_file_name(run.inputs.stems[good[i]["index"]], label, score)
                records[i]["overlay"] = name
                writer.submit(good[i]["path"], run.out / name, write_overlay, blended[row].permute(1, 2, 0).numpy(),
                              label_text(label, score))
                report.written.append(run.out / name)


def card_of(record: dict[str, Any], card: Any) -> Any:
    """The index.html card of a manifest record."""
    return card(Path(record["file"]).name, record["overlay"], record["target"], record["scores"][0],
                record.get("raw_map"), list(zip(record["targets"], record["scores"])), extra=record.get("panel"))


def pseudo_mask_batch(maps: Any, class_ids: Any, background: float) -> Any:
    """uint8 (N, H, W) pseudo-masks of maps (N, K, H, W) explaining the model's classes ``class_ids`` (N, K):
    IRN's rule (``camkit_plugins.metrics.protocols.pseudo_masks``), 0 = background, 1 + class id elsewhere."""
    import numpy as np

    from camkit_plugins.metrics.protocols import pseudo_masks

    ids = [[int(c) + 1 for c in row] for row in class_ids.tolist()]
    return np.stack(pseudo_masks(list(maps.detach().float().cpu().numpy()), ids, background)).astype(np.uint8)


def _gather_and_finish(run: ExplainRun, run_folder: RunFolder, report: ExplainReport, grid_cells: list[Any],
                       earlier: list[dict[str, Any]], distributed: Any, manifest: str) -> None:
    """Every rank's records, unreadable files, grid cells and rates to rank 0, which writes the manifest,
    grid.png and index.html (so the files of N processes are those of one)."""
    import torch

    from camkit_plugins.image.page import Card
    from camkit_plugins.image.render import save_grid

    parts = distributed.gather((report.records, report.bad, grid_cells, report.explained,
                                report.explained / max(report.images_per_second, 1e-9)))
    if distributed.rank != 0:
        return
    records = [record for part in parts for record in part[0]]
    report.bad = [line for part in parts for line in part[1]]
    report.explained = sum(part[3] for part in parts)
    report.total_images_per_second = report.explained / max(max(part[4] for part in parts), 1e-9)
    order = {name: i for i, name in enumerate(run.inputs.names)}
    report.records = sorted((r for r in earlier + records if r["file"] in order), key=lambda r: order[r["file"]])
    run_folder.finish(report.records, run.inputs.names, manifest)
    cells = sorted((cell for part in parts for cell in part[2]), key=lambda cell: cell[0])[:GRID_SIZE]
    if run.outputs["grid"] and cells:
        save_grid(run.out / "grid.png", torch.stack([c[1] for c in cells]).round().clamp(0, 255).to(torch.uint8),
                  torch.stack([c[2] for c in cells]), [c[3] for c in cells], ncols=3)
    if run.outputs["page"]:
        report.cards = [card_of(record, Card) for record in report.records if record.get("overlay")]
        write_explain_page(run.out, report, run.method, (run.out / "grid.png").is_file() and run.outputs["grid"])


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


def _save_panel(path: Path, pictures: Any, maps: Any, titles: list[str]) -> None:
    from camkit_plugins.image.render import save_grid

    save_grid(path, pictures, maps, titles, min(len(titles), 5))
