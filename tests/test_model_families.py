"""The model families users bring most (issue 22), each with the call a user writes first, random weights,
tiny configurations: Ultralytics YOLO (detection, segmentation, classification, the YOLO object as it is,
the CLI), dense-prediction heads (segmentation-models-pytorch, Segformer), two-tower CLIP, DETR, video
transformers (MViT, VideoMAE), waveforms (Wav2Vec2), MONAI's 3-D DenseNet (parity with MONAI's Grad-CAM),
S3D's convolution classifier and class-token heads (issue 25, items 5 and 6). Each skips without its
package."""

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn

import camkit
from camkit.adapters import ModelInputs
from camkit.methods import HeadMismatchWarning
from camkit.targets import DetectionBox, EmbeddingSimilarity, SegmentationRegion

RAW = {"relu": False, "normalize": False, "upsample": False}


@pytest.fixture(autouse=True, scope="module")
def _pil_open_as_found():
    """Importing ultralytics patches PIL.Image.open for every later test; undo it as camkit's loader does."""
    yield
    from camkit_plugins.image.ultralytics_support import restore_pil_open

    restore_pil_open()


def assert_real_map(result, shape):
    maps = result.maps
    assert tuple(maps.shape) == shape and bool(maps.isfinite().all())
    assert float(maps.amax() - maps.amin()) > 1e-3, "constant map"


def feature_of(model, layer, run):
    """What ``layer`` (a module name, or ``name:input``) holds during ``run()``, read with a plain hook."""
    name, _, kind = layer.partition(":")
    module = dict(model.named_modules())[name]
    seen = {}

    def keep(value):
        seen.setdefault("x", value)  # returns None: the hook changes nothing

    hook = module.register_forward_pre_hook(lambda m, a: keep(a[0])) if kind == "input" else \
        module.register_forward_hook(lambda m, a, o: keep(o))
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    return seen["x"]


def cam_bias_spread(model, x, **options):
    """Spread over samples of logit - mean(CAM map), per class: 0 where the head is GAP + linear."""
    result = camkit.explain(model, x, "cam", targets="all", **RAW, **options)
    bias = result.logits.float() - result.maps.float().flatten(2).mean(dim=2)
    return float((bias - bias[:1]).abs().amax() / result.logits.abs().amax()), result


# ---------------------------------------------------------------- Ultralytics YOLO


@pytest.fixture(scope="module")
def yolo():
    ultralytics = pytest.importorskip("ultralytics")
    torch.manual_seed(0)
    model = ultralytics.YOLO("yolov8n.yaml")
    model.overrides["conf"] = 0.0  # random weights score ~2e-4: keep every detection NMS leaves
    return model


def test_yolo_object_as_it_is_explains_its_best_detection(yolo):
    x = torch.rand(2, 3, 64, 64)
    training = yolo.model.training
    result = camkit.explain(yolo, x, "gradcam")
    assert result.layer == "model.model.15"  # the detection head's first input, on every detection's path
    assert_real_map(result, (2, 64, 64))
    assert yolo.model.training == training  # modes left as found
    detections = result.logits
    assert len(detections) == 2 and {"boxes", "labels", "scores", "anchors"} <= detections[0].keys()
    assert not detections[0]["scores"].requires_grad  # the result holds no autograd graph
    for sample, found in enumerate(detections):  # the default target: each sample's best detection
        assert float(result.target_scores[sample]) == pytest.approx(float(found["scores"].detach().max()))


def test_yolo_detection_box_against_hand_computed_grad_cam(yolo):
    from torchvision.ops import box_iou

    x = torch.rand(1, 3, 64, 64)
    found = camkit.explain(yolo, x, "gradcam").logits[0]
    k = 3  # not the best detection: the target finds it by its box and label
    box, label = found["boxes"][k].detach(), int(found["labels"][k])
    result = camkit.explain(yolo, x, "gradcam", targets=DetectionBox(box.tolist(), label=label), **RAW)
    # the match, by an explicit loop: the best-scoring detection of that label overlapping the box by IoU >= 0.5
    overlap = box_iou(box[None], found["boxes"].detach())[0]
    match = max((j for j in range(len(overlap)) if overlap[j] >= 0.5 and int(found["labels"][j]) == label),
                key=lambda j: float(found["scores"][j]))
    anchor = int(found["anchors"][match])
    # oracle: that anchor's class score in the raw (N, 4 + classes, anchors) output, differentiated by hand
    network = yolo.model.eval()
    features = {}
    hook = network.model[15].register_forward_hook(lambda module, args, output: features.setdefault("f", output))
    try:
        score = network(x)[0][0, 4 + label, anchor]
    finally:
        hook.remove()
    assert float(result.target_scores[0]) == pytest.approx(float(score), rel=1e-6)
    (grad,) = torch.autograd.grad(score, features["f"])
    expected = (grad.mean(dim=(2, 3), keepdim=True) * features["f"]).sum(dim=1)
    torch.testing.assert_close(result.maps, expected.detach(), atol=1e-6, rtol=1e-4)


