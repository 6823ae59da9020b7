"""LeGrad on a tiny vision transformer built here (and on a timm ViT when timm is installed) against the
formula written with plain autograd and hooks on the attention softmax."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from camkit import Explainer, explain
from camkit_plugins.methods.legrad import LeGrad, explicit_attention
from tests.methods_models import GapNet, TinyViT, normalise


def legrad_by_hand(model, x, targets, rows="mean", softmax_modules=None):
    """mean over blocks of relu(dS/dA) averaged over heads and rows, patch columns, on the 4 x 4 grid."""
    modules = softmax_modules or [m for m in model.modules() if isinstance(m, nn.Softmax)]
    seen = []
    handles = [m.register_forward_hook(lambda mod, i, o: seen.append(o)) for m in modules]
    try:
        with torch.enable_grad():
            out = model(x.clone().requires_grad_(True))
            grads = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), seen)
    finally:
        for h in handles:
            h.remove()
    total = 0
    for g in grads:
        e = g.clamp_min(0).mean(1)
        total = total + (e.mean(1) if rows == "mean" else e[:, 0])
    side = int((seen[0].shape[-1] - 1) ** 0.5)
    return (total[:, 1:] / len(grads)).view(len(x), side, side)


@pytest.mark.parametrize("rows", ["mean", "class"])
def test_legrad_is_the_mean_positive_attention_gradient(rows):
    model = TinyViT().eval()
    x = torch.randn(3, 3, 16, 16)
    targets = torch.tensor([4, 0, 2])
    got = explain(model, x, "legrad", targets=targets, upsample=False, method_options={"rows": rows})
    assert got.maps.shape == (3, 4, 4) and got.map_letters == "NHW"
    assert (got.maps.flatten(1).amax(1) == 1).all()  # no constant map
    torch.testing.assert_close(got.maps, normalise(legrad_by_hand(model, x, targets, rows)), atol=1e-5, rtol=1e-4)


def test_legrad_batch_equals_loop_and_topk_equals_one_target_at_a_time():
    model = TinyViT().eval()
    x = torch.randn(3, 3, 16, 16)
    batch = explain(model, x, "legrad")
    for i in range(3):
        torch.testing.assert_close(explain(model, x[i:i + 1], "legrad").maps[0], batch.maps[i], atol=1e-5, rtol=1e-4)
    top = explain(model, x, "legrad", topk=3)
    assert top.maps.shape == (3, 3, 16, 16) and torch.isfinite(top.maps).all()
    for k in range(3):
        one = explain(model, x, "legrad", targets=top.targets[:, k])
        torch.testing.assert_close(top.maps[:, k], one.maps, atol=1e-5, rtol=1e-4)


def test_legrad_picks_layers():
    model = TinyViT().eval()
    x = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([1, 3])
    got = explain(model, x, "legrad", targets=targets, upsample=False, method_options={"layers": [-1]})
    last = [model.blocks[-1].attn.softmax]
    torch.testing.assert_close(got.maps, normalise(legrad_by_hand(model, x, targets, softmax_modules=last)),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="3 attention blocks"):
        explain(model, x, "legrad", method_options={"layers": [5]})


def test_legrad_reads_the_attention_in_the_explained_forward_itself():
    model = TinyViT().eval()
    x = torch.randn(2, 3, 16, 16)
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        with Explainer(model, "legrad", upsample=False) as explainer:
            explainer(x)  # the first call also locates the features (a one-sample probe)
            calls.clear()
            got = explainer(x, topk=2)
            assert explainer._capture.features is None  # the recorded graph is not kept between calls
    finally:
        handle.remove()
    assert calls == [2]  # one forward of the batch: no forward of LeGrad's own
    for k in range(2):
        torch.testing.assert_close(got.maps[:, k], normalise(legrad_by_hand(model, x, got.targets[:, k])),
                                   atol=1e-5, rtol=1e-4)

    class OwnForward(LeGrad):  # as when another method wraps it: LeGrad runs a forward of its own
        records_forward = False

    own = explain(model, x, OwnForward(), targets=got.targets, upsample=False)
    torch.testing.assert_close(own.maps, got.maps, atol=1e-6, rtol=1e-5)


def test_legrad_leaves_the_model_as_found():
    model = TinyViT().train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    model.pos.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = {n: m.training for n, m in model.named_modules()}
    explain(model, torch.randn(2, 3, 16, 16), "legrad", topk=2)
    assert {n: m.training for n, m in model.named_modules()} == before
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.is_grad_enabled()


def test_legrad_works_with_frozen_parameters_and_in_inference_mode():
    model = TinyViT().eval()
    x = torch.randn(2, 3, 16, 16)
    expected = explain(model, x, "legrad").maps
    model.requires_grad_(False)
    with torch.inference_mode():
        got = explain(model, torch.randn(2, 3, 16, 16).copy_(x), "legrad").maps
    torch.testing.assert_close(got, expected)


def test_legrad_writes_out_fused_attention():
    x = torch.randn(2, 3, 16, 16)
    explicit = TinyViT().eval()
    fused = TinyViT(fused=True).eval()
    fused.load_state_dict(explicit.state_dict())
    mixed = TinyViT().eval()
    mixed.load_state_dict(explicit.state_dict())
    mixed.blocks[1].attn.fused = True  # one block fused, the others explicit: every block still counts
    expected = explain(explicit, x, "legrad", topk=2, upsample=False)
    for model in (fused, mixed):
        got = explain(model, x, "legrad", topk=2, upsample=False)
        torch.testing.assert_close(got.maps, expected.maps, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["plain", "bool mask", "float mask", "causal", "scale", "grouped"])
def test_explicit_attention_is_scaled_dot_product_attention(case):
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    options = {"bool mask": {"attn_mask": torch.rand(5, 5) > 0.3}, "float mask": {"attn_mask": torch.randn(5, 5)},
               "causal": {"is_causal": True}, "scale": {"scale": 0.7}}.get(case, {})
    if case == "bool mask":
        options["attn_mask"][:, 0] = True  # every query sees at least one key
    if case == "grouped":
        k, v, options = k[:, :2], v[:, :2], {"enable_gqa": True}
    attention, out = explicit_attention(q, k, v, **options)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, **options), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match="dropout_p"):
        explicit_attention(q, k, v, dropout_p=0.1)


def test_legrad_without_attention_or_on_token_sites_is_one_clear_error():
    with pytest.raises(ValueError, match="attention probabilities"):
        explain(GapNet(2).eval(), torch.randn(1, 3, 8, 8), "legrad", layer="body")
    with pytest.raises(ValueError, match="class token first"):
        explain(TinyViT().eval(), torch.randn(1, 3, 16, 16), "legrad", layer="blocks.2", layout="NLC",
                input_layout="NCHW")


def test_legrad_on_a_timm_vit():
    timm = pytest.importorskip("timm")
    model = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                             num_heads=2, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([0, 3])
    for block in model.blocks:
        block.attn.fused_attn = True  # timm's default: F.scaled_dot_product_attention
    fused = explain(model, x, "legrad", targets=targets, upsample=False)
    for block in model.blocks:
        block.attn.fused_attn = False
    got = explain(model, x, "legrad", targets=targets, upsample=False)
    torch.testing.assert_close(fused.maps, got.maps, atol=1e-5, rtol=1e-4)
    assert (got.maps.flatten(1).amax(1) == 1).all()  # no constant map
    # timm's attention: q k^T -> Tensor.softmax -> attn_drop (identity in eval): its output is A
    drops = [block.attn.attn_drop for block in model.blocks]
    torch.testing.assert_close(got.maps, normalise(legrad_by_hand(model, x, targets, softmax_modules=drops)),
                               atol=1e-5, rtol=1e-4)


def torchvision_vit_by_hand(model, x, targets):
    """torchvision's VisionTransformer replayed with its attention written out, the same LeGrad formula."""
    n = len(x)
    tokens = model.conv_proj(x).flatten(2).transpose(1, 2)
    h = torch.cat([model.class_token.expand(n, -1, -1), tokens], dim=1) + model.encoder.pos_embedding
    probabilities = []
    with torch.enable_grad():
        h = h.detach().requires_grad_(True)
        for block in model.encoder.layers:
            attention, y = block.self_attention, block.ln_1(h)
            heads, width = attention.num_heads, y.shape[-1] // attention.num_heads
            q, k, v = F.linear(y, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (t.view(n, -1, heads, width).transpose(1, 2) for t in (q, k, v))
            a = (q @ k.transpose(-2, -1) * width ** -0.5).softmax(-1)
            probabilities.append(a)
            h = h + attention.out_proj((a @ v).transpose(1, 2).reshape(n, -1, heads * width))
            h = h + block.mlp(block.ln_2(h))
        out = model.heads(model.encoder.ln(h)[:, 0])
        grads = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), probabilities)
    total = sum(g.clamp_min(0).mean(1).mean(1) for g in grads)
    side = int((total.shape[-1] - 1) ** 0.5)
    return (total[:, 1:] / len(grads)).view(n, side, side)


