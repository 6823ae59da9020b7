"""Throughput of ``camkit explain`` end to end (read, decode, CAM, overlay, write) against the CAM
computation alone on already-decoded batches, with JPEGs decoded in the DataLoader workers or in
batches on the device (nvjpeg on a GPU). All ratios come from one run.

Writes ``explain_speed.md`` and ``explain_speed.json`` into ``--out``.

    python benchmarks/explain_speed.py --device cpu --count 64      # ~1 minute on 2 CPU cores
    python benchmarks/explain_speed.py --device cuda --count 1024 --batch-size 128 --workers 8
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

import camkit
from camkit_plugins.image.explain_files import explain_files


def write_photos(folder: Path, count: int, height: int, width: int) -> list[Path]:
    """Smooth synthetic photos (gradients and discs) saved as JPEG: realistic file sizes, unlike noise."""
    from torchvision.io import encode_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    files = []
    for index in range(count):
        colour = torch.rand(3, 1, 1, generator=generator)
        cy, cx, radius = torch.rand(3, generator=generator).tolist()
        disc = (((ys - cy) ** 2 + (xs - cx) ** 2) < (0.1 + 0.2 * radius) ** 2).float()
        picture = (0.5 * colour * (ys + xs) + 0.5 * disc * colour.flip(0)).clamp(0, 1)
        path = folder / f"photo{index:05d}.jpg"
        path.write_bytes(encode_jpeg((255 * picture).to(torch.uint8), quality=90).numpy().tobytes())
        files.append(path)
    return files


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def compute_only(model: torch.nn.Module, method: str, batch: int, size: int, count: int, device: str) -> float:
    """Images per second of the CAM call alone (maps at input size, normalised) on ready device batches."""
    inputs = torch.randn(batch, 3, size, size, device=device)
    rounds = max(1, math.ceil(count / batch))
    with camkit.Explainer(model, method=method) as explainer:
        explainer(inputs)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for _ in range(rounds):
            explainer(inputs)
        synchronize(device)
    return rounds * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--method", default="cam")
    parser.add_argument("--count", type=int, default=64, help="JPEG files to explain")
    parser.add_argument("--photo-size", default="480x640", help="height x width of the files")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.photo_size.lower().split("x"))

    torch.manual_seed(0)
    model = camkit.lookup("models", args.arch)(num_classes=2).eval().to(args.device)
    config = {"classes": ["cat", "dog"], "input_size": args.size, "mean": [0.485, 0.456, 0.406],
              "std": [0.229, 0.224, 0.225], "in_channels": 3}
    work = Path(tempfile.mkdtemp(prefix="camkit-explain-speed-"))
    try:
        files = write_photos(work / "in", args.count, height, width)
        limit = compute_only(model, args.method, args.batch_size, args.size, args.count, args.device)
        rows = [{"pipeline": "CAM call alone (decoded batches on the device)", "images_per_s": limit}]
        for decode in ("workers", "device"):
            explain_files(model, config, files[: args.batch_size], work / "warm", method=args.method,
                          batch_size=args.batch_size, workers=0, grid=False, device=args.device, decode=decode)
            start = time.perf_counter()
            report = explain_files(model, config, files, work / decode, method=args.method,
                                   batch_size=args.batch_size, workers=args.workers, grid=False,
                                   device=args.device, decode=decode)
            seconds = time.perf_counter() - start
            if report.bad or len(report.written) != len(files):
                raise RuntimeError(f"decode={decode}: wrote {len(report.written)} of {len(files)}, bad: {report.bad}")
            where = "the workers" if decode == "workers" else "batches on the device"
            rows.append({"pipeline": f"camkit explain, JPEGs decoded in {where}",
                         "images_per_s": len(files) / seconds})
    finally:
        shutil.rmtree(work)
    for row in rows:
        row["vs_cam_call"] = row["images_per_s"] / limit
    setting = {"device": args.device, "arch": args.arch, "method": args.method, "count": args.count,
               "photo": f"{height}x{width} JPEG", "input": args.size, "batch_size": args.batch_size,
               "workers": args.workers, "torch": torch.__version__, "threads": torch.get_num_threads()}
    lines = [f"`{' '.join(f'{k}={v}' for k, v in setting.items())}`", "",
             "| pipeline | images/s | vs CAM call alone |", "|---|---:|---:|"]
    lines += [f"| {row['pipeline']} | {row['images_per_s']:.1f} | {row['vs_cam_call']:.2f} |" for row in rows]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain_speed.md").write_text(text)
    (args.out / "explain_speed.json").write_text(json.dumps({"setting": setting, "rows": rows}, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
