"""camkit's localisation metrics against Quantus 0.6 on the same inputs, per sample within 1e-5 (tiny
inputs; images, a skeleton NTV map and a 1-D signal; both feature conventions), and Quantus's faults:
camkit's value on a minimal case, the difference, and ``convention="quantus"`` reproducing Quantus."""

import warnings

import numpy as np
import pytest
import torch

import camkit
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch
from quantus_support import import_quantus

quantus = import_quantus()


def batch_of(maps, mask, inputs, layout="NCHW", letters="NHW"):
    n = maps.shape[0]
    return EvalBatch(model=None, inputs=inputs, input_layout=Layout.parse(layout), labels=torch.zeros(n).long(),
                     targets=torch.zeros(n).long(), maps=maps, map_letters=letters, indices=torch.arange(n),
                     explain=lambda *a: maps, mask=mask)


def camkit_values(name, batch, value, **options):
    return camkit.lookup("metrics", name)(**options).evaluate(batch).values[value].double().numpy()


def quantus_values(cls, a, s, x, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = getattr(quantus, cls)(disable_warnings=True, **options)(
            model=None, x_batch=x, y_batch=np.zeros(len(x), dtype=int), a_batch=a.copy(), s_batch=s.copy())
    return np.asarray(scores, dtype=np.float64)


def image_case(n=5, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, size, size, generator=g, dtype=torch.float64)
    mask = torch.rand(n, size, size, generator=g) < 0.3
    mask[:, 0, 0] = True  # never empty
    mask[:, -1, -1] = False  # never full
    x = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    return maps, mask, x


# (camkit name, value, scale to Quantus's, Quantus class, options)
CASES = [
    ("pointing_game", "hit_rate", 0.01, "PointingGame", {}),
    ("top_k_intersection", "intersection", 1, "TopKIntersection", {"k": 7}),
    ("top_k_intersection", "intersection", 1, "TopKIntersection", {"k": 7, "concept_influence": True}),
    ("relevance_mass_accuracy", "mass_accuracy", 1, "RelevanceMassAccuracy", {}),
    ("relevance_rank_accuracy", "rank_accuracy", 1, "RelevanceRankAccuracy", {}),
    ("attribution_localisation", "localisation", 1, "AttributionLocalisation", {}),
    ("attribution_localisation", "localisation", 1, "AttributionLocalisation", {"positive_attributions": True,
                                                                                 "abs": False}),
    ("auc", "auc", 1, "AUC", {}),
]


@pytest.mark.parametrize("name,value,scale,cls,options", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_image_maps_match_quantus_per_sample(name, value, scale, cls, options):
    maps, mask, x = image_case()
    maps[1] -= 0.3  # signed relevance in one sample
    mask_q = mask[:, None].double().numpy()
    ours = scale * camkit_values(name, batch_of(maps, mask, x), value, **options)
    quantus_like = scale * camkit_values(name, batch_of(maps, mask, x), value, convention="quantus", **options)
    theirs = quantus_values(cls, maps[:, None].numpy(), mask_q, x.numpy(), **options)
    np.testing.assert_allclose(quantus_like, theirs, atol=1e-5)
    unsigned = [0, 2, 3, 4]  # relevance mass accuracy counts positive relevance only (see the fault tests)
    np.testing.assert_allclose(ours[unsigned], theirs[unsigned], atol=1e-5)


@pytest.mark.parametrize("name,value,scale,cls,options", CASES[:6], ids=[c[0] for c in CASES[:6]])
def test_skeleton_and_signal_maps_match_quantus_on_flattened_features(name, value, scale, cls, options):
    g = torch.Generator().manual_seed(1)
    for letters, layout, sites, input_shape in (("NTV", "NCTVM", (6, 5), (4, 3, 6, 5, 2)),
                                                ("NL", "NCL", (30,), (4, 2, 30))):
        maps = torch.rand(4, *sites, generator=g, dtype=torch.float64)
        mask = torch.rand(4, *sites, generator=g) < 0.4
        mask.reshape(4, -1)[:, 0] = True
        x = torch.rand(*input_shape, generator=g, dtype=torch.float64)
        ours = scale * camkit_values(name, batch_of(maps, mask, x, layout, letters), value, **options)
        # Quantus sees the same features as a (N, 1, S) signal
        flat_x = np.zeros((4, 1, maps[0].numel()))
        theirs = quantus_values(cls, maps.reshape(4, 1, -1).numpy(), mask.reshape(4, 1, -1).double().numpy(),
                                flat_x, **options)
        np.testing.assert_allclose(ours, theirs, atol=1e-5, err_msg=letters)


def test_element_features_count_input_elements():
    """features="element": each channel of each pixel is a feature (the map broadcast onto the input), so
    top-k's k counts elements; Quantus's localisation metrics crash on such channel-expanded attributions
    (its masks must have one channel)."""
    maps, mask, x = image_case()
    batch = batch_of(maps, mask, x)
    ours = camkit_values("top_k_intersection", batch, "intersection", k=7, features="element")
    # 7 elements = the 2 highest sites (3 channels each) and one channel of the third
    order = maps.reshape(5, -1).argsort(dim=1, descending=True)
    inside = mask.reshape(5, -1).gather(1, order[:, :3]).double()
    np.testing.assert_allclose(ours, ((3 * inside[:, 0] + 3 * inside[:, 1] + inside[:, 2]) / 7).numpy(), atol=1e-12)
    for name, value in (("relevance_rank_accuracy", "rank_accuracy"), ("auc", "auc"),
                        ("relevance_mass_accuracy", "mass_accuracy"), ("pointing_game", "hit_rate")):
        np.testing.assert_allclose(camkit_values(name, batch, value, features="element"),
                                   camkit_values(name, batch, value), atol=1e-12)  # repeating features: no change
    a3 = np.repeat(maps[:, None].numpy(), 3, axis=1)
    with pytest.raises((IndexError, ValueError)):
        quantus_values("TopKIntersection", a3, mask[:, None].double().numpy(), x.numpy(), k=7)


def test_focus_matches_quantus_on_a_crafted_mosaic():
    from camkit_plugins.metrics.localization import build_mosaics, mosaic_masks

    # a 2 x 2 mosaic of 4 x 4 tiles; the target's tiles are top-left and bottom-right
    maps = torch.zeros(2, 8, 8, dtype=torch.float64)
    maps[0, :4, :4] = 1.0  # all relevance on a target tile
    maps[0, 4:, :4] = -2.0  # negative relevance does not count
    maps[1, :4, 4:] = 3.0  # 3 units on a wrong tile
    maps[1, 4:, 4:] = 1.0  # 1 unit on a target tile
    flags = torch.tensor([[1, 0, 0, 1], [1, 0, 0, 1]])
    mask = mosaic_masks(flags, (8, 8))
    assert mask[0, :4, :4].all() and mask[0, 4:, 4:].all() and mask[0].sum() == 32
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ours = camkit_values("focus", batch_of(maps, mask, x), "focus")
    np.testing.assert_allclose(ours, [1.0, 0.25])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.Focus(disable_warnings=True)(model=model, x_batch=x.float().numpy(), y_batch=np.zeros(2, int),
                                                      a_batch=maps[:, None].numpy(), custom_batch=flags.numpy())
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # mosaics built from labelled images: two target tiles per mosaic, the mask on them
    images = torch.arange(6, dtype=torch.float64)[:, None, None, None].expand(6, 1, 4, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    built = build_mosaics(images, labels, mosaics_per_class=2, seed=3)
    assert built["inputs"].shape == (6, 1, 8, 8) and built["mask"].shape == (6, 8, 8)
    for inputs, target, tiles, index, m in zip(built["inputs"], built["targets"], built["tile_labels"],
                                               built["source_indices"], built["mask"]):
        assert (tiles == target).sum() == 2 and (labels[index] == tiles).all()
        corners = [inputs[0, 0, 0], inputs[0, 0, 4], inputs[0, 4, 0], inputs[0, 4, 4]]
        assert [int(c) for c in corners] == index.tolist()
        assert m.sum() == 32 and all(m[r, c] == (tiles[i] == target) for i, (r, c) in
                                     enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]))
    assert (build_mosaics(images, labels, 2, seed=3)["source_indices"] == built["source_indices"]).all()


# ---------------------------------------------------------------- Quantus's faults


def test_pointing_game_empty_mask_and_constant_map_are_not_hits():
    maps = torch.zeros(3, 4, 4, dtype=torch.float64)
    maps[0, 1, 1] = 1.0
    maps[1] = 0.5  # constant: points nowhere
    maps[2, 2, 2] = 1.0
    mask = torch.zeros(3, 4, 4, dtype=torch.bool)
    mask[1:, 0, 0] = True  # sample 0: empty mask
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    batch = batch_of(maps, mask, x)
    ours = camkit_values("pointing_game", batch, "hit_rate")
    assert np.isnan(ours[0]) and ours[1:].tolist() == [0.0, 0.0]
    theirs = quantus_values("PointingGame", maps[:, None].numpy(), mask[:, None].double().numpy(), x.numpy())
    assert theirs.tolist() == [1.0, 1.0, 0.0]  # Quantus: both hits
    assert (camkit_values("pointing_game", batch, "hit_rate", convention="quantus") / 100).tolist() == theirs.tolist()


def test_pointing_game_ties_count_by_share_and_weighted_works():
    maps = torch.zeros(1, 4, 4, dtype=torch.float64)
    maps[0, 0, 0] = maps[0, 3, 3] = 1.0  # two maxima, one inside
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, :2] = True
    batch = batch_of(maps, mask, torch.zeros(1, 1, 4, 4))
    assert camkit_values("pointing_game", batch, "hit_rate").tolist() == [50.0]
    assert camkit_values("pointing_game", batch, "hit_rate", convention="quantus").tolist() == [100.0]
    # weighted: a hit on 2 of 16 sites scores 1 - 2/16 (Quantus 0.6 raises here)
    assert camkit_values("pointing_game", batch, "hit_rate", weighted=True).tolist() == [50.0 * 14 / 16]
    with pytest.raises(Exception):
        quantus_values("PointingGame", maps[:, None].numpy(), mask[:, None].double().numpy(),
                       np.zeros((1, 1, 4, 4)), weighted=True)


