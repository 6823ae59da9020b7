"""SS-CAM and IS-CAM against explicit loops over samples, channels and mask variants."""

import pytest
import torch

from camkit import explain
from tests.methods_models import DeepHead, features_and_gradients, normalise


def score_variants_by_loop(net, x, targets, variant_masks):
    """sum_k mean_v softmax(net(x * variant_masks(mask, n, k)))[target] f_k, one forward at a time."""
    f, _, _ = features_and_gradients(net, net.features, x, targets)
    raw = torch.zeros(x.shape[0], *f.shape[2:])
    for n in range(x.shape[0]):
        for k in range(f.shape[1]):
            a = f[n, k]
            mask = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else torch.zeros_like(a)
            probs = []
            for m in variant_masks(mask, n, k):
                with torch.no_grad():
                    probs.append(net((x[n] * m)[None]).softmax(1)[0, targets[n]])
            raw[n] += torch.stack(probs).mean() * a
    return normalise(raw)


def test_iscam_integrates_the_score_along_the_scaled_masks():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    targets = torch.tensor([1, 0])
    steps = 4
    expected = score_variants_by_loop(net, x, targets,
                                      lambda mask, n, k: [mask * i / steps for i in range(1, steps + 1)])
    got = explain(net, x, "iscam", layer="features", targets=targets, upsample=False,
                  method_options={"num_samples": steps, "chunk_size": 3})
    torch.testing.assert_close(got.maps, expected, atol=1e-5, rtol=1e-4)
    one = explain(net, x, "iscam", layer="features", targets=targets, upsample=False, method_options={"num_samples": 1})
    score = explain(net, x, "scorecam", layer="features", targets=targets, upsample=False)
    torch.testing.assert_close(one.maps, score.maps, atol=1e-6, rtol=0)


def test_sscam_averages_the_score_over_noisy_masks():
    net = DeepHead().eval()
    x = torch.randn(2, 3, 6, 6)
    targets = torch.tensor([2, 1])
    samples, std, seed, channels = 3, 0.4, 5, 5
    generator = torch.Generator().manual_seed(seed)
    noise = [torch.randn((2 * channels, 6, 6), generator=generator) * std for _ in range(samples)]  # one chunk
    expected = score_variants_by_loop(net, x, targets,
                                      lambda mask, n, k: [mask + noise[m][n * channels + k] for m in range(samples)])
    got = explain(net, x, "sscam", layer="features", targets=targets, upsample=False,
                  method_options={"num_samples": samples, "std": std, "seed": seed, "chunk_size": 64})
    torch.testing.assert_close(got.maps, expected, atol=1e-5, rtol=1e-4)
    plain = explain(net, x, "sscam", layer="features", targets=targets, upsample=False,
                    method_options={"num_samples": 2, "std": 0.0})
    score = explain(net, x, "scorecam", layer="features", targets=targets, upsample=False)
    torch.testing.assert_close(plain.maps, score.maps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method,options", [("sscam", {"std": -1.0}), ("sscam", {"num_samples": 0}),
                                            ("iscam", {"num_samples": 0}), ("iscam", {"chunk_size": 0})])
def test_bad_options_are_clear_errors(method, options):
    with pytest.raises(ValueError, match="num_samples|std|chunk_size"):
        explain(DeepHead().eval(), torch.randn(1, 3, 6, 6), method, layer="features", method_options=options)
