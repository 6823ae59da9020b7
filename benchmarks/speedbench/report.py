"""Reports: the Markdown table, the issue's targets checked on the rows, ``speed.json`` / ``speed.md`` /
``speed.png``, and the rows of an earlier run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .cases import CPU_HEADLINE, CPU_TARGETS, GPU_HEADLINE, GPU_TARGETS, NEW_METHOD_TARGETS, PERTURBATION_METHODS, Row


def markdown(rows: list[Row]) -> str:
    lines = ["| device | model | batch | dtype | size | tool | method | images/s | throughput vs forward | "
             "time vs forward | CPU time vs forward | time vs own forward | camkit speed-up | peak MiB (vs fwd) | "
             "max abs diff vs camkit |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = ", ".join(f"{k} {v:.2f}x" for k, v in r.camkit_speedup.items())
        memory = f"{r.peak_memory_mb:.0f} ({r.memory_vs_forward:.2f}x)" if r.memory_vs_forward is not None else "-"
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}" + ("" if r.agrees else f" ({r.note})")
        lines.append(f"| {r.device} | {r.model} | {r.batch} | {r.dtype} | {r.size} | {r.tool} | {r.method} | "
                     f"{r.images_per_s:.1f} | {r.throughput_vs_forward:.2f} | {r.time_vs_forward:.2f} | "
                     f"{r.cpu_time_vs_forward:.2f} | "
                     f"{'-' if r.own_forward_ratio is None else format(r.own_forward_ratio, '.3f')} | "
                     f"{speedup or '-'} | {memory} | {diff} |")
    return "\n".join(lines) + "\n"



def _measure(row: Row, measure: str) -> float | None:
    if measure.startswith("speedup:"):
        return row.camkit_speedup.get(measure.split(":", 1)[1])
    value = getattr(row, measure)
    return None if value is None or value != value else float(value)  # NaN: not measured


def _is_headline(row: Row, method: str, headline: dict[str, Any]) -> bool:
    keys = ("model", "dtype") if method in PERTURBATION_METHODS else tuple(headline)  # they have their own batch
    return all(getattr(row, key) == headline[key] for key in keys)


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The issue's targets, checked on every case that measured them: GPU (any ``cuda`` device)
    ``cam`` >= 0.98x and ``gradcam`` >= 0.9x plain-forward throughput, ``gradcam`` peak memory <= 1.2x
    inference, Score-CAM >= 10x pytorch-grad-cam on the same batch; CPU ``cam`` <= 1.05x and
    ``gradcam`` <= 1.15x of the forward inside the same call. ``headline`` marks the case a target is
    stated for (GPU: ResNet-50, batch 256, fp32, 224 px; CPU: ResNet-18, batch 8, fp32); a headline
    target of a device that ran but missed that case is listed with ``met: None`` (not measured)."""
    found: list[dict[str, Any]] = []
    for device_kind, table, headline in (("cuda", GPU_TARGETS, GPU_HEADLINE), ("cpu", CPU_TARGETS, CPU_HEADLINE)):
        device_rows = [r for r in rows if r.device.split(":")[0] == device_kind]
        if not device_rows:
            continue
        timed = {r.method for r in device_rows}
        table = table + tuple(t for t in NEW_METHOD_TARGETS if t[1] in timed)
        for name, method, measure, comparison, bar in table:
            seen_headline = False
            for row in device_rows:
                if row.tool != "camkit" or row.method != method:
                    continue
                value = _measure(row, measure)
                if value is None:
                    continue
                met = value >= bar if comparison == ">=" else value <= bar
                is_headline = _is_headline(row, method, headline)
                seen_headline |= is_headline
                found.append({"target": name, "bar": f"{comparison} {bar:g}", "device": row.device, "model": row.model,
                              "batch": row.batch, "dtype": row.dtype, "size": row.size, "value": value, "met": met,
                              "headline": is_headline})
            if not seen_headline:
                case = {k: v for k, v in headline.items()
                        if method not in PERTURBATION_METHODS or k in ("model", "dtype")}
                found.append({"target": name, "bar": f"{comparison} {bar:g}", "device": device_kind, **case,
                              "value": None, "met": None, "headline": True})
    found.sort(key=lambda t: not t["headline"])  # headline first, each group in table order
    return found


def markdown_targets(found: list[dict[str, Any]]) -> str:
    """The targets as a Markdown section: a summary line, then one row per (target, case)."""
    headline = [t for t in found if t["headline"]]
    met = sum(t["met"] is True for t in headline)
    missing = sum(t["met"] is None for t in headline)
    lines = ["## Targets", "",
             f"Headline cases: {met} of {len(headline)} targets met"
             + (f", {missing} not measured" if missing else "") + ".", "",
             "| target | bar | case | value | met |", "|---|---|---|---|---|"]
    for t in found:
        case = " ".join(str(t[k]) for k in ("device", "model") if k in t)
        case += "".join(f" {prefix}{t[k]}" for k, prefix in (("batch", "b"), ("dtype", ""), ("size", "")) if k in t)
        if "size" in t:
            case += "px"
        value = "not measured" if t["value"] is None else f"{t['value']:.3f}"
        verdict = {True: "PASS", False: "FAIL", None: "-"}[t["met"]]
        lines.append(f"| {'**' + t['target'] + '**' if t['headline'] else t['target']} | {t['bar']} | {case} | "
                     f"{value} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, meta: dict[str, Any], rows: list[Row], failures: list[dict[str, Any]],
                  with_plot: bool = True) -> str:
    """``speed.json`` / ``speed.md`` (and ``speed.png``) from the rows so far; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    found = targets(rows)
    (out / "speed.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "targets": found,
                                                "failures": failures}, indent=1))
    text = f"{json.dumps(meta)}\n\n{markdown(rows)}\n{markdown_targets(found)}"
    if failures:
        text += "\n## Failures\n\n" + "".join(f"- {f['device']} {f['model']} b{f['batch']} {f['dtype']} {f['size']}px "
                                               f"{f['tool']} {f['method']}: {f['error'].splitlines()[0]}\n"
                                               for f in failures)
    (out / "speed.md").write_text(text)
    if with_plot and rows:
        plot(rows, out / "speed.png")
    return text


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r.device, r.model, r.batch, r.dtype, r.size) for r in rows))
    counts = [sum((r.device, r.model, r.batch, r.dtype, r.size) == case for r in rows) for case in cases]
    fig, axes = plt.subplots(len(cases), 1, figsize=(9, 0.32 * len(rows) + 1.2 * len(cases)), squeeze=False,
                             gridspec_kw={"height_ratios": [c + 2 for c in counts]})
    for ax, case in zip(axes[:, 0], cases):
        case_rows = [r for r in rows if (r.device, r.model, r.batch, r.dtype, r.size) == case]
        labels = [f"{r.tool}: {r.method}" if r.tool != "plain forward" else r.tool for r in case_rows]
        colours = ["grey" if r.tool == "plain forward" else "tab:blue" if r.tool == "camkit" else "tab:orange"
                   for r in case_rows]
        ax.barh(labels, [r.throughput_vs_forward for r in case_rows], color=colours)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"{case[0]} {case[1]} batch {case[2]} {case[3]} {case[4]}px: throughput vs plain forward",
                     fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def load_rows(path: Path) -> list[Row]:
    """The rows of an earlier run's ``speed.json``."""
    return [Row(**row) for row in json.loads(Path(path).read_text())["rows"]]