def test_yolo_scores_read_from_their_strides_class_branch_only(yolo):
    """Every detection's score equals its anchor's class score in the decoded output, and a score's gradient
    runs back through the class branch of its own stride only: no box branch, no other stride (they get no
    gradient tensor at all, so autograd runs nothing there)."""
    x = torch.rand(1, 3, 64, 64)
    network = yolo.model.eval()
    with torch.no_grad():
        decoded = network(x)[0][0]
    head = network.model[-1]
    reached = set()

    def watch(name):
        def hook(module, args, output):
            if output.requires_grad:
                output.register_hook(lambda grad: reached.add(name) if grad is not None else None)
        return hook

    hooks = [branch.register_forward_hook(watch(f"{kind}{i}"))
             for kind in ("cv2", "cv3") for i, branch in enumerate(getattr(head, kind))]
    try:
        result = camkit.explain(yolo, x, "gradcam", topk=4)
    finally:
        for hook in hooks:
            hook.remove()
    found = result.logits[0]
    torch.testing.assert_close(found["scores"], decoded[4 + found["labels"], found["anchors"]], rtol=1e-6, atol=0)
    sizes = [(64 // int(s)) ** 2 for s in head.stride]  # anchors per stride, finest first
    strides = {int(torch.bucketize(a, torch.tensor(sizes).cumsum(0), right=True)) for a in found["anchors"][:4]}
    assert reached == {f"cv3{s}" for s in strides}


def test_every_method_on_a_detector_gives_a_map_or_one_clear_error(yolo):
    x = torch.rand(1, 3, 64, 64)
    working, refused = set(), {}
    for method in camkit.available_methods():
        try:
            result = camkit.explain(yolo, x, method)
        except ValueError as error:  # a class-id method on detections: said plainly
            refused[method] = str(error)
            continue
        assert result.maps.shape == (1, 64, 64) and bool(torch.isfinite(result.maps).all()), method
        working.add(method)
    assert {"gradcam", "gradcam++", "eigencam", "fullgrad", "randomcam", "layercam", "hirescam"} <= working
    assert all("target" in message or "ReLU" in message or "logits" in message for message in refused.values())


def test_test_time_augmentation_on_a_detector_is_refused(yolo):
    with pytest.raises(ValueError, match="test-time augmentation .* on a detector"):
        camkit.explain(yolo, torch.rand(1, 3, 64, 64), "gradcam", augment={"flips": "W"})


def test_yolo_eigencam_network_and_several_detections(yolo):
    x = torch.rand(2, 3, 64, 64)
    assert_real_map(camkit.explain(yolo, x, "eigencam"), (2, 64, 64))
    result = camkit.explain(yolo, x, "gradcam", topk=3)  # one map per detection, in one forward
    assert result.maps.shape == (2, 3, 64, 64)
    scores = torch.stack([d["scores"].detach().sort(descending=True).values[:3] for d in result.logits])
    torch.testing.assert_close(result.target_scores, scores)
    with pytest.warns(camkit.ConstantMapWarning):  # the bare network: its own names, ultralytics' 0.25 threshold
        bare = camkit.explain(yolo.model, x, "gradcam")
    assert bare.layer == "model.15" and [len(d["scores"]) for d in bare.logits] == [0, 0]
    assert bool((bare.target_scores == 0).all()) and bool((bare.maps == 0).all())
    with pytest.raises(ValueError, match="multiples of its stride 32"):
        camkit.explain(yolo, torch.rand(1, 3, 50, 64), "gradcam")
    training = yolo.model.training
    try:
        with pytest.raises(ValueError, match="detections in eval mode only"):
            camkit.explain(yolo.model.train(), x, "gradcam", eval_mode=False)
    finally:
        yolo.model.train(training)


def test_yolo_segmentation_gives_detections_with_masks():
    ultralytics = pytest.importorskip("ultralytics")
    torch.manual_seed(0)
    model = ultralytics.YOLO("yolov8n-seg.yaml")
    model.overrides["conf"] = 0.0
    result = camkit.explain(model, torch.rand(2, 3, 64, 64), "gradcam")
    assert_real_map(result, (2, 64, 64))
    masks = result.logits[0]["masks"]
    assert masks.shape == (len(result.logits[0]["scores"]), 1, 64, 64) and 0 <= float(masks.min()) <= 1


def test_yolo_classification_scores_logits_and_cam_identity_holds():
    ultralytics = pytest.importorskip("ultralytics")
    torch.manual_seed(0)
    model = ultralytics.YOLO("yolov8n-cls.yaml")
    x = torch.rand(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadMismatchWarning)
        spread, result = cam_bias_spread(model, x)
    assert spread < 1e-5 and result.layer == "model.model.9.conv"
    network = model.model.eval()
    with torch.no_grad():
        probabilities, logits = network(x)
    torch.testing.assert_close(result.logits, logits)  # the logits, not the probabilities
    torch.testing.assert_close(camkit.explain(model, x, "gradcam").scores, probabilities.max(dim=1).values)


def test_ultralytics_is_imported_only_for_an_ultralytics_model():
    code = ("import sys, torch, camkit\n"
            "net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),"
            " torch.nn.Linear(4, 2))\n"
            "camkit.explain(net, torch.rand(1, 3, 8, 8), 'gradcam')\n"
            "print('ultralytics' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_explains_each_yolo_detection_on_real_photos(yolo, tmp_path):
    from camkit.cli import main
    from camkit_plugins.image.pretrained import demo_photos

    try:
        photos = demo_photos(tmp_path / "photos")[:2]
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"no demo photos: {exc}")
    checkpoint = tmp_path / "tiny.pt"
    yolo.save(str(checkpoint))
    out = tmp_path / "out"
    status = main(["explain", "--model", f"ultralytics:{checkpoint}", *map(str, photos), "--out", str(out),
                   "--method", "gradcam", "--min-score", "0", "--max-detections", "2", "--size", "128",
                   "--workers", "0"])
    assert status == 0
    written = sorted(out.glob("*_det*.jpg"))
    assert len(written) == 2 * len(photos)  # one overlay per detection
    assert {p.name.split("_det")[0] for p in written} == {p.stem for p in photos}


def test_cli_explains_a_torchvision_detector_offline_one_overlay_per_detection(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from camkit.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))  # any download attempt would fail here
    Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype("uint8")).save(tmp_path / "a.jpg")
    (tmp_path / "build.py").write_text(
        "import torch, torchvision\n"
        "def build():\n"
        "    torch.manual_seed(0)  # random weights; a threshold of 0 keeps what NMS leaves\n"
        "    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(\n"
        "        weights=None, weights_backbone=None, box_score_thresh=0.0)\n")
    (tmp_path / "names.txt").write_text("\n".join(f"thing{i}" for i in range(91)))
    out = tmp_path / "out"
    status = main(["explain", "--model", f"{tmp_path / 'build.py'}:build", str(tmp_path / "a.jpg"), "--out",
                   str(out), "--max-detections", "2", "--size", "160", "--labels", str(tmp_path / "names.txt"),
                   "--workers", "0"])  # no --method: gradcam for a detector
    assert status == 0
    written = sorted(out.glob("a_det*.jpg"))
    assert len(written) == 2 and all("_thing" in p.name for p in written)
    assert Image.open(written[0]).size == (128, 96)  # at the photo's size
    # torchvision by name with --weights none: no backbone weights fetched, and eval image says what it scores
    with pytest.raises(ValueError, match="--flip, --resume: not for a detector"):  # never silently ignored
        main(["explain", "--model", f"{tmp_path / 'build.py'}:build", str(tmp_path / "a.jpg"), "--out",
              str(out), "--flip", "--resume"])
    with pytest.raises(ValueError, match="is a detector: camkit eval image scores classifiers"):
        main(["eval", "image", "--model", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", "none",
              str(tmp_path / "a.jpg"), "--out", str(tmp_path / "eval")])


