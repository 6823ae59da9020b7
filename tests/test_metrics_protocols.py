"""The WSOL / WSSS protocols (plugins/metrics/protocols.py) against their definitions on crafted maps:
hand-computed IoUs and hit curves, PxAP by hand and by scikit-learn, confusion matrices by explicit loops,
and batching invariance (two adds == one add, merged states == one pass)."""

import numpy as np
import pytest
import torch

import camkit
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch
from camkit_plugins.metrics.protocols import (
    BoxAccuracy,
    PixelAveragePrecision,
    SegmentationSeeds,
    box_hits,
    box_iou_matrix,
    map_boxes,
    pseudo_masks,
)

TAUS = np.arange(0, 1, 0.01)


def two_blobs(size=20):
    """Blob A (0.905, x 2..5, y 2..5: 16 sites) and the larger, weaker blob B (0.605, x 10..15, y 10..15)."""
    m = np.zeros((size, size))
    m[2:6, 2:6] = 0.905
    m[10:16, 10:16] = 0.605
    return m


# ---------------------------------------------------------------- boxes


def test_map_boxes_every_region_or_the_largest():
    m = two_blobs()
    assert sorted(map_boxes(m, 0.5).tolist()) == [[2, 2, 6, 6], [10, 10, 16, 16]]
    assert map_boxes(m, 0.5, multi_contour=False).tolist() == [[10, 10, 16, 16]]  # B has more sites
    assert map_boxes(m, 0.7).tolist() == [[2, 2, 6, 6]]
    assert map_boxes(m, 0.95).shape == (0, 4)
    # 8-connectivity: two diagonal neighbours are one region
    d = np.zeros((5, 5))
    d[1, 1] = d[2, 2] = 1.0
    assert map_boxes(d, 0.5).tolist() == [[1, 1, 3, 3]]
    # a ring touching the border with a dot in its hole: two regions
    ring = np.zeros((7, 7))
    ring[0:7, 0:7] = 1.0
    ring[1:6, 1:6] = 0.0
    ring[3, 3] = 1.0
    assert sorted(map_boxes(ring, 0.5).tolist()) == [[0, 0, 7, 7], [3, 3, 4, 4]]


def test_map_boxes_equal_the_8_connected_regions_of_scipy():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    for score_map in rng.random((3, 24, 24)) ** 2:
        for tau in (0.3, 0.6, 0.9):
            labels, count = ndimage.label(score_map > tau, structure=np.ones((3, 3)))
            expected = []
            for region in ndimage.find_objects(labels):
                expected.append([region[1].start, region[0].start, region[1].stop, region[0].stop])
            assert sorted(map_boxes(score_map, tau).tolist()) == sorted(expected)
            sizes = np.bincount(labels.ravel())[1:]
            largest = ndimage.find_objects(labels)[int(np.argmax(sizes))]
            assert map_boxes(score_map, tau, multi_contour=False).tolist() == [
                [largest[1].start, largest[0].start, largest[1].stop, largest[0].stop]]


def test_box_iou_by_hand_in_both_conventions():
    a, b = [[0, 0, 4, 4]], [[2, 2, 6, 6], [0, 0, 4, 4], [10, 10, 12, 12]]
    assert np.allclose(box_iou_matrix(a, b), [[4 / 28, 1.0, 0.0]])
    # inclusive corners: 3 x 3 = 9 shared pixels of 5 x 5 each
    assert np.allclose(box_iou_matrix(a, b[:1], convention="wsolevaluation"), [[9 / 41]])


