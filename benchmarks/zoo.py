"""How many architectures users bring does camkit explain right, with no layer named? Random weights,
small inputs, CPU. Per model:

- CAM: where the head is global average pooling + one linear layer, CAM's identity must hold on the
  features camkit finds (mean of each map + the class's bias = its logit, for every class and sample);
  elsewhere camkit must refuse CAM or warn (``HeadMismatchWarning``), never be silently wrong;
- Grad-CAM: a finite map of the input's size.

A model is right when both hold. Writes a Markdown table (and prints the counts per zoo):

    python benchmarks/zoo.py --out benchmarks/results/zoo.md          # torchvision, timm, transformers

The model families users bring beyond classification (docs/models.md; counted separately) are surveyed
with the call a user writes first (no layer, no glue; only the target a task needs): a map of the
input's size, finite, not constant, no warning, at the expected layer; with the time of Grad-CAM (an
``Explainer`` reused) over a plain forward (no_grad), the fastest of five interleaved runs each:

    python benchmarks/zoo.py --zoos families --out benchmarks/results/families.md
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


def family_cases() -> Iterator[tuple[str, Callable[[], Any], Any, Any, str]]:
    """``(name, build, inputs, target, expected layer)`` at the sizes users run (random weights)."""
    import torch

    import camkit.targets as t

    def optional(module: str) -> Any:
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError:
            return None

    monai, open_clip, smp = optional("monai"), optional("open_clip"), optional("segmentation_models_pytorch")
    ultralytics, hf = optional("ultralytics"), optional("transformers")
    import torchvision.models.video as video

    if monai is not None:
        yield ("monai DenseNet121 3-D", lambda: monai.networks.nets.DenseNet121(spatial_dims=3, in_channels=1,
               out_channels=2), torch.randn(1, 1, 96, 96, 96), None, "class_layers.relu")
    if open_clip is not None:
        def clip(name: str, part: str = "") -> Callable[[], Any]:
            return lambda: getattr(open_clip.create_model(name, pretrained=None), part) if part else \
                open_clip.create_model(name, pretrained=None)

        image = torch.rand(1, 3, 224, 224)
        yield ("open_clip ViT-B-32 image tower", clip("ViT-B-32", "visual"), image,
               t.EmbeddingSimilarity(torch.randn(512)), "transformer.resblocks.11:input")
        yield ("open_clip RN50 image tower", clip("RN50", "visual"), image, t.EmbeddingSimilarity(torch.randn(1024)),
               "layer4")
        yield ("open_clip ViT-B-32 full model (image, text)", clip("ViT-B-32"),
               (image, open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat"])),
               t.EmbeddingSimilarity(torch.randn(512)), "visual.transformer.resblocks.11:input")
    yield "torchvision r3d_18", lambda: video.r3d_18(), torch.rand(1, 3, 16, 112, 112), None, "layer4"
    yield "torchvision s3d", lambda: video.s3d(), torch.rand(1, 3, 16, 224, 224), None, "features"
    yield "torchvision mvit_v1_b", lambda: video.mvit_v1_b(), torch.rand(1, 3, 16, 224, 224), None, "blocks.15:input"
    yield "torchvision mvit_v2_s", lambda: video.mvit_v2_s(), torch.rand(1, 3, 16, 224, 224), None, "blocks.15:input"
    if ultralytics is not None:
        def yolo(config: str) -> Callable[[], Any]:
            def build() -> Any:
                model = ultralytics.YOLO(config)
                model.overrides["conf"] = 0.0  # random weights score below 2e-4 (the head's bias prior)
                return model
            return build

        picture = torch.rand(1, 3, 640, 640)
        yield "YOLOv8n detection (YOLO object)", yolo("yolov8n.yaml"), picture, None, "model.model.15"
        yield "YOLOv8n segmentation (YOLO object)", yolo("yolov8n-seg.yaml"), picture, None, "model.model.15"
        yield ("YOLOv8n classification (YOLO object)", yolo("yolov8n-cls.yaml"), torch.rand(1, 3, 224, 224), None,
               "model.model.9.conv")
    if smp is not None:
        yield ("segmentation-models-pytorch Unet", lambda: smp.Unet(encoder_weights=None, classes=5),
               torch.rand(1, 3, 256, 256), t.SegmentationRegion(1), "decoder")
    if hf is not None:
        yield ("transformers Segformer (b0)", lambda: hf.SegformerForSemanticSegmentation(hf.SegformerConfig(
            num_labels=5)), torch.rand(1, 3, 256, 256), t.SegmentationRegion(1), "decode_head.activation")
        yield ("transformers DETR (ResNet-50)", lambda: hf.DetrForObjectDetection(hf.DetrConfig(
            use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=hf.ResNetConfig(
                out_features=["stage4"]))), torch.rand(1, 3, 320, 320),
            lambda logits: logits[:, 0, :-1].max(dim=1).values, "model.encoder.layers.5:input")
        yield ("transformers VideoMAE (small, 16 x 112 px)", lambda: hf.VideoMAEForVideoClassification(
            hf.VideoMAEConfig(image_size=112, hidden_size=384, num_attention_heads=6, intermediate_size=1536,
                              num_labels=5)), torch.rand(1, 16, 3, 112, 112), None, "videomae.encoder.layer.11")
        yield ("transformers Wav2Vec2 (base, 1 s)", lambda: hf.Wav2Vec2ForSequenceClassification(
            hf.Wav2Vec2Config(num_labels=5)), torch.randn(1, 16000), None, "projector")


def check_family(model: Any, x: Any, target: Any, layer: str) -> tuple[bool, str, float, float]:
    """``(right, what happened, forward seconds, Grad-CAM seconds)``."""
    import torch

    import camkit
    from camkit.families import adapt_model
    from camkit.locate import input_layout_for

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = camkit.explain(model, x, "gradcam", targets=target)
        except Exception as exc:  # reported, counted as wrong: this is a survey
            return False, f"{type(exc).__name__}: {str(exc)[:90]}", 0.0, 0.0
    primary = x[0] if isinstance(x, tuple) else x
    letters = input_layout_for(adapt_model(model), primary).letters
    sites = tuple(size for letter, size in zip(letters, primary.shape) if letter not in "NC")
    maps = result.maps
    problems = [f"layer {result.layer} (expected {layer})"] if result.layer != layer else []
    problems += [f"map {tuple(maps.shape[1:])} for input sites {sites}"] if tuple(maps.shape[1:]) != sites else []
    problems += ["constant map"] if float(maps.amax() - maps.amin()) < 1e-6 else []
    problems += [f"warned: {str(w.message)[:60]}" for w in caught]
    network = adapt_model(model)
    run = (lambda: network(*x)) if isinstance(x, tuple) else (lambda: network(x))
    training = network.training
    network.eval()  # the plain forward in the mode camkit explains in (a YOLO object is built in training mode)

    # interleaved, the fastest of five each: other processes on the machine slow single runs, not the minimum
    forward, grad = [], []
    with camkit.Explainer(model, "gradcam") as explainer, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer(x, target)
        for _ in range(5):
            start = time.perf_counter()
            with torch.no_grad():
                run()
            forward.append(time.perf_counter() - start)
            start = time.perf_counter()
            explainer(x, target)
            grad.append(time.perf_counter() - start)
    network.train(training)
    return not problems, "; ".join(problems) or f"at {result.layer}", min(forward), min(grad)


def survey_families(out: str) -> None:
    import torch
    from tqdm import tqdm

    from camkit.io import write_text_atomic

    torch.manual_seed(0)
    rows, right, start = [], 0, time.perf_counter()
    cases = list(family_cases())
    for name, build, x, target, layer in tqdm(cases, desc="families", unit="model"):
        try:
            model = build()
        except Exception as exc:  # listed, not counted
            rows.append(f"| {name} | - | does not build: {type(exc).__name__}: {str(exc)[:60]} | | |")
            continue
        if hasattr(model, "eval"):
            model.eval()
        ok, notes, forward, grad = check_family(model, x, target, layer)
        right += ok
        rows.append(f"| {name} | {'right' if ok else 'WRONG'} | {notes} | {1000 * forward:.0f} ms | "
                    f"{grad / max(forward, 1e-9):.2f}x |")
        print(rows[-1], flush=True)
    lines = [f"{right} / {len(cases)} model families right with no glue ({time.perf_counter() - start:.0f} s on "
             f"the CPU, random weights)", "", "| model | result | what camkit did | forward | Grad-CAM / forward |",
             "|---|---|---|---|---|", *rows]
    write_text_atomic(out, "\n".join(lines) + "\n")
    print(lines[0])


def main() -> None:
    import torch
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/zoo.md")
    parser.add_argument("--zoos", default="torchvision,timm,transformers")
    args = parser.parse_args()
    if args.zoos == "families":
        survey_families(args.out)
        return
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
