"""Grad-CAM element-wise, EigenGrad-CAM, FEM and Random-CAM against hand-written formulas."""

import pytest
import torch

from camkit import explain
from tests.methods_models import DeepHead, GapNet, features_and_gradients, normalise, numpy_projection_maps


def test_gradcam_elementwise_is_the_sum_of_positive_products():
    net = DeepHead().eval()
    x = torch.randn(3, 3, 6, 6)
    targets = torch.tensor([0, 2, 1])
    f, g, _ = features_and_gradients(net, net.features, x, targets)
    raw = (g * f).clamp_min(0).sum(1)
    got = explain(net, x, "gradcam-elementwise", layer="features", targets=targets, upsample=False)
    torch.testing.assert_close(got.maps, normalise(raw), atol=1e-5, rtol=1e-4)


def test_eigengradcam_is_the_projection_of_g_times_f_on_its_first_singular_vector():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    targets = torch.tensor([1, 2])
    f, g, _ = features_and_gradients(net, net.features, x, targets)
    expected = numpy_projection_maps(g * f)
    got = explain(net, x, "eigengradcam", layer="features", targets=targets, upsample=False)
    torch.testing.assert_close(got.maps, normalise(expected), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("centre", [False, True])
@pytest.mark.parametrize("layer", ["features", "features.0"])  # after the ReLU, and signed features before it
def test_segeigencam_projects_abs_g_times_f_and_makes_its_largest_extreme_positive(layer, centre):
    net = DeepHead().eval()
    x = torch.randn(3, 3, 6, 6)
    targets = torch.tensor([1, 2, 0])
    module = net.features if layer == "features" else net.features[0]
    f, g, _ = features_and_gradients(net, module, x, targets)
    weighted = (g.abs() * f).double()
    raw = []
    for n in range(3):
        matrix = weighted[n].flatten(1).T  # sites x channels
        matrix = matrix - matrix.mean(dim=0) if centre else matrix  # pytorch-grad-cam's form: centred
        v = torch.linalg.svd(matrix, full_matrices=False)[2][0]
        projection = (matrix @ v).view(6, 6)
        raw.append(-projection if projection.min().abs() > projection.max().abs() else projection)
    got = explain(net, x, "segeigencam", layer=layer, targets=targets, upsample=False,
                  method_options={"centre": centre})
    torch.testing.assert_close(got.maps, normalise(torch.stack(raw).float()), atol=1e-4, rtol=1e-3)


class FixedFeatures(torch.nn.Module):
    def __init__(self, features):
        super().__init__()
        self.register_buffer("features", features)

    def forward(self, x):  # the same features for every input (still differentiable for the head)
        return self.features.expand(len(x), -1, -1, -1) + 0 * x[:, :1]


def test_segeigencam_flips_a_projection_whose_largest_magnitude_is_negative():
    # one dominant channel (1, 1, 1, -5): its singular vector projects to a map whose extreme is negative
    features = torch.tensor([[[1.0, 1.0], [1.0, -5.0]], [[0.01, 0.0], [0.0, 0.0]]])[None]
    net = torch.nn.Sequential(FixedFeatures(features), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(2, 1))
    with torch.no_grad():
        net[3].weight.fill_(1.0)
    got = explain(net.eval(), torch.zeros(1, 1, 2, 2), "segeigencam", layer="0", targets=torch.tensor([0]),
                  upsample=False, relu=False, normalize=False)
    p = features[0].flatten(1).T.double() / 4  # |g| = 1 / 4 sites
    v = torch.linalg.svd(p, full_matrices=False)[2][0]
    projection = (p @ v).view(2, 2)
    expected = projection if projection.max() > -projection.min() else -projection
    torch.testing.assert_close(got.maps[0].double(), expected, atol=1e-6, rtol=1e-5)
    assert float(got.maps[0, 1, 1]) > 1.0  # the -5 site, now the positive extreme


def test_fem_weights_are_the_share_of_sites_above_k_sigma():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    f, _, _ = features_and_gradients(net, net.features, x, torch.tensor([0, 0]))
    for k in (1.0, 2.0):
        raw = torch.zeros(2, 6, 6)
        for n in range(2):
            for c in range(5):
                a = f[n, c]
                threshold = a.mean() + k * a.std(unbiased=False)
                raw[n] += (a > threshold).float().mean() * a
        got = explain(net, x, "fem", layer="features", upsample=False, method_options={"k": k})
        torch.testing.assert_close(got.maps, normalise(raw), atol=1e-5, rtol=1e-4)


def test_randomcam_draws_uniform_weights_from_its_seed():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    f, _, _ = features_and_gradients(net, net.features, x, torch.tensor([0, 0]))
    seed = 11
    u = 2 * torch.rand((2, 5), generator=torch.Generator().manual_seed(seed)) - 1
    got = explain(net, x, "randomcam", layer="features", upsample=False, method_options={"seed": seed})
    torch.testing.assert_close(got.maps, normalise(torch.einsum("nchw,nc->nhw", f, u)), atol=1e-5, rtol=1e-4)
    again = explain(net, x, "randomcam", layer="features", upsample=False, method_options={"seed": seed})
    assert torch.equal(got.maps, again.maps)
    other = explain(net, x, "randomcam", layer="features", upsample=False, method_options={"seed": seed + 1})
    assert not torch.equal(got.maps, other.maps)


@pytest.mark.parametrize("method", ["fem", "randomcam"])
def test_options_are_checked(method):
    from camkit.plugin_manager import lookup

    with pytest.raises(TypeError):
        lookup("methods", method)(bogus=1)


@pytest.mark.parametrize("n", [3, 49, 64, 100])  # 100: above the squaring size, eigh itself
def test_top_eigenvectors_equal_the_exact_decomposition(n):
    from camkit_plugins.methods.eigencam import top_eigenvectors

    a = torch.randn(6, n, 2 * n, dtype=torch.float64)
    gram = a @ a.transpose(1, 2)
    # nearly double top eigenvalues (the power method cannot settle them) and a zero matrix
    q = torch.linalg.qr(torch.randn(2, n, n, dtype=torch.float64))[0]
    spectrum = torch.linspace(0.5, 0.0, n, dtype=torch.float64).repeat(2, 1)
    spectrum[:, 0], spectrum[:, 1] = 1.0, torch.tensor([0.9999, 0.99999], dtype=torch.float64)
    near = q @ torch.diag_embed(spectrum) @ q.transpose(1, 2)
    gram = torch.cat([gram, near, torch.zeros(1, n, n, dtype=torch.float64)])
    got = top_eigenvectors(gram)
    exact = torch.linalg.eigh(gram)[1][..., -1]
    torch.testing.assert_close((got[:-1] * exact[:-1]).sum(1).abs(), torch.ones(8, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert torch.equal(got[-1], torch.zeros(n, dtype=torch.float64))


@pytest.mark.parametrize("dims", [1, 3])
def test_centred_segeigencam_in_1d_and_3d_topk_equals_one_target_at_a_time(dims):
    model = GapNet(dims).eval()
    x = torch.randn(2, 3, *([10] if dims == 1 else [4, 5, 5]))
    options = {"method_options": {"centre": True}, "upsample": False}
    top = explain(model, x, "segeigencam", topk=2, **options)
    assert top.maps.shape == (2, 2, *x.shape[2:]) and torch.isfinite(top.maps).all()
    for k in range(2):
        one = explain(model, x, "segeigencam", targets=top.targets[:, k], **options)
        torch.testing.assert_close(top.maps[:, k], one.maps, atol=1e-5, rtol=1e-4)


def test_centred_segeigencam_with_the_batch_axis_not_first():
    model = GapNet(1).eval()
    x = torch.randn(2, 3, 10)
    options = {"method_options": {"centre": True}, "upsample": False, "layer": "body", "targets": torch.tensor([1, 2])}
    batch_first = explain(model, x, "segeigencam", **options)
    length_first = explain(model, x, "segeigencam", layout="LNC", feature_transform=lambda f: f.permute(2, 0, 1),
                           input_layout="NCL", **options)
    torch.testing.assert_close(length_first.maps, batch_first.maps, atol=1e-5, rtol=1e-4)
