"""Ablation-CAM against an explicit loop that zeroes one channel at a time, in closed form and by ablation."""

import pytest
import torch

from camkit import explain
from tests.methods_models import DeepHead, GapNet, normalise


def ablation_by_loop(net, layer, x, targets):
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("f", o.detach()))
    with torch.no_grad():
        logits = net(x)
    handle.remove()
    f = seen["f"]
    raw = torch.zeros(x.shape[0], *f.shape[2:])
    for n in range(x.shape[0]):
        score = logits[n, targets[n]]
        for k in range(f.shape[1]):
            ablated = f[n:n + 1].clone()
            ablated[:, k] = 0
            handle = layer.register_forward_hook(lambda m, i, o, a=ablated: a)
            with torch.no_grad():
                drop = score - net(x[n:n + 1])[0, targets[n]]
            handle.remove()
            raw[n] += drop / score * f[n, k]
    return normalise(raw)


@pytest.mark.parametrize("closed_form", ["auto", False])
def test_ablationcam_on_a_gap_linear_head_matches_the_loop(closed_form):
    net = GapNet(2).eval()
    x = torch.randn(3, 3, 8, 8)
    targets = net(x).argmax(1)
    got = explain(net, x, "ablationcam", targets=targets, upsample=False,
                  method_options={"closed_form": closed_form, "chunk_size": 4})
    torch.testing.assert_close(got.maps, ablation_by_loop(net, net.body, x, targets), atol=1e-5, rtol=1e-4)


def test_ablationcam_closed_form_needs_no_ablation_forward_and_a_deep_head_is_ablated():
    calls = []
    net = GapNet(2).eval()
    handle = net.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    explain(net, torch.randn(3, 3, 8, 8), "ablationcam")
    handle.remove()
    assert calls == [1, 3, 3]  # the one-sample probe locating the features, the explained forward, the head check
    deep = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    targets = torch.tensor([2, 0])
    calls.clear()
    handle = deep.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    got = explain(deep, x, "ablationcam", layer="features", targets=targets, upsample=False,
                  method_options={"chunk_size": 3})
    handle.remove()
    # forward, the one-sample probe finding the classifier, head check, 10 (sample, channel) pairs in chunks of 3
    assert calls == [2, 1, 2, 3, 3, 3, 1]
    torch.testing.assert_close(got.maps, ablation_by_loop(deep, deep.features, x, targets), atol=1e-5, rtol=1e-4)


def test_ablationcam_options_are_clear_errors():
    with pytest.raises(ValueError, match="chunk_size"):
        explain(GapNet(2).eval(), torch.randn(2, 3, 8, 8), "ablationcam", method_options={"chunk_size": 0})
    with pytest.raises(ValueError, match="closed_form"):
        explain(GapNet(2).eval(), torch.randn(2, 3, 8, 8), "ablationcam", method_options={"closed_form": "yes"})
