"""Boxes from maps (the CAM paper's protocol and the percentile rule) and IoU, on maps with known components."""

import numpy as np
import pytest
import torch

from camkit_plugins.image.boxes import box_iou, boxes_from_maps, threshold_maps


def _two_blobs() -> np.ndarray:
    """A strong 3x4 blob (rows 2..4, cols 1..4) and a weaker but larger 5x5 blob (rows 10..14, cols 10..14)."""
    maps = np.zeros((1, 16, 16), dtype=np.float32)
    maps[0, 2:5, 1:5] = 1.0
    maps[0, 10:15, 10:15] = 0.5
    return maps


def test_max_fraction_boxes_the_largest_component():
    boxes = boxes_from_maps(_two_blobs(), rule="max_fraction", value=0.2)
    assert boxes.dtype == torch.int64 and boxes.shape == (1, 4)
    assert boxes.tolist() == [[10, 10, 15, 15]]  # the 25-site blob beats the 12-site one


def test_all_components_box_every_kept_site():
    assert boxes_from_maps(_two_blobs(), value=0.2, components="all").tolist() == [[1, 2, 15, 15]]
    assert boxes_from_maps(_two_blobs(), value=0.6, components="all").tolist() == [[1, 2, 5, 5]]
    assert boxes_from_maps(np.zeros((1, 4, 4)), components="all").tolist() == [[0, 0, 0, 0]]
    with pytest.raises(ValueError, match="unknown components rule 'every'. Available: largest, all"):
        boxes_from_maps(_two_blobs(), components="every")


def test_threshold_above_the_weak_blob_keeps_the_strong_one():
    boxes = boxes_from_maps(_two_blobs(), rule="max_fraction", value=0.6)
    assert boxes.tolist() == [[1, 2, 5, 5]]


def test_percentile_keeps_the_top_fraction():
    maps = np.zeros((1, 10, 10), dtype=np.float32)
    maps[0, 0, :] = np.arange(10, 0, -1)  # a ramp along the first row, zeros elsewhere
    kept = threshold_maps(maps, rule="percentile", value=0.05)  # top 5 of 100 sites
    assert kept.sum() == 5 and kept[0, 0, :5].all()
    assert boxes_from_maps(maps, rule="percentile", value=0.05).tolist() == [[0, 0, 5, 1]]
    # the top 20% would reach into the zeros: only the 10 positive sites are kept, not all 90 tied zeros
    assert threshold_maps(maps, rule="percentile", value=0.2).sum() == 10
    assert boxes_from_maps(maps, rule="percentile", value=0.2).tolist() == [[0, 0, 10, 1]]
    assert boxes_from_maps(np.zeros((1, 10, 10)), rule="percentile", value=0.2).tolist() == [[0, 0, 0, 0]]


def test_diagonal_neighbours_are_one_component():
    maps = np.zeros((1, 8, 8), dtype=np.float32)
    for i in range(4):
        maps[0, 2 + i, 3 + i] = 1.0
    maps[0, 0, 0] = 1.0
    assert boxes_from_maps(maps).tolist() == [[3, 2, 7, 6]]


def test_torch_and_numpy_batches_agree_and_match_a_loop():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 12, 9)).astype(np.float32) ** 4
    batch = boxes_from_maps(torch.from_numpy(maps), value=0.3)
    loop = torch.cat([boxes_from_maps(maps[i:i + 1], value=0.3) for i in range(5)])
    assert torch.equal(batch, loop)
    assert torch.equal(batch, boxes_from_maps(maps, value=0.3))
    assert (batch[:, 2] > batch[:, 0]).all() and (batch[:, 3] > batch[:, 1]).all()


def test_all_zero_map_gives_the_empty_box():
    assert boxes_from_maps(np.zeros((2, 4, 4))).tolist() == [[0, 0, 0, 0]] * 2


def test_bad_input_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        boxes_from_maps(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="unknown box rule 'otsu'. Available: max_fraction, percentile"):
        boxes_from_maps(np.zeros((1, 4, 4)), rule="otsu")
    with pytest.raises(ValueError, match="NaN"):
        boxes_from_maps(np.full((1, 4, 4), np.nan))


def test_box_iou_oracle_values():
    a = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 4, 4], [0, 0, 0, 0]])
    b = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 12, 12], [0, 0, 0, 0]])
    iou = box_iou(a, b)
    assert iou.dtype == torch.float32 and iou.shape == (4,)
    assert torch.allclose(iou, torch.tensor([1.0, 50 / 150, 0.0, 0.0]))
    with pytest.raises(ValueError, match="same shape"):
        box_iou(a, b[:2])
