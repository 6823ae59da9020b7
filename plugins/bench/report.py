"""Bench outputs: ``results.csv`` (scalars with their bootstrap intervals), ``curves.csv`` (curve points),
``paired_tests.csv`` and ``rank_stability.csv`` (the statistics of ``camkit_plugins.bench.summary``),
``results.md`` (ranked tables with the baselines, intervals, tests and rank stability), ``bars_*.png``,
``curves_*.png`` and ``ranks_*.png``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping

from camkit.io import atomic_path, write_text_atomic
from camkit_plugins.bench.config import BASELINE_METHODS, slug
from camkit_plugins.bench.summary import GroupStatistics, group_statistics, seed_agreement
from camkit_plugins.metrics import statistics as st


def _is_curve(value: Any) -> bool:
    return isinstance(value, list)


def scalar_rows(records: list[Mapping[str, Any]],
                statistics: Mapping[tuple[str, str], GroupStatistics] | None = None) -> list[dict[str, Any]]:
    """One row per scalar value of each cell: mean, bootstrap interval (``low``, ``high``; empty without
    per-sample values or with ``interval_resamples = 0``), count of finite values and of NaN values."""
    rows = []
    for r in records:
        intervals = (statistics or {}).get((r["model"], r["dataset"]), GroupStatistics()).intervals
        for name, value in sorted(r["values"].items()):
            if _is_curve(value):
                continue
            interval = intervals.get((r["method"], r["metric"], name))
            rows.append({"model": r["model"], "dataset": r["dataset"], "method": r["method"], "metric": r["metric"],
                         "value": name, "mean": value, "count": r["counts"][name],
                         "samples": r.get("samples"),
                         "primary": name == r["primary"], "higher_is_better": r["higher_is_better"],
                         "options": json.dumps(r["options"], sort_keys=True),
                         "low": interval.low if interval else "", "high": interval.high if interval else "",
                         "nan": r.get("nan", {}).get(name, "")})
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


def groups_of(records: list[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """The records per (model, data set), in order of appearance."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["model"], r["dataset"]), []).append(r)
    return groups


def markdown(records: list[Mapping[str, Any]], config: Mapping[str, Any],
             statistics: Mapping[tuple[str, str], GroupStatistics] | None = None) -> str:
    confidence = float(config.get("confidence", 0.95))
    lines = ["# camkit bench", "",
             f"split `{config['split']}`, up to {config['samples']} samples, seed {config['seed']}, "
             f"maps explain the {config['targets']} class. ↑ higher is better, ↓ lower is better; "
             f"rank = mean rank over the metrics' primary values. Baselines: centre Gaussian and random map. "
             f"[low, high]: {100 * confidence:g}% bootstrap interval of the mean "
             f"({config.get('interval', 'percentile')}, {config.get('interval_resamples', 1000)} resamples, "
             "seeded).", ""]
    for (model, dataset), group in groups_of(records).items():
        stats = (statistics or {}).get((model, dataset), GroupStatistics())
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
                if r and not r.get("skipped"):
                    interval = stats.intervals.get((method, m, r["primary"]))
                    cells.append(_with_interval(r["values"].get(r["primary"]), interval))
                else:
                    cells.append("n/a")
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
        lines += [f"- {n}" for n in notes + _nan_notes(group)]
        lines += _test_lines(group, stats, metrics, float(config.get("significance", 0.05)))
        lines += _rank_lines(stats, metrics)
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


def _with_interval(value: Any, interval: Any) -> str:
    if interval is None or math.isnan(interval.low):
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(interval.low)}, {_fmt(interval.high)}]"


def _nan_notes(group: list[Mapping[str, Any]]) -> list[str]:
    """Where values were left out: NaN per sample (undefined, e.g. an empty ground truth) and maps with NaN."""
    notes = []
    for r in group:
        left_out = r.get("nan", {}).get(r["primary"], 0)
        if isinstance(left_out, int) and left_out > 0:
            notes.append(f"{r['metric']} / {r['method']}: {left_out} of {r.get('samples')} samples have no "
                         f"{r['primary']} (NaN: undefined for them), left out of the mean")
    maps = {r["method"]: r["nan_maps"] for r in group if r.get("nan_maps")}
    notes += [f"{method}: {count} maps contained NaN; their values are NaN in every metric (left out, counted)"
              for method, count in sorted(maps.items())]
    return notes


