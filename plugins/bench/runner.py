"""The suite: a grid of models x datasets x methods x metrics, evaluated batch by batch.

A *cell* is one (model, dataset, method, metric). Its result is a JSON file under
``OUT/cells/`` keyed by everything that determines it (model weights' file stamp, data set options,
split, sample count, seed, targets, method and metric options), so a rerun recomputes only the
missing cells. Maps are computed once per (model, dataset, method) for all its missing metrics.

Under ``torchrun`` every process evaluates its shard of the samples (``DistributedSampler``,
padding duplicates dropped); each process puts its per-sample values at their sample positions and
the processes' parts are ``all_reduce``d, so every rank has all of them and the means equal a
one-process run. A cell keeps every per-sample value with its sample id (the statistics of the report
work on them). Only rank 0 writes files."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from camkit.distributed import Distributed, local_device
from camkit.io import output_folder, write_text_atomic
from camkit_plugins.bench.config import BASELINE_METHODS, fingerprint, is_checkpoint, slug

# bumped whenever a metric's definition or the cell format changes, so older cells are not reused
# (2: empty maps are misses, the box protocol's own-prediction rule, ROAD's own noise stream;
# 3: cells keep every per-sample value with its sample id, and maps with a NaN are not scored)
CACHE_VERSION = 3


class SampleValues:
    """One cell's per-sample values at their sample positions (``0 .. count-1``, the sample ids), filled
    batch by batch; ``reduce`` adds up the processes' parts (each position is filled by one process, the
    others contribute zeros) so every rank ends with all of them, whatever the world size."""

    def __init__(self, count: int) -> None:
        import torch

        self.count = count
        self.values: dict[str, Any] = {}
        self.seen = torch.zeros(count, dtype=torch.float64)
        self.labels: dict[str, list[str]] = {}

    def add(self, values: Mapping[str, Any], labels: Mapping[str, list[str]], positions: Any,
            invalid: Any = None) -> None:
        """Store ``values`` (``(N,)`` or ``(N, S)`` per name) at ``positions``; samples flagged ``invalid``
        (their map had a NaN) get NaN."""
        import torch

        positions = torch.as_tensor(positions).long().reshape(-1).cpu()
        for name, value in values.items():
            value = value.detach().double().cpu()
            if value.shape[:1] != positions.shape:
                raise ValueError(f"value {name!r}: {value.shape[0] if value.dim() else 'a scalar'} values for "
                                 f"{positions.numel()} samples (metrics return one value per sample)")
            if invalid is not None and bool(invalid.any()):
                value = value.clone()
                value[invalid.cpu()] = float("nan")
            if name not in self.values:
                self.values[name] = torch.full((self.count, *value.shape[1:]), float("nan"), dtype=torch.float64)
            self.values[name][positions] = value
        self.seen[positions] = 1.0
        self.labels.update(labels)

    def reduce(self, dist: Distributed) -> dict[str, Any]:
        """Means over the finite values (float, or a list per curve point), their counts, the number of
        samples whose value is NaN (``nan``), and ``per_sample``: the sample ids and every scalar value
        per sample (NaN kept), for the statistics."""
        import torch

        seen = dist.sum(self.seen) > 0
        ids = torch.nonzero(seen).reshape(-1)
        out: dict[str, Any] = {"values": {}, "counts": {}, "nan": {}, "labels": dict(self.labels),
                               "per_sample": {"ids": ids.tolist(), "values": {}}}
        for name in sorted(self.values):
            value = self.values[name]
            finite = torch.isfinite(value)
            packed = dist.sum(torch.stack([torch.where(finite, value, torch.zeros_like(value)), finite.double()]))
            present = packed[1] > 0
            per_sample = torch.where(present, packed[0], torch.full_like(packed[0], float("nan")))[ids]
            count = present[ids].sum(dim=0)
            total = torch.where(present, packed[0], torch.zeros_like(packed[0]))[ids].sum(dim=0)
            mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
            out["values"][name] = mean.tolist()
            out["counts"][name] = count.long().tolist()
            out["nan"][name] = (len(ids) - count).long().tolist()
            if per_sample.dim() == 1:
                out["per_sample"]["values"][name] = per_sample.tolist()
        return out


def _collate(items: list[Mapping[str, Any]], positions: list[int]) -> dict[str, Any]:
    import torch

    batch: dict[str, Any] = {
        "input": torch.stack([item["input"] for item in items]),
        "label": torch.tensor([int(item["label"]) for item in items]),
        "index": torch.tensor(positions),
    }
    for key in ("box", "mask"):
        present = [key in item and item[key] is not None for item in items]
        if any(present) and not all(present):
            missing = [p for p, ok in zip(positions, present) if not ok]
            raise ValueError(f"some samples have a {key!r} and others do not (missing at {missing[:5]})")
        if all(present):
            values = [torch.as_tensor(item[key]) for item in items]
            batch[key] = torch.stack(values)
    return batch


def _load_model(entry: Mapping[str, Any], num_classes: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """A checkpoint directory (trained) or a registered model (seeded random init)."""
    import torch

    from camkit.checkpoint import WEIGHTS_FILE, load_checkpoint
    from camkit.plugin_manager import lookup

    if is_checkpoint(entry["name"]):
        if entry["options"]:  # the checkpoint's config.json fixes the model; options would be ignored
            raise ValueError(f"model {entry['label']!r} is a checkpoint ({entry['name']}): its options "
                             f"{dict(entry['options'])} cannot change it; remove them")
        model, config = load_checkpoint(entry["name"])
        if len(config["classes"]) != num_classes:
            raise ValueError(f"checkpoint {entry['name']} has {len(config['classes'])} classes but the data set "
                             f"has {num_classes}")
        stamp = (Path(entry["name"]) / WEIGHTS_FILE).stat()
        return model, {"checkpoint": str(Path(entry["name"]).resolve()), "stamp": [stamp.st_size, stamp.st_mtime_ns],
                       "normalization": _normalization(config), "input_size": config.get("input_size")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = lookup("models", entry["name"])(num_classes=num_classes, **entry["options"])
    return model.eval(), {"registered": entry["name"], "options": entry["options"], "normalization": None}


def _normalization(config: Mapping[str, Any]) -> Any:
    if "mean" in config and "std" in config:
        return [config["mean"], config["std"]]
    return None


def _cell_key(config: Mapping[str, Any], model_id: Mapping[str, Any], dataset: Mapping[str, Any],
              method: str, metric: Mapping[str, Any], samples: int) -> dict[str, Any]:
    """What determines a cell; ``samples`` is the number actually evaluated (the data set may have
    fewer items than the config asks for, and may grow later)."""
    return {
        "version": CACHE_VERSION,
        "model": {k: v for k, v in model_id.items() if k != "normalization"},
        "dataset": {"name": dataset["name"], "options": dataset["options"], "split": config["split"]},
        "samples": int(samples), "seed": config["seed"], "targets": config["targets"],
        "method": method, "method_options": config["method_options"].get(method, {}),
        "metric": {"name": metric["name"], "options": metric["options"]},
    }


def _cell_path(out: Path, model: Mapping[str, Any], dataset: Mapping[str, Any], method: str,
               metric: Mapping[str, Any], key: Mapping[str, Any]) -> Path:
    name = "__".join(slug(p) for p in (model["label"], dataset["label"], method, metric["label"]))
    return out / "cells" / f"{name}__{fingerprint(key)}.json"


CELL_FIELDS = {"key": dict, "model": str, "dataset": str, "method": str, "metric": str, "values": dict,
               "counts": dict, "nan": dict, "labels": dict, "per_sample": dict, "primary": str,
               "higher_is_better": bool}


def _read_cell(path: Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cached record at ``path`` if it was computed for ``key``, else None; a file that is not a
    record (cut short, edited, replaced) is an error naming it, never a crash later in the report."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: corrupt cached cell ({exc}); delete it to recompute") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path}: corrupt cached cell (a JSON {type(record).__name__}, not a record); "
                         "delete it to recompute")
    if isinstance(record.get("key"), dict) and record["key"] != json.loads(json.dumps(key)):
        return None  # computed for other settings (or by an older camkit): recomputed and replaced
    wrong = [name for name, kind in CELL_FIELDS.items() if not isinstance(record.get(name), kind)]
    if wrong:
        raise ValueError(f"{path}: corrupt cached cell (missing or malformed {', '.join(wrong)}); "
                         "delete it to recompute")
    return record if record["key"] == json.loads(json.dumps(key)) else None


class MapMaker:
    """Maps at input resolution for a method or a baseline, the same way for every call."""

    def __init__(self, method: str, input_layout: Any, options: Mapping[str, Any], seed: int) -> None:
        from camkit_plugins.metrics.baselines import map_letters_for

        self.method, self.layout, self.options, self.seed = method, input_layout, dict(options), seed
        self.letters = map_letters_for(input_layout)

    def __call__(self, model: Any, inputs: Any, targets: Any, indices: Any) -> Any:
        import camkit
        from camkit_plugins.metrics.baselines import baseline_maps

        if self.method in BASELINE_METHODS:
            like = inputs.new_empty((inputs.shape[0], *self._site_shape(inputs)))
            return baseline_maps(self.method.removeprefix("baseline-"), like, self.letters, indices, self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", camkit.ConstantMapWarning)  # randomised models: expected
            result = camkit.explain(model, inputs, self.method, targets=targets, input_layout=self.layout,
                                    reduce=self.layout.reducible_letters, method_options=self.options)
        return result.maps

    def _site_shape(self, inputs: Any) -> tuple[int, ...]:
        sizes = self.layout.sizes(inputs.shape)
        return tuple(sizes[ch] for ch in self.letters[1:])


def run_suite(raw_config: Mapping[str, Any], progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate the grid; returns one record per cell (also written under ``out/cells``)."""
    from camkit_plugins.bench.config import normalize_config, validate_names

    config = normalize_config(raw_config)
    _load_plugins(config["plugins"])
    validate_names(config)
    device = local_device(config["device"])  # "cuda": one GPU per torchrun process
    dist = Distributed.from_environment(device)
    out = output_folder(config["out"]) if dist.rank == 0 else Path(config["out"])
    try:
        records, meta = [], []
        for model_entry in config["models"]:
            for dataset_entry in config["datasets"]:
                cells, meta_cells = _run_pair(config, model_entry, dataset_entry, device, dist, out, progress)
                records += cells
                meta += meta_cells
        by_seed = {seed: _seed_records(config, seed, device, dist, out, progress) for seed in config["stability_seeds"]}
        if dist.rank == 0:
            from camkit_plugins.bench.report import write_report

            write_report(records, config, out, meta, by_seed)
        return records
    finally:
        dist.close()


