"""camkit's faithfulness metrics against Quantus 0.6 on the same batch: wall time of each, the ratio
Quantus / camkit, and camkit's wall time over the time of the forward passes it needs (the floor: a
metric cannot be faster than its forwards), those forwards replayed alone right after it (the same
shapes, no autograd, nothing else). The issue's bar: ResNet-18 (random weights), 16 images at
224 px, CPU, 2 threads; the quick run below is the same code on fewer, smaller images.

Both libraries get the same work: options that fix the number of forwards (``features_in_step``,
``patch_size``, ``nr_runs``) scale with the image, Quantus's feature = one channel of one pixel
(camkit's ``features="element"``), and each metric is run once per library after a warm-up forward.
Quantus crashes on RGB for IROF and ROAD: those rows are camkit alone. ``FAITHFULNESS_CASES`` is the
list the statistics battery imports.

    python benchmarks/metrics_vs_quantus_faithfulness.py --images 16 --size 224 --threads 2 --photos
    python benchmarks/metrics_vs_quantus_faithfulness.py --images 2 --size 64 --threads 1   # quick

``--photos`` feeds foolbox's real ImageNet photos instead of noise: IROF's superpixels need them (SLIC
finds one segment in noise, so IROF would need two forwards per picture and SLIC would be its cost).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import camkit
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch


@dataclass
class Case:
    """One metric, with the options both libraries share as a function of (channels, side)."""

    metric: str
    quantus: str | None
    options: Callable[[int, int], dict[str, Any]] = lambda channels, side: {}
    camkit: dict[str, Any] = field(default_factory=dict)  # camkit-only options (its Quantus convention)
    quantus_call: dict[str, Any] = field(default_factory=dict)


def _elements(channels: int, side: int, per_channel_steps: int) -> int:
    """A ``features_in_step`` that divides H x W (Quantus asserts it): C x per_channel_steps steps."""
    return max(1, side * side // per_channel_steps)


FAITHFULNESS_CASES = [
    Case("faithfulness_correlation", "FaithfulnessCorrelation", lambda c, s: {"nr_runs": 32, "subset_size": 224},
         {"features": "element"}, {"softmax": False}),
    Case("faithfulness_estimate", "FaithfulnessEstimate", lambda c, s: {"features_in_step": _elements(c, s, 16)},
         {"features": "element"}),
    Case("pixel_flipping", "PixelFlipping", lambda c, s: {"features_in_step": _elements(c, s, 16)},
         {"features": "element"}),
    Case("region_perturbation", "RegionPerturbation", lambda c, s: {"patch_size": max(1, s // 8)}),
    Case("selectivity", "Selectivity", lambda c, s: {"patch_size": max(1, s // 8)}),
    Case("monotonicity", "Monotonicity", lambda c, s: {"features_in_step": _elements(c, s, 8)},
         {"features": "element"}),
    Case("monotonicity_correlation", "MonotonicityCorrelation",
         lambda c, s: {"nr_samples": 4, "features_in_step": _elements(c, s, 4)}, {"features": "element"}),
    Case("sensitivity_n", "SensitivityN", lambda c, s: {"features_in_step": _elements(c, s, 16)},
         {"features": "element", "convention": "quantus"}),
    Case("infidelity", "Infidelity", lambda c, s: {"perturb_patch_sizes": [max(1, s // 8)]}),
    Case("sufficiency", "Sufficiency"),
    Case("irof", None),
    Case("road", None, lambda c, s: {"percentages": list(range(5, 100, 10))}),
]


class Counter:
    """Counts the inputs a model sees (a forward pre-hook), to price a metric in forwards, and keeps their
    shapes for the replay."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inputs = 0
        self.shapes: list[tuple[int, ...]] = []
        self.handle = model.register_forward_pre_hook(self.count)

    def count(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.inputs += int(args[0].shape[0])
        self.shapes.append(tuple(args[0].shape))


def replay_seconds(model: torch.nn.Module, shapes: list[tuple[int, ...]]) -> float:
    """The time of the same forwards alone, right after the metric: inputs of the recorded shapes, no
    autograd, nothing else (the floor a metric's wall time is held to)."""
    inputs = {shape: torch.randn(shape) for shape in set(shapes)}
    with torch.inference_mode():
        start = time.perf_counter()
        for shape in shapes:
            model(inputs[shape])
        return time.perf_counter() - start


def photos(images: int, side: int) -> torch.Tensor:
    """foolbox's real ImageNet photos (REFERENCE §4), resized to ``side`` and ImageNet-normalised: noise
    images give SLIC one segment, so IROF needs two forwards there and its superpixels dominate."""
    from PIL import Image
    from torchvision.transforms.functional import normalize, pil_to_tensor, resize

    from camkit_plugins.image.datasets import IMAGENET_MEAN, IMAGENET_STD
    from camkit_plugins.image.pretrained import package_folder

    files = sorted((package_folder("foolbox", "foolbox", "foolbox's ImageNet photos") / "data").glob("imagenet_*"))
    if len(files) < images:
        raise ValueError(f"--photos has {len(files)} photos, --images asks for {images}")
    pictures = [resize(pil_to_tensor(Image.open(f).convert("RGB")), [side, side], antialias=True) for f in files]
    return normalize(torch.stack(pictures[:images]).float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))


