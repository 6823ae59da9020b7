"""The contraction and its post-processing: oracle sums for every layout, numpy/torch parity."""

import warnings

import numpy as np
import pytest
import torch

import camkit
from camkit import Layout, class_activation_map, postprocess
from camkit.kernels import ConstantMapWarning

LAYOUTS = {
    "NCHW": (2, 3, 4, 5),
    "NHWC": (2, 4, 5, 3),
    "NCL": (2, 3, 7),
    "NLC": (2, 7, 3),
    "NCDHW": (2, 3, 2, 3, 4),
    "NCTHW": (2, 3, 2, 3, 4),
    "NCTV": (2, 3, 6, 5),
    "NCTVM": (2, 3, 6, 5, 2),
}


def oracle(features: np.ndarray, layout: str, weights: np.ndarray, per_site: bool = False) -> np.ndarray:
    """M(n, s) = sum_k w[n, k] f[n, k, s] written as an explicit Python loop over k."""
    f = np.moveaxis(features, (layout.index("N"), layout.index("C")), (0, 1))
    if per_site:
        weights = np.moveaxis(weights, (layout.index("N"), layout.index("C")), (0, 1))
    out = np.zeros((f.shape[0],) + f.shape[2:])
    for n in range(f.shape[0]):
        for k in range(f.shape[1]):
            out[n] += (weights[n, k] if per_site else weights[n, k]) * f[n, k]
    return out  # sites keep the layout's order: moving N and C to the front does not reorder them


@pytest.mark.parametrize("layout", LAYOUTS)
def test_channel_weights_match_python_sum(layout):
    rng = np.random.default_rng(1)
    f = rng.normal(size=LAYOUTS[layout])
    n, c = f.shape[layout.index("N")], f.shape[layout.index("C")]
    w = rng.normal(size=(n, c))
    expected = oracle(f, layout, w)
    got_np = class_activation_map(f, layout, channel_weights=w)
    got_t = class_activation_map(torch.from_numpy(f), layout, channel_weights=torch.from_numpy(w))
    np.testing.assert_allclose(got_np, expected, rtol=1e-10)
    np.testing.assert_allclose(got_t.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCTVM"])
def test_site_weights_and_multi_target_weights(layout):
    rng = np.random.default_rng(2)
    f = rng.normal(size=LAYOUTS[layout])
    n, c = f.shape[layout.index("N")], f.shape[layout.index("C")]
    site_w = rng.normal(size=f.shape)
    np.testing.assert_allclose(class_activation_map(f, layout, site_weights=site_w),
                               oracle(f, layout, site_w, per_site=True), rtol=1e-10)
    # K targets per sample: (N, K, C) gives (N, K, *sites), each slice the single-target map
    wk = rng.normal(size=(n, 3, c))
    multi = class_activation_map(torch.from_numpy(f), layout, channel_weights=torch.from_numpy(wk))
    assert multi.shape[:2] == (n, 3)
    for k in range(3):
        np.testing.assert_allclose(multi[:, k].numpy(), oracle(f, layout, wk[:, k]), rtol=1e-10)
    # a class matrix (K, C) shared by all samples
    classes = rng.normal(size=(4, c))
    shared = class_activation_map(f, layout, class_weights=classes)
    for k in range(4):
        np.testing.assert_allclose(shared[:, k], oracle(f, layout, np.tile(classes[k], (n, 1))), rtol=1e-10)


def test_site_weights_with_targets_axis():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(2, 3, 4, 5))
    w = rng.normal(size=(2, 2, 3, 4, 5))  # (N, K, C, H, W)
    got = class_activation_map(f, "NCHW", site_weights=w)
    for k in range(2):
        np.testing.assert_allclose(got[:, k], oracle(f, "NCHW", w[:, k], per_site=True), rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_torch_dtypes_stay(dtype):
    f = torch.randn(2, 3, 4, 4).to(dtype)
    w = torch.randn(2, 3)
    maps = class_activation_map(f, "NCHW", channel_weights=w)
    assert maps.dtype == dtype
    expected = torch.einsum("nchw,nc->nhw", f.double(), w.to(dtype).double())
    torch.testing.assert_close(maps.double(), expected, atol=0.05, rtol=0.02)


def test_contraction_errors_name_the_problem():
    f = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"NCHW.*rank|rank.*NCHW"):
        class_activation_map(torch.randn(2, 3, 4), "NCHW", channel_weights=torch.randn(2, 3))
    with pytest.raises(ValueError, match="channel_weights of shape"):
        class_activation_map(f, "NCHW", channel_weights=torch.randn(3, 3))
    with pytest.raises(ValueError, match="exactly one"):
        class_activation_map(f, "NCHW")
    with pytest.raises(ValueError, match="class_weights"):
        class_activation_map(f, "NCHW", class_weights=torch.randn(4, 5))


@pytest.mark.parametrize("spec, message", [
    ("NCHH", "twice"), ("CHW", "batch axis N"), ("NHW", "channel axis C"), ("NCXY", "unknown axis"),
    ("nchw", "upper-case"), ("", "non-empty"),
])
def test_malformed_layouts(spec, message):
    with pytest.raises(ValueError, match=message):
        Layout.parse(spec)


def test_layout_knows_axes():
    layout = Layout.parse("skeleton")
    assert layout.letters == "NCTVM"
    assert (layout.batch_axis, layout.channel_axis) == (0, 1)
    assert layout.continuous_letters == "T" and layout.reducible_letters == "M"
    assert layout.kind("V") == "discrete"
    assert Layout.parse("NHWC").map_letters() == "NHW"
    assert layout.map_letters(multi_target=True) == "NKTVM" and layout.map_letters(reduce="M") == "NTV"


