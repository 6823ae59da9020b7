"""KPCA-CAM against scikit-learn's KernelPCA, Shapley-CAM against a hand-written Hessian-vector product, and
the two core hooks they use (maps returned directly, second-order derivatives)."""

import numpy as np
import pytest
import torch

import camkit
from camkit import explain
from camkit.methods import CamMethod, Weights
from camkit.targets import ClassReST
from tests.methods_models import DeepHead, GapNet, features_and_gradients, normalise


def sklearn_kpca_maps(f, **options):
    """(N, C, H, W) features -> (N, H, W): scikit-learn's KernelPCA(1) of each sample's channel-centred sites."""
    from sklearn.decomposition import KernelPCA

    maps = []
    for sample in f.double().numpy():
        sites = sample.reshape(sample.shape[0], -1).T
        sites = sites - sites.mean(axis=0)
        z = KernelPCA(n_components=1, eigen_solver="dense", **options).fit_transform(sites)[:, 0]
        maps.append(torch.from_numpy(z).float().view(sample.shape[1:]))
    return torch.stack(maps)


@pytest.mark.parametrize("options", [{"kernel": "rbf"}, {"kernel": "rbf", "gamma": 0.5}, {"kernel": "sigmoid"},
                                     {"kernel": "poly", "degree": 2}, {"kernel": "linear"}])
def test_kpcacam_is_scikit_learns_first_kernel_component(options):
    net = DeepHead().eval()
    x = torch.randn(3, 3, 6, 6)
    f, _, _ = features_and_gradients(net, net.features, x, torch.zeros(3, dtype=torch.long))
    got = explain(net, x, "kpcacam", layer="features", upsample=False, method_options=options)
    torch.testing.assert_close(got.maps, normalise(sklearn_kpca_maps(f, **options)), atol=1e-5, rtol=1e-4)


def test_kpcacam_with_a_linear_kernel_is_the_centred_principal_component():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    f, _, _ = features_and_gradients(net, net.features, x, torch.zeros(2, dtype=torch.long))
    expected = []
    for sample in f.double():
        p = sample.reshape(sample.shape[0], -1).T
        p = p - p.mean(0)
        projection = p @ torch.linalg.svd(p)[2][0]
        expected.append((projection * torch.sign(projection[projection.abs().argmax()])).float().view(6, 6))
    got = explain(net, x, "kpcacam", layer="features", upsample=False, method_options={"kernel": "linear"})
    torch.testing.assert_close(got.maps, normalise(torch.stack(expected)), atol=1e-5, rtol=1e-4)


def test_kpcacam_options_are_checked():
    from camkit.plugin_manager import lookup

    for bad in ({"kernel": "cosine"}, {"gamma": 0}, {"degree": 0}):
        with pytest.raises(ValueError):
            lookup("methods", "kpcacam")(**bad)


def shapley_by_hand(net, x, targets, score=None):
    """w_k = mean_s (g - H f / 2), by plain autograd, one sample at a time."""
    raw = []
    for n in range(x.shape[0]):
        f = net.features(x[n:n + 1]).detach().requires_grad_(True)
        with torch.enable_grad():
            out = net.head(f)
            s = out[0, targets[n]] if score is None else score(out, targets[n:n + 1])[0]
            g = torch.autograd.grad(s, f, create_graph=True)[0]
            hf = torch.autograd.grad(g, f, grad_outputs=f.detach())[0]
        w = (g - 0.5 * hf).detach().mean((2, 3))
        raw.append((w[0, :, None, None] * f.detach()[0]).sum(0))
    return normalise(torch.stack(raw))


def test_shapleycam_weights_are_the_gradient_minus_half_the_hessian_vector_product():
    net = DeepHead(classes=4).eval()
    x = torch.randn(3, 3, 6, 6)
    targets = torch.tensor([0, 3, 1])
    got = explain(net, x, "shapleycam", layer="features", targets=targets, upsample=False)
    expected = shapley_by_hand(net, x, targets)
    torch.testing.assert_close(got.maps, expected, atol=1e-5, rtol=1e-4)
    plain = explain(net, x, "gradcam", layer="features", targets=targets, upsample=False)
    assert (plain.maps - got.maps).abs().max() > 1e-3  # the tanh head is curved: the second-order term counts


