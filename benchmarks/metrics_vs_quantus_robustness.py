"""Re-explaining metrics (robustness, randomisation, axiomatic) against Quantus 0.6 on the same batch: CPU
time (this process, all threads: the work done, which a shared machine disturbs less than wall time) of
camkit's metric, of Quantus's (given camkit's method through ``quantus_interop.explain_func``, so
both pay for the same explanations), their ratio, and camkit's overhead over the re-explanations it needs
(its time / (re-explanations x the time of one explanation of the batch)).

``ROBUSTNESS_CASES`` lists the cases (the battery script imports it): a label, camkit's metric and options,
Quantus's class and options for the same work, and the number of explanations of the batch camkit needs
(a function of the model's number of randomisable layers).

    python benchmarks/metrics_vs_quantus_robustness.py --images 4 --size 64          # quick, CPU
    python benchmarks/metrics_vs_quantus_robustness.py --images 16 --size 224 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROBUSTNESS_CASES: list[dict[str, Any]] = [
    {"label": "MaxSensitivity (5 draws)", "camkit": "max_sensitivity", "options": {"nr_samples": 5},
     "quantus": "MaxSensitivity", "quantus_options": {"nr_samples": 5}, "explanations": lambda layers: 5},
    {"label": "LocalLipschitzEstimate (5 draws)", "camkit": "local_lipschitz_estimate", "options": {"nr_samples": 5},
     "quantus": "LocalLipschitzEstimate", "quantus_options": {"nr_samples": 5}, "explanations": lambda layers: 5},
    {"label": "RelativeOutputStability (5 draws)", "camkit": "relative_output_stability",
     "options": {"nr_samples": 5}, "quantus": "RelativeOutputStability", "quantus_options": {"nr_samples": 5},
     "explanations": lambda layers: 5},
    {"label": "Continuity (5 steps)", "camkit": "continuity", "options": {"nr_steps": 5}, "quantus": "Continuity",
     "quantus_options": {"nr_steps": 5}, "explanations": lambda layers: 5},
    # without the ReLU: Quantus stops when every map of a batch is zero, as Grad-CAM's are on some randomised
    # ResNet-18 layers (camkit leaves those maps NaN and goes on)
    {"label": "MPRT (every layer, maps without ReLU)", "camkit": "mprt", "options": {"seed": 42}, "quantus": "MPRT",
     "quantus_options": {"seed": 42}, "explanations": lambda layers: layers, "explain_options": {"relu": False}},
    {"label": "RandomLogit", "camkit": "random_logit", "options": {"num_classes": 1000},
     "quantus": "RandomLogit", "quantus_options": {"num_classes": 1000}, "explanations": lambda layers: 1},
]


def cpu_timed(run: Callable[[], Any]) -> float:
    """CPU seconds of ``run()`` (all threads of this process): the work done, less disturbed than wall time
    on a machine shared with other jobs."""
    began = time.process_time()
    run()
    return time.process_time() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds per case (median ratio)")
    parser.add_argument("--cases", default="", help="comma-separated camkit metric names (default: all)")
    parser.add_argument("--out", default="benchmarks/results/metrics_vs_quantus_robustness.json")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    import torchvision

    import camkit
    from camkit.layout import Layout
    from camkit_plugins.metrics.base import EvalBatch
    from camkit_plugins.metrics.quantus_interop import explain_func
    from camkit_plugins.metrics.randomisation import randomisable_layers

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz, removed in numpy 2.4
    import quantus

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()  # random weights: nothing downloads
    x = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = model(x).argmax(dim=1)

    layers = len(randomisable_layers(model))
    wanted = {name for name in args.cases.split(",") if name}
    rows = []
    for case in ROBUSTNESS_CASES:
        if wanted and case["camkit"] not in wanted:
            continue
        options = dict(case.get("explain_options", {}))

        def explain(m: Any, inputs: Any, t: Any) -> Any:
            return camkit.explain(m, inputs, args.method, targets=t, **options).maps

        maps = explain(model, x, targets)
        one_explanation = min(cpu_timed(lambda: explain(model, x, targets)) for _ in range(args.repeat))
        batch = EvalBatch(model=model, inputs=x, input_layout=Layout.parse("NCHW"), labels=targets,
                          targets=targets, maps=maps, map_letters="NHW", indices=torch.arange(args.images),
                          explain=explain, predictions=targets)
        metric = camkit.lookup("metrics", case["camkit"])(**case["options"])
        quantus_metric = getattr(quantus, case["quantus"])(disable_warnings=True, **case["quantus_options"])

        def run_quantus() -> Any:
            return quantus_metric(model=model, x_batch=x.numpy(), y_batch=targets.numpy(),
                                  a_batch=maps[:, None].numpy(), explain_func=explain_func,
                                  explain_func_kwargs={"method": args.method, **options}, device="cpu")

        needed = case["explanations"](layers)
        # rounds interleave camkit, Quantus and one explanation, so a shared machine's load hits all three
        # alike; a ratio is the median over rounds of the per-round ratios
        ours, theirs, overheads, error = [], [], [], ""
        for _ in range(args.repeat):
            ours.append(cpu_timed(lambda: metric.evaluate(batch)))
            if not error:
                try:
                    theirs.append(cpu_timed(run_quantus))
                except Exception as failure:  # reported, not hidden: Quantus refuses some batches camkit takes
                    error = f"{type(failure).__name__}: {str(failure).splitlines()[0][:100]}"
            overheads.append(ours[-1] / (needed * cpu_timed(lambda: explain(model, x, targets))))
        row: dict[str, Any] = {"case": case["label"], "camkit_cpu_s": min(ours), "explanations": needed,
                               "one_explanation_cpu_s": one_explanation,
                               "overhead": statistics.median(overheads)}
        if error:
            row["quantus_error"] = error
            versus = f"Quantus failed ({error})"
        else:
            row.update(quantus_cpu_s=min(theirs), speed_up=statistics.median(t / o for t, o in zip(theirs, ours)))
            versus = f"Quantus {min(theirs):7.2f} s  Quantus/camkit {row['speed_up']:5.2f}x"
        rows.append(row)
        print(f"{case['label']:<36} CPU time: camkit {min(ours):7.2f} s  {versus}  camkit / ({needed} explanations) "
              f"{row['overhead']:5.2f}x", flush=True)
    result = {"images": args.images, "size": args.size, "threads": args.threads, "method": args.method,
              "repeat": args.repeat,
              "model": "resnet18 (random init)", "layers": layers,
              "device": "cpu", "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=1))
    temporary.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
