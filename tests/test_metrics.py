"""Every metric on a case with a known answer, plus batching / layout parity."""

import math

import pytest
import torch
import torch.nn as nn

import camkit
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch, average_ranks, saliency_ranks, spearman, to_input_shape


def make_batch(model, inputs, maps, layout="NCHW", letters="NHW", targets=None, labels=None, **extra):
    n = inputs.shape[0]
    targets = torch.zeros(n, dtype=torch.long) if targets is None else targets
    return EvalBatch(model=model, inputs=inputs, input_layout=Layout.parse(layout),
                     labels=targets if labels is None else labels, targets=targets, maps=maps, map_letters=letters,
                     indices=torch.arange(n), explain=lambda m, x, t: maps, **extra)


def metric(name, **options):
    return camkit.lookup("metrics", name)(**options)


class OnePixel(nn.Module):
    """logit_0 = gain * x[c=0, row, col], logit_1 = 0: only one pixel matters."""

    def __init__(self, row, col, gain=10.0):
        super().__init__()
        self.row, self.col, self.gain = row, col, gain

    def forward(self, x):
        z = self.gain * x[:, 0, self.row, self.col]
        return torch.stack([z, torch.zeros_like(z)], dim=1)


# ---------------------------------------------------------------- localization


def test_energy_pointing_game_known_shares():
    mask = torch.zeros(3, 6, 6, dtype=torch.bool)
    mask[:, 1:3, 1:4] = True
    maps = torch.zeros(3, 6, 6)
    maps[0] = mask[0].float()  # the mask itself: all energy inside
    maps[1, 1, 1], maps[1, 5, 5] = 3.0, 1.0  # 3 of 4 units inside
    # maps[2] stays all zero: no energy anywhere, so none inside (a failure, not an undefined sample)
    values = metric("energy_pointing_game").evaluate(make_batch(None, torch.zeros(3, 1, 6, 6), maps, mask=mask)).values
    energy = values["energy"]
    assert energy[0].item() == pytest.approx(100.0)
    assert energy[1].item() == pytest.approx(75.0)
    assert energy[2].item() == 0.0
    mask[1] = False  # nothing to point at: undefined, left out of the mean
    values = metric("energy_pointing_game").evaluate(make_batch(None, torch.zeros(3, 1, 6, 6), maps, mask=mask)).values
    assert math.isnan(values["energy"][1].item()) and values["energy"][0].item() == pytest.approx(100.0)


def test_pointing_game_hits_misses_and_tolerance():
    mask = torch.zeros(3, 9, 9, dtype=torch.bool)
    mask[:, 4, 4] = True
    maps = torch.zeros(3, 9, 9)
    maps[0, 4, 4] = 1.0  # hit
    maps[1, 4, 7] = 1.0  # 3 sites away
    maps[2, 6, 6] = 1.0  # sqrt(8) ~ 2.83 away
    batch = make_batch(None, torch.zeros(3, 1, 9, 9), maps, mask=mask)
    assert metric("pointing_game").evaluate(batch).values["hit_rate"].tolist() == [100.0, 0.0, 0.0]
    assert metric("pointing_game", tolerance=2.9).evaluate(batch).values["hit_rate"].tolist() == [100.0, 0.0, 100.0]
    assert metric("pointing_game", tolerance=3).evaluate(batch).values["hit_rate"].tolist() == [100.0, 100.0, 100.0]


def test_pointing_game_uses_boxes_when_no_mask_and_empty_truth_is_nan():
    maps = torch.zeros(2, 8, 8)
    maps[:, 2, 5] = 1.0  # x=5, y=2
    boxes = torch.tensor([[4, 1, 7, 3], [0, 0, 0, 0]])
    values = metric("pointing_game").evaluate(make_batch(None, torch.zeros(2, 1, 8, 8), maps, box=boxes)).values
    assert values["hit_rate"][0].item() == 100.0 and math.isnan(values["hit_rate"][1].item())