def test_legrad_on_torchvisions_vit_asks_multihead_attention_for_its_weights():
    import torchvision

    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                                 mlp_dim=64, num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: every gradient would be 0
    nn.init.normal_(model.encoder.pos_embedding)
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([2, 4])
    got = explain(model, x, "legrad", targets=targets, upsample=False)
    assert (got.maps.flatten(1).amax(1) == 1).all()  # no constant map
    torch.testing.assert_close(got.maps, normalise(torchvision_vit_by_hand(model, x, targets)), atol=1e-5, rtol=1e-4)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def per_block_legrad_by_hand(model, x, targets):
    """The paper's form: block l's own score head(norm(z^l)[:, 0]) against its own attention A^l."""
    probabilities, outputs = [], []
    handles = [b.attn.softmax.register_forward_hook(lambda m, i, o: probabilities.append(o)) for b in model.blocks]
    handles += [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in model.blocks]
    try:
        with torch.enable_grad():
            model(x.clone().requires_grad_(True))
            total = 0
            for z, a in zip(outputs, probabilities):
                score = model.head(model.norm(z)[:, 0]).gather(1, targets[:, None]).sum()
                total = total + torch.autograd.grad(score, a, retain_graph=True)[0].clamp_min(0).mean(1).mean(1)
    finally:
        for h in handles:
            h.remove()
    return (total[:, 1:] / len(probabilities)).view(len(x), 4, 4)