def test_shapleycam_with_the_rest_target():
    net = DeepHead(classes=4).eval()
    x = torch.randn(2, 3, 6, 6)
    ids = torch.tensor([2, 1])

    def rest(out, t):
        return out.gather(1, t[:, None])[:, 0] + out.log_softmax(1).gather(1, t[:, None])[:, 0]

    got = explain(net, x, "shapleycam", layer="features", targets=ClassReST(ids), upsample=False)
    torch.testing.assert_close(got.maps, shapley_by_hand(net, x, ids, score=rest), atol=1e-5, rtol=1e-4)


def test_shapleycam_on_a_linear_head_is_gradcam():
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    shapley = explain(net, x, "shapleycam", layer="body", topk=2)
    torch.testing.assert_close(shapley.maps, explain(net, x, "gradcam", layer="body", topk=2).maps)


def test_second_order_needs_to_be_declared():
    class Peeks(CamMethod):
        name = "peeks"
        needs_gradients = True

        def weights(self, ctx):
            return Weights.channel(ctx.hessian_times_features.mean((2, 3)))

    with pytest.raises(RuntimeError, match="needs_hessian"):
        explain(GapNet(2).eval(), torch.randn(1, 3, 8, 8), Peeks(), layer="body")


def test_a_direct_map_of_the_wrong_shape_is_one_clear_error():
    class WrongMap(CamMethod):
        name = "wrong"

        def weights(self, ctx):
            return Weights.direct_map(torch.zeros(ctx.features.shape[0], 3, 3))

    with pytest.raises(ValueError, match=r"wrong returned a map of shape \(2, 3, 3\)"):
        explain(GapNet(2).eval(), torch.randn(2, 3, 8, 8), WrongMap(), layer="body")


def test_eigen_smoothing_refuses_a_direct_map():
    with pytest.raises(ValueError, match="gives its map directly"):
        camkit.explain(GapNet(2).eval(), torch.randn(2, 3, 8, 8), "kpcacam", layer="body", eigen_smooth=True)


def test_kpcacam_on_a_constant_feature_map_warns_and_gives_zeros():
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Identity()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))

    x = torch.ones(1, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    with pytest.warns(camkit.ConstantMapWarning):
        res = explain(Flat().eval(), x, "kpcacam", layer="body")
    assert torch.equal(res.maps, torch.zeros_like(res.maps)) and not np.isnan(res.maps.numpy()).any()


def test_shapleycam_on_a_vits_token_grid_follows_the_feature_transform():
    from tests.methods_models import TinyViT

    model = TinyViT().eval()
    x = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([1, 4])
    got = explain(model, x, "shapleycam", targets=targets, upsample=False)  # located: the last block's input
    seen = {}
    handle = model.blocks[-1].register_forward_pre_hook(lambda m, args: seen.setdefault("t", args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    t = seen["t"].detach().requires_grad_(True)
    with torch.enable_grad():
        out = model.head(model.norm(model.blocks[-1](t))[:, 0])
        g = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), t, create_graph=True)[0]
        hf = torch.autograd.grad(g, t, grad_outputs=t.detach())[0]
    patches, corrected = t.detach()[:, 1:], (g - 0.5 * hf).detach()[:, 1:]  # (N, 16, C): the 4 x 4 grid
    raw = torch.einsum("nsc,nc->ns", patches, corrected.mean(1)).view(2, 4, 4)
    torch.testing.assert_close(got.maps, normalise(raw), atol=1e-5, rtol=1e-4)
    assert hf[:, 1:].abs().amax() > 1e-4  # the LayerNorm head is curved: the second-order term is tested