def test_two_blobs_hit_curves_v1_and_v2():
    maps, truth = two_blobs()[None], [np.array([[2, 2, 6, 6]])]  # the truth is blob A
    v2 = box_hits(maps, truth, TAUS, (0.3, 0.5, 0.7))[0]
    v1 = box_hits(maps, truth, TAUS, (0.5,), multi_contour=False)[0]
    # V2: A's box exists while tau < 0.905 (index 0..90); V1: only once B is gone (tau >= 0.61)
    assert v2.all(axis=1).tolist() == [t <= 90 for t in range(100)]
    assert not v2[91:].any()
    assert v1[:, 0].tolist() == [61 <= t <= 90 for t in range(100)]
    acc = BoxAccuracy()
    acc.add(maps, truth)
    result = acc.result()
    assert result["max_box_acc_v2"] == result["box_acc"] == 100.0
    assert result["thresholds_per_iou"] == {0.3: 0.0, 0.5: 0.0, 0.7: 0.0}
    assert result["curve"].shape == (100, 3)
    v1_acc = BoxAccuracy(iou_thresholds=(0.5,), multi_contour=False)
    v1_acc.add(torch.from_numpy(maps), truth)  # torch maps too
    assert v1_acc.result()["max_box_acc"] == 100.0
    assert v1_acc.result()["thresholds_per_iou"][0.5] == pytest.approx(0.61)


def test_any_ground_truth_box_counts_and_iou_thresholds_separate():
    m = np.zeros((20, 20))
    m[2:6, 2:8] = 0.8  # box (2, 2, 8, 6)
    # IoU with (2, 2, 6, 6) = 16 / 24 (hit at 0.3 and 0.5, not 0.7); the far box adds nothing
    truth = [np.array([[12, 12, 18, 18], [2, 2, 6, 6]])]
    hits = box_hits(m[None], truth, [0.5], (0.3, 0.5, 0.7))[0, 0]
    assert hits.tolist() == [True, True, False]
    acc = BoxAccuracy(thresholds=[0.5])
    acc.add(m[None], truth)
    assert acc.result()["box_acc"] == pytest.approx(200 / 3)
    # (N, K, 4) with padding rows (x1 <= x0) is the same
    padded = np.array([[[12, 12, 18, 18], [2, 2, 6, 6], [0, 0, 0, 0]]])
    assert (box_hits(m[None], padded, [0.5], (0.3, 0.5, 0.7)) == hits).all()


def test_wsolevaluation_convention_reproduces_its_arithmetic():
    m = np.zeros((20, 20))
    m[2:6, 2:6] = 1.0
    # the reference: boundingRect (2, 2, 4, 4) -> (2, 2, 6, 6) read as inclusive: 5 x 5 against the
    # inclusive ground truth (2, 2, 5, 5) of 4 x 4 pixels: IoU 16 / 25, a miss at 0.7
    assert map_boxes(m, 0.5, convention="wsolevaluation").tolist() == [[2, 2, 6, 6]]
    ref = box_hits(m[None], [np.array([[2, 2, 5, 5]])], [0.5], (0.5, 0.7), convention="wsolevaluation")
    assert ref[0, 0].tolist() == [True, False]
    assert box_hits(m[None], [np.array([[2, 2, 6, 6]])], [0.5], (0.5, 0.7))[0, 0].tolist() == [True, True]
    # its threshold is int(tau * max) on the uint8 map, strict: 0.5 * 255 -> 127 keeps 128 / 255
    q = np.zeros((8, 8))
    q[1:3, 1:3] = 128 / 255
    assert map_boxes(q, 0.5, convention="wsolevaluation").tolist() == [[1, 1, 3, 3]]
    # boxes are clipped to (W - 1, H - 1) and an empty map is the box (0, 0, 0, 0) (one pixel inclusive)
    edge = np.zeros((8, 8))
    edge[4:, 4:] = 1.0
    assert map_boxes(edge, 0.5, convention="wsolevaluation").tolist() == [[4, 4, 7, 7]]
    assert map_boxes(np.zeros((8, 8)), 0.5, convention="wsolevaluation").tolist() == [[0, 0, 0, 0]]


def test_threshold_chosen_on_held_out_split():
    held, test = BoxAccuracy(iou_thresholds=(0.5,)), BoxAccuracy(iou_thresholds=(0.5,))
    held.add(two_blobs()[None], [np.array([[10, 10, 16, 16]])])  # truth B: right while tau < 0.605
    test.add(two_blobs()[None], [np.array([[2, 2, 6, 6]])])
    tau = held.choose_threshold()
    assert tau.tolist() == [0.0]
    assert test.result(threshold=tau)["box_acc"] == 100.0  # multi-contour: A's box is there at tau 0
    assert BoxAccuracy(iou_thresholds=(0.5,), multi_contour=False).thresholds[0] == 0.0
    v1 = BoxAccuracy(iou_thresholds=(0.5,), multi_contour=False)
    v1.add(two_blobs()[None], [np.array([[2, 2, 6, 6]])])
    assert v1.result(threshold=0.0)["box_acc"] == 0.0 and v1.result()["box_acc"] == 100.0
    with pytest.raises(ValueError, match="not one of the accumulator's thresholds"):
        test.result(threshold=0.005)