def empty_policy_batch():
    """Six (T=2, V=3) maps with hand-known answers; two are all zero, one is all negative."""
    maps = torch.zeros(6, 2, 3)
    truth = torch.zeros(6, 2, 3, dtype=torch.bool)
    maps[0, 0, 1], maps[0, 1, 0] = 3.0, 1.0  # max inside; 3 of 4 units inside
    truth[0, 0, 1] = True
    truth[1, 0, 0] = True  # maps[1] all zero (points nowhere); its argmax, site 0, is in the truth
    truth[2, 1, 2] = True  # maps[2] all zero; site 0 is not in the truth
    maps[3, 0, 0], maps[3, 0, 2], maps[3, 1, 1] = -5.0, 1.0, 2.0  # truth[3] stays empty
    maps[4] = -1.0
    maps[4, 1, 0] = -0.5  # no positive site; the maximum is inside the truth
    truth[4, 1, 0] = True
    maps[5, 0, 0], maps[5, 1, 1] = 1e-20, 3e-20  # tiny mass keeps its true share: 3 of 4 inside
    truth[5, 1, 1] = True
    return maps, truth


NAN = float("nan")
EMPTY_POLICY_ORACLE = {  # per sample, worked out by hand from empty_policy_batch
    "nan": {"hits": [1, 0, 0, NAN, 0, 1], "energy": [0.75, 0, 0, NAN, 0, 0.75]},
    "miss": {"hits": [1, 0, 0, 0, 0, 1], "energy": [0.75, 0, 0, 0, 0, 0.75]},
}