def test_relu_normalize_resample_postprocess():
    maps = torch.tensor([[[-1.0, 0.0], [1.0, 3.0]]])  # (1, 2, 2)
    out = postprocess(maps, "NHW", layout="NCHW", relu=True, normalize=True)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.0], [1 / 3, 1.0]]]))
    up = postprocess(maps, "NHW", layout="NCHW", relu=False, normalize=False, size={"H": 4, "W": 4})
    ref = torch.nn.functional.interpolate(maps[:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(up, ref)


def test_constant_map_normalises_to_zero_with_warning():
    maps = torch.ones(2, 3, 3)
    maps[1] = torch.arange(9.0).view(3, 3)
    with pytest.warns(ConstantMapWarning, match="1 map"):
        out = postprocess(maps, "NHW", layout="NCHW")
    assert torch.equal(out[0], torch.zeros(3, 3)) and not out.isnan().any()
    assert out[1].max() == 1 and out[1].min() == 0


def test_joints_are_never_interpolated_and_persons_reduce():
    maps = torch.randn(2, 4, 5, 2)  # (N, T, V, M)
    out = postprocess(maps, "NTVM", layout="NCTVM", relu=False, normalize=False, size={"T": 8}, reduce="M")
    assert out.shape == (2, 8, 5)
    # time resampled only: each joint column is the 1-D linear resampling of the person-mean
    ref = torch.nn.functional.interpolate(maps.mean(-1).transpose(1, 2), size=8, mode="linear", align_corners=False)
    torch.testing.assert_close(out, ref.transpose(1, 2))
    with pytest.raises(ValueError, match="only continuous"):
        postprocess(maps, "NTVM", layout="NCTVM", size={"V": 10})
    with pytest.raises(ValueError, match="not reducible"):
        postprocess(maps, "NTVM", layout="NCTVM", reduce="V")


@pytest.mark.parametrize("letters, layout, size", [
    ("NHW", "NCHW", {"H": 9, "W": 5}),
    ("NKHW", "NCHW", {"H": 3, "W": 11}),
    ("NL", "NCL", {"L": 13}),
    ("NDHW", "NCDHW", {"D": 5, "H": 6, "W": 7}),
    ("NTV", "NCTV", {"T": 10}),
])
def test_numpy_and_torch_postprocess_agree(letters, layout, size):
    rng = np.random.default_rng(4)
    shape = [2] + [3 if ch == "K" else 4 for ch in letters[1:]]
    maps = rng.normal(size=shape)
    a = postprocess(maps, letters, layout=layout, size=size)
    b = postprocess(torch.from_numpy(maps), letters, layout=layout, size=size)
    assert a.shape == tuple(b.shape)
    np.testing.assert_allclose(a, b.numpy(), atol=1e-10)
    assert np.isclose(a.reshape(a.shape[0] * (3 if "K" in letters else 1), -1).max(axis=1), 1).all()


def test_numpy_parity_for_all_layouts_end_to_end():
    rng = np.random.default_rng(5)
    for layout, shape in LAYOUTS.items():
        f = rng.normal(size=shape)
        w = rng.normal(size=(shape[layout.index("N")], shape[layout.index("C")]))
        lay = Layout.parse(layout)
        letters = lay.map_letters()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            a = postprocess(class_activation_map(f, layout, channel_weights=w), letters, layout=layout,
                            size={ch: 9 for ch in lay.continuous_letters})
            b = postprocess(class_activation_map(torch.from_numpy(f), layout, channel_weights=torch.from_numpy(w)),
                            letters, layout=layout, size={ch: 9 for ch in lay.continuous_letters})
        np.testing.assert_allclose(a, b.numpy(), atol=1e-9, err_msg=layout)


def test_public_names_are_documented():
    for name in camkit.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(camkit, name)
        assert getattr(obj, "__doc__", None), f"camkit.{name} has no docstring"


def test_a_one_hot_weight_selects_exactly_that_channel():
    f = np.random.default_rng(6).normal(size=(1, 2, 3))
    np.testing.assert_allclose(class_activation_map(f, "NCL", channel_weights=np.array([[0.0, 1.0]]))[0], f[0, 1])


def test_layout_broadcast_spreads_a_site_tensor_onto_its_axes():
    mask = torch.rand(2, 5, 7)  # (N, T, V)
    spread = Layout.parse("NCTVM").broadcast(mask, "NTV")
    assert spread.shape == (2, 1, 5, 7, 1)
    torch.testing.assert_close(spread[:, 0, :, :, 0], mask)
    joints = torch.rand(2, 7)
    assert torch.equal(Layout.parse("NCTVM").broadcast(joints, "NV")[:, 0, 0, :, 0], joints)
    channels_last = Layout.parse("NHWC").broadcast(torch.rand(2, 3, 4), "NHW")
    assert channels_last.shape == (2, 3, 4, 1)
    swapped = Layout.parse("NCHW").broadcast(mask[:, :, :4].transpose(1, 2), "NWH")  # any order of axes
    torch.testing.assert_close(swapped[:, 0], mask[:, :, :4])
    with pytest.raises(ValueError, match="'D' not in it"):
        Layout.parse("NCHW").broadcast(torch.rand(2, 3), "ND")