def test_box_accuracy_batching_and_merge_invariance():
    rng = np.random.default_rng(0)
    maps = rng.random((6, 16, 16)) ** 3
    boxes = [np.array([[x, y, x + 6, y + 5]]) for x, y in rng.integers(0, 9, size=(6, 2))]
    one, two, a, b = (BoxAccuracy(thresholds=np.arange(0, 1, 0.1)) for _ in range(4))
    one.add(maps, boxes)
    two.add(maps[:2], boxes[:2])
    two.add(maps[2:], boxes[2:])
    a.add(maps[:4], boxes[:4])
    b.add(maps[4:], boxes[4:])
    a.merge(b.state())
    for other in (two, a):
        assert all((other.state()[k] == one.state()[k]).all() for k in ("hits", "count"))
    sizes = BoxAccuracy(thresholds=np.arange(0, 1, 0.1))  # a list of maps of different sizes
    sizes.add([maps[0], maps[1, :12]], boxes[:2])
    sizes.add(list(maps[2:]), boxes[2:])
    expected = np.concatenate([box_hits(maps[:1], boxes[:1], sizes.thresholds, (0.3, 0.5, 0.7)),
                               box_hits(maps[1:2, :12], boxes[1:2], sizes.thresholds, (0.3, 0.5, 0.7)),
                               box_hits(maps[2:], boxes[2:], sizes.thresholds, (0.3, 0.5, 0.7))]).sum(axis=0)
    assert (sizes.hits == expected).all() and sizes.count[0] == 6
    with pytest.raises(ValueError, match="different settings"):
        one.merge(BoxAccuracy(iou_thresholds=(0.5,)).state())


def test_box_accuracy_bad_input():
    acc = BoxAccuracy()
    with pytest.raises(ValueError, match=r"normalised to \[0, 1\]"):
        acc.add(np.full((1, 4, 4), 2.0), [np.array([[0, 0, 2, 2]])])
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.full((1, 4, 4), np.nan), [np.array([[0, 0, 2, 2]])])
    with pytest.raises(ValueError, match="boxes for 2 images and 1 maps"):
        acc.add(np.zeros((1, 4, 4)), [np.zeros((1, 4)), np.zeros((1, 4))])
    with pytest.raises(ValueError, match="no ground-truth box"):
        acc.add(np.zeros((1, 4, 4)), [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="seen no image"):
        acc.result()


# ---------------------------------------------------------------- PxAP


def test_pxap_by_hand_with_ignore_region():
    maps = np.array([[[0.9, 0.4], [0.6, 0.1]]])
    masks = np.array([[[1, 1], [0, 0]]], dtype=bool)
    px = PixelAveragePrecision()
    px.add(maps, masks)
    # ranked 0.9 (P), 0.6 (N), 0.4 (P), 0.1 (N): precision 1 at recall 1/2, 2/3 at recall 1
    assert px.result()["pxap"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 2 / 3))
    ignored = PixelAveragePrecision()
    ignored.add(maps, masks, ignore=np.array([[[0, 0], [1, 0]]], dtype=bool))  # the 0.6 negative left out
    assert ignored.result()["pxap"] == pytest.approx(100.0)
    assert np.isnan(PixelAveragePrecision().result()["pxap"])


