"""The suite: a grid of models x datasets x methods x metrics, evaluated batch by batch.

A *cell* is one (model, dataset, method, metric). Its result is a JSON file under
``OUT/cells/`` keyed by everything that determines it (model weights' file stamp, data set options,
split, sample count, seed, targets, method and metric options), so a rerun recomputes only the
missing cells. Maps are computed once per (model, dataset, method) for all its missing metrics.

Under ``torchrun`` every process evaluates its shard of the samples (``DistributedSampler``,
padding duplicates dropped); per-sample values are summed (with counts of defined values) and
``all_reduce``d, so the means equal a one-process run. Only rank 0 writes files."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from camkit.distributed import Distributed, local_device
from camkit.io import output_folder, write_text_atomic
from camkit_plugins.bench.config import BASELINE_METHODS, fingerprint, is_checkpoint, slug

# bumped whenever a metric's definition changes, so cells computed under the old one are not reused
# (2: empty maps are misses, the box protocol's own-prediction rule, ROAD's own noise stream)
CACHE_VERSION = 2


class Accumulator:
    """Sums of per-sample values (float64) and counts of the defined (finite) ones, per value name."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}
        self.labels: dict[str, list[str]] = {}

    def add(self, values: Mapping[str, Any], labels: Mapping[str, list[str]]) -> None:
        import torch

        for name, value in values.items():
            value = value.detach().double().cpu()
            finite = torch.isfinite(value)
            total = torch.where(finite, value, torch.zeros_like(value)).sum(dim=0)
            count = finite.sum(dim=0).double()
            if name in self.sums:
                self.sums[name] += total
                self.counts[name] += count
            else:
                self.sums[name], self.counts[name] = total, count
        self.labels.update(labels)

    def reduce(self, dist: Distributed) -> dict[str, Any]:
        """Means (float or list of floats per curve point) and counts, summed over processes."""
        import torch

        names = sorted(self.sums)
        out: dict[str, Any] = {"values": {}, "counts": {}, "labels": dict(self.labels)}
        for name in names:
            packed = dist.sum(torch.stack([self.sums[name], self.counts[name]]))
            total, count = packed[0], packed[1]
            mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
            out["values"][name] = mean.tolist()
            out["counts"][name] = count.long().tolist()
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
               "counts": dict, "labels": dict, "primary": str, "higher_is_better": bool}


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
        records = []
        for model_entry in config["models"]:
            for dataset_entry in config["datasets"]:
                records += _run_pair(config, model_entry, dataset_entry, device, dist, out, progress)
        if dist.rank == 0:
            from camkit_plugins.bench.report import write_report

            write_report(records, config, out)
        return records
    finally:
        dist.close()


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
              device: Any, dist: Distributed, out: Path, progress: bool) -> list[dict[str, Any]]:
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
    methods = [*config["methods"], *BASELINE_METHODS]
    todo: dict[str, list[tuple[dict[str, Any], dict[str, Any], Path]]] = {}
    records = []
    for method in methods:
        for metric in config["metrics"]:
            key = _cell_key(config, model_id, dataset_entry, method, metric, count)
            path = _cell_path(out, model_entry, dataset_entry, method, metric, key)
            cached = _read_cell(path, key) if dist.rank == 0 else None
            cached = dist.broadcast(cached)  # every rank agrees on what to compute
            if cached is not None:
                records.append(cached)
            else:
                todo.setdefault(method, []).append((metric, key, path))
    if not todo:
        return records
    positions = dist.shard(count)
    input_layout = Layout.parse(dataset.input_layout)
    sample = dataset[0]
    _check_input_size(model_entry, model_id.get("input_size"), sample["input"], input_layout)
    normalization = model_id["normalization"] or (
        [dataset.mean, dataset.std] if hasattr(dataset, "mean") and hasattr(dataset, "std") else None)
    model = model.to(device)
    for method, cells in todo.items():
        records += _run_method(config, model, dataset, count, positions, input_layout, sample, normalization,
                               method, cells, model_entry, dataset_entry, device, dist, progress)
    return records


def _run_method(config: Mapping[str, Any], model: Any, dataset: Any, count: int, positions: list[int],
                input_layout: Any,
                sample: Mapping[str, Any], normalization: Any, method: str, cells: list[Any],
                model_entry: Mapping[str, Any], dataset_entry: Mapping[str, Any], device: Any,
                dist: Distributed, progress: bool) -> list[dict[str, Any]]:
    import torch
    from tqdm.auto import tqdm

    from camkit.capture import evaluation_mode
    from camkit.plugin_manager import lookup
    from camkit_plugins.metrics.base import EvalBatch

    make_maps = MapMaker(method, input_layout, config["method_options"].get(method, {}), config["seed"])
    runnable, skipped = [], []
    for metric, key, path in cells:
        instance = lookup("metrics", metric["name"])(**metric["options"])
        missing = _missing_fields(instance, sample)
        (skipped if missing else runnable).append((metric, key, path, instance, missing))
    sums = {metric["label"]: Accumulator() for metric, *_ in runnable}
    seconds = {metric["label"]: 0.0 for metric, *_ in runnable}
    map_seconds = 0.0
    starts = range(0, len(positions), config["batch_size"])
    bar = tqdm(starts, desc=f"{model_entry['label']}/{dataset_entry['label']}/{method}", unit="batch",
               disable=not progress or dist.rank != 0 or not runnable)
    with evaluation_mode(model):
        for start in bar if runnable else ():
            chunk = positions[start:start + config["batch_size"]]
            batch = _collate([dataset[i] for i in chunk], chunk)
            inputs = batch["input"].to(device)
            labels = batch["label"].to(device)
            with torch.inference_mode():
                logits = model(inputs)
            targets = logits.argmax(dim=1) if config["targets"] == "predicted" else labels
            began = time.perf_counter()
            maps = make_maps(model, inputs, targets, batch["index"])
            map_seconds += time.perf_counter() - began
            evaluation = EvalBatch(
                model=model, inputs=inputs, input_layout=input_layout, labels=labels, targets=targets,
                maps=maps, map_letters=make_maps.letters, indices=batch["index"],
                explain=lambda m, x, t, idx=batch["index"]: make_maps(m, x, t, idx),
                mask=batch.get("mask"), box=batch.get("box"), normalization=normalization,
                chunk_size=config["chunk_size"], seed=config["seed"], predictions=logits.argmax(dim=1))
            for metric, _, _, instance, _ in runnable:
                began = time.perf_counter()
                result = instance.evaluate(evaluation)
                seconds[metric["label"]] += time.perf_counter() - began
                sums[metric["label"]].add(result.values, result.labels)
    records = []
    for metric, key, path, instance, missing in runnable + skipped:
        record = {
            "key": key, "model": model_entry["label"], "dataset": dataset_entry["label"], "method": method,
            "metric": metric["label"], "metric_name": metric["name"], "options": instance.options(),
            "primary": instance.primary, "higher_is_better": instance.higher_is_better,
            "samples": count, "samples_requested": config["samples"],
        }
        if missing:
            record.update(skipped=f"the data set has no {' or '.join(missing)}", values={}, counts={}, labels={})
        else:
            record.update(sums[metric["label"]].reduce(dist))
            record["seconds"] = {"maps": map_seconds, "metric": seconds[metric["label"]]}
        if dist.rank == 0:  # atomic: a run killed here leaves no half-written cell behind
            write_text_atomic(path, json.dumps(record, indent=1, default=float))
        records.append(json.loads(json.dumps(record, default=float)))
    return records


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
