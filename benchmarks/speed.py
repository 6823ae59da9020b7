"""Speed of camkit against a plain forward pass and against other CAM toolkits, in one process.

For every case (device x model x batch size x dtype) it times, round-robin so that load from other
processes hits every runner alike: the plain inference forward, every camkit method, and the same
work through pytorch-grad-cam, torchcam and captum when they are installed (``pip install -e .[bench]``).
"The same work" is: maps of one class per image (the fp32 prediction, passed explicitly to every
toolkit), ReLU, upsampled to the input size and min-max normalised. Each toolkit's maps are compared
with camkit's (max abs difference after re-normalising both, which removes the harmless difference in
the order "normalise then resize"), so a ratio is never reported for different work unnoticed.

Writes ``speed.md`` (Markdown table, then the issue's targets with pass/fail), ``speed.json`` (rows,
targets, failures) and ``speed.png`` into ``--out``; the Markdown and JSON are rewritten after every
case, so a run cut short still leaves what it measured.

On CUDA, Score-CAM runs in its own fp32 case per model (``--scorecam-batch``, default 8, at 224 px):
its upsampled masks take N x C x H x W floats (105 GB for ResNet-50 at batch 256), pytorch-grad-cam's
masked inputs three times that, and a call is N x C forward passes.

    python benchmarks/speed.py --device cpu --quick          # < 2 minutes on 2 CPU cores
    python benchmarks/speed.py --device cuda                 # the full GPU suite
    python benchmarks/speed.py --device cuda --models resnet50,resnet18 --batch-sizes 256   # the issue's targets

This file is the command line; the work lives in the package ``benchmarks/speedbench/``: ``cases`` (what is
measured: methods, bars, cases, rows, models), ``runners`` (one per toolkit), ``timing`` (round-robin
rounds, one case's rows) and ``report`` (tables, targets, files, plot).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from dataclasses import asdict  # noqa: F401  (re-exported for the tests)
from pathlib import Path
from typing import Any

# before any tqdm import: silences pytorch-grad-cam's per-image bars (ours pass disable=False)
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the speedbench package beside this script
from speedbench.cases import (  # noqa: E402, F401  (the names below are this script's interface too)
    AGREEMENT_TOLERANCE,
    CAMKIT_METHODS,
    KNOWN_DIFFERENCES,
    NEW_METHODS,
    PERTURBATION_METHODS,
    QUICK_PAIRS,
    TOOLKITS,
    VIT_METHODS,
    VIT_MODEL,
    Case,
    Row,
    build_model,
)
from speedbench.report import load_rows, markdown, markdown_targets, plot, targets, write_reports  # noqa: E402, F401
from speedbench.runners import TOOLKIT_RUNNERS, camkit_runner, installed_toolkits, max_abs_difference  # noqa: E402, F401
from speedbench.timing import measure_case, own_forward_ratio, record_failure, time_round_robin  # noqa: E402, F401


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or all (cuda when available)")
    parser.add_argument("--quick", action="store_true", help="ResNet-18, batch 8, fp32, a small Score-CAM case")
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch-sizes", default=None, help="default: 8,32 on cpu, 64,256 on cuda")
    parser.add_argument("--dtypes", default=None, help="fp32,bf16 (cpu) / fp32,bf16,fp16 (cuda)")
    parser.add_argument("--methods", default=",".join(CAMKIT_METHODS))
    parser.add_argument("--toolkits", default=",".join(TOOLKITS))
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (median); default 5 quick, 10 full")
    parser.add_argument("--scorecam-size", type=int, default=None,
                        help="input size of the Score-CAM case (CPU: 96, 48 with --quick; CUDA: 224)")
    parser.add_argument("--scorecam-batch", type=int, default=None,
                        help="its batch (CPU: 2, 1 with --quick; CUDA: 8, one per model of --models)")
    parser.add_argument("--scorecam-repeats", type=int, default=None,
                        help="timed rounds of the Score-CAM case (default: 2 with --quick, 3 on CUDA, else --repeats)")
    parser.add_argument("--scorecam-chunk", type=int, default=256, help="camkit's Score-CAM chunk_size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--include", type=Path, action="append", default=[],
                        help="a speed.json of an earlier run whose rows join this report (and its targets); repeatable")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser.parse_args(argv)



def plan(args: argparse.Namespace) -> list[tuple[Case, tuple[str, ...]]]:
    """(case, methods) pairs. Vision-transformer methods (LeGrad) run on ViT-B/16 in a case of their own
    (batch 2 on a CPU, 8 on CUDA). Score-CAM costs channels x batch forwards and, on CUDA, batch x channels
    upsampled masks (pytorch-grad-cam: also batch x channels masked images): it runs in its own fp32
    case, small on a CPU (ResNet-18, ``--scorecam-size`` / ``--scorecam-batch``), at 224 px and batch
    8 per model on CUDA (ResNet-50: 3.3 GB of masks for camkit, ~17 GB for pytorch-grad-cam)."""
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]
    if not devices:
        raise SystemExit(f"--device {args.device}: no CUDA device here")
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(methods) - set(CAMKIT_METHODS) - set(NEW_METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}: choose from {', '.join(CAMKIT_METHODS + NEW_METHODS)}")
    pairs = []
    for device in devices:
        gpu = device.startswith("cuda")
        models = ["resnet18"] if args.quick else args.models.split(",")
        sizes = args.batch_sizes or ("64,256" if gpu else "8,32")
        batches = [8] if args.quick and not gpu else [int(b) for b in sizes.split(",")]
        dtypes = ["fp32"] if args.quick else (args.dtypes or ("fp32,bf16,fp16" if gpu else "fp32,bf16")).split(",")
        main_methods = tuple(m for m in methods if m not in PERTURBATION_METHODS + VIT_METHODS)
        vit_methods = tuple(m for m in methods if m in VIT_METHODS)
        score_methods = tuple(m for m in methods if m in PERTURBATION_METHODS)
        if main_methods:
            for model in models:
                for batch in batches:
                    for dtype in dtypes:
                        pairs.append((Case(device, model, batch, dtype), main_methods))
        if score_methods:
            if gpu:
                size = args.scorecam_size or 224
                batch = args.scorecam_batch or 8
                for model in models:
                    pairs.append((Case(device, model, batch, "fp32", size), score_methods))
            else:
                size = args.scorecam_size or (48 if args.quick else 96)  # 48 px: 2 x 2 features
                batch = args.scorecam_batch or (1 if args.quick else 2)
                pairs.append((Case(device, "resnet18", batch, "fp32", size), score_methods))
        if vit_methods:
            pairs.append((Case(device, VIT_MODEL, 8 if gpu else 2, "fp32"), vit_methods))
    return pairs


def run_metadata(repeats: int, toolkits: list[str], started: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cuda": None, "repeats": repeats,
        "seconds": time.perf_counter() - started, "load_average": os.getloadavg(),
        "toolkits": {t: _version(t) for t in toolkits}, "camkit_triton": os.environ.get("CAMKIT_TRITON", ""),
    }
    if torch.cuda.is_available():
        try:  # the details must never cost the measurements
            props = torch.cuda.get_device_properties(0)
            meta.update(cuda=torch.cuda.get_device_name(), cuda_runtime=torch.version.cuda,
                        capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        cudnn_tf32=torch.backends.cudnn.allow_tf32, matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                        cudnn_benchmark=torch.backends.cudnn.benchmark)
        except Exception as exc:  # noqa: BLE001
            meta["cuda"] = f"details unavailable: {exc}"
    return meta


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 10)
    pairs = QUICK_PAIRS if args.quick else None
    toolkits = installed_toolkits(tuple(t for t in args.toolkits.split(",") if t))
    missing = sorted(set(args.toolkits.split(",")) - set(toolkits) - {""})
    if missing:
        print(f"not installed, skipped: {', '.join(missing)} (pip install -e '.[bench]')", file=sys.stderr)
    rows: list[Row] = []
    for path in args.include:
        if path.exists():
            rows.extend(load_rows(path))
        else:
            print(f"--include {path}: no such file, skipped", file=sys.stderr)
    failures: list[dict[str, Any]] = []
    started = time.perf_counter()
    for case, methods in tqdm(plan(args), desc="cases", unit="case", disable=False):
        if set(methods) <= set(PERTURBATION_METHODS):  # seconds per call: fewer rounds
            default = 2 if args.quick else 3 if case.device.startswith("cuda") else repeats
            rounds = args.scorecam_repeats or default
        else:
            rounds = repeats
        try:
            rows.extend(measure_case(case, methods, toolkits, rounds, scorecam_chunk=args.scorecam_chunk, pairs=pairs,
                                     failures=failures))
        except Exception as exc:  # noqa: BLE001 - keep the cases measured so far and go on
            record_failure(failures, case, "*", ",".join(methods), exc)
        if case.device.startswith("cuda"):  # this case's model, inputs and cached blocks go before the next
            gc.collect()
            torch.cuda.empty_cache()
        write_reports(args.out, run_metadata(repeats, toolkits, started), rows, failures, with_plot=False)
    meta = run_metadata(repeats, toolkits, started)
    text = write_reports(args.out, meta, rows, failures)
    print(text.split("\n\n", 1)[1])
    print(f"wrote {args.out}/speed.md, speed.json, speed.png in {meta['seconds']:.0f} s")
    unexpected = [r for r in rows if r.agrees is False and r.note == "UNEXPECTED DIFFERENCE"]
    for r in unexpected:
        print(f"DISAGREEMENT: {r.tool} {r.method} differs from camkit by {r.max_abs_diff:.3g}", file=sys.stderr)
    return 1 if unexpected or failures else 0


def _version(toolkit: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    distribution = {"pytorch-grad-cam": "grad-cam"}.get(toolkit, toolkit)
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