def test_pxap_equals_scikit_learn_average_precision_and_merges():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    masks = rng.random((3, 12, 12)) < 0.3
    maps = np.clip(rng.normal(0.35 + 0.3 * masks, 0.2), 0, 1)
    maps = (np.floor(np.minimum(maps, 0.999) * 1000) + 0.5) / 1000  # one score per bin: the histogram loses nothing
    maps[0, 0, 0] = 1.0
    whole, a, b = PixelAveragePrecision(), PixelAveragePrecision(), PixelAveragePrecision()
    whole.add(maps, masks)
    a.add(maps[:1], masks[:1])
    b.add(torch.from_numpy(maps[1:]), torch.from_numpy(masks[1:]))
    a.merge(b.state())
    expected = 100 * average_precision_score(masks.ravel(), maps.ravel())
    listed = PixelAveragePrecision()
    listed.add([maps[0], maps[1, :7]], [masks[0], masks[1, :7]])
    listed.add(list(maps[2:]), list(masks[2:]))
    cut = np.concatenate([maps[0].ravel(), maps[1, :7].ravel(), maps[2].ravel()])
    cut_masks = np.concatenate([masks[0].ravel(), masks[1, :7].ravel(), masks[2].ravel()])
    assert listed.result()["pxap"] == pytest.approx(100 * average_precision_score(cut_masks, cut), abs=1e-9)
    assert whole.result()["pxap"] == pytest.approx(expected, abs=1e-9)
    assert a.result()["pxap"] == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- WSSS seeds


def test_pseudo_masks_background_then_argmax_over_image_classes():
    cams = np.zeros((1, 3, 1, 4))  # 3 foreground classes (ids 1..3), channel c - 1
    cams[0, 0] = [[2.0, 1.0, 0.2, 0.0]]  # class 1, max-normalised: 1, 0.5, 0.1, 0
    cams[0, 1] = [[0.0, 4.0, 4.0, -1.0]]  # class 2: 0, 1, 1, 0 (ReLU)
    cams[0, 2] = [[9.0, 9.0, 9.0, 9.0]]  # class 3 is not in the image: ignored
    assert pseudo_masks(cams, [[1, 2]], background=0.3).tolist() == [[[1, 2, 2, 0]]]
    assert pseudo_masks(cams, [[1]], background=0.5).tolist() == [[[1, 0, 0, 0]]]  # 0.5 ties: background
    per_image = pseudo_masks([cams[0, :2]], [[1, 2]], background=0.3)
    assert isinstance(per_image, list) and per_image[0].tolist() == [[1, 2, 2, 0]]


def explicit_confusion(cams, ids, truth, background, k, ignore=255):
    """One threshold, pixel by pixel."""
    out = np.zeros((k, k), dtype=np.int64)
    for cam, idx, gt in zip(cams, ids, truth):
        pred = pseudo_masks([cam], [idx], background)[0]
        for g, p in zip(gt.ravel(), pred.ravel()):
            if g != ignore:
                out[g, p] += 1
    return out


def test_segmentation_seeds_confusion_by_hand_and_by_loops():
    cams = [np.array([[[1.0, 0.8, 0.1], [0.0, 0.5, 0.3]]])]  # class 2 only
    truth = [np.array([[2, 2, 0], [0, 255, 2]])]
    seeds = SegmentationSeeds(num_classes=3, background_thresholds=[0.2, 0.6])
    seeds.add(cams, [[2]], truth)
    # tau 0.2: predicted 2 2 0 / 0 (ignored) 2 -> all right; tau 0.6: 2 2 0 / 0 . 0 -> one 2 missed
    assert seeds.confusion[0].tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 3]]
    assert seeds.confusion[1].tolist() == [[2, 0, 0], [0, 0, 0], [1, 0, 2]]
    result = seeds.result()
    assert result["miou"] == pytest.approx(100.0) and result["background"] == 0.2
    assert np.isnan(result["iou_per_class"][1])  # class 1 absent from truth and prediction
    assert result["miou_curve"][1] == pytest.approx(100 * (2 / 3 + 2 / 3) / 2)
    assert seeds.result(threshold=0.6)["miou"] == pytest.approx(result["miou_curve"][1])

    rng = np.random.default_rng(2)
    k, taus = 5, np.arange(0, 0.6, 0.05)
    ids = [[1, 3], [2], [1, 2, 4], []]
    cams = [rng.random((len(i), 6, 7)) ** 2 for i in ids]
    truth = [rng.integers(0, k, size=(6, 7)) for _ in ids]
    truth[0][0, :3] = 255
    whole = SegmentationSeeds(num_classes=k, background_thresholds=taus)
    whole.add(cams, ids, truth)
    for t, tau in enumerate(taus):
        assert (whole.confusion[t] == explicit_confusion(cams, ids, truth, tau, k)).all()
    a, b = SegmentationSeeds(k, taus), SegmentationSeeds(k, taus)
    a.add(cams[:1], ids[:1], truth[:1])
    b.add(cams[1:], ids[1:], truth[1:])
    a.merge(b.state())
    assert (a.confusion == whole.confusion).all()
    # a 4-D array of every foreground class gives the same as the per-image lists
    full = np.zeros((len(ids), k - 1, 6, 7))
    for n, (cam, idx) in enumerate(zip(cams, ids)):
        full[n, np.array(idx, dtype=int) - 1] = cam
    array = SegmentationSeeds(k, taus)
    array.add(full, ids, np.stack(truth))
    assert (array.confusion == whole.confusion).all()
    assert whole.choose_threshold() == whole.result()["background"]