def _seed_records(config: Mapping[str, Any], seed: int, device: Any, dist: Distributed, out: Path,
                  progress: bool) -> list[dict[str, Any]]:
    """The grid's cells under another seed (data set, random-init models and every metric draw reseeded;
    cached like the others), for the rank stability across seeds."""
    seeded = {**config, "seed": seed, "meta_evaluation": None}
    return [record for model_entry in config["models"] for dataset_entry in config["datasets"]
            for record in _run_pair(seeded, model_entry, dataset_entry, device, dist, out, progress)[0]]


def _load_plugins(modules: list[str]) -> None:
    """Extra plugin modules named in the config (module names or .py files), registered once."""
    import importlib
    import importlib.util

    from camkit.plugin_manager import get_plugin_manager

    manager = get_plugin_manager()
    for spec in modules:
        if spec.endswith(".py"):
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"plugin file {spec} does not exist")
            name = f"camkit_bench_plugin_{slug(path.stem)}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            name, module = spec, importlib.import_module(spec)
        manager.register_module(module, name)


def _run_pair(config: Mapping[str, Any], model_entry: Mapping[str, Any], dataset_entry: Mapping[str, Any],
              device: Any, dist: Distributed, out: Path,
              progress: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pair's cells (cached or computed) and its meta-evaluation records (when asked)."""
    from camkit.layout import Layout
    from camkit.plugin_manager import lookup

    dataset_entry = _at_checkpoint_size(model_entry, dataset_entry)
    dataset = lookup("datasets", dataset_entry["name"])(split=config["split"], seed=config["seed"],
                                                          **dataset_entry["options"])
    for attribute in ("classes", "input_layout"):
        if not hasattr(dataset, attribute):
            raise ValueError(f"data set {dataset_entry['name']!r} has no {attribute!r} attribute (dataset contract)")
    model, model_id = _load_model(model_entry, len(dataset.classes), config["seed"])
    count = min(config["samples"], len(dataset))
    if count < config["samples"] and dist.rank == 0:
        warnings.warn(f"{config['samples']} samples requested but data set {dataset_entry['label']!r} (split "
                      f"{config['split']!r}) has only {len(dataset)}: evaluating {count}", stacklevel=2)
    records, todo = _cached_cells(config, out, model_entry, model_id, dataset_entry, count, dist)
    meta_todo = _meta_cells(config, out, model_entry, model_id, dataset_entry, count, dist)
    if not todo and all(record is not None for *_, record in meta_todo):
        return records, [record for *_, record in meta_todo]
    input_layout = Layout.parse(dataset.input_layout)
    sample = dataset[0]
    _check_input_size(model_entry, model_id.get("input_size"), sample["input"], input_layout)
    normalization = model_id["normalization"] or (
        [dataset.mean, dataset.std] if hasattr(dataset, "mean") and hasattr(dataset, "std") else None)
    pair = PairRun(config=config, model=model.to(device), dataset=dataset, count=count,
                   positions=dist.shard(count), input_layout=input_layout, sample=sample,
                   normalization=normalization, model_entry=model_entry, dataset_entry=dataset_entry,
                   device=device, dist=dist, progress=progress)
    for method, cells in todo.items():
        records += _run_method(pair, method, cells)
    return records, [record if record is not None else _run_meta(pair, metric, key, path)
                     for metric, key, path, record in meta_todo]


def _cached_cells(config: Mapping[str, Any], out: Path, model_entry: Mapping[str, Any], model_id: Mapping[str, Any],
                  dataset_entry: Mapping[str, Any], count: int, dist: Distributed) -> tuple[list[Any], dict[str, Any]]:
    """The records of the cells already computed, and ``{method: [(metric, key, path), ...]}`` to compute
    (rank 0 reads the cache; every rank agrees on what to compute)."""
    todo: dict[str, list[tuple[Mapping[str, Any], dict[str, Any], Path]]] = {}
    records = []
    for method in [*config["methods"], *BASELINE_METHODS]:
        for metric in config["metrics"]:
            key = _cell_key(config, model_id, dataset_entry, method, metric, count)
            path = _cell_path(out, model_entry, dataset_entry, method, metric, key)
            cached = dist.broadcast(_read_cell(path, key) if dist.rank == 0 else None)
            if cached is not None:
                records.append(cached)
            else:
                todo.setdefault(method, []).append((metric, key, path))
    return records, todo


def _meta_cells(config: Mapping[str, Any], out: Path, model_entry: Mapping[str, Any], model_id: Mapping[str, Any],
                dataset_entry: Mapping[str, Any], count: int, dist: Distributed) -> list[Any]:
    """``(metric, key, path, cached record or None)`` for each metric to meta-evaluate."""
    meta = config["meta_evaluation"]
    if meta is None:
        return []
    if dist.world > 1:
        raise ValueError("meta_evaluation runs in one process: run the bench without torchrun for it")
    cells = []
    for label in meta["metrics"]:
        metric = next(m for m in config["metrics"] if m["label"] == label)
        key = {**_cell_key(config, model_id, dataset_entry, "", metric, count), "meta": meta,
               "methods": {m: config["method_options"].get(m, {}) for m in config["methods"]}}
        key.pop("method"), key.pop("method_options")
        name = "__".join(slug(p) for p in (model_entry["label"], dataset_entry["label"], label))
        path = out / "meta" / f"{name}__{fingerprint(key)}.json"
        cached = None
        if path.is_file():
            try:
                cached = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: corrupt cached meta-evaluation ({exc}); delete it to recompute") from exc
        if not isinstance(cached, dict) or cached.get("key") != json.loads(json.dumps(key)):
            cached = None
        cells.append((metric, key, path, cached))
    return cells


def _run_meta(pair: PairRun, metric: Mapping[str, Any], key: Mapping[str, Any], path: Path) -> dict[str, Any]:
    from camkit_plugins.bench.meta import meta_evaluate

    began = time.perf_counter()
    scores = meta_evaluate(pair, metric, list(pair.config["methods"]), pair.config["meta_evaluation"])
    record = {"key": key, "model": pair.model_entry["label"], "dataset": pair.dataset_entry["label"],
              "metric": metric["label"], "methods": list(pair.config["methods"]), "samples": pair.count,
              "perturbations": pair.config["meta_evaluation"]["perturbations"],
              "iterations": pair.config["meta_evaluation"]["iterations"], "scores": scores,
              "seconds": time.perf_counter() - began}
    write_text_atomic(path, json.dumps(record, indent=1, default=float))
    return json.loads(json.dumps(record, default=float))


@dataclass
class PairRun:
    """What every method of one (model, data set) pair shares."""

    config: Mapping[str, Any]
    model: Any
    dataset: Any
    count: int
    positions: list[int]
    input_layout: Any
    sample: Mapping[str, Any]
    normalization: Any
    model_entry: Mapping[str, Any]
    dataset_entry: Mapping[str, Any]
    device: Any
    dist: Distributed
    progress: bool


@dataclass
class CellRun:
    """One cell being computed: its metric entry, cache key and path, the metric, what it lacks, and
    its per-sample values and seconds as the batches go by."""

    metric: Mapping[str, Any]
    key: Mapping[str, Any]
    path: Path
    instance: Any
    missing: list[str]
    values: SampleValues
    seconds: float = 0.0


def _run_method(pair: PairRun, method: str, cells: list[Any]) -> list[dict[str, Any]]:
    """Compute the missing cells of one method: maps once per batch, every runnable metric on them."""
    make_maps = MapMaker(method, pair.input_layout, pair.config["method_options"].get(method, {}),
                         pair.config["seed"])
    runs = _prepare_cells(pair, cells)
    runnable = [run for run in runs if not run.missing]
    map_seconds, invalid_maps = 0.0, 0
    if runnable:
        from camkit.capture import evaluation_mode

        with evaluation_mode(pair.model):
            for positions in _progress(pair, method, _run_batches(pair, [run.instance for run in runnable])):
                evaluation, invalid, seconds = _evaluation_batch(pair, make_maps, positions)
                map_seconds += seconds
                invalid_maps += int(invalid.sum())
                _evaluate_metrics(runnable, evaluation, invalid)
    return [_finish_cell(pair, method, run, map_seconds, invalid_maps) for run in runs]


def _prepare_cells(pair: PairRun, cells: list[Any]) -> list[CellRun]:
    """Each missing cell's metric instance, and the ground truth it needs that the data set lacks."""
    from camkit_plugins.metrics.registry import make_metric

    runs = []
    for metric, key, path in cells:
        instance = make_metric(metric["name"], **metric["options"])
        runs.append(CellRun(metric, key, path, instance, _missing_fields(instance, pair.sample),
                            SampleValues(pair.count)))
    return runs


def _run_batches(pair: PairRun, metrics: list[Any]) -> list[list[int]]:
    """This process's sample positions in batches of ``batch_size``; a metric that compares the samples
    of a batch (``min_batch`` > 1) never gets a smaller last batch: the remainder joins the batch before."""
    size = pair.config["batch_size"]
    need = max(int(getattr(metric, "min_batch", 1)) for metric in metrics)
    needy = next(metric.name for metric in metrics if int(getattr(metric, "min_batch", 1)) == need)
    if need > 1 and (size < need or len(pair.positions) < need):
        raise ValueError(f"metric {needy!r} compares the samples of a batch and needs at least {need} per batch: "
                         f"got batch_size={size} and {len(pair.positions)} samples in this process")
    batches = [pair.positions[start:start + size] for start in range(0, len(pair.positions), size)]
    if len(batches) > 1 and len(batches[-1]) < need:
        batches[-2:] = [batches[-2] + batches[-1]]
    return batches


def _progress(pair: PairRun, method: str, batches: list[list[int]]) -> Any:
    from tqdm.auto import tqdm

    label = f"{pair.model_entry['label']}/{pair.dataset_entry['label']}/{method}"
    return tqdm(batches, desc=label, unit="batch", disable=not pair.progress or pair.dist.rank != 0)


def _evaluation_batch(pair: PairRun, make_maps: MapMaker, positions: list[int]) -> tuple[Any, Any, float]:
    """The ``EvalBatch`` of these samples (targets, maps at input resolution), which samples' maps have a
    NaN (their maps are zeroed here and their values set to NaN after), and the seconds the maps took."""
    import torch

    from camkit_plugins.metrics.base import EvalBatch

    batch = _collate([pair.dataset[i] for i in positions], positions)
    inputs = batch["input"].to(pair.device)
    labels = batch["label"].to(pair.device)
    with torch.inference_mode():
        logits = pair.model(inputs)
    predictions = logits.argmax(dim=1)
    targets = predictions if pair.config["targets"] == "predicted" else labels
    began = time.perf_counter()
    maps = make_maps(pair.model, inputs, targets, batch["index"])
    seconds = time.perf_counter() - began
    invalid = ~torch.isfinite(maps.reshape(maps.shape[0], -1)).all(dim=1)
    if bool(invalid.any()):
        maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    evaluation = EvalBatch(
        model=pair.model, inputs=inputs, input_layout=pair.input_layout, labels=labels, targets=targets,
        maps=maps, map_letters=make_maps.letters, indices=batch["index"],
        explain=lambda m, x, t, idx=batch["index"]: make_maps(m, x, t, idx),
        mask=batch.get("mask"), box=batch.get("box"), normalization=pair.normalization,
        chunk_size=pair.config["chunk_size"], seed=pair.config["seed"], predictions=predictions)
    return evaluation, invalid, seconds


def _evaluate_metrics(runnable: list[CellRun], evaluation: Any, invalid: Any) -> None:
    for run in runnable:
        began = time.perf_counter()
        result = run.instance.evaluate(evaluation)
        run.seconds += time.perf_counter() - began
        run.values.add(result.values, result.labels, evaluation.indices, invalid)


def _finish_cell(pair: PairRun, method: str, run: CellRun, map_seconds: float, invalid_maps: int) -> dict[str, Any]:
    """The cell's record (means, counts, per-sample values, seconds; or why it was skipped), written
    atomically by rank 0."""
    metric, instance = run.metric, run.instance
    record = {
        "key": run.key, "model": pair.model_entry["label"], "dataset": pair.dataset_entry["label"], "method": method,
        "metric": metric["label"], "metric_name": metric["name"], "options": instance.options(),
        "primary": instance.primary, "higher_is_better": instance.higher_is_better,
        "samples": pair.count, "samples_requested": pair.config["samples"],
    }
    if run.missing:
        record.update(skipped=f"the data set has no {' or '.join(run.missing)}", values={}, counts={}, nan={},
                      labels={}, per_sample={"ids": [], "values": {}})
    else:
        record.update(run.values.reduce(pair.dist))
        record["nan_maps"] = int(pair.dist.sum(_scalar(invalid_maps)).item())
        record["seconds"] = {"maps": map_seconds, "metric": run.seconds}
    if pair.dist.rank == 0:  # atomic: a run killed here leaves no half-written cell behind
        write_text_atomic(run.path, json.dumps(record, indent=1, default=float))
    return json.loads(json.dumps(record, default=float))


def _scalar(value: float) -> Any:
    import torch

    return torch.tensor(float(value), dtype=torch.float64)


def _at_checkpoint_size(model_entry: Mapping[str, Any], dataset_entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """A data set that takes a ``size`` option and was given none is made at the size the checkpoint
    was trained on (a size given explicitly is kept, and checked by `_check_input_size`)."""
    import inspect

    from camkit.checkpoint import read_config
    from camkit.plugin_manager import lookup

    if "size" in dataset_entry["options"] or not is_checkpoint(model_entry["name"]):
        return dataset_entry
    trained = read_config(model_entry["name"]).get("input_size")
    if trained is None or "size" not in inspect.signature(lookup("datasets", dataset_entry["name"])).parameters:
        return dataset_entry
    return {**dataset_entry, "options": {**dataset_entry["options"], "size": int(trained)}}


def _check_input_size(entry: Mapping[str, Any], trained: Any, item: Any, input_layout: Any) -> None:
    """A checkpoint evaluated on inputs of another size than it was trained on is an error."""
    if trained is None or not {"H", "W"} <= set(input_layout.letters):
        return
    sizes = input_layout.sizes((1, *item.shape))
    if (sizes["H"], sizes["W"]) != (int(trained), int(trained)):
        raise ValueError(f"checkpoint {entry['name']} was trained on {trained} px inputs but the data set's items are "
                         f"{sizes['H']}x{sizes['W']}: pass the data set option size = {trained}")


def _missing_fields(metric: Any, sample: Mapping[str, Any]) -> list[str]:
    """Ground-truth fields ``metric`` needs that the data set's items lack."""
    missing = []
    for need in metric.requires:
        if need == "box" and sample.get("box") is None:
            missing.append("box")
        if need == "ground_truth" and sample.get("mask") is None and sample.get("box") is None:
            missing.append("mask or box")
    return missing
