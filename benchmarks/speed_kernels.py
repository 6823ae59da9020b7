"""Post-processing kernels alone: torch path vs Triton path of ``CudaKernel`` (and ``TorchKernel``
on the CPU), per dtype, on maps shaped like a ResNet batch: (N, 7, 7) -> ReLU, upsample to
224 x 224, normalise; normalisation alone; JET overlay of (N, 3, 224, 224) uint8 images; and the
Score-CAM masks of a batch, (B, C, 7, 7) -> upsample + normalise each of the B x C maps.
Every Triton result is also compared with the torch result (max abs difference; the overlay in
uint8 levels), so a speed-up is never reported for wrong numbers unnoticed. A kernel that fails
(e.g. Triton cannot compile) is reported as such and the others still run.
This decides where the Triton kernels should be the default. Writes ``speed_kernels.md`` / ``.json``.

    python benchmarks/speed_kernels.py --device cuda --batch 256
    python benchmarks/speed_kernels.py --device cpu --batch 8 --scorecam-batch 1 --scorecam-channels 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def median_seconds(run: Callable[[], Any], device: str, repeats: int) -> float:
    """Median wall seconds of ``run`` (after one untimed warm-up call, which also compiles Triton)."""
    run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def max_abs_diff(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def main(argv: list[str] | None = None) -> int:
    from camkit_plugins.gpu.kernel import CudaKernel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--scorecam-batch", type=int, default=None,
                        help="batch of the Score-CAM masks task (default 8 on CUDA, 0 = skipped on the CPU)")
    parser.add_argument("--scorecam-channels", type=int, default=2048, help="channels (ResNet-50: 2048)")
    parser.add_argument("--dtypes", default=None,
                        help="float32,bfloat16,float16 (default: all on CUDA, float32 on CPU)")
    parser.add_argument("--triton", choices=("auto", "on", "off"), default="auto",
                        help="the Triton path too (auto: on CUDA; on: also on the CPU, under TRITON_INTERPRET=1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    if args.scorecam_batch is None:
        args.scorecam_batch = 8 if gpu else 0
    kernels: dict[str, Any] = {"torch": CudaKernel(use_triton=False)}  # TorchKernel + the torch overlay
    errors: list[dict[str, str]] = []
    if args.triton == "on" or (args.triton == "auto" and gpu):
        try:
            kernels["triton"] = CudaKernel(use_triton=True)
        except RuntimeError as exc:  # triton missing: the torch rows are still worth having
            errors.append({"kernel": "triton", "task": "*", "dtype": "*", "error": str(exc)})
            print(f"Triton unavailable: {exc}", file=sys.stderr)
    dtype_names = args.dtypes or ("float32,bfloat16,float16" if gpu else "float32")
    dtypes = [getattr(torch, name) for name in dtype_names.split(",")]
    generator = torch.Generator().manual_seed(0)
    small = torch.randn(args.batch, 7, 7, generator=generator)
    large = torch.rand(args.batch, args.size, args.size, generator=generator)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, generator=generator)
    features = (torch.randn(args.scorecam_batch, args.scorecam_channels, 7, 7, generator=generator).clamp_min(0)
                if args.scorecam_batch else None)
    sizes = {1: args.size, 2: args.size}
    rows = []
    warnings.simplefilter("ignore")
    for dtype in dtypes:
        s, big = small.to(args.device, dtype), large.to(args.device, dtype)
        img, maps = images.to(args.device), large.to(args.device)
        f = features.to(args.device, dtype) if features is not None else None
        tasks_of: dict[str, dict[str, Callable[[], Any]]] = {}
        for name, kernel in kernels.items():
            tasks = {
                "relu+resample+normalize": lambda k=kernel: k.resample_normalize(s, sizes, 1, relu=True),
                "normalize": lambda k=kernel: k.normalize(big, 1),
            }
            if dtype == torch.float32:
                tasks["overlay"] = lambda k=kernel: k.overlay(img, maps, 0.5)
            if f is not None:  # Score-CAM: every channel of every sample upsampled and normalised
                tasks["scorecam masks"] = lambda k=kernel: k.resample_normalize(f, {2: args.size, 3: args.size}, 2)
            tasks_of[name] = tasks
        dtype_name = str(dtype).split(".")[1]
        for task in tasks_of["torch"]:
            reference = None
            for name in kernels:
                run = tasks_of[name][task]
                row: dict[str, Any] = {"dtype": dtype_name, "kernel": name, "task": task}
                try:
                    result = run()
                    if name == "torch":
                        reference = result
                    elif reference is not None:
                        row["max_abs_diff_vs_torch"] = max_abs_diff(result, reference)
                    del result
                    row["ms"] = 1e3 * median_seconds(run, args.device, args.repeats)
                except Exception as exc:  # noqa: BLE001 - report it, keep measuring the rest
                    row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                    errors.append({"kernel": name, "task": task, "dtype": dtype_name, "error": row["error"]})
                    print(f"FAILED {name} {task} {dtype_name}: {row['error']}", file=sys.stderr)
                    traceback.print_exc()
                rows.append(row)
            del reference
        if gpu:
            torch.cuda.empty_cache()
    reference_ms = {(r["dtype"], r["task"]): r.get("ms") for r in rows if r["kernel"] == "torch"}
    lines = [f"{args.device} ({torch.cuda.get_device_name() if gpu else 'cpu'}), batch {args.batch}, "
             f"{args.size}x{args.size}, Score-CAM masks {args.scorecam_batch}x{args.scorecam_channels} maps, "
             f"{torch.get_num_threads()} threads, medians of {args.repeats}, torch {torch.__version__}", "",
             "| dtype | task | kernel | ms | speed-up vs torch | max abs diff vs torch |", "|---|---|---|---|---|---|"]
    for r in rows:
        base = reference_ms.get((r["dtype"], r["task"]))
        if "ms" in r and base:
            r["speedup_vs_torch"] = base / r["ms"]
        ms = f"{r['ms']:.3f}" if "ms" in r else "FAILED"
        speedup = f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else "-"
        diff = f"{r['max_abs_diff_vs_torch']:.1e}" if "max_abs_diff_vs_torch" in r else "-"
        lines.append(f"| {r['dtype']} | {r['task']} | {r['kernel']} | {ms} | {speedup} | {diff} |")
    if errors:
        lines += ["", "Failures:", ""] + [f"- {e['kernel']} {e['task']} {e['dtype']}: {e['error'].splitlines()[0]}"
                                         for e in errors]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed_kernels.md").write_text(table)
    (args.out / "speed_kernels.json").write_text(json.dumps({"rows": rows, "errors": errors}, indent=1))
    print(table)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