def _test_lines(group: list[Mapping[str, Any]], stats: GroupStatistics, metrics: list[str],
                alpha: float) -> list[str]:
    """One row per metric: its best method (by the metric's mean) against every other one, grouped by the
    verdict of the paired test (all pairs, with n, W and p: paired_tests.csv)."""
    if not stats.tests:
        return []
    lines = ["", f"Paired tests: Wilcoxon signed-rank on the samples both methods have, Holm-corrected over the "
                 f"pairs of each metric (α = {alpha:g}), the metric's best method (by its mean) against each other; "
                 f"r = matched-pairs rank-biserial correlation (+1: the best method is better on every sample). "
                 f"All pairs: paired_tests.csv.", "",
             "| metric | best | significantly better than (r) | not distinguishable from (r) | "
             "significantly worse than (r) |",
             "|---|---|---|---|---|"]
    for metric in metrics:
        tests = stats.tests.get(metric)
        if not tests:
            continue
        records = [r for r in group if r["metric"] == metric and not r.get("skipped")]
        scored = [(r["values"].get(r["primary"]), r["method"]) for r in records
                  if isinstance(r["values"].get(r["primary"]), float) and not math.isnan(r["values"][r["primary"]])]
        if not scored:
            continue
        best = (max if records[0]["higher_is_better"] else min)(scored)[1]
        verdicts: dict[str, list[str]] = {"better": [], "n.s.": [], "worse": []}
        for test in tests:
            if best not in (test.a, test.b):
                continue
            other, effect = (test.b, test.effect) if test.a == best else (test.a, -test.effect)
            verdict = "n.s." if test.verdict == "n.s." else ("better" if effect > 0 else "worse")
            verdicts[verdict].append(f"{other} ({effect + 0.0:+.2f})")
        lines.append(f"| {metric} | {best} | " + " | ".join(", ".join(v) or "–" for v in verdicts.values()) + " |")
    return lines


def _rank_lines(stats: GroupStatistics, metrics: list[str]) -> list[str]:
    if not stats.ranks:
        return []
    seeds = bool(stats.seed_ranks)
    lines = ["", "Rank stability over bootstrap resamples of the samples: Kendall's W (1 = the same order in every "
                 "resample) and P(rank 1), the share of resamples in which a method ranks first"
             + (f"; the same across seeds {', '.join(map(str, stats.seeds))} (data, random-init models and every "
                "metric draw reseeded)" if seeds else "") + ":", "",
             "| metric | Kendall's W | P(rank 1) |" + (" W across seeds | P(rank 1) across seeds |" if seeds else ""),
             "|---|---|---|" + ("---|---|" if seeds else "")]
    for metric in metrics:
        if metric in stats.ranks:
            row = f"| {metric} | {_fmt(stats.ranks[metric].w)} | {_first(stats.ranks[metric])} |"
            if seeds:
                agreement = stats.seed_ranks.get(metric)
                row += f" {_fmt(agreement.w)} | {_first(agreement)} |" if agreement else " – | – |"
            lines.append(row)
    return lines


def _first(ranks: Any) -> str:
    """The methods that ever rank first, most often first."""
    first = sorted(((p, m) for m, p in ranks.first.items() if p > 0), reverse=True)
    return ", ".join(f"{m} {p:.2f}" for p, m in first[:4]) or "–"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4g}"


