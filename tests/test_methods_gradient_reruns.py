"""Finer-CAM and Smooth Grad-CAM++ against hand-written formulas with plain autograd."""

import warnings

import pytest
import torch

from camkit import explain
from tests.methods_models import DeepHead, GapNet, features_and_gradients, normalise


def finer_by_hand(net, x, target, alpha, m):
    seen = {}
    handle = net.features.register_forward_hook(lambda mod, i, o: seen.setdefault("f", o))
    with torch.enable_grad():
        out = net(x)
        handle.remove()
        raw = []
        for n in range(x.shape[0]):
            c = int(target[n])
            order = [j for j in (out[n] - out[n, c]).abs().argsort().tolist() if j != c][:m]
            p = out[n].softmax(0)[order].detach()
            p = p / p.sum()
            score = out[n, c] - alpha * (p * out[n, order]).sum()
            g = torch.autograd.grad(score, seen["f"], retain_graph=True)[0][n]
            raw.append((g.mean((1, 2))[:, None, None] * seen["f"][n]).sum(0))
    return normalise(torch.stack(raw).detach())


@pytest.mark.parametrize("alpha,m", [(1.0, 2), (0.5, 1)])
def test_finercam_is_gradcam_of_the_score_minus_its_look_alikes(alpha, m):
    net = DeepHead(classes=5).eval()
    x = torch.randn(3, 3, 6, 6)
    targets = torch.tensor([0, 4, 2])
    got = explain(net, x, "finercam", layer="features", targets=targets, upsample=False,
                  method_options={"alpha": alpha, "comparisons": m})
    torch.testing.assert_close(got.maps, finer_by_hand(net, x, targets, alpha, m), atol=1e-5, rtol=1e-4)


def test_finercam_with_alpha_zero_is_gradcam():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    a = explain(net, x, "finercam", layer="features", topk=2, method_options={"alpha": 0.0})
    b = explain(net, x, "gradcam", layer="features", topk=2)
    torch.testing.assert_close(a.maps, b.maps, atol=1e-5, rtol=1e-4)


def test_smoothgradcampp_with_no_noise_is_gradcampp():
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    a = explain(net, x, "smoothgradcam++", topk=2, method_options={"std": 0.0, "num_samples": 2})
    b = explain(net, x, "gradcam++", topk=2)
    torch.testing.assert_close(a.maps, b.maps, atol=1e-5, rtol=1e-4)


def test_smoothgradcampp_averages_derivatives_over_the_noisy_copies():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    targets = torch.tensor([1, 2])
    samples, std, seed = 3, 0.5, 7
    noise = torch.randn((samples, *x.shape), generator=torch.Generator().manual_seed(seed)) * std
    grads = torch.stack([features_and_gradients(net, net.features, x + noise[m], targets)[1] for m in range(samples)])
    f = features_and_gradients(net, net.features, x, targets)[0]
    d1, d2, d3 = [(grads.double() ** p).mean(0) for p in (1, 2, 3)]
    alpha = d2 / (2 * d2 + f.double().sum((2, 3), keepdim=True) * d3)
    w = (torch.nan_to_num(alpha) * d1.clamp_min(0)).sum((2, 3))
    raw = torch.einsum("nchw,nc->nhw", f, w.float())
    for chunk in (64, 2):  # all copies in one forward, or one noise draw per forward
        got = explain(net, x, "smoothgradcam++", layer="features", targets=targets, upsample=False,
                      method_options={"num_samples": samples, "std": std, "seed": seed, "chunk_size": chunk})
        torch.testing.assert_close(got.maps, normalise(raw), atol=1e-5, rtol=1e-4)


def test_smoothgradcampp_on_a_gap_linear_head_is_gradcampp_without_noisy_forwards():
    # dS_c/df = W_c / sites for every input: every noisy copy has the clean derivatives
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    calls = []
    handle = net.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        closed = explain(net, x, "smoothgradcam++", topk=2, method_options={"std": 0.5, "num_samples": 3, "seed": 1})
        assert calls == [1, 2, 2]  # the probe locating the features, the explained forward, the head check
        calls.clear()
        noisy = explain(net, x, "smoothgradcam++", topk=2,
                        method_options={"std": 0.5, "num_samples": 3, "seed": 1, "closed_form": False})
        assert calls[-2:] == [2, 6]  # the forward, the 3 x 2 noisy copies in one chunk
    finally:
        handle.remove()
    plus = explain(net, x, "gradcam++", topk=2)
    torch.testing.assert_close(closed.maps, noisy.maps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(closed.maps, plus.maps, atol=1e-5, rtol=1e-4)
    assert float(closed.maps.std()) > 0.1


def test_smoothgradcampp_auto_sees_a_head_linear_only_on_positive_pooled_values():
    # GAP -> ReLU -> linear with every pooled value positive at the clean input: rescaling channels by
    # positive factors would find the head linear; the noisy copies cross the ReLU's kink
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1, bias=False), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.ReLU(), torch.nn.Linear(4, 3)).eval()
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[4].weight.copy_(torch.arange(12.0).view(3, 4) / 10 - 0.5)
    x = torch.full((2, 3, 1, 2), 0.2)
    options = {"std": 2.0, "num_samples": 4, "seed": 0}
    raw = {"layer": "0", "targets": torch.tensor([0, 2]), "relu": False, "normalize": False, "upsample": False}
    auto = explain(net, x, "smoothgradcam++", method_options=options, **raw)
    noisy = explain(net, x, "smoothgradcam++", method_options={**options, "closed_form": False}, **raw)
    closed = explain(net, x, "smoothgradcam++", method_options={**options, "closed_form": True}, **raw)
    torch.testing.assert_close(auto.maps, noisy.maps)
    assert not torch.allclose(closed.maps, noisy.maps, atol=1e-3)  # trusting the head would be wrong here


def test_smoothgradcampp_auto_runs_the_noisy_copies_on_a_deep_head():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    options = {"std": 0.5, "num_samples": 2, "seed": 3}
    auto = explain(net, x, "smoothgradcam++", layer="features", targets=torch.tensor([1, 2]), upsample=False,
                   method_options=options)
    noisy = explain(net, x, "smoothgradcam++", layer="features", targets=torch.tensor([1, 2]), upsample=False,
                    method_options={**options, "closed_form": False})
    assert torch.equal(auto.maps, noisy.maps)
    with pytest.raises(ValueError, match="closed_form"):
        explain(net, x, "smoothgradcam++", layer="features", method_options={"closed_form": "yes"})


def test_rerun_methods_refuse_bad_options():
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="comparisons"):
        explain(net, x, "finercam", method_options={"comparisons": 0})
    with pytest.raises(ValueError, match="std"):
        explain(net, x, "smoothgradcam++", method_options={"std": -1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one_class = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                        torch.nn.Flatten(), torch.nn.Linear(2, 1)).eval()
        with pytest.raises(ValueError, match="two classes"):
            explain(one_class, x, "finercam")


@pytest.mark.parametrize("method", ["finercam", "smoothgradcam++"])
def test_reruns_record_autograd_only_after_the_target_layer(method):
    net = GapNet(2).eval()
    seen = []
    handle = net.body[0].register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    options = {"closed_form": False} if method == "smoothgradcam++" else {}  # GapNet: no rerun otherwise
    try:
        explain(net, torch.randn(2, 3, 8, 8), method, layer="body", method_options=options)
    finally:
        handle.remove()
    assert seen and not any(seen)  # the layers before the target never build a graph
