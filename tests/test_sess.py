"""SESS (camkit.sess.explain_sess) against a deliberately plain per-patch loop, batching, the single-scale
identity, the window rule, the option checks, and the model left as found."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from camkit import explain, explain_sess
from camkit.sess import SlidingWindows, window_starts


def strided_net(classes: int = 5) -> nn.Module:
    """Two convs (the second with stride 2, so patch maps are upsampled), GAP, linear."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)).eval()


def minmax(x: torch.Tensor) -> torch.Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.zeros_like(x)


def loop_sess(net, image, scales, window, stride, pre_filter=0.0, theta=0.0, pool="mean", softmax_scores=True,
              method="gradcam", layer="3"):
    """SESS of one image (1, C, H, W) for its predicted class, one patch at a time, unnormalised."""
    height, width = image.shape[-2:]
    with torch.no_grad():
        cls = int(net(image).argmax())
    patches = []  # (patch, scaled size, top, left)
    for scale in scales:
        size = (int(scale * height / width), scale) if width <= height else (scale, int(scale * width / height))
        scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        for top in window_starts(size[0], window, stride):
            for left in window_starts(size[1], window, stride):
                patches.append((scaled[:, :, top:top + window, left:left + window], size, top, left))
    scores = []
    for patch, *_ in patches:
        with torch.no_grad():
            logits = net(patch)[0]
        scores.append(max(float(logits.softmax(0)[cls] if softmax_scores else logits[cls]), 0.0))
    kept = sorted(range(len(patches)), key=lambda i: scores[i])[int(len(patches) * pre_filter):]  # stable sort
    best = max(scores[i] for i in kept)
    resized = []
    for i in kept:
        patch, size, top, left = patches[i]
        patch_map = minmax(explain(net, patch, method, layer=layer, targets=[cls], normalize=False).maps[0])
        canvas = torch.zeros(size)
        canvas[top:top + window, left:left + window] = patch_map * (scores[i] / best if best > 0 else 1.0)
        resized.append(F.interpolate(canvas[None, None], size=(height, width), mode="bilinear",
                                     align_corners=False)[0, 0])
    stacked = torch.stack(resized)
    if pool == "max":
        return stacked.amax(0)
    counted = stacked > theta
    return (stacked * counted).sum(0) / counted.sum(0).clamp_min(1)


def numpy_gaussian_blur(image: np.ndarray, size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """A 2-D Gaussian kernel applied directly, borders mirrored without the edge pixel (numpy's reflect)."""
    r = size // 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    kernel = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image.astype(np.float64), r, mode="reflect")
    out = np.zeros(image.shape)
    for dy in range(size):
        for dx in range(size):
            out += kernel[dy, dx] * padded[dy:dy + image.shape[0], dx:dx + image.shape[1]]
    return out


CASES = {  # non-square images, a window below the shorter side (downscaled patches), border windows
    "mean, pre-filter, theta": dict(shape=(2, 3, 20, 28), window=12, stride=8, num_scales=3, pre_filter=0.3, theta=0.2),
    "max": dict(shape=(2, 3, 24, 24), num_scales=3, pool="max"),
    "raw scores, explicit scales": dict(shape=(1, 3, 18, 14), window=10, stride=6, scales=(10, 13, 17),
                                        softmax_scores=False, theta=0.1),
}


@pytest.mark.parametrize("case", CASES)
def test_sess_equals_a_patch_by_patch_loop(case):
    options = dict(CASES[case])
    x = torch.randn(*options.pop("shape"))
    net = strided_net()
    got = explain_sess(net, x, "gradcam", layer="3", smooth=False, batch_size=7, **options)
    height, width = x.shape[-2:]
    window = options.pop("window", min(height, width))
    stride = options.pop("stride", window)
    scales = options.pop("scales", None) or [window + round(window * 2 / 7) * i for i in range(options["num_scales"])]
    options.pop("num_scales", None)
    for i in range(len(x)):
        expected = minmax(loop_sess(net, x[i:i + 1], scales, window, stride, **options))
        torch.testing.assert_close(got.maps[i], expected, atol=1e-5, rtol=1e-5)
    assert got.method == "gradcam+sess" and got.map_letters == "NHW"
    assert torch.equal(got.targets, net(x).argmax(1)) and got.logits.shape == (len(x), 5)


def test_smoothing_is_an_11_by_11_gaussian_of_sigma_5():
    net = strided_net()
    x = torch.randn(1, 3, 16, 22)
    got = explain_sess(net, x, "gradcam", layer="3", num_scales=3)
    fused = loop_sess(net, x, [16, 21, 26], 16, 16).numpy()
    blurred = numpy_gaussian_blur(fused)
    torch.testing.assert_close(got.maps[0], minmax(torch.from_numpy(blurred).float()), atol=1e-5, rtol=1e-5)
    # pytorch-grad-cam's blur, on the same fused map
    np.testing.assert_allclose(blurred, cv2.GaussianBlur(fused, (11, 11), 5.0, 0), atol=1e-6)


def test_images_explained_together_or_alone_and_in_any_chunk_size():
    net = strided_net()
    x = torch.randn(2, 3, 20, 26)
    options = dict(layer="3", num_scales=3, window=14, stride=9, pre_filter=0.25, theta=0.05)
    both = explain_sess(net, x, "gradcam", **options)
    for i in range(2):
        alone = explain_sess(net, x[i:i + 1], "gradcam", **options)
        torch.testing.assert_close(both.maps[i:i + 1], alone.maps, atol=1e-5, rtol=1e-5)
    one_at_a_time = explain_sess(net, x, "gradcam", batch_size=1, **options)
    all_at_once = explain_sess(net, x, "gradcam", batch_size=64, **options)
    torch.testing.assert_close(one_at_a_time.maps, all_at_once.maps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.maps, all_at_once.maps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "scorecam"])
