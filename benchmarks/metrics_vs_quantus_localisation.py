"""camkit's localisation and complexity metrics and the WSOL / WSSS protocols against Quantus 0.6 on the
same batch: wall time of each (best of ``--repeats``, the two timed alternately), the ratio Quantus /
camkit, and the largest per-sample difference (the parity the tests hold to 1e-5). None of these metrics runs the model
(Focus' Quantus call takes one but only reads the maps), so the times are the metrics' own work.

``LOCALISATION_CASES`` lists (camkit name, camkit options, Quantus class, Quantus options, camkit value,
scale to Quantus's units); the statistics battery imports it. Writes ``metrics_vs_quantus_localisation.md``
/ ``.json`` into ``--out``.

    python benchmarks/metrics_vs_quantus_localisation.py --batch 16 --size 224 --threads 2
    python benchmarks/metrics_vs_quantus_localisation.py --device cuda --batch 64 --size 224
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import camkit
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch

# (camkit name, camkit options, Quantus class, Quantus options, camkit value, factor to Quantus's units)
LOCALISATION_CASES: list[tuple[str, dict[str, Any], str, dict[str, Any], str, float]] = [
    ("pointing_game", {}, "PointingGame", {}, "hit_rate", 0.01),
    ("top_k_intersection", {}, "TopKIntersection", {}, "intersection", 1.0),
    ("relevance_mass_accuracy", {}, "RelevanceMassAccuracy", {}, "mass_accuracy", 1.0),
    ("relevance_rank_accuracy", {}, "RelevanceRankAccuracy", {}, "rank_accuracy", 1.0),
    ("attribution_localisation", {}, "AttributionLocalisation", {}, "localisation", 1.0),
    ("auc", {}, "AUC", {}, "auc", 1.0),
    ("focus", {}, "Focus", {}, "focus", 1.0),
    ("sparseness", {}, "Sparseness", {}, "gini", 1.0),
    ("complexity", {}, "Complexity", {}, "entropy", 1.0),
    ("effective_complexity", {}, "EffectiveComplexity", {}, "count", 1.0),
]


def best_time(run: Callable[[], Any], repeats: int, device: str) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        out = run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return min(times), out


def make_case(batch: int, size: int, seed: int, device: str) -> dict[str, Any]:
    """Smooth maps with one blob each (unique maxima, no ties), box masks, 2 x 2 mosaic flags."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = torch.rand(batch, 2, generator=g) * size
    maps = torch.exp(-((ys - centre[:, :1, None]) ** 2 + (xs - centre[:, 1:, None]) ** 2) / (2 * (size / 6) ** 2))
    maps = (maps + 0.05 * torch.rand(batch, size, size, generator=g)).double()
    maps = maps / maps.amax(dim=(1, 2), keepdim=True)
    corner = torch.randint(0, size // 2, (batch, 2), generator=g)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    for i, (y, x) in enumerate(corner.tolist()):
        mask[i, y:y + size // 2, x:x + size // 2] = True
    flags = torch.tensor([[1, 0, 0, 1]] * batch)
    inputs = torch.rand(batch, 3, size, size, generator=g, dtype=torch.float64)
    return {"maps": maps.to(device), "mask": mask.to(device), "inputs": inputs.to(device), "flags": flags}


def camkit_batch(case: dict[str, Any], name: str) -> EvalBatch:
    from camkit_plugins.metrics.localization import mosaic_masks

    maps = case["maps"]
    mask = case["mask"]
    if name == "focus":
        mask = mosaic_masks(case["flags"], tuple(maps.shape[1:])).to(maps.device)
    n = maps.shape[0]
    return EvalBatch(model=None, inputs=case["inputs"], input_layout=Layout.parse("NCHW"),
                     labels=torch.zeros(n, dtype=torch.long), targets=torch.zeros(n, dtype=torch.long), maps=maps,
                     map_letters="NHW", indices=torch.arange(n), explain=lambda *a: maps, mask=mask)


def run_quantus(quantus: Any, cls: str, options: dict[str, Any], case: dict[str, Any]) -> np.ndarray:
    maps = case["maps"].cpu()[:, None].numpy()
    inputs = case["inputs"].cpu().numpy()
    kwargs: dict[str, Any] = {"x_batch": inputs, "y_batch": np.zeros(len(maps), dtype=int), "a_batch": maps}
    if cls == "Focus":
        kwargs["model"] = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
        kwargs["model"](torch.zeros(1, *inputs.shape[1:]))
        kwargs["custom_batch"] = case["flags"].numpy()
        kwargs["x_batch"] = inputs.astype(np.float32)
    else:
        kwargs["model"] = None
        kwargs["s_batch"] = case["mask"].cpu()[:, None].double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(getattr(quantus, cls)(disable_warnings=True, **options)(**kwargs), dtype=np.float64)


def protocol_rows(case: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    """The protocols' own cost (no peer in Quantus): seconds per image for one pass."""
    from camkit_plugins.metrics.protocols import BoxAccuracy, PixelAveragePrecision, SegmentationSeeds

    maps, mask = case["maps"].cpu(), case["mask"].cpu()
    boxes = []
    for m in mask:  # each mask is one box
        rows, cols = torch.nonzero(m.any(dim=1))[:, 0], torch.nonzero(m.any(dim=0))[:, 0]
        boxes.append(np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]]))
    n = len(maps)
    runs = {
        "BoxAccuracy (MaxBoxAccV2, 100 taus)": lambda: BoxAccuracy().add(maps, boxes),
        "PixelAveragePrecision (1000 bins)": lambda: PixelAveragePrecision().add(maps, mask),
        "SegmentationSeeds (60 thresholds)": lambda: SegmentationSeeds(2, ignore_index=-1).add(
            maps[:, None], [[1]] * n, mask.long()),
    }
    timed = []
    for label, run in runs.items():
        seconds, _ = best_time(run, repeats, "cpu")
        timed.append({"protocol": label, "ms_per_image": 1000 * seconds / n})
    return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]  # Quantus 0.6 calls it; numpy >= 2.4 removed it
    import quantus

    case = make_case(args.batch, args.size, args.seed, args.device)
    rows: list[dict[str, Any]] = []
    for name, options, cls, q_options, value, factor in LOCALISATION_CASES:
        metric = camkit.lookup("metrics", name)(**options)
        batch = camkit_batch(case, name)
        ours_s, theirs_s = float("inf"), float("inf")
        for _ in range(args.repeats):  # alternating, so both see the same load on a shared machine
            seconds, ours = best_time(lambda: metric.evaluate(batch).values[value], 1, args.device)
            ours_s = min(ours_s, seconds)
            seconds, theirs = best_time(lambda: run_quantus(quantus, cls, q_options, case), 1, "cpu")
            theirs_s = min(theirs_s, seconds)
        diff = float(np.nanmax(np.abs(factor * ours.double().cpu().numpy() - theirs)))
        rows.append({"metric": name, "quantus": cls, "camkit_s": ours_s, "quantus_s": theirs_s,
                     "speedup": theirs_s / ours_s, "max_abs_diff": diff})
        print(f"{name:26s} camkit {ours_s * 1e3:8.2f} ms  Quantus {theirs_s * 1e3:8.2f} ms  "
              f"x{theirs_s / ours_s:6.1f}  max |diff| {diff:.2e}", flush=True)
    protocols = protocol_rows(case, args.repeats)
    for row in protocols:
        print(f"{row['protocol']:40s} {row['ms_per_image']:.2f} ms / image")
    setting = {"batch": args.batch, "size": args.size, "threads": args.threads, "device": args.device,
               "repeats": args.repeats, "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics_vs_quantus_localisation.json").write_text(
        json.dumps({"setting": setting, "metrics": rows, "protocols": protocols}, indent=1))
    lines = [f"# Localisation / complexity metrics vs Quantus 0.6 ({args.batch} maps of {args.size} px, "
             f"{args.device}, {args.threads} threads, best of {args.repeats})", "",
             "| metric | camkit ms | Quantus ms | Quantus / camkit | max abs diff |", "|---|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['camkit_s'] * 1e3:.2f} | {r['quantus_s'] * 1e3:.2f} | {r['speedup']:.1f} | "
              f"{r['max_abs_diff']:.1e} |" for r in rows]
    lines += ["", "| protocol | ms / image |", "|---|---|"]
    lines += [f"| {r['protocol']} | {r['ms_per_image']:.2f} |" for r in protocols]
    (args.out / "metrics_vs_quantus_localisation.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