def test_draw_detection_outlines_the_box_and_writes_the_label():
    import numpy as np

    from camkit_plugins.image.detections import BOX_COLOUR, detection_file_name, draw_detection

    picture = np.zeros((100, 120, 3), dtype=np.uint8)
    drawn = draw_detection(picture, [20, 40, 80, 90], "dog 50.00%")
    assert tuple(drawn[60, 20]) == BOX_COLOUR and tuple(drawn[90, 50]) == BOX_COLOUR  # left and bottom edges
    assert tuple(drawn[60, 50]) == (0, 0, 0)  # inside untouched
    assert (drawn[20:40, 20:80] > 0).any()  # the label above the box
    assert detection_file_name("cat", 1, "dog", 0.5) == "cat_det1_dog_50.00pct.jpg"


# ---------------------------------------------------------------- dense prediction, two towers, DETR


def test_unet_features_are_what_its_segmentation_head_reads():
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=3).eval()
    x = torch.rand(1, 3, 64, 64)
    result = camkit.explain(model, x, "gradcam", targets=SegmentationRegion(1))
    assert result.layer == "decoder"
    assert_real_map(result, (1, 64, 64))
    read = feature_of(model, "segmentation_head:input", lambda: model(x))
    torch.testing.assert_close(feature_of(model, "decoder", lambda: model(x)), read)