@pytest.mark.parametrize("empty", ["nan", "miss"])
def test_localization_empty_map_policies(empty):
    from camkit_plugins.metrics.localization import energy_share, pointing_hits

    maps, truth = empty_policy_batch()
    oracle = EMPTY_POLICY_ORACLE[empty]
    hits, energy = pointing_hits(maps, truth, empty=empty), energy_share(maps, truth, empty=empty)
    assert hits.dtype == torch.float64 and energy.dtype == torch.float32
    torch.testing.assert_close(hits, torch.tensor(oracle["hits"], dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(energy, torch.tensor(oracle["energy"]), equal_nan=True)
    # a map pointing nowhere is a miss under both; "nan" leaves the empty ground truth out of the mean
    expected_means = {"nan": (2 / 5, 1.5 / 5), "miss": (2 / 6, 1.5 / 6)}[empty]
    assert (hits.nanmean().item(), energy.nanmean().item()) == pytest.approx(expected_means)
    if empty == "miss":  # the skeleton evaluation's public helpers keep its rule
        from camkit_plugins.skeleton import evaluation

        assert evaluation.pointing_hits(maps, truth).tolist() == [bool(h) for h in oracle["hits"]]
        torch.testing.assert_close(evaluation.energy_share(maps, truth), torch.tensor(oracle["energy"]))


def test_localization_metrics_use_the_nan_policy_and_reject_unknown_ones():
    from camkit_plugins.metrics.localization import pointing_hits

    maps, truth = empty_policy_batch()
    batch = make_batch(None, torch.zeros(6, 3, 2, 3, 1), maps, "NCTVM", "NTV", mask=truth)
    oracle = EMPTY_POLICY_ORACLE["nan"]
    torch.testing.assert_close(metric("pointing_game").evaluate(batch).values["hit_rate"],
                               100.0 * torch.tensor(oracle["hits"], dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(metric("energy_pointing_game").evaluate(batch).values["energy"],
                               100.0 * torch.tensor(oracle["energy"], dtype=torch.float64), equal_nan=True)
    with pytest.raises(ValueError, match="empty='zero'"):
        pointing_hits(maps, truth, empty="zero")


def test_skeleton_tolerance_runs_along_time_not_joints():
    mask = torch.zeros(1, 10, 5, dtype=torch.bool)
    mask[0, 5, 2] = True
    near_in_time = torch.zeros(1, 10, 5)
    near_in_time[0, 7, 2] = 1.0
    next_joint = torch.zeros(1, 10, 5)
    next_joint[0, 5, 3] = 1.0
    pg = metric("pointing_game", tolerance=2)
    x = torch.zeros(1, 3, 10, 5, 1)
    assert pg.evaluate(make_batch(None, x, near_in_time, "NCTVM", "NTV", mask=mask)).values["hit_rate"].item() == 100
    assert pg.evaluate(make_batch(None, x, next_joint, "NCTVM", "NTV", mask=mask)).values["hit_rate"].item() == 0


def test_box_localization_boxes_the_largest_component():
    maps = torch.zeros(2, 12, 12)
    maps[:, 2:6, 3:8] = 1.0  # 20 sites: the largest component -> box (3, 2, 8, 6)
    maps[:, 9:11, 9:11] = 0.9  # 4 sites, above 20% of the max but smaller
    truth = torch.tensor([[3, 2, 8, 6], [3, 2, 8, 7]])  # second: IoU 20/25 = 0.8
    labels = torch.tensor([0, 1])

    class AlwaysZero(nn.Module):  # predicts class 0 for every input: the second sample is misclassified
        def forward(self, x):
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], dim=1)

    values = metric("box_localization").evaluate(
        make_batch(AlwaysZero(), torch.zeros(2, 1, 12, 12), maps, targets=torch.tensor([0, 0]), labels=labels,
                   box=truth)).values
    assert values["iou"].tolist() == pytest.approx([1.0, 0.8])
    assert values["accuracy"].tolist() == [100.0, 0.0] and values["correct_class"].tolist() == [100.0, 0.0]
    # maps of the labels (bench targets = "label"): the right class is still the model's own top-1
    of_labels = metric("box_localization").evaluate(
        make_batch(AlwaysZero(), torch.zeros(2, 1, 12, 12), maps, targets=labels, labels=labels, box=truth)).values
    assert of_labels["accuracy"].tolist() == [100.0, 0.0] and of_labels["correct_class"].tolist() == [100.0, 0.0]
    given = make_batch(None, torch.zeros(2, 1, 12, 12), maps, targets=labels, labels=labels, box=truth,
                       predictions=torch.tensor([1, 1]))  # predictions passed in: no forward needed
    assert metric("box_localization").evaluate(given).values["accuracy"].tolist() == [0.0, 100.0]
    # percentile rule: the top 5% = 7 sites of the 20 equal ones... all tie at 1.0 so all 20 kept
    pct = metric("box_localization", rule="percentile", value=0.05).evaluate(given).values
    assert pct["iou"][0].item() == pytest.approx(1.0)
    # every kept site: the box (3, 2, 11, 11) around both blobs, IoU 20/72 with the first truth
    every = metric("box_localization", components="all").evaluate(given).values
    assert every["iou"].tolist() == pytest.approx([20 / 72, 25 / 72])
    assert metric("box_localization", components="all").options()["components"] == "all"
    with pytest.raises(ValueError, match="components='every'"):
        metric("box_localization", components="every")


# ---------------------------------------------------------------- faithfulness


def one_pixel_case(first=True, size=4):
    model = OnePixel(1, 2)
    x = torch.ones(2, 1, size, size)
    maps = torch.rand(2, size, size) * 0.5
    maps[:, 1, 2] = 1.0 if first else -1.0
    return model, x, maps


def test_deletion_on_a_one_pixel_model():
    model, x, maps = one_pixel_case(first=True)
    high, half = torch.sigmoid(torch.tensor(10.0)).item(), 0.5
    deletion = metric("deletion", steps=16)  # one site per step
    values = deletion.evaluate(make_batch(model, x, maps)).values
    expected_curve = [high] + [half] * 16
    assert values["curve"][0].tolist() == pytest.approx(expected_curve)
    assert values["auc"][0].item() == pytest.approx((high + half) / 2 / 16 + half * 15 / 16)
    # the pixel ranked last is removed last: the curve stays high until the final step
    model, x, maps = one_pixel_case(first=False)
    last = deletion.evaluate(make_batch(model, x, maps)).values["curve"][0]
    assert last[:-1].tolist() == pytest.approx([high] * 16) and last[-1].item() == pytest.approx(half)


def test_insertion_on_a_one_pixel_model_and_chunking_parity():
    model, x, maps = one_pixel_case(first=True)
    model.train()
    high = torch.sigmoid(torch.tensor(10.0)).item()
    insertion = metric("insertion", steps=16, perturbation="zeros")
    big = insertion.evaluate(make_batch(model, x, maps)).values
    assert model.training  # evaluated in eval mode, the caller's mode restored
    small = insertion.evaluate(make_batch(model, x, maps, chunk_size=3)).values
    assert big["curve"][0].tolist() == pytest.approx([0.5] + [high] * 16)
    torch.testing.assert_close(big["curve"], small["curve"])


def test_deletion_steps_round_sites():
    model, x, maps = one_pixel_case(first=True)
    values = metric("deletion", steps=3).evaluate(make_batch(model, x, maps)).values  # 16 sites: 0, 5, 11, 16
    assert values["curve"].shape == (2, 4)
    assert values["curve"][0, 1].item() == pytest.approx(0.5)


def test_deletion_on_skeletons_with_mean_pose():
    """Only joint 3's x at frame 2 matters; removing it replaces it with its mean over frames."""

    class OneJoint(nn.Module):
        def forward(self, x):  # (N, C, T, V, M)
            z = 4.0 * x[:, 0, 2, 3, 0]
            return torch.stack([z, -z], dim=1)

    x = torch.zeros(1, 3, 4, 5, 1)
    x[0, 0, :, 3, 0] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # mean over frames: 0.25
    maps = torch.zeros(1, 4, 5)
    maps[0, 2, 3] = 1.0
    values = metric("deletion", steps=20, perturbation="mean-pose").evaluate(
        make_batch(OneJoint(), x, maps, "NCTVM", "NTV")).values
    curve = values["curve"][0]
    assert curve[0].item() == pytest.approx(torch.softmax(torch.tensor([4.0, -4.0]), 0)[0].item())
    assert curve[1].item() == pytest.approx(torch.softmax(torch.tensor([1.0, -1.0]), 0)[0].item())


def test_average_drop_by_hand_in_both_spaces():
    class Mean(nn.Module):
        def forward(self, x):
            z = x.mean(dim=(1, 2, 3))
            return torch.stack([z, torch.zeros_like(z)], dim=1)

    x = torch.full((2, 1, 2, 2), 2.0)
    maps = torch.full((2, 2, 2), 0.5)
    maps[1] = 1.0  # the second sample keeps everything: no drop
    values = metric("average_drop").evaluate(make_batch(Mean(), x, maps)).values
    y, o = torch.sigmoid(torch.tensor(2.0)), torch.sigmoid(torch.tensor(1.0))
    assert values["average_drop"][0].item() == pytest.approx(100 * (y - o).item() / y.item())
    assert values["average_drop"][1].item() == pytest.approx(0.0)
    assert values["increase_in_confidence"].tolist() == [0.0, 0.0]
    # raw space: x_raw = 2 * 0.5 + 1 = 2 -> masked 1 -> normalised (1 - 1) / 0.5 = 0
    raw = metric("average_drop", space="raw", mean=[1.0], std=[0.5]).evaluate(make_batch(Mean(), x, maps)).values
    o_raw = torch.sigmoid(torch.tensor(0.0))
    assert raw["average_drop"][0].item() == pytest.approx(100 * (y - o_raw).item() / y.item())
    with pytest.raises(ValueError, match="mean and std"):
        metric("average_drop", space="raw").evaluate(make_batch(Mean(), x, maps))


def test_increase_in_confidence_when_masking_helps():
    class Negative(nn.Module):
        def forward(self, x):
            z = -x.mean(dim=(1, 2, 3))
            return torch.stack([z, torch.zeros_like(z)], dim=1)

    values = metric("average_drop").evaluate(
        make_batch(Negative(), torch.ones(1, 1, 2, 2), torch.full((1, 2, 2), 0.5))).values
    assert values["increase_in_confidence"].item() == 100.0 and values["average_drop"].item() == 0.0


def test_road_imputes_from_neighbours():
    ramp = torch.arange(8.0).repeat(8, 1)[None, None]  # value = column index
    removed = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    removed[0, 0, 3, 4] = True
    road = camkit.lookup("perturbations", "road")(noise=0.0)
    out = road.apply(ramp, removed, Layout.parse("NCHW"), torch.arange(1))
    assert out[0, 0, 3, 4].item() == pytest.approx(4.0)  # symmetric neighbours of a linear ramp
    torch.testing.assert_close(out[~removed], ramp[~removed])
    removed[0, 0, 2:6, 2:6] = True  # a 4x4 hole in a constant image fills with the constant
    flat = torch.full((1, 1, 8, 8), 3.0)
    assert torch.allclose(road.apply(flat, removed, Layout.parse("NCHW"), torch.arange(1)), flat)
    noisy = camkit.lookup("perturbations", "road")(noise=0.1)
    a = noisy.apply(flat, removed, Layout.parse("NCHW"), torch.tensor([7]))
    b = noisy.apply(flat, removed, Layout.parse("NCHW"), torch.tensor([7]))
    torch.testing.assert_close(a, b)  # noise seeded by the sample id
    assert not torch.allclose(a, flat) and torch.equal(a[~removed], flat[~removed])


def _dense_imputation(values, removed):
    """The noiseless ROAD system solved densely: each removed element = the 1/distance² weighted mean of
    its in-bounds neighbours (removed ones included), kept elements fixed."""
    import itertools

    import numpy as np

    shape, flat, hole = values.shape, values.reshape(-1).double().numpy(), removed.reshape(-1).numpy()
    index = np.arange(flat.size).reshape(shape)
    matrix, rhs = np.eye(flat.size), np.where(hole, 0.0, flat)
    for position in itertools.product(*map(range, shape)):
        row = index[position]
        if not hole[row]:
            continue
        neighbours = [(tuple(p + o for p, o in zip(position, offset)), sum(o * o for o in offset))
                      for offset in itertools.product((-1, 0, 1), repeat=len(shape)) if any(offset)]
        neighbours = [(n, d) for n, d in neighbours if all(0 <= c < s for c, s in zip(n, shape))]
        total = sum(1.0 / d for _, d in neighbours)
        for n, d in neighbours:
            matrix[row, index[n]] -= 1.0 / d / total
    return torch.from_numpy(np.linalg.solve(matrix, rhs)).reshape(shape)


@pytest.mark.parametrize("letters,shape", [("NCL", (3, 2, 40)), ("NCHW", (3, 2, 11, 9)),
                                           ("NCDHW", (3, 2, 5, 6, 7)), ("NCDHW", (2, 2, 2, 12, 10)),
                                           ("NCDHW", (2, 1, 1, 9, 16)), ("NCHW", (2, 1, 3, 30))])
def test_road_exact_imputation_solves_the_system_in_1d_2d_3d_in_chunks(letters, shape, monkeypatch):
    from camkit_plugins.metrics import perturbations

    generator = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=generator, dtype=torch.float64)
    removed = torch.rand((shape[0], 1, *shape[2:]), generator=generator) < 0.6
    road = camkit.lookup("perturbations", "road")(noise=0.0, exact=True, tolerance=1e-10)
    whole = road.apply(x, removed, Layout.parse(letters), torch.arange(shape[0]))
    monkeypatch.setattr(perturbations, "CPU_CHUNK_ELEMENTS", 1)  # one grid at a time: the same values
    torch.testing.assert_close(road.apply(x, removed, Layout.parse(letters), torch.arange(shape[0])), whole)
    for n in range(shape[0]):
        for c in range(shape[1]):
            torch.testing.assert_close(whole[n, c], _dense_imputation(x[n, c], removed[n, 0]), atol=1e-7, rtol=0)


@pytest.mark.parametrize("shape", [(2, 1, 11, 9), (1, 1, 1, 6), (1, 1, 5, 1), (3, 1, 2, 2)])
def test_road_stencil_without_padding_equals_the_zero_padded_convolution(shape):
    from camkit_plugins.metrics.perturbations import _neighbour_sum

    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 0.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 12.0
    v = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.nn.functional.conv2d(v, kernel[None, None], padding=1)
    torch.testing.assert_close(_neighbour_sum(kernel[None, None])(v), expected, atol=1e-15, rtol=0)
    assert _neighbour_sum(kernel[None, None])(v.float()).dtype == torch.float32


def test_road_short_clips_coarsen_their_long_axes_and_solve_a_small_coarsest_grid(monkeypatch):
    # a clip of 2 frames: halving every axis until the shortest has 4 elements kept the whole 2 x 48 x 48 grid
    # as the "coarsest" and built its 4608 x 4608 pseudo-inverse (a 1-frame clip crashed the first fill)
    sizes = []
    pinv = torch.linalg.pinv
    monkeypatch.setattr(torch.linalg, "pinv", lambda a, **kw: sizes.append(a.shape[-1]) or pinv(a, **kw))
    generator = torch.Generator().manual_seed(2)
    for frames in (1, 2):
        x = torch.rand(1, 3, frames, 48, 48, generator=generator)
        removed = torch.rand(1, 1, frames, 48, 48, generator=generator) < 0.9
        removed[..., 0, 0, 0] = False
        road = camkit.lookup("perturbations", "road")(noise=0.0, exact=True, tolerance=1e-9)
        imputed = road.apply(x, removed, Layout.parse("NCDHW"), torch.arange(1))
        assert torch.equal(imputed[~removed.expand_as(x)], x[~removed.expand_as(x)])
        if frames == 1:  # (2 frames: the dense check above, on a smaller clip)
            torch.testing.assert_close(imputed[0, 1].double(), _dense_imputation(x[0, 1], removed[0, 0]),
                                       atol=1e-6, rtol=0)
    assert len(sizes) == 2 and max(sizes) <= 64


def test_road_metric_orders_morf_before_lerf():
    model, _, maps = one_pixel_case(first=True, size=6)
    x = torch.zeros(2, 1, 6, 6)
    x[:, 0, 1, 2] = 1.0  # a spike on a flat background: imputation from neighbours erases it
    values = metric("road", steps=36, noise=0.0).evaluate(make_batch(model, x, maps)).values
    high = torch.sigmoid(torch.tensor(10.0)).item()
    assert values["morf_curve"][0].tolist() == pytest.approx([high] + [0.5] * 36)
    assert values["lerf_curve"][0].tolist() == pytest.approx([high] * 36 + [0.5])
    assert values["gap"][0].item() == pytest.approx((high - 0.5) * 35 / 36)


def test_perturbation_fills():
    x = torch.arange(24.0).view(1, 2, 3, 4)
    layout = Layout.parse("NCHW")
    zeros = camkit.lookup("perturbations", "zeros")().fill(x, layout, None)
    mean = camkit.lookup("perturbations", "mean")().fill(x, layout, None)
    blur = camkit.lookup("perturbations", "blur")(sigma=1.0).fill(torch.full((1, 1, 5, 5), 2.0), layout, None)
    assert torch.equal(zeros, torch.zeros_like(x))
    assert mean[0, 0].unique().item() == pytest.approx(5.5) and mean[0, 1].unique().item() == pytest.approx(17.5)
    torch.testing.assert_close(blur, torch.full((1, 1, 5, 5), 2.0))
    skeleton = torch.randn(2, 3, 6, 5, 2)
    pose = camkit.lookup("perturbations", "mean-pose")().fill(skeleton, Layout.parse("NCTVM"), None)
    torch.testing.assert_close(pose[:, :, 4], skeleton.mean(dim=2))
    with pytest.raises(ValueError, match="time axis"):
        camkit.lookup("perturbations", "mean-pose")().fill(x, layout, None)


# ---------------------------------------------------------------- sanity


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    a = torch.tensor([[0.0, 0.0, 1.0, 2.0, 2.0, 3.0], [5.0, 1.0, 1.0, 1.0, 0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 3.0, 2.0, 2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    ours = spearman(a, b)
    for row in range(2):
        assert ours[row].item() == pytest.approx(spearmanr(a[row].numpy(), b[row].numpy()).statistic)
    assert average_ranks(torch.tensor([[3.0, 1.0, 3.0]])).tolist() == [[2.5, 1.0, 2.5]]
    assert spearman(a[:1], -a[:1]).item() == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(1, 4), a[:1, :4]).item())


def test_randomization_changes_cam_and_leaves_the_model_alone():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 10, 10)

    def explain(m, inputs, targets):
        return camkit.explain(m, inputs, "cam", targets=targets).maps

    with torch.no_grad():
        targets = model.eval()(x).argmax(1)
    model.train()
    maps = explain(model, x, targets)
    batch = make_batch(model, x, maps, targets=targets)
    batch.explain = explain
    result = metric("randomization").evaluate(batch)
    assert result.labels["spearman"] == ["6", "2", "0"]  # top-down: the classifier first
    curve = result.values["spearman"]
    assert curve.shape == (4, 3)
    assert (curve[:, -1] < 0.9).all()  # fully randomised maps no longer rank like the trained ones
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a map that ignores the model survives randomisation: correlation exactly 1
    batch.explain = lambda m, inputs, t: maps
    spearman = metric("randomization").evaluate(batch).values["spearman"]
    assert torch.allclose(spearman, torch.ones(4, 3, dtype=torch.float64))


# ---------------------------------------------------------------- helpers and baselines


def test_to_input_shape_moves_axes_by_letter():
    site = torch.arange(6.0).view(1, 2, 3)  # (N, T, V)
    shaped = to_input_shape(site, "NTV", Layout.parse("NCTVM"))
    assert shaped.shape == (1, 1, 2, 3, 1)
    channels_last = to_input_shape(torch.arange(6.0).view(1, 2, 3), "NHW", Layout.parse("NHWC"))
    assert channels_last.shape == (1, 2, 3, 1)
    assert torch.equal((torch.zeros(1, 4, 2, 3, 2) + shaped)[0, 3, 1, 2, 1], torch.tensor(5.0))


def test_saliency_ranks_are_stable():
    ranks = saliency_ranks(torch.tensor([[0.1, 0.9, 0.1, 0.5]]))
    assert ranks.tolist() == [[2, 0, 3, 1]]


def test_baselines_centre_peak_and_seeded_random():
    from camkit_plugins.metrics.baselines import baseline_maps, center_maps

    centre = center_maps((2, 9, 7), "NHW")
    assert centre[0].argmax().item() == 4 * 7 + 3 and centre[0].max().item() == pytest.approx(1.0)
    skeleton = center_maps((1, 9, 5), "NTV")
    assert torch.allclose(skeleton[0, 4], torch.ones(5))  # constant along joints
    like = torch.empty(3, 4, 4)
    a = baseline_maps("random", like, "NHW", torch.tensor([0, 1, 2]))
    b = baseline_maps("random", like[:1], "NHW", torch.tensor([2]))
    torch.testing.assert_close(a[2], b[0])  # independent of batching
    with pytest.raises(KeyError, match="center, random"):
        baseline_maps("corner", like, "NHW", torch.tensor([0]))


def test_registries_and_bad_options():
    assert {"pointing_game", "energy_pointing_game", "box_localization", "deletion", "insertion", "road",
            "average_drop", "randomization"} <= set(camkit.registry("metrics"))
    assert {"zeros", "mean", "blur", "mean-pose", "road"} <= set(camkit.registry("perturbations"))
    with pytest.raises(KeyError, match="Available: blur"):
        metric("deletion", perturbation="noise")
    with pytest.raises(ValueError, match="space="):
        metric("average_drop", space="logits")
    with pytest.raises(ValueError, match="shape"):
        make_batch(None, torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4), mask=torch.zeros(1, 3, 3)).ground_truth_mask()