def test_attribution_localisation_weighted_does_not_depend_on_the_batch_size():
    maps, mask, x = image_case(n=4)
    ours = camkit_values("attribution_localisation", batch_of(maps, mask, x), "localisation", weighted=True)
    single = [camkit_values("attribution_localisation", batch_of(maps[i:i + 1], mask[i:i + 1], x[i:i + 1]),
                            "localisation", weighted=True)[0] for i in range(4)]
    np.testing.assert_allclose(ours, single, atol=1e-12)
    plain = camkit_values("attribution_localisation", batch_of(maps, mask, x), "localisation")
    np.testing.assert_allclose(ours, plain * mask.reshape(4, -1).double().mean(dim=1).numpy(), atol=1e-12)
    theirs = quantus_values("AttributionLocalisation", maps[:, None].numpy(), mask[:, None].double().numpy(),
                            x.numpy(), weighted=True)
    # Quantus divides by x_batch[2:].size = 2 samples x 3 x 8 x 8 elements instead of the 64 sites
    np.testing.assert_allclose(theirs, ours * 64 / (2 * 3 * 64), atol=1e-5)
    quantus_like = camkit_values("attribution_localisation", batch_of(maps, mask, x), "localisation",
                                 weighted=True, convention="quantus")
    np.testing.assert_allclose(quantus_like, theirs, atol=1e-5)