def test_one_scale_one_window_is_the_base_method(method):
    net = strided_net()
    x = torch.randn(3, 3, 16, 16)
    got = explain_sess(net, x, method, layer="3", num_scales=1, smooth=False)
    plain = explain(net, x, method, layer="3")
    torch.testing.assert_close(got.maps, plain.maps, atol=1e-6, rtol=1e-6)
    assert torch.equal(got.targets, plain.targets) and got.method == f"{plain.method}+sess"
    torch.testing.assert_close(got.target_scores, plain.target_scores)


def test_window_starts_shift_the_border_window_back_inside():
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(8, 4, 4) == [0, 4]  # fits exactly: nothing shifted
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(7, 7, 3) == [0]
    assert window_starts(10, 2, 5) == [0, 5]  # stride > window: pytorch-grad-cam's rule leaves the gaps
    # a 20 x 28 image, window 12, stride 8: scale 12 -> 12 x 16, scale 15 -> 15 x 21
    windows = SlidingWindows(20, 28, 12, 8, [12, 15], "cpu", torch.float32)
    assert windows.sizes == [(12, 16), (15, 21)] and windows.firsts == [0, 2] and len(windows) == 8
    assert list(zip(windows.top.tolist(), windows.left.tolist())) == [(0, 0), (0, 4),
                                                                     (0, 0), (0, 8), (0, 9), (3, 0), (3, 8), (3, 9)]
    # portrait: the width is the shorter side
    assert SlidingWindows(28, 20, 12, 8, [15], "cpu", torch.float32).sizes == [(21, 15)]


def test_k_classes_per_image_equal_one_class_at_a_time():
    net = strided_net()
    x = torch.randn(2, 3, 16, 20)
    options = dict(layer="3", num_scales=2, window=12, stride=6, pre_filter=0.3, theta=0.1)
    top = explain_sess(net, x, "gradcam", topk=2, **options)
    assert top.maps.shape == (2, 2, 16, 20) and top.map_letters == "NKHW" and top.targets.shape == (2, 2)
    assert torch.equal(top.targets, net(x).topk(2).indices)
    for j in range(2):
        one = explain_sess(net, x, "gradcam", targets=top.targets[:, j], **options)
        torch.testing.assert_close(top.maps[:, j], one.maps, atol=1e-5, rtol=1e-5)
    every = explain_sess(net, x, "gradcam", targets="all", num_scales=1)
    assert every.maps.shape == (2, 5, 16, 20)


BAD = [
    (dict(pool="median"), "pool"),
    (dict(pre_filter=1.0), "pre_filter"),
    (dict(pre_filter=-0.1), "pre_filter"),
    (dict(theta=-0.1), "theta"),
    (dict(theta=1.0), "theta"),
    (dict(num_scales=0), "num_scales"),
    (dict(scale_step=0.0), "scale_step"),
    (dict(window=0), "window"),
    (dict(window=2.5), "window"),
    (dict(window=17), "window"),
    (dict(stride=0), "stride"),
    (dict(window=12, scales=(12, 10)), "scales"),
    (dict(scales=()), "scales"),
    (dict(batch_size=0), "batch_size"),
    (dict(normalize=False), "normalize"),
    (dict(eval_mode=False), "eval_mode"),
    (dict(upsample=False), "upsample"),
    (dict(output_size={"H": 8, "W": 8}), "output_size"),
    (dict(input_layout="NHWC"), "input_layout"),
    (dict(targets=lambda out: out[:, 0]), "targets"),
    (dict(topk=9), "topk"),
    (dict(targets=7), "out of range"),
]


