"""How many architectures users bring does camkit explain right, with no layer named? Random weights,
small inputs, CPU. Per model:

- CAM: where the head is global average pooling + one linear layer, CAM's identity must hold on the
  features camkit finds (mean of each map + the class's bias = its logit, for every class and sample);
  elsewhere camkit must refuse CAM or warn (``HeadMismatchWarning``), never be silently wrong;
- Grad-CAM: a finite map of the input's size.

A model is right when both hold. Writes a Markdown table (and prints the counts per zoo):

    python benchmarks/zoo.py --out benchmarks/results/zoo.md          # torchvision, timm, transformers
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any, Callable, Iterator

# heads that are not GAP + linear (CAM must refuse or warn), by name prefix
NOT_GAP_LINEAR = ("alexnet", "vgg", "convnext", "maxvit", "mobilenet_v3", "mobilenetv3", "squeezenet", "vit_",
                  "deit", "levit", "efficientformer", "pit_", "cait", "crossvit", "coat", "beit", "eva02",
                  "poolformer", "tiny_vit", "edgenext", "ghostnet", "hf-convnext", "hf-vit")
TOO_BIG = ("regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_32gf", "regnet_x_32gf")
TIMM = ["resnet18", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "regnetx_002", "densenet121",
        "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_small_patch14_reg4_dinov2", "levit_128s",
        "coat_tiny", "efficientformer_l1", "swin_tiny_patch4_window7_224", "maxvit_nano_rw_256", "mobilevit_xxs",
        "ghostnet_100", "rexnet_100", "cait_xxs24_224", "crossvit_tiny_240", "pit_ti_224", "twins_svt_small",
        "poolformer_s12", "convmixer_768_32", "deit_tiny_patch16_224", "beit_base_patch16_224",
        "eva02_tiny_patch14_224", "fastvit_t8", "tiny_vit_5m_224", "edgenext_xx_small", "repvgg_a0"]


def check(model: Any, x: Any, gap_linear: bool) -> tuple[bool, str]:
    """``(right, what happened)`` for one model."""
    import torch

    import camkit
    from camkit.methods import HeadMismatchWarning

    for module in model.modules():  # zero-initialised heads (ViT) give constant logits
        if isinstance(module, torch.nn.Linear) and not bool(module.weight.any()):
            torch.nn.init.normal_(module.weight, std=0.02)
    notes, right = [], True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = camkit.explain(model, x, "cam", targets="all", relu=False, normalize=False, upsample=False)
            bias = result.logits.float() - result.maps.float().flatten(2).mean(2)
            error = float((bias - bias[:1]).abs().amax() / result.logits.abs().amax())
            warned = any(issubclass(w.category, HeadMismatchWarning) for w in caught)
            if gap_linear:
                right = error < 1e-4 and not warned
                notes.append(f"CAM identity {error:.1e} at {result.layer}")
            elif warned:
                notes.append(f"CAM warns ({result.layer})")
            else:  # the name list says "not GAP + linear"; CAM is still right when its identity holds exactly
                right = error < 1e-4
                notes.append(f"CAM identity {error:.1e} at {result.layer} (the head is GAP + linear after all)"
                             if right else f"CAM silently off by {error:.1e}")
        except ValueError as exc:
            right = not gap_linear
            notes.append(f"CAM refused: {str(exc)[:70]}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grad = camkit.explain(model, x, "gradcam")
        ok = tuple(grad.maps.shape) == (x.shape[0], *x.shape[-2:]) and bool(grad.maps.isfinite().all())
        right &= ok
        notes.append(f"Grad-CAM at {grad.layer}" if ok else "Grad-CAM bad map")
    except Exception as exc:  # reported, counted as wrong: this is a survey
        right = False
        notes.append(f"Grad-CAM {type(exc).__name__}: {str(exc)[:70]}")
    return right, "; ".join(notes)


def torchvision_zoo() -> Iterator[tuple[str, Callable[[], Any], Any]]:
    import torch
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        if name in TOO_BIG:
            continue
        size = {"inception_v3": 160, "maxvit_t": 224}.get(name, 64)
        options = {"image_size": size} if name.startswith("vit") else {}
        yield (name, lambda name=name, options=options: torchvision.models.get_model(name, weights=None, num_classes=6,
                                                                                    **options),
               torch.randn(2, 3, size, size))


def timm_zoo() -> Iterator[tuple[str, Callable[[], Any], Any]]:
    import timm
    import torch

    for name in TIMM:
        def build(name: str = name) -> Any:
            return timm.create_model(name, pretrained=False, num_classes=6)

        size = timm.get_pretrained_cfg(name.split(".")[0]).input_size if timm.is_model(name) else (3, 224, 224)
        yield name, build, torch.randn(2, *size)


def transformers_zoo() -> Iterator[tuple[str, Callable[[], Any], Any]]:
    import torch
    import transformers as hf

    small = {"num_labels": 5}
    yield "hf-resnet", lambda: hf.ResNetForImageClassification(hf.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], **small)), torch.randn(2, 3, 64, 64)
    yield "hf-convnext", lambda: hf.ConvNextForImageClassification(hf.ConvNextConfig(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], **small)), torch.randn(2, 3, 64, 64)
    yield "hf-vit", lambda: hf.ViTForImageClassification(hf.ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=64,
        patch_size=16, **small)), torch.randn(2, 3, 64, 64)


def main() -> None:
    import torch
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/zoo.md")
    parser.add_argument("--zoos", default="torchvision,timm,transformers")
    args = parser.parse_args()
    torch.manual_seed(0)
    zoos = {"torchvision": torchvision_zoo, "timm": timm_zoo, "transformers": transformers_zoo}
    rows, counts = [], {}
    start = time.perf_counter()
    for zoo in args.zoos.split(","):
        for name, build, x in tqdm(list(zoos[zoo]()), desc=zoo, unit="model"):
            gap_linear = not name.startswith(NOT_GAP_LINEAR)
            try:
                right, notes = check(build().eval(), x, gap_linear)
            except Exception as exc:  # a model that does not build here is listed, not counted
                rows.append((zoo, name, "-", f"does not build: {type(exc).__name__}: {str(exc)[:60]}"))
                continue
            counts.setdefault(zoo, [0, 0])
            counts[zoo][0] += right
            counts[zoo][1] += 1
            rows.append((zoo, name, "right" if right else "WRONG", notes))
            print(f"{zoo} {name}: {'right' if right else 'WRONG'}: {notes}", flush=True)
    lines = ["| zoo | right / total |", "|---|---|"]
    lines += [f"| {zoo} | {right} / {total} |" for zoo, (right, total) in counts.items()]
    lines += ["", f"{time.perf_counter() - start:.0f} s on the CPU; random weights.", "",
              "| zoo | model | result | what camkit did |", "|---|---|---|---|"]
    lines += [f"| {zoo} | {name} | {result} | {notes} |" for zoo, name, result, notes in rows]
    from camkit.io import write_text_atomic

    write_text_atomic(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines[:2 + len(counts)]))


if __name__ == "__main__":
    main()
