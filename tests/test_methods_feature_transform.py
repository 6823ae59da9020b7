"""Methods that rerun the model and read or rewrite the target layer (Ablation-CAM, Finer-CAM, Smooth
Grad-CAM++) through a ``feature_transform``: a permuted layout, and the token grid camkit finds for a ViT."""

import pytest
import torch

from camkit import explain
from tests.methods_models import GapNet, TinyViT, normalise

RERUNS = {"ablationcam": {"closed_form": False, "chunk_size": 4}, "finercam": {"comparisons": 2},
          "smoothgradcam++": {"closed_form": False, "std": 0.3, "num_samples": 2, "seed": 0}}


def to_nhwc(f):
    return f.permute(0, 2, 3, 1)


@pytest.mark.parametrize("method", sorted(RERUNS))
def test_a_permuted_layout_gives_the_same_maps(method):
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    plain = explain(net, x, method, layer="body", topk=2, method_options=RERUNS[method])
    permuted = explain(net, x, method, layer="body", layout="NHWC", feature_transform=to_nhwc, topk=2,
                       method_options=RERUNS[method])
    torch.testing.assert_close(permuted.maps, plain.maps, atol=1e-5, rtol=1e-4)


def test_a_transform_that_computes_values_cannot_be_written_back():
    net = GapNet(2).eval()
    with pytest.raises(ValueError, match="only selects and rearranges elements.*computes new values"):
        explain(net, torch.randn(2, 3, 8, 8), "ablationcam", layer="body", layout="NHWC",
                feature_transform=lambda f: to_nhwc(f) * 2, method_options=RERUNS["ablationcam"])


def test_smoothgradcampp_auto_takes_the_noisy_path_through_a_transform_that_computes_values():
    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    options = {"layer": "body", "layout": "NHWC", "feature_transform": lambda f: to_nhwc(f) * 2, "topk": 2}
    auto = explain(net, x, "smoothgradcam++", method_options={"std": 0.3, "num_samples": 2, "seed": 0}, **options)
    noisy = explain(net, x, "smoothgradcam++", method_options=RERUNS["smoothgradcam++"], **options)
    torch.testing.assert_close(auto.maps, noisy.maps)


class KeywordHead(torch.nn.Module):
    """A head called with its input as a keyword only: ``head(feats=x)``."""

    def __init__(self):
        super().__init__()
        self.pool, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(6, 4)

    def forward(self, *, feats):
        return self.fc(torch.tanh(self.pool(feats).flatten(1)))


class KeywordNet(torch.nn.Module):
    def __init__(self, keyword):
        super().__init__()
        torch.manual_seed(0)
        self.keyword = keyword
        self.body = GapNet(2).body
        self.head = KeywordHead()

    def forward(self, x):
        f = self.body(x)
        return self.head(feats=f) if self.keyword else self.head.fc(torch.tanh(self.head.pool(f).flatten(1)))


@pytest.mark.parametrize("method", sorted(RERUNS))
def test_reruns_replace_a_keyword_only_input(method):
    x = torch.randn(2, 3, 8, 8)
    keyword = explain(KeywordNet(True).eval(), x, method, layer="head:input", topk=2, method_options=RERUNS[method])
    positional = explain(KeywordNet(False).eval(), x, method, layer="body", topk=2, method_options=RERUNS[method])
    torch.testing.assert_close(keyword.maps, positional.maps, atol=1e-5, rtol=1e-4)


def test_on_a_vits_token_grid_finer_and_smooth_gradcampp_reduce_to_the_core_methods():
    model = TinyViT().eval()
    x = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([1, 3])
    options = {"targets": targets, "upsample": False}
    finer = explain(model, x, "finercam", method_options={"alpha": 0.0}, **options)
    torch.testing.assert_close(finer.maps, explain(model, x, "gradcam", **options).maps, atol=1e-5, rtol=1e-4)
    smooth = explain(model, x, "smoothgradcam++", method_options={"std": 0.0, "num_samples": 2}, **options)
    torch.testing.assert_close(smooth.maps, explain(model, x, "gradcam++", **options).maps, atol=1e-5, rtol=1e-4)
    assert finer.layer == "blocks.2:input" and finer.layout == "NHWC"


def test_ablationcam_on_a_vits_token_grid_zeroes_one_channel_of_the_patch_tokens():
    model = TinyViT().eval()
    x = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([0, 4])
    got = explain(model, x, "ablationcam", targets=targets, upsample=False, method_options={"chunk_size": 5})
    tokens = {}
    handle = model.blocks[2].register_forward_pre_hook(lambda m, args: tokens.setdefault("x", args[0].detach()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    patches = tokens["x"][:, 1:].reshape(2, 4, 4, 16)  # the class token first, then the 4 x 4 grid
    raw = torch.zeros(2, 4, 4)
    for n in range(2):
        score = logits[n, targets[n]]
        for k in range(16):
            ablated = tokens["x"][n:n + 1].clone()
            ablated[:, 1:, k] = 0  # the patch tokens' channel k; the class token keeps it
            handle = model.blocks[2].register_forward_pre_hook(lambda m, args, a=ablated: (a,))
            with torch.no_grad():
                drop = score - model(x[n:n + 1])[0, targets[n]]
            handle.remove()
            raw[n] += drop / score * patches[n, :, :, k]
    torch.testing.assert_close(got.maps, normalise(raw), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(RERUNS))
def test_reruns_scored_by_the_logit_refuse_another_target_and_take_class_scores(method):
    from camkit.targets import ClassProbability, ClassScore

    net = GapNet(2).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="class logit.*ClassProbability"):
        explain(net, x, method, targets=ClassProbability(1), method_options=RERUNS[method])
    by_score = explain(net, x, method, targets=ClassScore(1), method_options=RERUNS[method])
    by_id = explain(net, x, method, targets=1, method_options=RERUNS[method])
    torch.testing.assert_close(by_score.maps, by_id.maps)
