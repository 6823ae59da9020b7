"""The statistics of a bench report, from the cells' per-sample values (never by rerunning a metric):
a bootstrap interval per cell and value, paired Wilcoxon tests between the methods per metric (Holm),
and the stability of the methods' ranking per metric (``camkit_plugins.metrics.statistics``)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from camkit_plugins.metrics import statistics as st


@dataclass
class GroupStatistics:
    """Per (model, data set): ``intervals[(method, metric, value)]``, ``tests[metric]`` (every pair of
    methods on the metric's primary value), ``ranks[metric]`` (over bootstrap resamples) and
    ``seed_ranks[metric]`` (across ``seeds``, the config's seed first)."""

    intervals: dict[tuple[str, str, str], st.Interval] = field(default_factory=dict)
    tests: dict[str, list[st.PairTest]] = field(default_factory=dict)
    ranks: dict[str, st.RankStability] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    seed_ranks: dict[str, st.RankStability] = field(default_factory=dict)


def _seed(base: int, *parts: str) -> int:
    """A seed per cell and value: the same interval on every run, independent draws between cells."""
    return zlib.crc32(":".join([str(base), *parts]).encode())


def seed_agreement(stats: GroupStatistics, group: list[Mapping[str, Any]], config: Mapping[str, Any],
                   by_seed: Mapping[int, list[Mapping[str, Any]]]) -> None:
    """Kendall's W of the methods' rankings (primary means) across the config's seed and ``by_seed``'s."""
    if not by_seed:
        return
    model, dataset = group[0]["model"], group[0]["dataset"]
    seeds = [int(config.get("seed", 0)), *by_seed]
    runs = [group, *([r for r in records if (r["model"], r["dataset"]) == (model, dataset)]
                     for records in by_seed.values())]
    means: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for record in run:
            value = record["values"].get(record["primary"])
            if not record.get("skipped") and isinstance(value, float):
                means.setdefault(record["metric"], {}).setdefault(record["method"], []).append(value)
    stats.seeds = seeds
    for metric, per_method in means.items():
        methods = [m for m, values in per_method.items() if len(values) == len(seeds)]
        if len(methods) < 2:
            continue
        higher = next(bool(r["higher_is_better"]) for r in group if r["metric"] == metric)
        table = [[per_method[m][s] for m in methods] for s in range(len(seeds))]
        stats.seed_ranks[metric] = st.rank_agreement(methods, table, higher)


def group_statistics(group: list[Mapping[str, Any]], config: Mapping[str, Any]) -> GroupStatistics:
    """Intervals for every scalar value of every computed cell; tests and rank stability on each metric's
    primary value over the methods that have it (at least two)."""
    stats = GroupStatistics()
    resamples, seed = int(config.get("interval_resamples", 1000)), int(config.get("seed", 0))
    by_metric: dict[str, list[Mapping[str, Any]]] = {}
    for record in group:
        if record.get("skipped"):
            continue
        per_sample = record.get("per_sample", {}).get("values", {})
        if resamples > 0:
            for name, values in per_sample.items():
                stats.intervals[(record["method"], record["metric"], name)] = st.bootstrap_interval(
                    values, resamples=resamples, confidence=float(config.get("confidence", 0.95)),
                    method=str(config.get("interval", "percentile")),
                    seed=_seed(seed, record["model"], record["dataset"], record["method"], record["metric"], name))
        if record["primary"] in per_sample:
            by_metric.setdefault(record["metric"], []).append(record)
    for metric, records in by_metric.items():
        if len(records) < 2:
            continue
        methods, _, table = st.align({r["method"]: (r["per_sample"]["ids"], r["per_sample"]["values"][r["primary"]])
                                      for r in records})
        higher = bool(records[0]["higher_is_better"])
        stats.tests[metric] = st.paired_tests(methods, table, higher, float(config.get("significance", 0.05)))
        stats.ranks[metric] = st.rank_stability(methods, table, higher, int(config.get("rank_bootstrap", 200)),
                                                seed=_seed(seed, records[0]["model"], records[0]["dataset"], metric))
    return stats