def test_saliency_ties_are_broken_randomly_but_reproducibly():
    # one salient site, then a tied region of zeros: its order must not be raster order
    flat = torch.zeros(2, 64)
    flat[:, 5] = 1.0
    ranks = saliency_ranks(flat, torch.tensor([3, 4]), seed=0)
    assert ranks[:, 5].tolist() == [0, 0]  # the salient site still comes first
    for row in ranks:
        assert sorted(row.tolist()) == list(range(64))
        tied = [site for site in row.argsort().tolist() if site != 5]  # removal order within the tie
        assert tied != sorted(tied)
    assert not torch.equal(ranks[0], ranks[1])  # each sample has its own order
    again = saliency_ranks(flat, torch.tensor([3, 4]), seed=0)
    assert torch.equal(ranks, again)
    # the order depends on the sample id, not on its position in the batch
    alone = saliency_ranks(flat[1:], torch.tensor([4]), seed=0)
    assert torch.equal(alone[0], ranks[1])
    assert not torch.equal(saliency_ranks(flat, torch.tensor([3, 4]), seed=1), ranks)


def test_deletion_removes_tied_sites_in_a_seeded_random_order():
    from camkit.layout import Layout
    from camkit_plugins.metrics.faithfulness import perturbation_curve

    class TopLeft(torch.nn.Module):  # "probability" of class 0 grows with the top-left row's mean
        def forward(self, x):
            score = x[:, 0, 0, :].mean(dim=1)
            return torch.stack([score * 10, torch.zeros_like(score)], dim=1)

    x = torch.ones(1, 1, 8, 8)
    maps = torch.zeros(1, 8, 8)  # all tied: raster order would empty the top row in the first step
    batch = EvalBatch(model=TopLeft(), inputs=x, input_layout=Layout.parse("NCHW"), labels=torch.tensor([0]),
                      targets=torch.tensor([0]), maps=maps, map_letters="NHW", indices=torch.tensor([0]),
                      explain=None, seed=0)
    perturbation = camkit.lookup("perturbations", "zeros")()
    curve = perturbation_curve(batch, perturbation, steps=8, insert=False)
    again = perturbation_curve(batch, perturbation, steps=8, insert=False)
    assert torch.equal(curve, again)
    full, after_one_row = torch.softmax(torch.tensor([10.0, 0.0]), 0)[0], 0.5
    assert curve[0, 1].item() > after_one_row + 0.1  # not the whole top row gone after 8 of 64 sites
    assert curve[0, 0].item() == pytest.approx(full.item())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_road_noise_is_independent_of_the_random_baseline(seed):
    from camkit_plugins.metrics.baselines import random_maps
    from camkit_plugins.metrics.perturbations import _per_sample_noise

    indices = torch.arange(5, 9)
    maps = random_maps((4, 32, 32), indices, seed=seed)
    noise = _per_sample_noise(torch.zeros(4, 1, 32, 32), Layout.parse("NCHW"), indices)[:, 0]
    for row in range(4):  # at seed 1 both once came from the same generator (correlation -0.31)
        correlation = torch.corrcoef(torch.stack([maps[row].flatten(), noise[row].flatten()]))[0, 1]
        assert abs(correlation.item()) < 0.1