@pytest.mark.parametrize("options, named", BAD, ids=[named for _, named in BAD])
def test_bad_options_are_named(options, named):
    with pytest.raises(ValueError, match=named):
        explain_sess(strided_net(), torch.randn(1, 3, 16, 16), "gradcam", layer="3", **options)


@pytest.mark.parametrize("shape", [(1, 3, 16), (1, 3, 4, 16, 16)])
def test_only_images(shape):
    with pytest.raises(ValueError, match=r"SESS slides square windows over images.*\(N, C, H, W\)"):
        explain_sess(strided_net(), torch.randn(*shape), "gradcam")
    with pytest.raises(ValueError, match="no image"):
        explain_sess(strided_net(), torch.randn(0, 3, 16, 16), "gradcam")


def test_model_left_as_found():
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 4))
    net.train()
    net[3].eval()  # a submodule's own flag must come back too
    net[0].bias.requires_grad_(False)
    flags = [m.training for m in net.modules()]
    grads = [p.requires_grad for p in net.parameters()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 12, 12)
    original = x.clone()
    explain_sess(net, x, "gradcam", layer="2", num_scales=2, window=8, stride=4, pre_filter=0.5)
    assert [m.training for m in net.modules()] == flags
    assert [p.requires_grad for p in net.parameters()] == grads
    for module in net.modules():
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
        assert not any(hooks), module
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # BatchNorm statistics untouched
    assert torch.equal(x, original) and all(p.grad is None for p in net.parameters())


def test_progress_bar_over_chunks(capsys, monkeypatch):
    import tqdm

    updates = []
    update = tqdm.tqdm.update
    monkeypatch.setattr(tqdm.tqdm, "update", lambda bar, n=1: updates.append((bar.total, n)) or update(bar, n))
    net = strided_net()
    x = torch.randn(1, 3, 16, 16)
    options = dict(layer="3", num_scales=3, batch_size=2, pre_filter=0.5)
    quiet = explain_sess(net, x, "gradcam", **options)
    assert capsys.readouterr().err == ""
    shown = explain_sess(net, x, "gradcam", progress=True, **options)
    assert "SESS" in capsys.readouterr().err
    torch.testing.assert_close(quiet.maps, shown.maps)
    # 1 + 4 + 4 patches: 5 scoring chunks of 2, then 3 explaining chunks for the 5 patches kept; each run
    assert updates == [(8, 1)] * 16


@pytest.mark.parametrize("options", [dict(num_scales=4),
                                     dict(num_scales=3, window=12, stride=7, pre_filter=0.4, theta=0.2),
                                     dict(num_scales=3, pool="max", smooth=False, softmax_scores=False)])
def test_same_maps_as_pytorch_grad_cam(options):
    """pytorch-grad-cam (the bench extra) is not a test dependency: skipped without it."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    net = strided_net()
    x = torch.randn(2, 3, 20, 26)
    theirs_options = dict(num_scales=options["num_scales"], window_size=options.get("window"),
                          step_size=options.get("stride"), pre_filter_ratio=options.get("pre_filter", 0.0),
                          theta=options.get("theta", 0.0), pool=options.get("pool", "mean"),
                          smooth=options.get("smooth", True), use_softmax_scores=options.get("softmax_scores", True))
    with pgc.SESS(net, [net[3]], base_method=pgc.GradCAM, **theirs_options) as sess:
        theirs = torch.from_numpy(sess(x))
    ours = explain_sess(net, x, "gradcam", layer="3", **options).maps
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)  # they add 1e-7 to min-max denominators


@pytest.mark.gpu
def test_cpu_and_gpu_agree():
    net = strided_net()
    x = torch.randn(2, 3, 20, 24)
    options = dict(layer="3", num_scales=3, window=14, stride=8, pre_filter=0.2, theta=0.1)
    cpu = explain_sess(net, x, "gradcam", **options)
    gpu = explain_sess(net.cuda(), x.cuda(), "gradcam", **options)
    assert gpu.maps.is_cuda
    torch.testing.assert_close(gpu.maps.cpu(), cpu.maps, atol=1e-4, rtol=1e-4)
