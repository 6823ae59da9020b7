"""Forward-pass options for explanation (``camkit_plugins.gpu.accelerate``): speed-up over fp32 and
numerical difference from fp32, for the plain forward, ``cam`` and ``gradcam``. Each task is timed in
its own phase (round-robin over the options), so compare options within a column; the cost of a
map relative to a forward is ``speed.py``'s job.

Options: channels-last, bf16 autocast, both, fp16 autocast (CUDA), torch.compile (``--compile``;
its first call compiles for a minute or more on a CPU, so it is off unless asked; on CUDA
``--compile-mode reduce-overhead`` adds CUDA graphs, and the option names say the mode). An option
that fails (a compile error, CUDA graphs refusing the hooks) is reported with its error; the other
options are still measured. Writes ``speed_forward.md`` / ``.json`` (rewritten after each task).

    python benchmarks/speed_forward.py --device cpu --batch 8
    python benchmarks/speed_forward.py --device cuda --model resnet50 --batch 256 --compile
    python benchmarks/speed_forward.py --device cuda --model resnet50 --batch 32 --compile \\
        --compile-mode reduce-overhead
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import camkit
from camkit_plugins.gpu.accelerate import accelerate

TASKS = ("forward", "cam", "gradcam")


def options_for(device: str, compile_: bool, compile_mode: str | None) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {
        "fp32": {}, "channels-last": {"channels_last": True}, "bf16 autocast": {"dtype": "bf16"},
        "bf16 + channels-last": {"dtype": "bf16", "channels_last": True},
    }
    if device.startswith("cuda"):
        options["fp16 autocast"] = {"dtype": "fp16"}
        options["fp16 + channels-last"] = {"dtype": "fp16", "channels_last": True}
    if compile_:
        suffix = f" ({compile_mode})" if compile_mode else ""
        options[f"compile{suffix}"] = {"compile": True, "compile_mode": compile_mode}
        options[f"bf16 + channels-last + compile{suffix}"] = {"dtype": "bf16", "channels_last": True, "compile": True,
                                                              "compile_mode": compile_mode}
    return options


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def report(args: argparse.Namespace, names: list[str], times: dict[tuple[str, str], list[float]],
           outputs: dict[str, dict[str, Any]], errors: dict[tuple[str, str], str]) -> dict[str, dict[str, Any]]:
    """Per option: seconds, speed-up over fp32 and max abs difference from fp32 of each task measured
    so far (None where the option failed or the task has not run); writes the Markdown and JSON."""
    median = {key: statistics.median(values) for key, values in times.items() if values}
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        r: dict[str, Any] = {}
        for task in TASKS:
            ok = (name, task) in median and ("fp32", task) in median
            r[f"{task}_s"] = median.get((name, task))
            r[f"{task}_speedup"] = median[("fp32", task)] / median[(name, task)] if ok else None
            have = task in outputs.get(name, {}) and task in outputs.get("fp32", {})
            r[f"{task}_max_abs_diff"] = (float((outputs[name][task] - outputs["fp32"][task]).abs().max())
                                         if have else None)
            if (name, task) in errors:
                r[f"{task}_error"] = errors[(name, task)]
        results[name] = r

    def cell(value: float | None, fmt: str, name: str, task: str) -> str:
        if (name, task) in errors:
            return "FAILED"
        return "-" if value is None else format(value, fmt)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    lines = [f"{args.model}, batch {args.batch}, 224x224, {args.device} ({device_name}), {torch.get_num_threads()} "
             f"threads, medians of {args.repeats} rounds, torch {torch.__version__}", "",
             "| option | forward speed-up | cam speed-up | gradcam speed-up | logits max abs diff | "
             "cam map max abs diff | gradcam map max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        speedups = [cell(r[f"{t}_speedup"], ".2f", name, t) for t in TASKS]
        diffs = [cell(r[f"{t}_max_abs_diff"], ".1e", name, t) for t in TASKS]
        lines.append(f"| {name} | " + " | ".join(s + ("x" if s[0].isdigit() else "") for s in speedups) + " | "
                     + " | ".join(diffs) + " |")
    if errors:
        lines += ["", "Failures:", ""] + [f"- {name}, {task}: {error.splitlines()[0]}"
                                         for (name, task), error in errors.items()]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed_forward.md").write_text(table)
    (args.out / "speed_forward.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__, "device": device_name,
         "results": results, "errors": {f"{n} / {t}": e for (n, t), e in errors.items()}}, indent=1))
    return results


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
    parser.add_argument("--options", default=None,
                        help="comma-separated subset of the option names (fp32 is always in)")
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
    graphs = {name for name, kwargs in options.items() if kwargs.get("compile_mode") == "reduce-overhead"}

    names = list(models)
    outputs: dict[str, dict[str, Any]] = {name: {} for name in models}
    times: dict[tuple[str, str], list[float]] = {}
    errors: dict[tuple[str, str], str] = {}

    def failed(name: str, task: str, exc: BaseException) -> None:
        errors[(name, task)] = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"FAILED {name} / {task}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()

    for task in TASKS:
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
            for name, run in tqdm(list(runners.items()), desc=f"{task} warm-up", disable=False):
                try:
                    if name in graphs:  # CUDA graphs: a new step; no output of the last one is kept
                        torch.compiler.cudagraph_mark_step_begin()
                    outputs[name][task] = run().float().cpu()
                except Exception as exc:  # noqa: BLE001 - report this option, measure the others
                    failed(name, task, exc)
                    del runners[name]
            if "fp32" not in runners:
                continue
            for _ in tqdm(range(args.repeats), desc=f"{task} rounds", disable=False):
                for name, run in list(runners.items()):  # round-robin: load from others hits every option alike
                    try:
                        if name in graphs:
                            torch.compiler.cudagraph_mark_step_begin()
                        synchronize(args.device)
                        start = time.perf_counter()
                        run()
                        synchronize(args.device)
                        times.setdefault((name, task), []).append(time.perf_counter() - start)
                    except Exception as exc:  # noqa: BLE001
                        failed(name, task, exc)
                        del runners[name]
                        times.pop((name, task), None)
        report(args, names, times, outputs, errors)
    results = report(args, names, times, outputs, errors)
    print((args.out / "speed_forward.md").read_text())
    return 1 if errors or not results else 0


if __name__ == "__main__":
    sys.exit(main())
