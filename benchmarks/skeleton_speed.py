"""Skeleton speed ratios, measured in one run (interleaved repetitions, medians):

* an RA-GCN training step with S streams / a 1-stream step (bar: 3 streams <= 3.3x);
* the joint-by-time CAM of an ST-GCN (``camkit.explain``, reduced over persons, upsampled in time)
  / its plain forward pass (bar: <= 1.05x).

    .venv/bin/python benchmarks/skeleton_speed.py [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Callable

import torch

import camkit
from camkit_plugins.skeleton.models import RAGCN, STGCN, ra_gcn_loss


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each case, cases alternating so load changes hit all of them alike."""
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(_timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def training_steps(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    x = torch.randn(args.batch, 3, args.frames, 25, 1, device=device)
    y = torch.randint(0, 8, (args.batch,), device=device)
    cases = {}
    for streams in (1, 2, 3):
        torch.manual_seed(0)
        model = RAGCN(8, streams=streams, config=args.config, persons=1).to(device).train()
        optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step(model: RAGCN = model, optimiser: Any = optimiser) -> None:
            loss = ra_gcn_loss(model(x, labels=y, per_stream=True), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

        cases[f"{streams} stream"] = step
    return interleaved(cases, args.repeats, device)


def cam_versus_forward(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = STGCN(60, config=args.cam_config, persons=2).to(device).eval()
    x = torch.randn(args.cam_batch, 3, args.frames, 25, 2, device=device)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    with camkit.Explainer(model, "cam", reduce="M") as explainer:
        return interleaved({"forward": forward, "joint-time CAM": lambda: explainer(x)}, args.repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--config", default="small", help="ST-GCN config of every RA-GCN stream")
    parser.add_argument("--cam-config", default="paper", help="ST-GCN config for the CAM-versus-forward ratio")
    parser.add_argument("--cam-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = training_steps(args, device)
    cam = cam_versus_forward(args, device)
    report = {
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": args.batch, "frames": args.frames, "config": args.config, "cam_config": args.cam_config,
        "cam_batch": args.cam_batch, "repeats": args.repeats,
        "training step seconds": steps, "cam seconds": cam,
        "2-stream / 1-stream step": steps["2 stream"] / steps["1 stream"],
        "3-stream / 1-stream step": steps["3 stream"] / steps["1 stream"],
        "joint-time CAM / forward": cam["joint-time CAM"] / cam["forward"],
    }
    print(f"RA-GCN training step ({args.config}, batch {args.batch}, T={args.frames}) on {device}:")
    for name, seconds in steps.items():
        print(f"  {name:<10} {1000 * seconds:8.1f} ms   x{seconds / steps['1 stream']:.2f}")
    print(f"ST-GCN {args.cam_config} (batch {args.cam_batch}, T={args.frames}, M=2): forward "
          f"{1000 * cam['forward']:.1f} ms, joint-time CAM {1000 * cam['joint-time CAM']:.1f} ms, "
          f"ratio {report['joint-time CAM / forward']:.3f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