def test_segformer_features_are_its_classifier_input():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          num_attention_heads=[1, 1], decoder_hidden_size=16, num_labels=3,
                                          patch_sizes=[7, 3], strides=[4, 2])
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    x = torch.rand(1, 3, 64, 64)
    result = camkit.explain(model, x, "gradcam", targets=SegmentationRegion(1))
    assert result.layer == "decode_head.activation"
    assert_real_map(result, (1, 64, 64))
    torch.testing.assert_close(feature_of(model, "decode_head.activation", lambda: model(x)),
                               feature_of(model, "decode_head.classifier:input", lambda: model(x)))


def tiny_clip():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    return open_clip.CLIP(16, {"layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
                          {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 2}).eval()


def test_two_tower_clip_candidates_lie_on_the_image_path():
    model = tiny_clip()
    image, text = torch.rand(1, 3, 32, 32), torch.randint(0, 50, (1, 8))
    reference = torch.randn(16)
    result = camkit.explain(model, (image, text), "gradcam", targets=EmbeddingSimilarity(reference))
    assert result.layer == "visual.transformer.resblocks.1:input"
    assert_real_map(result, (1, 32, 32))
    tower = camkit.explain(model.visual, image, "gradcam", targets=EmbeddingSimilarity(reference))
    torch.testing.assert_close(result.maps, tower.maps)  # the same map as the image tower alone
    with pytest.raises(ValueError, match="no layer lies on the path from the primary input"):
        camkit.explain(model, (image, text), "gradcam", targets=EmbeddingSimilarity(reference), primary_input=1)


def test_detr_queries_and_box_mlp_are_not_patch_tokens():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    backbone = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                         out_features=["stage4"])
    config = transformers.DetrConfig(use_timm_backbone=False, backbone_config=backbone, d_model=16, encoder_layers=2,
                                     decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                                     encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=100, num_labels=5,
                                     use_pretrained_backbone=False)
    model = transformers.DetrForObjectDetection(config).eval()
    x = torch.rand(1, 3, 320, 320)  # 10x10 feature tokens: as many as the 100 object queries
    source = camkit.locate_features(model, ModelInputs.of(x))
    assert str(source.point) == "model.encoder.layers.1:input" and "10x10 patch tokens" in source.reason
    result = camkit.explain(model, x, "gradcam", targets=lambda logits: logits[:, 0, :-1].max(dim=1).values)
    assert_real_map(result, (1, 320, 320))


# ---------------------------------------------------------------- video, waveforms, 3-D medical


def tiny_mvit(**options):
    from torchvision.models.video.mvit import MSBlockConfig, MViT

    k = [3, 3, 3]
    blocks = [MSBlockConfig(1, 8, 8, k, k, [1, 1, 1], [1, 2, 2]), MSBlockConfig(1, 8, 16, k, k, [1, 2, 2], [1, 1, 1]),
              MSBlockConfig(1, 16, 16, k, k, [1, 1, 1], [1, 1, 1])]
    torch.manual_seed(0)
    return MViT((32, 32), 4, blocks, num_classes=5, **options).eval()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_mvit_tokens_fold_into_a_3d_grid_after_the_class_token(version):
    options = {"v1": (False, True, False, False), "v2": (True, False, True, True)}[version]
    model = tiny_mvit(**dict(zip(("residual_pool", "residual_with_cls_embed", "rel_pos_embed", "proj_after_attn"),
                                 options)))
    x = torch.rand(2, 3, 4, 32, 32)
    result = camkit.explain(model, x, "gradcam")
    assert result.layer == "blocks.2:input" and result.layout == "NTHWC"
    assert_real_map(result, (2, 4, 32, 32))
    tokens = feature_of(model, "blocks.2:input", lambda: model(x))  # (N, 1 + 2*4*4, C), frame-major
    raw = camkit.explain(model, x, "gradcam", **RAW)
    assert tuple(raw.maps.shape) == (2, 2, 4, 4) and tokens.shape[1] == 1 + 2 * 4 * 4
    named = camkit.explain(model, x, "gradcam", layer="blocks.2:input", **RAW)  # an explicit layer folds the same
    assert named.layout == "NTHWC"
    torch.testing.assert_close(named.maps, raw.maps)
    with pytest.raises(ValueError, match="CAM does not apply.*class token"):
        camkit.explain(model, x, "cam")