def write_report(records: list[Mapping[str, Any]], config: Mapping[str, Any], out: Path,
                 meta: list[Mapping[str, Any]] | None = None,
                 by_seed: Mapping[int, list[Mapping[str, Any]]] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    statistics = {pair: group_statistics(group, config) for pair, group in groups_of(records).items()}
    for pair, group in groups_of(records).items():
        seed_agreement(statistics[pair], group, config, by_seed or {})
    rows = scalar_rows(records, statistics)
    fields = ["model", "dataset", "method", "metric", "value", "mean", "count", "samples", "primary",
              "higher_is_better", "options", "low", "high", "nan"]
    _write_csv(out / "results.csv", fields, rows)
    tests = [{"model": model, "dataset": dataset, "metric": metric, **test.as_dict()}
             for (model, dataset), stats in statistics.items() for metric, pairs in stats.tests.items()
             for test in pairs]
    _write_csv(out / "paired_tests.csv", ["model", "dataset", "metric", *st.PairTest.__dataclass_fields__], tests)
    ranks = [{"model": model, "dataset": dataset, "metric": metric, "method": method, "kendalls_w": stability.w,
              "p_rank_1": stability.first[method], "mean_rank": stability.mean_rank[method],
              "resamples": stability.resamples}
             for (model, dataset), stats in statistics.items() for metric, stability in stats.ranks.items()
             for method in stability.first]
    _write_csv(out / "rank_stability.csv", ["model", "dataset", "metric", "method", "kendalls_w", "p_rank_1",
                                            "mean_rank", "resamples"], ranks)
    if by_seed:
        seeds = [{"model": model, "dataset": dataset, "metric": metric, "method": method, "kendalls_w": agreement.w,
                  "p_rank_1": agreement.first[method], "mean_rank": agreement.mean_rank[method],
                  "seeds": " ".join(map(str, stats.seeds))}
                 for (model, dataset), stats in statistics.items() for metric, agreement in stats.seed_ranks.items()
                 for method in agreement.first]
        _write_csv(out / "seed_stability.csv", ["model", "dataset", "metric", "method", "kendalls_w", "p_rank_1",
                                                "mean_rank", "seeds"], seeds)
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
    text = markdown(records, config, statistics)
    if meta:
        rows = [{"model": m["model"], "dataset": m["dataset"], "metric": m["metric"], "test": test, **scores,
                 "methods": " ".join(m["methods"]), "samples": m["samples"], "perturbations": m["perturbations"],
                 "iterations": m["iterations"]} for m in meta for test, scores in m["scores"].items()]
        _write_csv(out / "meta_evaluation.csv", list(rows[0]), rows)
        text += meta_markdown(rows)
    write_text_atomic(out / "results.md", text)
    if config.get("plots", True):
        plot(records, config, out, statistics)


def meta_markdown(rows: list[Mapping[str, Any]]) -> str:
    """The meta-evaluation table: MetaQuantus's scores per metric and test (1 is ideal for each)."""
    lines = ["", "## Meta-evaluation of the metrics (MetaQuantus)", "",
             "Noise resilience (NR: minor perturbations must not change the scores) and adversary reactivity (AR: "
             "disruptive ones must), intra-consistency (IAC: Wilcoxon p, or 1 − p, per method) and inter-consistency "
             "(IEC: the methods' order kept, or scores worse); MC = their mean. 1 is ideal.", "",
             "| model | data set | metric | test | IAC_NR | IAC_AR | IEC_NR | IEC_AR | MC | K × iterations |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dataset']} | {r['metric']} | {r['test']} | "
                     + " | ".join(_fmt(r[k]) for k in ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "MC"))
                     + f" | {r['perturbations']} × {r['iterations']} |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, fields: list[str], rows: list[Mapping[str, Any]]) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def plot(records: list[Mapping[str, Any]], config: Mapping[str, Any], out: Path,
         statistics: Mapping[tuple[str, str], GroupStatistics] | None = None) -> None:
    """Per (model, dataset): bar charts of the primary values with their bootstrap intervals (baselines
    grey, hatched), the curves, and P(rank 1) per method and metric."""
    from camkit.display import figure_and_axes

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        if not r.get("skipped"):
            groups.setdefault((r["model"], r["dataset"]), []).append(r)
    for (model, dataset), group in groups.items():
        stem = f"{slug(model)}_{slug(dataset)}"
        metrics = metric_order(group, config)
        stats = (statistics or {}).get((model, dataset), GroupStatistics())
        if stats.ranks:
            _plot_first_ranks(stats, [m for m in metrics if m in stats.ranks], f"{model} on {dataset}",
                              out / f"ranks_{stem}.png")
        fig, axes = figure_and_axes(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            rows = [r for r in group if r["metric"] == metric]
            names = [r["method"] for r in rows]
            values = [r["values"][r["primary"]] for r in rows]
            colors = ["0.7" if n in BASELINE_METHODS else f"C{i}" for i, n in enumerate(names)]
            intervals = [stats.intervals.get((r["method"], metric, r["primary"])) for r in rows]
            errors = [[v - i.low if i and not math.isnan(i.low) else 0.0 for v, i in zip(values, intervals)],
                      [i.high - v if i and not math.isnan(i.low) else 0.0 for v, i in zip(values, intervals)]]
            bars = ax.bar(range(len(rows)), values, color=colors, yerr=errors, capsize=2, ecolor="0.2")
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
        fig, axes = figure_and_axes(1, len(curves), figsize=(3.8 * len(curves), 3.4), squeeze=False)
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


def _plot_first_ranks(stats: GroupStatistics, metrics: list[str], title: str, path: Path) -> None:
    """A methods x metrics heat map of P(rank 1) over bootstrap resamples, Kendall's W in the column titles."""
    from camkit.display import figure_and_axes

    methods = list(dict.fromkeys(m for metric in metrics for m in stats.ranks[metric].first))
    table = [[stats.ranks[metric].first.get(m, float("nan")) for metric in metrics] for m in methods]
    fig, ax = figure_and_axes(figsize=(1.2 + 1.1 * len(metrics), 0.9 + 0.3 * len(methods)))
    image = ax.imshow(table, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(metrics)), [f"{m}\nW={_fmt(stats.ranks[m].w)}" for m in metrics], fontsize=7,
                  rotation=30, ha="right")
    ax.set_yticks(range(len(methods)), methods, fontsize=7)
    fig.colorbar(image, ax=ax, label="P(rank 1)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(figure: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110)