def test_randomize_draws_on_the_cpu_only_and_leaves_every_global_generator_alone(monkeypatch):
    import copy

    from camkit_plugins.metrics.sanity import randomize_

    def forbidden(*args):
        raise AssertionError("the CUDA generators must not be reseeded")

    torch.manual_seed(123)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", forbidden)
    monkeypatch.setattr(torch.cuda, "manual_seed", forbidden)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    twin, original = copy.deepcopy(model), copy.deepcopy(model)
    state = torch.get_rng_state()
    randomize_(list(model), seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream goes on untouched
    randomize_(list(twin), seed=7)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)  # the same seed, the same weights
    assert not torch.equal(model[0].weight, original[0].weight) and not torch.equal(model[2].weight, original[2].weight)


def test_chunk_size_is_chosen_for_the_input_size_on_a_cpu_and_changes_no_value():
    from camkit_plugins.metrics.base import CPU_FORWARD_ELEMENTS, GPU_CHUNK

    photos = torch.zeros(2, 3, 224, 224)
    assert make_batch(nn.Identity(), photos, photos[:, 0]).chunk_size == CPU_FORWARD_ELEMENTS // (3 * 224 * 224)
    assert make_batch(nn.Identity(), torch.zeros(2, 1, 28, 28), torch.zeros(2, 28, 28)).chunk_size == GPU_CHUNK
    assert make_batch(nn.Identity(), photos, photos[:, 0], chunk_size=5).chunk_size == 5  # given: kept
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        make_batch(nn.Identity(), photos, photos[:, 0], chunk_size=0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    x, maps = torch.rand(3, 1, 12, 12), torch.rand(3, 12, 12)
    auto = metric("pixel_flipping", features_in_step=8).evaluate(make_batch(model, x, maps)).values["curve"]
    tiny = metric("pixel_flipping", features_in_step=8).evaluate(make_batch(model, x, maps, chunk_size=1))
    torch.testing.assert_close(auto, tiny.values["curve"])


def test_road_solves_only_the_holes_box_and_gets_the_whole_grids_answer():
    from camkit_plugins.metrics import perturbations

    x = torch.rand(2, 3, 14, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    removed = torch.zeros(2, 1, 14, 12, dtype=torch.bool)
    removed[0, 0, 5:8, 4:7] = True  # inside: the box is 5 x 5 with its ring of kept pixels
    removed[1, 0, 0:3, 9:12] = True  # at a corner: the box is clipped to the grid
    assert perturbations._hole_box((~removed[:1]).double()) == (slice(4, 9), slice(3, 8))
    assert perturbations._hole_box((~removed[1:]).double()) == (slice(0, 4), slice(8, 12))
    road = camkit.lookup("perturbations", "road")(noise=0.0, exact=True, tolerance=1e-12)
    out = road.apply(x, removed, Layout.parse("NCHW"), torch.arange(2))
    for n in range(2):
        for c in range(3):
            torch.testing.assert_close(out[n, c], _dense_imputation(x[n, c], removed[n, 0]), atol=1e-9, rtol=0)
