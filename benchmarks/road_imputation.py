"""ROAD's noisy linear imputation (noise off) on one picture: camkit's batched multigrid-preconditioned
conjugate gradients against pytorch-grad-cam's ``NoisyLinearImputer`` (a sparse direct solve per picture),
at several removed fractions of a smooth CAM-like map: wall time and the largest difference.

    python benchmarks/road_imputation.py --size 224 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import camkit
from camkit.layout import Layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fractions", default="0.1,0.3,0.5,0.7,0.9")
    args = parser.parse_args(argv)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, args.size, args.size, generator=generator)
    cam = F.interpolate(torch.rand(1, 1, 7, 7, generator=generator), size=(args.size, args.size),
                        mode="bilinear", align_corners=False)[0, 0]
    road = camkit.lookup("perturbations", "road")(noise=0.0, exact=True)
    print("| removed | pytorch-grad-cam ms | camkit ms | max difference |\n|---|---|---|---|")
    for fraction in map(float, args.fractions.split(",")):
        removed = cam >= torch.quantile(cam.flatten(), 1 - fraction)
        start = time.perf_counter()
        theirs = NoisyLinearImputer(noise=0.0)(x[0], (~removed).float())
        their_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        ours = road.apply(x, removed[None, None], Layout.parse("NCHW"), torch.arange(1))
        our_ms = (time.perf_counter() - start) * 1e3
        print(f"| {fraction:.0%} | {their_ms:.0f} | {our_ms:.0f} | {float((ours[0] - theirs).abs().max()):.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