def test_videomae_takes_frames_first_clips():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=16,
                                         num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=5)
    model = transformers.VideoMAEForVideoClassification(config).eval()
    x = torch.rand(1, 4, 3, 32, 32)  # (N, T, C, H, W)
    result = camkit.explain(model, x, "gradcam")
    assert result.layout == "NTHWC"
    assert_real_map(result, (1, 4, 32, 32))


def test_wav2vec2_waveforms_without_a_channel_axis():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
                                         conv_kernel=(10, 3), num_feat_extract_layers=2, num_conv_pos_embeddings=4,
                                         num_conv_pos_embedding_groups=2, num_labels=4, classifier_proj_size=8)
    model = transformers.Wav2Vec2ForSequenceClassification(config).eval()
    x = torch.randn(2, 1600)  # (N, L): raw audio
    assert_real_map(camkit.explain(model, x, "gradcam"), (2, 1600))
    spread, result = cam_bias_spread(model, x)  # mean over time + Linear: CAM's identity holds
    assert spread < 1e-5 and result.layer == "projector" and result.layout == "NLC"


def test_monai_densenet_grad_cam_equals_monais():
    monai = pytest.importorskip("monai")
    torch.manual_seed(0)
    model = monai.networks.nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2, init_features=8,
                                            growth_rate=4, block_config=(1, 1, 1, 1)).eval()
    x = torch.randn(2, 1, 64, 64, 64)  # 2x2x2 feature sites (at 32 voxels a single one: every map constant)
    ours = camkit.explain(model, x, "gradcam", targets=1)
    assert_real_map(ours, (2, 64, 64, 64))
    assert ours.layer == "class_layers.relu"
    theirs = monai.visualize.GradCAM(nn_module=model, target_layers="class_layers.relu")(x, class_idx=1)
    torch.testing.assert_close(ours.maps, 1 - theirs[:, 0], atol=1e-5, rtol=0)  # MONAI's normaliser flips maps


# ---------------------------------------------------------------- heads CAM must not trust (issue 25)


def test_class_token_head_refuses_cam_instead_of_a_zero_map():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5).eval()  # the head is zero-initialised: CAM's maps were all zeros
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"CAM does not apply: the head of VisionTransformer reads its class token"):
        camkit.explain(model, x, "cam")
    nn.init.normal_(model.heads.head.weight)
    assert_real_map(camkit.explain(model, x, "gradcam"), (2, 32, 32))


