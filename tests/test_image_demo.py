"""The demo's baselines and scoring (the full demo is `make demo`; it trains for minutes)."""

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
