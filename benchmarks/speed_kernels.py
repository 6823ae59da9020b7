"""Post-processing kernels alone: torch path vs Triton path of ``CudaKernel`` (and ``TorchKernel``
on the CPU), per dtype, on maps shaped like a ResNet batch: (N, 7, 7) -> ReLU, upsample to
224 x 224, normalise; normalisation alone; JET overlay of (N, 3, 224, 224) uint8 images.
This decides where the Triton kernels should be the default. Writes ``speed_kernels.md`` / ``.json``.

    python benchmarks/speed_kernels.py --device cuda --batch 256
    python benchmarks/speed_kernels.py --device cpu --batch 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch



def median_seconds(run: Callable[[], Any], device: str, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    from camkit_plugins.gpu.kernel import CudaKernel

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    kernels: dict[str, Any] = {"torch": CudaKernel(use_triton=False)}  # TorchKernel + the torch overlay
    if gpu:
        kernels["triton"] = CudaKernel(use_triton=True)
    dtypes = [torch.float32, torch.bfloat16, torch.float16] if gpu else [torch.float32]
    generator = torch.Generator().manual_seed(0)
    small = torch.randn(args.batch, 7, 7, generator=generator)
    large = torch.rand(args.batch, args.size, args.size, generator=generator)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, generator=generator)
    sizes = {1: args.size, 2: args.size}
    rows = []
    warnings.simplefilter("ignore")
    for dtype in dtypes:
        s, big = small.to(args.device, dtype), large.to(args.device, dtype)
        img, maps = images.to(args.device), large.to(args.device)
        for name, kernel in kernels.items():
            tasks = {
                "relu+resample+normalize": lambda k=kernel: k.resample_normalize(s, sizes, 1, relu=True),
                "normalize": lambda k=kernel: k.normalize(big, 1),
            }
            if hasattr(kernel, "overlay") and dtype == torch.float32:
                tasks["overlay"] = lambda k=kernel: k.overlay(img, maps, 0.5)
            for task, run in tasks.items():
                seconds = median_seconds(run, args.device, args.repeats)
                rows.append({"dtype": str(dtype).split(".")[1], "kernel": name, "task": task, "ms": 1e3 * seconds})
    reference = {(r["dtype"], r["task"]): r["ms"] for r in rows if r["kernel"] == "torch"}
    lines = [f"{args.device}, batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads, "
             f"medians of {args.repeats}", "",
             "| dtype | task | kernel | ms | speed-up vs torch |", "|---|---|---|---|---|"]
    for r in rows:
        r["speedup_vs_torch"] = reference[(r["dtype"], r["task"])] / r["ms"]
        lines.append(f"| {r['dtype']} | {r['task']} | {r['kernel']} | {r['ms']:.3f} | {r['speedup_vs_torch']:.2f}x |")
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed_kernels.md").write_text(table)
    (args.out / "speed_kernels.json").write_text(json.dumps(rows, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