def test_segmentation_seeds_bad_input():
    seeds = SegmentationSeeds(num_classes=3, background_thresholds=0.15)
    with pytest.raises(ValueError, match="does not match its CAMs"):
        seeds.add([np.zeros((1, 2, 2))], [[1]], [np.zeros((3, 3), int)])
    with pytest.raises(ValueError, match="outside 1..2"):
        seeds.add([np.zeros((1, 2, 2))], [[5]], [np.zeros((2, 2), int)])
    with pytest.raises(ValueError, match="ground-truth labels outside"):
        seeds.add([np.zeros((1, 2, 2))], [[1]], [np.full((2, 2), 7)])
    with pytest.raises(ValueError, match="for 2 classes"):
        seeds.add([np.zeros((1, 2, 2))], [[1, 2]], [np.zeros((2, 2), int)])


# ---------------------------------------------------------------- bench metrics


def bench_batch(maps, mask=None, box=None, letters="NHW"):
    n = maps.shape[0]
    return EvalBatch(model=None, inputs=maps[:, None], input_layout=Layout.parse("NCHW"), labels=torch.zeros(n).long(),
                     targets=torch.zeros(n).long(), maps=maps, map_letters=letters, indices=torch.arange(n),
                     explain=lambda *a: maps, mask=mask, box=box)


def test_bench_box_metrics_mean_curves_give_the_data_set_value():
    rng = np.random.default_rng(3)
    maps = torch.from_numpy(rng.random((5, 16, 16)) ** 4)
    box = torch.from_numpy(np.stack([[x, y, x + 7, y + 6] for x, y in rng.integers(0, 8, size=(5, 2))]))
    for name, reference in (("max_box_acc_v2", BoxAccuracy()),
                            ("max_box_acc", BoxAccuracy(iou_thresholds=(0.5,), multi_contour=False))):
        metric = camkit.lookup("metrics", name)()
        values = metric.evaluate(bench_batch(maps, box=box)).values
        assert values["box_acc_curve"].shape == (5, 100)
        torch.testing.assert_close(values["box_acc"], values["box_acc_curve"].mean(dim=1))
        reference.add(maps, box)
        means = {k: v.double().mean(dim=0).tolist() for k, v in values.items()}
        assert metric.dataset_values(means)[name] == pytest.approx(reference.result()["box_acc"])
    fixed = camkit.lookup("metrics", "max_box_acc_v2")(cam_threshold=0.2)
    at = fixed.evaluate(bench_batch(maps, box=box)).values
    torch.testing.assert_close(at["box_acc"], at["box_acc_curve"][:, 20])
    held_out_tau = BoxAccuracy()
    held_out_tau.add(maps, box)
    means = {k: v.double().mean(dim=0).tolist() for k, v in at.items()}
    assert fixed.dataset_values(means)["max_box_acc_v2"] == pytest.approx(held_out_tau.result(threshold=0.2)["box_acc"])