def test_attribution_localisation_max_size_leaves_large_truths_out():
    maps, mask, x = image_case(n=3)
    mask[0] = True
    mask[0, 0, :2] = False  # 62 of 64 sites
    values = camkit_values("attribution_localisation", batch_of(maps, mask, x), "localisation", max_size=0.5)
    assert np.isnan(values[0]) and np.isfinite(values[1:]).all()
    quantus_like = camkit_values("attribution_localisation", batch_of(maps, mask, x), "localisation", max_size=0.5,
                                 convention="quantus")
    assert np.isfinite(quantus_like).all()  # Quantus only warns


def test_relevance_mass_accuracy_counts_positive_relevance_only():
    maps = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]], dtype=torch.float64)  # +1 inside, -1 outside
    mask = torch.tensor([[[True, False], [False, False]]])
    batch = batch_of(maps, mask, torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    assert camkit_values("relevance_mass_accuracy", batch, "mass_accuracy").tolist() == [1.0]
    theirs = quantus_values("RelevanceMassAccuracy", maps[:, None].numpy(), mask[:, None].double().numpy(),
                            np.zeros((1, 1, 2, 2)))
    assert np.isnan(theirs[0]) or np.isinf(theirs[0])  # Quantus: 1 / (1 - 1)
    quantus_like = camkit_values("relevance_mass_accuracy", batch, "mass_accuracy", convention="quantus")
    assert np.isinf(quantus_like[0]) or np.isnan(quantus_like[0])
    # the energy pointing game is the same metric under its earlier name, in %
    assert camkit_values("energy_pointing_game", batch, "energy").tolist() == [100.0]
    assert camkit.lookup("metrics", "energy_pointing_game")().primary == "energy"


def test_top_k_ties_count_by_share_not_by_index():
    maps = torch.zeros(1, 2, 4, dtype=torch.float64)
    maps[0, 0, 0] = 1.0
    maps[0, 1, :] = 0.5  # four sites tie for places 2..5
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 3] = True
    batch = batch_of(maps, mask, torch.zeros(1, 1, 2, 4))
    # top 3: the 1.0 (inside) and 2 of the 4 tied sites, each inside with probability 1/4
    assert camkit_values("top_k_intersection", batch, "intersection", k=3).tolist() == [pytest.approx((1 + 0.5) / 3)]
    # K = |truth| = 2: the 1.0 and one tied site
    assert camkit_values("relevance_rank_accuracy", batch, "rank_accuracy").tolist() == [pytest.approx(1.25 / 2)]
    # AUC: the 1.0 beats all 6 negatives; the inside 0.5 beats 3 zeros and ties 3 of the 0.5s
    assert camkit_values("auc", batch, "auc").tolist() == [pytest.approx((6 + 3 + 1.5) / 12)]