class MiniS3D(nn.Module):
    """S3D's head: features -> AvgPool3d window -> Dropout -> 1x1x1 Conv3d to the classes -> mean over (T, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU())
        self.avgpool = nn.AvgPool3d(kernel_size=(4, 8, 8), stride=1)  # the whole clip, as S3D's at 16 x 224 px
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Conv3d(8, 5, kernel_size=1))

    def forward(self, x):
        return torch.mean(self.classifier(self.avgpool(self.features(x))), dim=(2, 3, 4))


def test_a_pointwise_conv_to_the_classes_before_pooling_is_the_classifier():
    torch.manual_seed(0)
    model = MiniS3D().eval()
    x = torch.rand(2, 3, 4, 8, 8)
    source = camkit.locate_features(model, ModelInputs.of(x))
    assert str(source.point) == "features" and "'classifier.1'" in source.reason
    torch.testing.assert_close(source.classifier, model.classifier[1].weight.flatten(1))
    assert_real_map(camkit.explain(model, x, "gradcam"), (2, 4, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadMismatchWarning)
        spread, result = cam_bias_spread(model, x)  # the window averages every site: CAM's identity holds
    assert spread < 1e-5 and result.maps.shape == (2, 5, 4, 8, 8)


@pytest.mark.slow
def test_torchvision_s3d_grad_cam_is_not_constant():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.video.s3d(num_classes=4).eval()
    x = torch.rand(1, 3, 16, 224, 224)  # the smallest clip S3D's (2, 7, 7) pooling window takes
    result = camkit.explain(model, x, "gradcam")
    assert result.layer == "features"
    assert_real_map(result, (1, 16, 224, 224))


def test_nested_tuple_outputs_score_their_first_tensor():
    class Nested(nn.Module):  # YOLO segmentation's raw form: ((predictions, prototypes), extras)
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            features = self.body(x)
            return (self.fc(features.mean(dim=(2, 3))), features), {"extra": features}

    torch.manual_seed(0)
    model = Nested().eval()
    x = torch.rand(3, 3, 8, 8)  # a batch of 3, the tuples hold 2: the batch is the first tensor's
    result = camkit.explain(model, x, "gradcam", targets=1)
    assert result.logits.shape == (3, 3) and result.targets.tolist() == [1, 1, 1]
    whole = camkit.explain(model, x, "gradcam", output=lambda out: out, targets=lambda out: out[0][0][:, 1])
    torch.testing.assert_close(whole.maps, result.maps)
    with pytest.raises(ValueError, match=r"expected \(N,\) or \(N, K\) with N = 3"):
        camkit.explain(model, x, "gradcam", output=lambda out: out, targets=lambda out: out[0][0][0, :2])


def test_cli_yolo_classifier_names_its_overlay_by_the_logits_probability(tmp_path):
    ultralytics = pytest.importorskip("ultralytics")
    from PIL import Image

    from camkit.cli import main
    from camkit_plugins.image.datasets import decode_image_file, prepare_image

    torch.manual_seed(0)
    model = ultralytics.YOLO("yolov8n-cls.yaml")
    with torch.no_grad():
        model.model.model[-1].linear.bias[7] += 8  # a confident prediction: softmax twice would flatten it
    model.save(str(tmp_path / "cls.pt"))
    Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(tmp_path / "pic.png")
    assert main(["explain", "--model", f"ultralytics:{tmp_path / 'cls.pt'}", str(tmp_path / "pic.png"), "--out",
                 str(tmp_path / "out"), "--method", "cam", "--size", "64", "--workers", "0"]) == 0
    with pytest.raises(ValueError, match="--max-detections and --min-score are for detectors"):
        main(["explain", "--model", f"ultralytics:{tmp_path / 'cls.pt'}", str(tmp_path / "pic.png"), "--out",
              str(tmp_path / "out2"), "--size", "64", "--max-detections", "2"])
    (overlay,) = (tmp_path / "out").glob("pic_pred_*.jpg")
    x = prepare_image(decode_image_file(tmp_path / "pic.png"), 64, (0, 0, 0), (1, 1, 1))[None]
    with torch.no_grad():
        probabilities, logits = model.model.eval()(x)
    expected = 100 * float(logits.softmax(dim=1).max())
    assert expected > 5  # far from the ~0.1% of a softmax applied to probabilities
    assert float(overlay.stem.split("_")[-1].removesuffix("pct")) == pytest.approx(expected, abs=0.1)


def test_ultralytics_spec_errors_name_the_problem(tmp_path):
    from camkit_plugins.image.model_spec import ModelSpecError, load_model_spec

    with pytest.raises(ModelSpecError, match="no such file .*camkit never downloads"):
        load_model_spec(f"ultralytics:{tmp_path / 'yolov8n.pt'}")
    with pytest.raises(ModelSpecError, match="name a local .pt checkpoint or a .yaml model file"):
        load_model_spec("ultralytics:yolov8n.onnx")


def test_loading_an_ultralytics_model_leaves_pil_image_open_as_found(tmp_path):
    """ultralytics patches PIL.Image.open on import (an unreadable file then raises ModuleNotFoundError for
    pi-heif, after trying to install it); camkit's loader undoes it, so broken pictures are still reported."""
    pytest.importorskip("ultralytics")
    import PIL.Image

    from camkit_plugins.image.model_spec import load_model_spec

    load_model_spec("ultralytics:yolov8n-cls.yaml")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    assert PIL.Image.open.__module__ == "PIL.Image"
    with pytest.raises(PIL.UnidentifiedImageError):
        PIL.Image.open(broken)
