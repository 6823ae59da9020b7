"""Forward-pass options for explanation (``camkit_plugins.gpu.accelerate``): speed-up over fp32 and
numerical difference from fp32, for the plain forward, ``cam`` and ``gradcam``. Each task is timed in
its own phase (round-robin over the options), so compare options within a column; the cost of a
map relative to a forward is ``speed.py``'s job.

Options: channels-last, bf16 autocast, both, fp16 autocast (CUDA), torch.compile (``--compile``;
its first call compiles for a minute or more on a CPU, so it is off unless asked; on CUDA
``--compile-mode reduce-overhead`` adds CUDA graphs). Writes ``speed_forward.md`` / ``.json``.

    python benchmarks/speed_forward.py --device cpu --batch 8
    python benchmarks/speed_forward.py --device cuda --model resnet50 --batch 256 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import camkit
from camkit_plugins.gpu.accelerate import accelerate


def options_for(device: str, compile_: bool, compile_mode: str | None) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {
        "fp32": {}, "channels-last": {"channels_last": True}, "bf16 autocast": {"dtype": "bf16"},
        "bf16 + channels-last": {"dtype": "bf16", "channels_last": True},
    }
    if device.startswith("cuda"):
        options["fp16 autocast"] = {"dtype": "fp16"}
        options["fp16 + channels-last"] = {"dtype": "fp16", "channels_last": True}
    if compile_:
        options["compile"] = {"compile": True, "compile_mode": compile_mode}
        options["bf16 + channels-last + compile"] = {"dtype": "bf16", "channels_last": True, "compile": True,
                                                     "compile_mode": compile_mode}
    return options


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    import torchvision
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default=None)
    parser.add_argument("--options", default=None, help="comma-separated subset of the option names (fp32 is always in)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(args.device)
    options = options_for(args.device, args.compile, args.compile_mode)
    if args.options:
        wanted = {"fp32", *args.options.split(",")}
        unknown = sorted(wanted - set(options))
        if unknown:
            raise SystemExit(f"unknown option(s) {unknown}: choose from {', '.join(options)}")
        options = {name: kwargs for name, kwargs in options.items() if name in wanted}
    models = {}
    for name, kwargs in options.items():  # a fresh model each: channels-last converts in place
        torch.manual_seed(0)
        base = getattr(torchvision.models, args.model)(weights=None).eval().to(args.device)
        models[name] = accelerate(base, **kwargs)
    with torch.no_grad():
        ids = models["fp32"](x).argmax(dim=1)

    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, Any]] = {name: {} for name in models}
    times: dict[tuple[str, str], list[float]] = {}
    for task in ("forward", "cam", "gradcam"):
        # one task at a time: two Explainers open on the same layer would stack their hooks
        with contextlib.ExitStack() as stack:
            runners = {}
            for name, model in models.items():
                if task == "forward":
                    def run(model: Any = model) -> Any:
                        with torch.inference_mode():
                            return model(x)
                else:
                    explainer = stack.enter_context(camkit.Explainer(model, task))
                    def run(explainer: Any = explainer) -> Any:
                        return explainer(x, ids).maps
                runners[name] = run
            for name, run in tqdm(runners.items(), desc=f"{task} warm-up", disable=False):
                outputs[name][task] = run().float().cpu()
            for _ in tqdm(range(args.repeats), desc=f"{task} rounds", disable=False):
                for name, run in runners.items():  # round-robin: load from others hits every option alike
                    synchronize(args.device)
                    start = time.perf_counter()
                    run()
                    synchronize(args.device)
                    times.setdefault((name, task), []).append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    for name in models:
        results[name] = {
            **{f"{task}_s": median[(name, task)] for task in ("forward", "cam", "gradcam")},
            **{f"{task}_speedup": median[("fp32", task)] / median[(name, task)] for task in ("forward", "cam", "gradcam")},
            **{f"{task}_max_abs_diff": float((outputs[name][task] - outputs["fp32"][task]).abs().max())
               for task in ("forward", "cam", "gradcam")},
        }
    lines = [f"{args.model}, batch {args.batch}, 224x224, {args.device}, {torch.get_num_threads()} threads, "
             f"medians of {args.repeats} rounds", "",
             "| option | forward speed-up | cam speed-up | gradcam speed-up | logits max abs diff | "
             "cam map max abs diff | gradcam map max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['forward_speedup']:.2f}x | {r['cam_speedup']:.2f}x | {r['gradcam_speedup']:.2f}x | "
                     f"{r['forward_max_abs_diff']:.1e} | {r['cam_max_abs_diff']:.1e} | {r['gradcam_max_abs_diff']:.1e} |")
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed_forward.md").write_text(table)
    (args.out / "speed_forward.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "results": results}, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
