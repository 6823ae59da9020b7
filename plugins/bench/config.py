"""The bench configuration: a JSON or TOML file and/or command-line flags, validated up front so an
unknown name fails before any work (listing what is available)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

from camkit.plugin_manager import UnknownNameError

DEFAULTS: dict[str, Any] = {
    "methods": ["cam", "gradcam"],
    "metrics": ["pointing_game", "energy_pointing_game", "deletion", "insertion", "average_drop"],
    "models": [],
    "datasets": [],
    "split": "test",
    "samples": 64,
    "batch_size": 16,
    "chunk_size": None,  # None: the metrics' automatic choice (256 on a GPU, fewer for large CPU inputs)
    "seed": 0,
    "targets": "predicted",
    "device": "auto",
    "out": "bench-results",
    "plots": True,
    "plugins": [],
    "method_options": {},
    # statistics of the report (from the cells' per-sample values; changing them recomputes no cell)
    "interval_resamples": 1000,
    "confidence": 0.95,
    "interval": "percentile",
    "significance": 0.05,
    "rank_bootstrap": 200,
    "meta_evaluation": None,
    "stability_seeds": [],
}
BASELINE_METHODS = ("baseline-center", "baseline-random")
TARGET_CHOICES = ("predicted", "label")
INTERVAL_CHOICES = ("percentile", "bca")
ENTRY_KEYS = ("name", "options", "label")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a ``.json`` or ``.toml`` config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bench config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: invalid TOML: {exc}") from exc
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    raise ValueError(f"{path}: bench configs are .json or .toml files")


def _entry(value: Any, what: str) -> dict[str, Any]:
    """``"name"`` or ``{"name": ..., "options": {...}, "label": ...}`` -> the dict form."""
    if isinstance(value, str):
        return {"name": value, "options": {}, "label": value}
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        unknown = sorted(set(value) - set(ENTRY_KEYS))
        if unknown:
            raise UnknownNameError.of("key", unknown[0], ENTRY_KEYS, where=f"{what} entry {dict(value)!r}")
        options = dict(value.get("options") or {})
        return {"name": value["name"], "options": options, "label": str(value.get("label") or value["name"])}
    raise ValueError(f"{what} entry {value!r} must be a name or a table with 'name' (and 'options', 'label')")


def normalize_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in, entries in dict form, scalar types checked."""
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise UnknownNameError.of("bench setting", unknown[0], sorted(DEFAULTS))
    config = {**DEFAULTS, **dict(raw)}
    for key in ("methods", "metrics", "models", "datasets", "plugins"):
        if isinstance(config[key], str):
            config[key] = [config[key]]
        if not isinstance(config[key], list):
            raise ValueError(f"bench setting {key!r} must be a list, got {config[key]!r}")
    for key in ("samples", "batch_size", "chunk_size"):
        if key == "chunk_size" and config[key] is None:
            continue
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"bench setting {key!r} must be a positive integer, got {config[key]!r}")
    for key in ("interval_resamples", "rank_bootstrap"):
        if not isinstance(config[key], int) or config[key] < 0:
            raise ValueError(f"bench setting {key!r} must be a non-negative integer, got {config[key]!r}")
    for key in ("confidence", "significance"):
        if not isinstance(config[key], float) or not 0.0 < config[key] < 1.0:
            raise ValueError(f"bench setting {key!r} must be a number between 0 and 1, got {config[key]!r}")
    seeds = config["stability_seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"bench setting 'stability_seeds' must be a list of integer seeds, got {seeds!r}")
    config["stability_seeds"] = [s for s in dict.fromkeys(seeds) if s != config["seed"]]
    if config["interval"] not in INTERVAL_CHOICES:
        raise ValueError(f"interval={config['interval']!r}: choose one of {', '.join(INTERVAL_CHOICES)}")
    if config["targets"] not in TARGET_CHOICES:
        raise ValueError(f"targets={config['targets']!r}: choose one of {', '.join(TARGET_CHOICES)}")
    config["methods"] = [m for m in config["methods"] if m not in BASELINE_METHODS]  # always added below
    config["metrics"] = [_entry(m, "metric") for m in config["metrics"]]
    config["models"] = [_entry(m, "model") for m in config["models"]]
    for model in config["models"]:  # a checkpoint path is shown by its directory name
        if model["label"] == model["name"]:
            model["label"] = Path(model["name"]).name or model["name"]
    config["datasets"] = [_entry(d, "dataset") for d in config["datasets"]]
    from camkit_plugins.bench.meta import normalize_meta

    config["meta_evaluation"] = normalize_meta(config["meta_evaluation"], [m["label"] for m in config["metrics"]])
    for key in ("models", "datasets", "metrics", "methods"):
        if not config[key]:
            raise ValueError(f"the bench needs at least one entry in {key!r}")
        labels = [e["label"] if isinstance(e, dict) else e for e in config[key]]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"{key}: {', '.join(twice)} listed twice; give repeated entries distinct labels")
    return config


def validate_names(config: Mapping[str, Any]) -> None:
    """Every method, metric, dataset and model exists (a model is a registered name or a checkpoint
    directory); else an ``UnknownNameError`` listing close matches and the available ones. Metric
    options are tried too."""
    from camkit.methods import method_factory
    from camkit.plugin_manager import lookup, registry
    from camkit_plugins.metrics.registry import make_metric

    methods = registry("methods")
    for method in config["methods"]:
        if method not in BASELINE_METHODS:
            try:
                method_factory(method)  # a registered name or a composition such as "gradcam+sess"
            except KeyError:
                raise UnknownNameError.of("method", method, [*methods, *BASELINE_METHODS]) from None
    for metric in config["metrics"]:
        try:
            make_metric(metric["name"], **metric["options"])  # unknown names and options: close matches named
        except TypeError as exc:
            raise ValueError(f"metric {metric['label']!r}: bad options {metric['options']}: {exc}") from exc
    for dataset in config["datasets"]:
        lookup("datasets", dataset["name"])
    models = registry("models")
    for model in config["models"]:
        if is_checkpoint(model["name"]):
            continue
        if model["name"] not in models:
            raise UnknownNameError.of("model", model["name"], list(models),
                                      alternative="a checkpoint directory (with config.json)")


def is_checkpoint(name: str) -> bool:
    from camkit.checkpoint import CONFIG_FILE

    return (Path(name) / CONFIG_FILE).is_file()


def slug(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def fingerprint(value: Any) -> str:
    """A short stable hash of a JSON-able value (cache keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]
