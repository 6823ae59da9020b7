"""Every registered method, selectable by name on every surface: ``camkit.explain(..., method=name)``,
``camkit explain --method NAME`` and ``camkit bench --methods NAME``, on tiny models (a CNN with batch norm
and ReLU modules; a tiny ViT for LeGrad), and the composed ``<method>+sess``."""

import textwrap

import numpy as np
import pytest
import torch
from torchvision.io import write_png

import camkit
from camkit.cli import main
from camkit.plugin_manager import set_plugin_manager

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning", "ignore::camkit.HeadMismatchWarning")

PLUGIN = textwrap.dedent('''
    """Tiny models and a 3-channel toy data set for the method-name tests."""
    import torch
    import torch.nn as nn

    from camkit.hookspecs import hookimpl


    class TinyViT(nn.Module):
        def __init__(self, num_classes=3, dim=8):
            super().__init__()
            self.patch = nn.Conv2d(3, dim, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, dim))
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.softmax = nn.Softmax(dim=-1)
            self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(len(x), -1, -1), t], dim=1)
            q, k, v = self.qkv(t).chunk(3, dim=-1)
            t = t + self.proj(self.softmax(q @ k.transpose(1, 2) / 8 ** 0.5) @ v)
            return self.head(self.mlp(t)[:, 0])


    def build_cnn(num_classes=3):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes))


    def build_vit(num_classes=3):
        torch.manual_seed(0)
        return TinyViT(num_classes)


    def cnn():
        return build_cnn().eval()


    def vit():
        return build_vit().eval()


    def build_squares(split="test", seed=0, count=8):
        class Squares(torch.utils.data.Dataset):
            classes = ["red", "green", "blue"]
            input_layout = "NCHW"
            domain = "image"

            def __init__(self):
                g = torch.Generator().manual_seed(seed)
                self.items = []
                for i in range(count):
                    x = 0.1 * torch.randn(3, 16, 16, generator=g)
                    x[i % 3, 4:10, 6:12] += 1.0
                    self.items.append({"input": x, "label": i % 3})

            def __len__(self):
                return len(self.items)

            def __getitem__(self, i):
                return self.items[i]

        return Squares()


    @hookimpl
    def camkit_register_models():
        return {"names-cnn": build_cnn, "names-vit": build_vit}


    @hookimpl
    def camkit_register_datasets():
        return {"names-squares": build_squares}
''')

METHODS = sorted(camkit.available_methods())
VIT_ONLY = {"legrad"}  # attention gradients: a transformer
SESS = {"sess": dict(window=8, stride=8, num_scales=2)}  # two scales of 8-pixel windows: quick


def _model(method):
    return "vit" if method in VIT_ONLY else "cnn"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("method-names")
    plugin = root / "names_plugin.py"
    plugin.write_text(PLUGIN)
    pictures = root / "pictures"
    pictures.mkdir()
    for i in range(2):
        image = torch.full((3, 16, 16), 30, dtype=torch.uint8)
        image[i, 4:10, 6:12] = 220
        write_png(image, str(pictures / f"picture{i}.png"))
    return {"plugin": plugin, "pictures": pictures}


def test_the_methods_of_the_former_core_functions_are_registered():
    assert {"fullgrad", "guided-backprop", "guided-gradcam", "dff", "sess"} <= set(METHODS)


@pytest.mark.parametrize("method", [*METHODS, "gradcam+sess", "gradcam+++sess"])
def test_every_method_through_camkit_explain_on_the_command_line(method, world, tmp_path):
    out = tmp_path / "out"
    assert main(["explain", "--model", f"{world['plugin']}:{_model(method)}", str(world["pictures"]), "--method",
                 method, "--size", "16", "--out", str(out), "--workers", "0", "--save-maps", "--no-grid"]) == 0
    maps = sorted(out.glob("*.npy"))
    assert len(maps) == 2, sorted(p.name for p in out.iterdir())
    for path in maps:
        values = torch.from_numpy(np.load(path))
        assert values.shape[-2:] == (16, 16) and torch.isfinite(values).all() and values.min() >= 0