def test_legrad_with_per_block_scores_is_the_papers_form():
    model = TinyViT().eval()
    x = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([3, 0])
    got = explain(model, x, "legrad", targets=targets, upsample=False,
                  method_options={"score_projection": lambda z: model.head(model.norm(z)[:, 0])})
    assert (got.maps.flatten(1).amax(1) == 1).all()
    torch.testing.assert_close(got.maps, normalise(per_block_legrad_by_hand(model, x, targets)), atol=1e-5, rtol=1e-4)
    final = explain(model, x, "legrad", targets=targets, upsample=False)
    assert (final.maps - got.maps).abs().max() > 1e-3  # another formula than the output score's
    with pytest.raises(TypeError, match="score_projection"):
        explain(model, x, "legrad", method_options={"score_projection": 3})


def test_legrad_with_per_block_scores_matches_torchcams_legrad():
    tc = pytest.importorskip("torchcam.methods")
    import torchvision

    if not hasattr(tc, "LeGrad"):
        pytest.skip("torchcam without LeGrad")
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32,
                                                 mlp_dim=64, num_classes=5).eval()
    nn.init.normal_(model.heads.head.weight)
    x = torch.randn(2, 3, 32, 32)
    targets = [1, 3]

    def projection(z):
        return model.heads(model.encoder.ln(z)[:, 0])

    got = explain(model, x, "legrad", targets=torch.tensor(targets), upsample=False,
                  method_options={"score_projection": projection})
    with tc.LeGrad(model, list(model.encoder.layers), score_projection=projection) as extractor:
        scores = model(x)
        expected = extractor(targets, scores)[0]
    torch.testing.assert_close(got.maps, expected, atol=1e-5, rtol=1e-4)