def test_bad_input_is_a_clear_error():
    maps, mask, x = image_case(n=2)
    with pytest.raises(ValueError, match="k=100 but the maps have 64 features"):
        camkit_values("top_k_intersection", batch_of(maps, mask, x), "intersection", k=100)
    with pytest.raises(ValueError, match="does not match maps"):
        camkit_values("auc", batch_of(maps, mask[:, :4], x), "auc")
    bad = maps.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        camkit_values("auc", batch_of(bad, mask, x), "auc")
    with pytest.raises(ValueError, match="features='pixel'"):
        camkit.lookup("metrics", "auc")(features="pixel")
    with pytest.raises(ValueError, match="convention='captum'"):
        camkit.lookup("metrics", "focus")(convention="captum")


def test_per_sample_values_do_not_depend_on_the_batch():
    maps, mask, x = image_case(n=4)
    for name, value in (("pointing_game", "hit_rate"), ("top_k_intersection", "intersection"),
                        ("relevance_rank_accuracy", "rank_accuracy"), ("auc", "auc"),
                        ("attribution_localisation", "localisation"), ("focus", "focus")):
        options = {"k": 5} if name == "top_k_intersection" else {}
        whole = camkit_values(name, batch_of(maps, mask, x), value, **options)
        parts = np.concatenate([camkit_values(name, batch_of(maps[i:i + 1], mask[i:i + 1], x[i:i + 1]), value,
                                              **options) for i in range(4)])
        np.testing.assert_allclose(whole, parts, atol=1e-12, err_msg=name)


def test_auc_with_many_ties_equals_scikit_learn():
    from sklearn.metrics import roc_auc_score

    maps, mask, x = image_case(n=4, seed=7)
    maps = (maps * 4).floor() / 4  # five levels: large ties
    values = camkit_values("auc", batch_of(maps, mask, x), "auc")
    expected = [roc_auc_score(m.ravel().numpy(), a.ravel().numpy()) for a, m in zip(maps, mask)]
    np.testing.assert_allclose(values, expected, atol=1e-12)