@pytest.mark.parametrize("method", [*METHODS, "gradcam+sess"])
def test_every_method_through_camkit_bench(method, world, tmp_path):
    from camkit_plugins.bench.runner import run_suite

    set_plugin_manager(None)
    try:
        records = run_suite({"models": [f"names-{_model(method)}"], "datasets": ["names-squares"],
                             "methods": [method], "metrics": [{"name": "deletion", "options": {"steps": 4}}],
                             "method_options": {method: SESS["sess"]} if method.endswith("sess") else {}, "samples": 4,
                             "batch_size": 4, "out": str(tmp_path / "bench"), "plugins": [str(world["plugin"])],
                             "device": "cpu", "plots": False}, progress=False)
    finally:
        set_plugin_manager(None)
    cells = [r for r in records if r["method"] == method]
    assert len(cells) == 1 and 0 <= cells[0]["values"]["auc"] <= 1


@pytest.mark.parametrize("method", sorted(set(METHODS) - VIT_ONLY))
def test_every_method_by_name_through_the_api_keeps_the_model_as_found(method):
    net = nn_cnn()
    for p in net.parameters():
        p.grad = torch.full_like(p, 2.0)
    x = torch.randn(2, 3, 16, 16)
    result = camkit.explain(net, x, method, method_options=SESS.get(method, {}))
    assert result.maps.shape == (2, 16, 16) and result.method == ("gradcam+sess" if method == "sess" else method)
    assert torch.equal(result.targets, net(x).argmax(1))
    assert all(not m.training for m in net.modules()) and all(not m._forward_hooks for m in net.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 2.0)) for p in net.parameters())


def nn_cnn():
    import torch.nn as nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


# ---------------------------------------------------------------- the named methods equal their functions


def _minmax(maps):
    """Each (H, W) map min-max normalised."""
    lo, hi = maps.amin((-2, -1), keepdim=True), maps.amax((-2, -1), keepdim=True)
    return (maps - lo) / (hi - lo)


def test_fullgrad_by_name_is_the_function_with_its_options_and_callable_targets():
    from camkit.fullgrad import fullgrad
    from camkit.targets import ClassScore

    net, x = nn_cnn(), torch.randn(3, 3, 16, 16)
    for options in ({}, {"per_channel": True, "eps": 1e-7}):
        got = camkit.explain(net, x, "fullgrad", targets=1, method_options=options)
        torch.testing.assert_close(got.maps, fullgrad(net, x, 1, **options).maps)
    by_callable = camkit.explain(net, x, "fullgrad", targets=ClassScore(1))
    torch.testing.assert_close(by_callable.maps, camkit.explain(net, x, "fullgrad", targets=1).maps)
    assert got.layer == "0,1,3" and got.map_letters == "NHW"


@pytest.mark.parametrize("channels", ["abs-sum", "abs-max"])
def test_guided_methods_by_name_reduce_the_per_channel_gradients(channels):
    from camkit.guided import guided_backprop, guided_gradcam

    net, x = nn_cnn(), torch.randn(2, 3, 16, 16)
    reduce = (lambda g: g.abs().sum(2)) if channels == "abs-sum" else (lambda g: g.abs().amax(2))
    got = camkit.explain(net, x, "guided-backprop", topk=2, method_options={"channels": channels})
    torch.testing.assert_close(got.maps, _minmax(reduce(guided_backprop(net, x, topk=2).maps)))
    got = camkit.explain(net, x, "guided-gradcam", layer="3", topk=2, method_options={"channels": channels})
    torch.testing.assert_close(got.maps, _minmax(reduce(guided_gradcam(net, x, "3", topk=2).maps)))
    assert got.layer == "3" and got.map_letters == "NKHW"


