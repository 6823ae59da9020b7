"""``camkit explain`` over a folder of JPEGs against a hand-written pytorch-grad-cam loop doing the same
work (read, decode, Grad-CAM, ``.npy`` maps, JPEG overlays at the photo's size), and the ``--no-overlays``
map dump against the plain forward pass (decoding included). All ratios come from one run, in one process.

Issue 23's bars (ResNet-18, Grad-CAM, CPU, 2 threads, 2,000 JPEGs): camkit >= 5x the loop with maps +
overlays; the map dump >= 0.8x the plain forward's images/s.

    python benchmarks/explain_dataset.py --count 200                 # ~5 min on 2 CPU cores
    python benchmarks/explain_dataset.py --count 2000 --device cuda  # the issue's N, on a GPU machine

Writes ``explain_dataset.md`` and ``explain_dataset.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explain_speed import write_photos  # noqa: E402  (the benchmarks folder is not a package)

import camkit  # noqa: E402
from camkit_plugins.image.explain_files import explain_files  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def grad_cam_loop(model: torch.nn.Module, files: list[Path], out: Path, size: int, device: str) -> None:
    """What a pytorch-grad-cam user writes: per file, PIL decode, resize + normalise, GradCAM on layer4,
    the map saved as .npy, ``show_cam_on_image`` at the photo's size written as JPEG."""
    import cv2
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from torchvision import transforms

    out.mkdir(parents=True, exist_ok=True)
    prepare = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                  transforms.Normalize(MEAN, STD)])
    with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        for path in files:
            photo = Image.open(path).convert("RGB")
            grey = cam(input_tensor=prepare(photo)[None].to(device), targets=None)[0]  # the predicted class
            np.save(out / f"{path.stem}_maps.npy", grey)
            rgb = np.asarray(photo, dtype=np.float32) / 255.0
            heat = cv2.resize(grey, (rgb.shape[1], rgb.shape[0]))
            blended = show_cam_on_image(rgb, heat, use_rgb=True)
            cv2.imwrite(str(out / f"{path.stem}_cam.jpg"), cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))


def plain_forward(model: torch.nn.Module, config: dict, files: list[Path], batch_size: int, workers: int,
                  device: str) -> float:
    """Images/s of reading, decoding, preprocessing (the same DataLoader as camkit explain) and the forward."""
    from torch.utils.data import DataLoader

    from camkit_plugins.image.explain_files import PictureFiles, _keep_list

    dataset = PictureFiles(files, config["input_size"], MEAN, STD, 3)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_keep_list)
    start = time.perf_counter()
    with torch.inference_mode():
        for items in loader:
            model(torch.stack([item["input"] for item in items]).to(device))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return len(files) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="JPEG files (the issue's bar: 2000)")
    parser.add_argument("--photo-size", default="375x500", help="height x width of the files (VOC-like)")
    parser.add_argument("--size", type=int, default=224, help="model input size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loop-count", type=int, default=None,
                        help="files the pytorch-grad-cam loop does (default all; its images/s is per file)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.photo_size.lower().split("x"))
    torch.manual_seed(0)
    model = camkit.lookup("models", "resnet18")(num_classes=1000).eval().to(args.device)
    config = {"classes": [f"class{i}" for i in range(1000)], "input_size": args.size, "mean": MEAN, "std": STD,
              "in_channels": 3}
    work = Path(tempfile.mkdtemp(prefix="camkit-explain-dataset-"))
    rows = []
    try:
        files = write_photos(work / "in", args.count, height, width)
        common = {"batch_size": args.batch_size, "workers": args.workers, "device": args.device, "save_maps": True,
                  "progress": False}
        explain_files(model, config, files[:args.batch_size], work / "warm", grid=False, method="gradcam", **common)
        plain_forward(model, config, files[:args.batch_size], args.batch_size, args.workers, args.device)  # warm-up
        forward = plain_forward(model, config, files, args.batch_size, args.workers, args.device)
        rows.append({"pipeline": "plain forward (read, decode, preprocess, forward)", "images_per_s": forward})
        for name, options in (("camkit explain, Grad-CAM: maps + overlays + page", {"method": "gradcam"}),
                              ("camkit explain --no-overlays, Grad-CAM: .npy maps only",
                               {"method": "gradcam", "overlays": False}),
                              ("camkit explain --no-overlays, CAM: .npy maps only",
                               {"method": "cam", "overlays": False})):
            start = time.perf_counter()
            report = explain_files(model, config, files, work / f"run{len(rows)}", **common, **options)
            seconds = time.perf_counter() - start
            if report.bad or report.explained != len(files):
                raise RuntimeError(f"{name}: explained {report.explained} of {len(files)}, bad: {report.bad}")
            rows.append({"pipeline": name, "images_per_s": len(files) / seconds})
        loop_files = files[:args.loop_count] if args.loop_count else files
        grad_cam_loop(model, files[:1], work / "loop-warm", args.size, args.device)  # warm-up
        start = time.perf_counter()
        grad_cam_loop(model, loop_files, work / "loop", args.size, args.device)
        rows.append({"pipeline": "pytorch-grad-cam loop: maps + overlays, one file at a time",
                     "images_per_s": len(loop_files) / (time.perf_counter() - start)})
    finally:
        shutil.rmtree(work)
    speed = {row["pipeline"]: row["images_per_s"] for row in rows}
    ratios = {"camkit_vs_grad_cam_loop": rows[1]["images_per_s"] / rows[4]["images_per_s"],
              "gradcam_map_dump_vs_plain_forward": rows[2]["images_per_s"] / forward,
              "cam_map_dump_vs_plain_forward": rows[3]["images_per_s"] / forward}
    setting = {"count": args.count, "loop_count": len(loop_files), "photo": f"{height}x{width} JPEG",
               "input": args.size, "device": args.device, "threads": args.threads, "batch_size": args.batch_size,
               "workers": args.workers, "torch": torch.__version__}
    lines = [f"`{' '.join(f'{k}={v}' for k, v in setting.items())}`", "", "| pipeline | images/s |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in speed.items()]
    lines += ["",
              f"camkit explain vs the pytorch-grad-cam loop: {ratios['camkit_vs_grad_cam_loop']:.2f}x (bar 5x)",
              "--no-overlays map dump vs the plain forward: Grad-CAM "
              f"{ratios['gradcam_map_dump_vs_plain_forward']:.2f}x (a backward pass more than the forward), CAM "
              f"{ratios['cam_map_dump_vs_plain_forward']:.2f}x (bar 0.8x)"]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain_dataset.md").write_text(text)
    (args.out / "explain_dataset.json").write_text(json.dumps({"setting": setting, "rows": rows, "ratios": ratios},
                                                              indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