def test_bench_pxap_and_wsss_from_mean_values():
    rng = np.random.default_rng(4)
    mask = torch.from_numpy(rng.random((4, 10, 10)) < 0.4)
    maps = torch.from_numpy(np.clip(rng.normal(0.3 + 0.4 * mask.numpy(), 0.2), 0, 1))
    batch = bench_batch(maps, mask=mask)
    pxap = camkit.lookup("metrics", "pxap")()
    values = pxap.evaluate(batch).values
    reference = PixelAveragePrecision()
    reference.add(maps, mask)
    means = {k: v.mean(dim=0).tolist() for k, v in values.items()}
    assert pxap.dataset_values(means)["pxap"] == pytest.approx(reference.result()["pxap"])

    wsss = camkit.lookup("metrics", "wsss_miou")(background_thresholds=[0.1, 0.3, 0.5])
    values = wsss.evaluate(batch).values
    seeds = SegmentationSeeds(2, wsss.thresholds, ignore_index=-1)
    seeds.add(maps[:, None], [[1]] * 4, mask.long())
    means = {k: v.mean(dim=0).tolist() for k, v in values.items()}
    # every sample has the same number of sites, so the mean fractions pool the counts exactly
    assert wsss.dataset_values(means)["miou_curve"] == pytest.approx(seeds.result()["miou_curve"].tolist())
    assert wsss.dataset_values(means)["wsss_miou"] == pytest.approx(seeds.result(threshold=0.15)["miou"])
    # per sample, at background 0.15
    one = SegmentationSeeds(2, [0.15], ignore_index=-1)
    one.add(maps[:1, None], [[1]], mask[:1].long())
    assert values["miou"][0].item() == pytest.approx(one.result()["miou"])


def test_bench_batches_carry_the_data_set_values(tmp_path):
    """Through ``camkit bench`` (batches of 4 over 9 samples), the mean curves give the numbers of one pass."""
    from camkit.plugin_manager import set_plugin_manager
    from camkit_plugins.bench.runner import MapMaker, run_suite
    from test_bench import TOY_PLUGIN

    plugin = tmp_path / "toy_plugin.py"
    plugin.write_text(TOY_PLUGIN)
    set_plugin_manager(None)
    try:
        records = run_suite({"models": ["toy-cnn"], "datasets": ["toy-boxes"], "methods": ["cam"],
                             "metrics": ["max_box_acc_v2", "pxap", {"name": "wsss_miou", "options": {
                                 "background_thresholds": [0.2, 0.5]}}],
                             "samples": 9, "batch_size": 4, "out": str(tmp_path / "out"), "plugins": [str(plugin)],
                             "device": "cpu", "plots": False}, progress=False)
        dataset = camkit.lookup("datasets", "toy-boxes")(split="test", seed=0)
        layout = Layout.parse("NCHW")
        inputs = torch.stack([dataset[i]["input"] for i in range(9)])
        maps = MapMaker("baseline-random", layout, {}, 0)(None, inputs, None, torch.arange(9))
    finally:
        set_plugin_manager(None)
    cells = {r["metric"]: r for r in records if r["method"] == "baseline-random"}
    boxes = torch.tensor([dataset[i]["box"] for i in range(9)])
    box_masks = torch.zeros(9, 16, 16, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        box_masks[i, y0:y1, x0:x1] = True
    wsol = BoxAccuracy()
    wsol.add(maps, boxes)
    metric = camkit.lookup("metrics", "max_box_acc_v2")()
    assert metric.dataset_values(cells["max_box_acc_v2"]["values"])["max_box_acc_v2"] == pytest.approx(
        wsol.result()["max_box_acc_v2"])
    px = PixelAveragePrecision()
    px.add(maps, box_masks)
    pxap = camkit.lookup("metrics", "pxap")()
    assert pxap.dataset_values(cells["pxap"]["values"])["pxap"] == pytest.approx(px.result()["pxap"])
    seeds = SegmentationSeeds(2, [0.15, 0.2, 0.5], ignore_index=-1)
    seeds.add(maps[:, None], [[1]] * 9, box_masks.long())
    wsss = camkit.lookup("metrics", "wsss_miou")(background_thresholds=[0.2, 0.5])
    assert wsss.dataset_values(cells["wsss_miou"]["values"])["miou_curve"] == pytest.approx(
        seeds.result()["miou_curve"].tolist())
