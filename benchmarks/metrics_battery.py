"""The metric battery (issue 21, item 8 and the speed bars).

1. **grid**: every registered metric (``camkit list metrics``, aliases left out) on every method
   (``camkit list methods``) through ``camkit bench`` (so with intervals, paired tests and rank
   stability), on the shapes ResNet-18 (``benchmarks/checkpoints/shapes-resnet18``, trained by
   ``benchmarks/quality_shapes.py``) and on the synthetic skeletons (``benchmarks/checkpoints/skeleton-stgcn``).
   Without a checkpoint the registered architecture is used with a seeded random init, and the report
   says so. A (metric, method) that raises is reported with its error, never dropped silently.
2. **speed**: camkit against Quantus 0.6 on the same batch (ResNet-18, 16 images at 224 px, CPU,
   2 threads by default): per shared metric, camkit's wall time, Quantus's (through the ``quantus:``
   wrapper, Quantus's own numpy path), the forwards each one ran (counted by a forward hook) and the
   time of camkit's forwards replayed alone (the same batch shapes, nothing else): bars: camkit at
   least as fast as Quantus per metric, the battery at least 5x, camkit within 1.15x of its forwards.
   The cases come from the family benchmarks when present (``FAITHFULNESS_CASES``,
   ``ROBUSTNESS_CASES``, ``LOCALISATION_CASES`` of ``benchmarks/metrics_vs_quantus_*.py``), else from
   ``DEFAULT_CASES`` (each family's form is accepted: see ``as_case``).

    python benchmarks/metrics_battery.py --quick                 # small settings, a few minutes
    python benchmarks/metrics_battery.py --part speed --device cuda   # the GPU session's stage

Results: ``benchmarks/results/battery/`` (``battery.md``, ``speed.csv``, the bench folders)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Mapping

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "battery"
CASE_FILES = {"FAITHFULNESS_CASES": "metrics_vs_quantus_faithfulness.py",
              "ROBUSTNESS_CASES": "metrics_vs_quantus_robustness.py",
              "LOCALISATION_CASES": "metrics_vs_quantus_localisation.py"}
# cheap settings used on both sides when no family case list is present (Quantus's names)
DEFAULT_CASES: list[dict[str, Any]] = [
    {"quantus": "FaithfulnessCorrelation", "options": {"nr_runs": 20, "subset_size": 224}},
    {"quantus": "RegionPerturbation", "options": {"patch_size": 28, "regions_evaluation": 20}},
    {"quantus": "Selectivity", "options": {"patch_size": 28}},
    {"quantus": "PointingGame", "options": {}},
    {"quantus": "RelevanceMassAccuracy", "options": {}},
    {"quantus": "Sparseness", "options": {}},
    {"quantus": "MaxSensitivity", "options": {"nr_samples": 5}},
    {"quantus": "MPRT", "options": {}},
]
# a case whose camkit run takes under SHORT_S seconds is timed SHORT_REPEATS times on each side (medians):
# a 0.6 s metric swung from 1.06x to 1.45x its forwards between single runs on 2 cores
SHORT_S, SHORT_REPEATS = 2.0, 5
# in --quick grids, these options (when a metric takes them) keep each cell small
QUICK_OPTIONS = {"steps": 8, "nr_runs": 10, "nr_samples": 3, "max_layers": 2, "features_in_step": 64,
                 "subset_size": 64, "regions_evaluation": 10, "patch_size": 8}
GRID = {
    "shapes": {"checkpoint": HERE / "checkpoints" / "shapes-resnet18", "model": "resnet18", "dataset": "shapes",
               "model_options": {}},
    "skeleton": {"checkpoint": HERE / "checkpoints" / "skeleton-stgcn", "model": "stgcn",
                 "dataset": "skeleton-synthetic", "model_options": {"config": "tiny", "persons": 1}},
}


# ---------------------------------------------------------------- the grid


def registered_metrics() -> list[str]:
    """Every registered metric under its own name (aliases, whose class has another name, left out)."""
    from camkit.plugin_manager import registry

    return sorted(name for name, cls in registry("metrics").items() if getattr(cls, "name", name) == name)


def registered_methods() -> list[str]:
    from camkit.plugin_manager import registry

    return sorted(registry("methods"))


def quick_options(metric: str) -> dict[str, Any]:
    from camkit_plugins.metrics.quantus_metrics import PREFIX
    from camkit_plugins.metrics.registry import accepted_options, metric_class

    if metric.startswith(PREFIX):  # Quantus's own options: given as written
        return {}
    accepted = accepted_options(metric_class(metric)) or []
    return {k: v for k, v in QUICK_OPTIONS.items() if k in accepted}


def run_grid(name: str, methods: list[str], metrics: list[str], samples: int, quick: bool, device: str,
             out: Path) -> dict[str, Any]:
    """One bench per metric over all methods (cells cached, so a rerun only fills the gaps); a metric whose
    bench raises is retried method by method so the failing (metric, method) pairs are named."""
    from camkit_plugins.bench.runner import run_suite

    setting = GRID[name]
    checkpoint = setting["checkpoint"]
    trained = (checkpoint / "config.json").is_file()
    model = str(checkpoint) if trained else {"name": setting["model"], "options": setting["model_options"],
                                             "label": f"{setting['model']}-random-init"}
    base = {"models": [model], "datasets": [setting["dataset"]], "samples": samples, "batch_size": 8 if quick else 16,
            "device": device, "out": str(out / name), "plots": not quick, "interval_resamples": 200 if quick else 1000}
    failures, seconds = [], {}
    for metric in metrics:
        entry = {"name": metric, "options": quick_options(metric) if quick else {}, "label": metric}
        began = time.perf_counter()
        try:
            run_suite({**base, "methods": methods, "metrics": [entry]}, progress=False)
        except Exception:  # isolated below, every failure is reported with its error
            for method in methods:
                try:
                    run_suite({**base, "methods": [method], "metrics": [entry]}, progress=False)
                except Exception as exc:  # reported in battery.md
                    failures.append({"grid": name, "metric": metric, "method": method,
                                     "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
        seconds[metric] = time.perf_counter() - began
        print(f"[{name}] {metric}: {seconds[metric]:.1f} s", flush=True)
    if metrics:  # one report over every cell (all cached now)
        try:
            run_suite({**base, "methods": methods, "metrics": [{"name": m, "options": quick_options(m) if quick else {},
                                                                 "label": m} for m in metrics]}, progress=False)
        except Exception:  # the per-metric reports above stand; the failures are listed
            traceback.print_exc()
    return {"grid": name, "trained": trained, "model": model if isinstance(model, str) else model["label"],
            "failures": failures, "seconds": seconds}


# ---------------------------------------------------------------- speed against Quantus


def load_cases(side: int = 224) -> tuple[list[dict[str, Any]], list[str]]:
    """The family benchmarks' case lists when their files exist, else ``DEFAULT_CASES`` (for RGB images of
    ``side`` px, which options that depend on the image size are computed for)."""
    cases, sources = [], []
    for attribute, filename in CASE_FILES.items():
        path = HERE / filename
        if not path.is_file():
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        found = getattr(module, attribute, None)
        if found is None:
            raise AttributeError(f"{filename} has no {attribute}")
        cases += [as_case(case, 3, side) for case in found]
        sources.append(f"{filename}:{attribute}")
    if not cases:
        return [as_case(case, 3, side) for case in DEFAULT_CASES], ["DEFAULT_CASES"]
    return cases, sources


def as_case(case: Any, channels: int = 3, side: int = 224) -> dict[str, Any]:
    """A case in the battery's form: ``camkit`` (registered name, or None: the metric whose ``quantus_name``
    it is), ``camkit_options``, ``quantus`` (class name, or None: camkit alone), ``quantus_options``,
    ``quantus_call`` (keywords of Quantus's ``__call__``), ``label``. Accepted: a mapping with ``quantus``,
    ``options`` (camkit's; Quantus's too unless ``quantus_options`` is given), ``camkit``, ``label``
    (the robustness benchmark's form); a ``(camkit, camkit options, Quantus class, Quantus options, ...)``
    tuple (the localisation benchmark's); an object with ``metric``, ``quantus``, ``options(channels,
    side)`` shared, ``camkit`` (camkit-only options) and ``quantus_call`` (the faithfulness benchmark's);
    a ``(Quantus class, options)`` pair."""
    if isinstance(case, Mapping):
        if "quantus" not in case and "camkit" not in case:
            raise ValueError(f"a speed case needs 'quantus' or 'camkit': {case!r}")
        options = dict(case.get("options") or {})
        quantus_options = dict(case["quantus_options"]) if "quantus_options" in case else options
        out = {"camkit": case.get("camkit"), "camkit_options": {**options, **dict(case.get("camkit_options") or {})},
               "quantus": case.get("quantus"), "quantus_options": quantus_options,
               "quantus_call": dict(case.get("quantus_call") or {})}
    elif isinstance(case, (tuple, list)) and len(case) >= 4 and isinstance(case[1], Mapping):
        out = {"camkit": case[0], "camkit_options": dict(case[1]), "quantus": case[2],
               "quantus_options": dict(case[3]), "quantus_call": {}}
    elif isinstance(case, (tuple, list)) and 1 <= len(case) <= 2 and isinstance(case[0], str):
        options = dict(case[1]) if len(case) > 1 else {}
        out = {"camkit": None, "camkit_options": options, "quantus": case[0], "quantus_options": options,
               "quantus_call": {}}
    elif hasattr(case, "metric") and hasattr(case, "quantus"):
        shared = case.options(channels, side) if callable(getattr(case, "options", None)) else {}
        out = {"camkit": case.metric, "camkit_options": {**shared, **dict(getattr(case, "camkit", {}) or {})},
               "quantus": case.quantus, "quantus_options": dict(shared),
               "quantus_call": dict(getattr(case, "quantus_call", {}) or {})}
    else:
        raise ValueError(f"a speed case needs at least 'quantus' (the class name) or 'camkit': {case!r}")
    out["label"] = str((case.get("label") if isinstance(case, Mapping) else None) or out["camkit"] or out["quantus"])
    return out


def camkit_name(case: Mapping[str, Any]) -> str | None:
    """The registered camkit metric for a case: ``camkit``, else the one whose ``quantus_name`` it is."""
    from camkit.plugin_manager import registry

    if case.get("camkit"):
        return str(case["camkit"])
    if not case.get("quantus"):
        return None
    for name, cls in sorted(registry("metrics").items()):
        if getattr(cls, "quantus_name", "") == case["quantus"] and getattr(cls, "name", name) == name:
            return name
    return None


class ForwardLog:
    """Records the input shape of every call of ``model`` (a forward hook; copies of the model made by a
    metric keep the hook, so their forwards count too)."""

    def __init__(self, model: Any) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.output_error = ""
        self.handle = model.register_forward_hook(lambda module, args, output: self.shapes.append(
            tuple(args[0].shape)) if args else None)

    def close(self) -> None:
        self.handle.remove()

    @property
    def samples(self) -> int:
        return sum(shape[0] for shape in self.shapes)


def replay_seconds(model: Any, shapes: list[tuple[int, ...]], device: Any) -> float:
    """The time of the same forwards alone: random inputs of the recorded shapes, no grad."""
    import torch

    inputs = {shape: torch.rand(shape, device=device) for shape in set(shapes)}
    _sync(device)
    began = time.perf_counter()
    with torch.inference_mode():
        for shape in shapes:
            model(inputs[shape])
    _sync(device)
    return time.perf_counter() - began


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def speed_batch(images: int, size: int, device: str, method: str = "layercam", seed: int = 0) -> Any:
    """ResNet-18 (seeded random init, 1000 classes) and ``images`` random images at ``size`` px with the maps
    of ``method`` (LayerCAM by default: a random network's Grad-CAM maps are often all zero, which Quantus
    refuses) and a random box mask each, as an ``EvalBatch``."""
    import torch
    import torchvision

    import camkit
    from camkit.layout import Layout
    from camkit_plugins.metrics.base import EvalBatch

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=1000).eval().to(device)
    x = torch.rand(images, 3, size, size, device=device)
    result = camkit.explain(model, x, method)
    mask = torch.zeros(images, size, size, dtype=torch.bool)
    for i in range(images):
        y0, x0 = torch.randint(0, size // 2, (2,)).tolist()
        mask[i, y0:y0 + size // 2, x0:x0 + size // 2] = True

    def explain(m: Any, inputs: Any, targets: Any) -> Any:
        return camkit.explain(m, inputs, method, targets=targets).maps

    return EvalBatch(model=model, inputs=x, input_layout=Layout.parse("NCHW"), labels=result.targets,
                     targets=result.targets, maps=result.maps, map_letters="NHW", indices=torch.arange(images),
                     explain=explain, mask=mask.to(device), seed=seed)


def time_metric(metric: Any, batch: Any) -> tuple[float, ForwardLog]:
    """Wall time of ``metric.evaluate(batch)`` and the forwards it ran. A Quantus metric whose result is not
    per sample (``QuantusOutputError``: it ran to the end) still has its time, with the error beside it."""
    from camkit_plugins.metrics.quantus_metrics import QuantusOutputError

    log = ForwardLog(batch.model)
    try:
        _sync(batch.inputs.device)
        began = time.perf_counter()
        try:
            metric.evaluate(batch)
        except QuantusOutputError as exc:
            log.output_error = f"{exc}"
        _sync(batch.inputs.device)
        return time.perf_counter() - began, log
    finally:
        log.close()


def run_speed(cases: list[dict[str, Any]], images: int, size: int, device: str,
              method: str = "layercam") -> list[dict[str, Any]]:
    from camkit_plugins.metrics.registry import make_metric

    batch = speed_batch(images, size, device, method)
    rows = []
    for case in cases:
        row: dict[str, Any] = {"case": case["label"], "quantus": case["quantus"] or "",
                               "options": json.dumps(case["camkit_options"], default=str)}
        name = camkit_name(case)
        row["camkit"] = name or ""
        try:
            if name is None:
                raise LookupError(f"no registered camkit metric has quantus_name {case['quantus']!r}")
            ours = make_metric(name, **case["camkit_options"])
            cached = batch.predictions  # the batch keeps its top-1 classes: each repeat starts as the first did
            row["camkit_s"], log = time_metric(ours, batch)
            row["camkit_forwards"] = log.samples
            row["forward_s"] = replay_seconds(batch.model, log.shapes, batch.inputs.device)
            if row["camkit_s"] < SHORT_S:  # a short case is timed a few more times (the median of each)
                more = [time_metric(ours, dataclasses.replace(batch, predictions=cached))[0]
                        for _ in range(SHORT_REPEATS - 1)]
                replays = [replay_seconds(batch.model, log.shapes, batch.inputs.device)
                           for _ in range(SHORT_REPEATS - 1)]
                row["camkit_s"] = statistics.median([row["camkit_s"], *more])
                row["forward_s"] = statistics.median([row["forward_s"], *replays])
                row["repeats"] = SHORT_REPEATS
        except Exception as exc:  # reported in the table
            row["camkit_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        try:
            if not case["quantus"]:
                raise LookupError("camkit only (no Quantus counterpart)")
            call = {"call": case["quantus_call"]} if case["quantus_call"] else {}
            theirs = make_metric(f"quantus:{case['quantus']}", **case["quantus_options"], **call)
            row["quantus_s"], their_log = time_metric(theirs, batch)
            row["quantus_forwards"] = their_log.samples
            if row.get("repeats"):
                more = [time_metric(theirs, batch)[0] for _ in range(SHORT_REPEATS - 1)]
                row["quantus_s"] = statistics.median([row["quantus_s"], *more])
            if their_log.output_error:  # timed, but its values are not per sample (a Quantus fault)
                row["quantus_note"] = their_log.output_error[:300]
        except Exception as exc:  # reported in the table
            row["quantus_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if "camkit_s" in row and "quantus_s" in row:
            row["speedup"] = row["quantus_s"] / row["camkit_s"]
        if row.get("camkit_forwards"):  # a metric without forwards has no forward time to compare with
            row["camkit_over_forwards"] = row["camkit_s"] / row["forward_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---------------------------------------------------------------- report


def speed_markdown(rows: list[dict[str, Any]], images: int, size: int, device: str, threads: int,
                   sources: list[str]) -> list[str]:
    timed = [r for r in rows if "speedup" in r]
    lines = [f"## Speed against Quantus 0.6 (ResNet-18, {images} images at {size} px, {device}, {threads} threads)", "",
             f"Cases: {', '.join(sources)}. Forwards = samples forwarded (hook count); forward s = camkit's "
             f"forwards replayed alone; a case under {SHORT_S:g} s of camkit is timed {SHORT_REPEATS} times on "
             "each side (medians).", "",
             "| case | camkit | camkit s | Quantus s | speed-up | camkit forwards | Quantus forwards | forward s | "
             "camkit / forwards |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["case"], r["camkit"] or "–", _number(r, "camkit_s", "camkit_error"),
                 _number(r, "quantus_s", "quantus_error") + (" (its values are not per sample)"
                                                             if r.get("quantus_note") else ""),
                 f"{r['speedup']:.2f}x" if "speedup" in r else "–",
                 str(r.get("camkit_forwards", "–")), str(r.get("quantus_forwards", "–")), _number(r, "forward_s"),
                 f"{r['camkit_over_forwards']:.2f}" if "camkit_over_forwards" in r else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    forwards = [r for r in rows if "camkit_over_forwards" in r]
    if timed:
        total = sum(r["quantus_s"] for r in timed) / sum(r["camkit_s"] for r in timed)
        lines += ["", f"Bars: every shared metric at least as fast as Quantus: "
                      f"{sum(r['speedup'] >= 1 for r in timed)} of {len(timed)}; the battery {total:.2f}x "
                      f"(bar 5x); camkit within 1.15x of its forwards: "
                      f"{sum(r['camkit_over_forwards'] <= 1.15 for r in forwards)} of {len(forwards)} "
                      "(metrics that forward; re-explaining metrics also run backward passes)."]
    return lines


def _number(row: Mapping[str, Any], key: str, error: str = "") -> str:
    if key in row:
        return f"{row[key]:.3f}"
    return f"error: {row[error]}" if error and error in row else "–"


def grid_markdown(grids: list[dict[str, Any]], out: Path) -> list[str]:
    lines = []
    for g in grids:
        note = "" if g["trained"] else "; no checkpoint: seeded random init, the maps say little"
        lines += [f"## Grid: {g['grid']} ({g['model']}{note})", "",
                  f"Report: `{out / g['grid'] / 'results.md'}`; seconds per metric: "
                  + ", ".join(f"{m} {s:.1f}" for m, s in g["seconds"].items()), ""]
        if g["failures"]:
            lines += ["| metric | method | error |", "|---|---|---|"]
            lines += [f"| {f['metric']} | {f['method']} | {f['error']} |" for f in g["failures"]]
            lines.append("")
    return lines


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    rows = list(rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("grid", "speed", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="small settings: 8 samples, cheap metric options")
    parser.add_argument("--grids", default="shapes,skeleton", help="comma-separated: shapes, skeleton")
    parser.add_argument("--methods", help="comma-separated (default: every registered method)")
    parser.add_argument("--metrics", help="comma-separated (default: every registered metric)")
    parser.add_argument("--samples", type=int, help="samples per grid (default 64, --quick 8)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cases", help="comma-separated cases to time, by label, camkit metric or Quantus class "
                        "(default: all)")
    parser.add_argument("--method", default="layercam", help="the maps the speed cases evaluate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/metrics_battery.py", *(argv if argv is not None else sys.argv[1:])])
    lines = ["# The metric battery", "", f"`{command}`", ""]
    if args.part in ("grid", "all"):
        methods = args.methods.split(",") if args.methods else registered_methods()
        metrics = args.metrics.split(",") if args.metrics else registered_metrics()
        samples = args.samples or (8 if args.quick else 64)
        grids = [run_grid(name, methods, metrics, samples, args.quick, args.device, args.out)
                 for name in args.grids.split(",") if name]
        (args.out / "grid.json").write_text(json.dumps(grids, indent=1))
        lines += grid_markdown(grids, args.out)
    if args.part in ("speed", "all"):
        cases, sources = load_cases(args.size)
        if args.cases:
            wanted = set(args.cases.split(","))  # a case's label, camkit name or Quantus class name
            cases = [c for c in cases if wanted & {c["label"], c["camkit"], c["quantus"]}]
        rows = run_speed(cases, args.images, args.size, args.device, args.method)
        write_csv(args.out / "speed.csv", rows)
        lines += speed_markdown(rows, args.images, args.size, args.device, args.threads, sources)
    (args.out / "battery.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
