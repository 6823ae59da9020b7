"""Bench outputs: ``results.csv`` (scalars), ``curves.csv`` (curve points), ``results.md`` (ranked
tables with the baselines), ``bars_*.png`` and ``curves_*.png``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping

from camkit.io import atomic_path, write_text_atomic
from camkit_plugins.bench.config import BASELINE_METHODS, slug


def _is_curve(value: Any) -> bool:
    return isinstance(value, list)


def scalar_rows(records: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        for name, value in sorted(r["values"].items()):
            if _is_curve(value):
                continue
            rows.append({"model": r["model"], "dataset": r["dataset"], "method": r["method"], "metric": r["metric"],
                         "value": name, "mean": value, "count": r["counts"][name],
                         "samples": r.get("samples"),
                         "primary": name == r["primary"], "higher_is_better": r["higher_is_better"],
                         "options": json.dumps(r["options"], sort_keys=True)})
    return rows


def rank_methods(records: list[Mapping[str, Any]]) -> dict[str, float]:
    """Mean rank of each method over the metrics' primary values (1 = best; ties share the better rank).

    A method without a value on a metric that others have (NaN: e.g. every map was empty) takes the
    last rank there, so missing results never lift a method above one that was measured."""
    by_metric: dict[str, dict[str, float]] = {}
    for r in records:
        value = r["values"].get(r["primary"])
        if r.get("skipped") or value is None or _is_curve(value):
            continue
        by_metric.setdefault(r["metric"], {})[r["method"]] = (
            -math.inf if math.isnan(value) else value if r["higher_is_better"] else -value)
    ranks: dict[str, list[int]] = {}
    for scores in by_metric.values():
        if all(score == -math.inf for score in scores.values()):
            continue  # nobody has a value: the metric says nothing about the order
        for method, score in scores.items():
            # equal up to float noise (CAM and Grad-CAM agree to ~1e-7) is a tie; missing values tie last
            ranks.setdefault(method, []).append(1 + sum(other > score + 1e-6 * max(1.0, abs(score))
                                                        for other in scores.values() if other != -math.inf)
                                                if score != -math.inf else len(scores))
    return {method: sum(r) / len(r) for method, r in ranks.items()}


def metric_order(group: list[Mapping[str, Any]], config: Mapping[str, Any]) -> list[str]:
    """The group's metric labels in the config's order, whichever cells came from the cache."""
    order = {(m["label"] if isinstance(m, Mapping) else m): i for i, m in enumerate(config.get("metrics", []))}
    return sorted(dict.fromkeys(r["metric"] for r in group), key=lambda m: order.get(m, len(order)))


def markdown(records: list[Mapping[str, Any]], config: Mapping[str, Any]) -> str:
    lines = ["# camkit bench", "",
             f"split `{config['split']}`, up to {config['samples']} samples, seed {config['seed']}, "
             f"maps explain the {config['targets']} class. ↑ higher is better, ↓ lower is better; "
             f"rank = mean rank over the metrics' primary values. Baselines: centre Gaussian and random map.", ""]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["model"], r["dataset"]), []).append(r)
    for (model, dataset), group in groups.items():
        metrics = metric_order(group, config)
        first = {m: next(r for r in group if r["metric"] == m) for m in metrics}
        ranks = rank_methods(group)
        methods = sorted(dict.fromkeys(r["method"] for r in group), key=lambda m: (ranks.get(m, math.inf), m))
        lookup = {(r["method"], r["metric"]): r for r in group}
        samples = max((r.get("samples") or 0) for r in group)
        lines += [f"## {model} on {dataset} ({samples} samples)", ""]
        header = ["rank", "method"] + [f"{m} {first[m]['primary']} {'↑' if first[m]['higher_is_better'] else '↓'}"
                                       for m in metrics]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in methods:
            name = f"{method} *(baseline)*" if method in BASELINE_METHODS else method
            cells = [f"{ranks[method]:.2f}" if method in ranks else "–", name]
            for m in metrics:
                r = lookup.get((method, m))
                cells.append(_fmt(r["values"].get(r["primary"])) if r and not r.get("skipped") else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
        secondary = sorted({(r["metric"], name) for r in group for name, v in r["values"].items()
                            if name != r["primary"] and not _is_curve(v)})
        if secondary:
            lines += ["", "Other values:", ""]
            header = ["method"] + [f"{m} {name}" for m, name in secondary]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for method in methods:
                cells = [method] + [_fmt((lookup.get((method, m)) or {}).get("values", {}).get(name))
                                    for m, name in secondary]
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Settings: " + "; ".join(f"{m}: {json.dumps(first[m]['options'], sort_keys=True)}"
                                               for m in metrics)]
        notes = sorted({f"{r['metric']}: skipped, {r['skipped']}" for r in group if r.get("skipped")})
        lines += [f"- {n}" for n in notes]
        timing = _timing(group)
        if timing:
            lines += ["", "Seconds per method (maps / all metrics): " + timing]
        lines.append("")
    return "\n".join(lines)


def _timing(group: list[Mapping[str, Any]]) -> str:
    per_method: dict[str, list[float]] = {}
    for r in group:
        if "seconds" in r:
            entry = per_method.setdefault(r["method"], [r["seconds"]["maps"], 0.0])
            entry[1] += r["seconds"]["metric"]
    return ", ".join(f"{m} {a:.2f} / {b:.2f}" for m, (a, b) in per_method.items())


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4g}"


def write_report(records: list[Mapping[str, Any]], config: Mapping[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = scalar_rows(records)
    fields = ["model", "dataset", "method", "metric", "value", "mean", "count", "samples", "primary",
              "higher_is_better", "options"]
    with atomic_path(out / "results.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(out / "curves.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "dataset", "method", "metric", "value", "point", "label", "mean", "count"])
        for r in records:
            for name, value in sorted(r["values"].items()):
                if _is_curve(value):
                    labels = r["labels"].get(name, [str(i) for i in range(len(value))])
                    for i, v in enumerate(value):
                        writer.writerow([r["model"], r["dataset"], r["method"], r["metric"], name, i, labels[i], v,
                                         r["counts"][name][i]])
    write_text_atomic(out / "results.md", markdown(records, config))
    if config.get("plots", True):
        plot(records, config, out)


def plot(records: list[Mapping[str, Any]], config: Mapping[str, Any], out: Path) -> None:
    """Per (model, dataset): bar charts of the primary values (baselines grey, hatched) and the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        if not r.get("skipped"):
            groups.setdefault((r["model"], r["dataset"]), []).append(r)
    for (model, dataset), group in groups.items():
        stem = f"{slug(model)}_{slug(dataset)}"
        metrics = metric_order(group, config)
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            rows = [r for r in group if r["metric"] == metric]
            names = [r["method"] for r in rows]
            values = [r["values"][r["primary"]] for r in rows]
            colors = ["0.7" if n in BASELINE_METHODS else f"C{i}" for i, n in enumerate(names)]
            bars = ax.bar(range(len(rows)), values, color=colors)
            for bar, name in zip(bars, names):
                if name in BASELINE_METHODS:
                    bar.set_hatch("//")
            ax.set_xticks(range(len(rows)), [n.replace("baseline-", "base-") for n in names], rotation=45, ha="right")
            arrow = "↑" if rows[0]["higher_is_better"] else "↓"
            ax.set_title(f"{metric}\n{rows[0]['primary']} {arrow}", fontsize=9)
        fig.suptitle(f"{model} on {dataset}", fontsize=10)
        fig.tight_layout()
        _save_figure(fig, out / f"bars_{stem}.png")
        curves = sorted({(r["metric"], name) for r in group for name, v in r["values"].items() if _is_curve(v)})
        if not curves:
            continue
        fig, axes = plt.subplots(1, len(curves), figsize=(3.8 * len(curves), 3.4), squeeze=False)
        for ax, (metric, name) in zip(axes[0], curves):
            for i, r in enumerate(r for r in group if r["metric"] == metric):
                value = r["values"][name]
                style = {"color": f"C{i}"}
                if r["method"] in BASELINE_METHODS:  # grey, centre dotted and random dashed
                    style = {"color": "0.45", "linestyle": ":" if r["method"].endswith("center") else "--"}
                labels = r["labels"].get(name) or [str(i) for i in range(len(value))]
                if name.endswith("curve"):  # perturbation curves: x = fraction of sites changed
                    ax.plot([k / (len(value) - 1) for k in range(len(value))], value, label=r["method"], **style)
                else:  # per-layer values (randomisation): x = layers, top-down
                    ax.plot(range(len(value)), value, label=r["method"], **style)
                    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{metric} {name}", fontsize=9)
            ax.set_xlabel("fraction of sites" if name.endswith("curve") else "randomised down to", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{model} on {dataset}", fontsize=10)
        fig.tight_layout()
        _save_figure(fig, out / f"curves_{stem}.png")


def _save_figure(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=110)
    finally:
        plt.close(figure)