def setup(images: int, side: int, seed: int = 0, real: bool = False
          ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    model = resnet18(weights=None).eval()
    x = torch.randn(images, 3, side, side)
    if real:
        x = photos(images, side)
    coarse = torch.rand(images, 1, 7, 7)  # smooth maps without ties, like an upsampled CAM
    maps = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    with torch.no_grad():
        targets = model(x).argmax(1)
    return model, x, maps, targets


def run_camkit(case: Case, model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor,
               chunk: int | None) -> tuple[float, int, float]:
    options = {**case.options(x.shape[1], x.shape[2]), **case.camkit}
    batch = EvalBatch(model=model, inputs=x, input_layout=Layout.parse("NCHW"), labels=targets, targets=targets,
                      maps=maps, map_letters="NHW", indices=torch.arange(len(x)), explain=None, chunk_size=chunk)
    counter = Counter(model)
    try:
        start = time.perf_counter()
        camkit.lookup("metrics", case.metric)(**options).evaluate(batch)
        seconds = time.perf_counter() - start
    finally:
        counter.handle.remove()
    return seconds, counter.inputs, replay_seconds(model, counter.shapes)


def run_quantus(case: Case, model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor,
                targets: torch.Tensor) -> tuple[float, int]:
    if not hasattr(np, "trapz"):
        setattr(np, "trapz", np.trapezoid)  # Quantus 0.6 calls np.trapz, removed in numpy 2.4
    import quantus

    assert case.quantus is not None
    metric = getattr(quantus, case.quantus)(disable_warnings=True, **case.options(x.shape[1], x.shape[2]))
    counter = Counter(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            metric(model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=maps[:, None].numpy(),
                   device="cpu", **case.quantus_call)
        return time.perf_counter() - start, counter.inputs
    finally:
        counter.handle.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=None,
                        help="camkit's chunk_size (default: its automatic choice, as a user gets it; Quantus "
                             "forwards all of its batch_size=64 samples at once, here every image)")
    parser.add_argument("--metrics", default="", help="comma-separated subset of the cases")
    parser.add_argument("--photos", action="store_true",
                        help="foolbox's real ImageNet photos instead of noise (IROF's superpixels need them)")
    parser.add_argument("--out", default="metrics_vs_quantus_faithfulness")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, x, maps, targets = setup(args.images, args.size, real=args.photos)
    wanted = set(filter(None, args.metrics.split(",")))
    rows = []
    for case in FAITHFULNESS_CASES:
        if wanted and case.metric not in wanted:
            continue
        ours, ours_inputs, replayed = run_camkit(case, model, x, maps, targets, args.chunk)
        per_input = replayed / max(ours_inputs, 1)
        row: dict[str, Any] = {"metric": case.metric, "camkit_s": ours, "camkit_forwards": ours_inputs,
                               "forwards_s": replayed, "camkit_over_forwards": ours / max(replayed, 1e-12)}
        if case.quantus:
            theirs, their_inputs = run_quantus(case, model, x, maps, targets)
            row.update({"quantus_s": theirs, "quantus_forwards": their_inputs, "quantus_over_camkit": theirs / ours,
                        "quantus_over_forwards": theirs / max(their_inputs * per_input, 1e-12)})
        rows.append(row)
        print(json.dumps(row), flush=True)
    per_input = sum(row["forwards_s"] for row in rows) / max(1, sum(row["camkit_forwards"] for row in rows))
    pictures = "real photos" if args.photos else "noise images"
    lines = [f"ResNet-18 (random weights), {args.images} {pictures} at {args.size} px, CPU, {args.threads} thread(s); "
             f"one forward input costs {per_input * 1e3:.2f} ms (camkit's forwards replayed alone)", "",
             "| metric | forwards camkit / Quantus | camkit s | Quantus s | Quantus / camkit | camkit / its forwards |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        cells = (f"{row['quantus_forwards']} | {row['camkit_s']:.2f} | {row['quantus_s']:.2f} | "
                 f"{row['quantus_over_camkit']:.2f}x" if "quantus_s" in row
                 else f"crashes on RGB | {row['camkit_s']:.2f} | – | –")
        lines.append(f"| `{row['metric']}` | {row['camkit_forwards']} / {cells} | {row['camkit_over_forwards']:.2f}x |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