def test_dff_by_name_is_cam_on_the_features_rebuilt_from_the_concepts():
    from camkit.factorization import nonnegative_factorization

    net, x = nn_cnn(), torch.randn(3, 3, 16, 16)
    opts = {"layer": "4", "upsample": False, "relu": False}  # a tiny random net's evidence may be all negative
    got = camkit.explain(net, x, "dff", **opts, method_options={"concepts": 2, "seed": 3})
    f = net[:5](x).detach()  # (N, C, H, W)
    a = f.permute(1, 0, 2, 3).flatten(1)
    offset = a.amin(1, keepdim=True)
    w, h = nonnegative_factorization((a - offset).double(), 2, 200, 3)
    rebuilt = (offset.double() + w @ h).float().view(6, 3, 16, 16).permute(1, 0, 2, 3)
    rows = net[-1].weight[net(x).argmax(1)]  # (N, C)
    expected = torch.einsum("nchw,nc->nhw", rebuilt, rows)
    torch.testing.assert_close(got.maps, _minmax(expected), atol=1e-5, rtol=1e-4)
    closer = camkit.explain(net, x, "dff", **opts, method_options={"concepts": 6, "iterations": 2000})
    cam = camkit.explain(net, x, "cam", **opts)
    assert (closer.maps - cam.maps).abs().max() < (got.maps - cam.maps).abs().max()  # more concepts: nearer CAM


def test_any_method_plus_sess_is_explain_sess_of_that_method():
    from camkit.sess import explain_sess

    net, x = nn_cnn(), torch.randn(2, 3, 16, 16)
    for base in ("gradcam", "gradcam++", "layercam"):
        got = camkit.explain(net, x, f"{base}+sess", layer="3", topk=2, method_options=SESS["sess"])
        expected = explain_sess(net, x, base, layer="3", topk=2, **SESS["sess"])
        torch.testing.assert_close(got.maps, expected.maps)
        assert got.method == f"{base}+sess" and torch.equal(got.targets, expected.targets)
    with pytest.raises(KeyError, match="unknown method 'gradkam'"):
        camkit.explain(net, x, "gradkam+sess")
    with pytest.raises(KeyError, match="unknown SESS option 'windw'. Did you mean 'window'"):
        camkit.explain(net, x, "gradcam+sess", method_options={"windw": 8})
    with pytest.raises(ValueError, match="eigen smoothing projects one layer's weighted features"):
        camkit.explain(net, x, "fullgrad", eigen_smooth=True)


def test_the_plugin_hook_reference_lists_every_built_in_method():
    from pathlib import Path

    from camkit.plugin_manager import get_plugin_manager

    text = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    reference = text[text.index("### `camkit_register_methods()`"):text.index("### `camkit_register_model_families")]
    built_in = {name for name, plugin in get_plugin_manager().pm.list_name_plugin()
                if getattr(plugin, "__name__", "").startswith("camkit_plugins.methods.")}
    registered = {method for plugin in built_in for method in
                  get_plugin_manager().pm.get_plugin(plugin).camkit_register_methods()}
    assert {"cam", "fullgrad", "sess"} <= registered and all(f"`{name}`" in reference for name in registered)


def test_guided_methods_on_skeletons_reduce_channels_then_persons():
    from camkit.guided import guided_backprop

    model = camkit.lookup("models", "stgcn")(num_classes=3, config="tiny", in_channels=3, persons=2).eval()
    x = torch.randn(2, 3, 8, 25, 2)
    got = camkit.explain(model, x, "guided-backprop", reduce="M")
    by_hand = guided_backprop(model, x, got.targets, input_layout="NCTVM").maps.abs().sum(1).mean(-1)
    assert got.map_letters == "NTV" and got.layout == "NCTVM"
    torch.testing.assert_close(got.maps, _minmax(by_hand))
    assert camkit.explain(model, x, "guided-gradcam", reduce="M").maps.shape == (2, 8, 25)


@pytest.mark.parametrize("method", ["fullgrad", "guided-backprop", "gradcam+sess"])
def test_input_map_methods_refuse_several_inputs_in_one_line(method):
    with pytest.raises(ValueError, match=f"{method.replace('+', '[+]')} computes its maps on the sites of one input"):
        camkit.explain(nn_cnn(), {"x": torch.randn(1, 3, 16, 16)}, method)
