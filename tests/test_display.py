"""camkit.display: pictures in any form, overlays with the CLI's numbers, labelled grids, each layout's picture."""

import base64
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit.display import Gallery, compare, signal_picture, to_picture, volume_montage
from camkit.explainer import CamResult
from camkit.kernels import jet_table

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return camkit.lookup("models", "mnist-gap")(num_classes=3, in_channels=3).eval()


def jet_blend(picture, value, alpha):
    """The overlay formula by hand: floor((1 - a) * pixel + a * 255 * jet(round(255 v)) + 0.5)."""
    colour = jet_table()[int(np.floor(value * 255 + 0.5))] * 255.0
    return np.floor((1 - alpha) * picture.astype(np.float64) + alpha * colour + 0.5).astype(np.uint8)


def test_pictures_in_every_form_become_the_same_uint8_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    as_float = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0  # CHW in [0, 1]
    assert (to_picture(rgb) == rgb).all()
    assert (to_picture(as_float) == rgb).all()
    assert (to_picture(Image.fromarray(rgb)) == rgb).all()
    assert (to_picture(np.dstack([rgb, np.full((5, 7), 9, np.uint8)])) == rgb).all()  # alpha dropped
    assert (to_picture(rgb.astype(np.float64)) == rgb).all()  # floats in [0, 255] kept
    grey = to_picture(np.array([[0.0, 0.5], [1.0, 0.25]]))
    assert grey.shape == (2, 2, 3) and (grey[..., 0] == [[0, 128], [255, 64]]).all()
    assert (grey[..., 2] == grey[..., 0]).all()
    normalised = to_picture(torch.tensor([[[-2.0, 0.0], [2.0, 1.0]]]))  # (1, H, W) outside [0, 1]: stretched
    assert (normalised[..., 0] == [[0, 128], [255, 191]]).all()
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        to_picture(np.zeros((5, 6, 7)))


def test_overlay_has_the_numbers_of_camkit_explain_and_follows_the_formula():
    from camkit_plugins.image.render import overlay_torch

    generator = torch.Generator().manual_seed(1)
    picture = torch.randint(0, 256, (3, 9, 11), dtype=torch.uint8, generator=generator)
    cam = torch.rand(9, 11, generator=generator)
    mine = np.asarray(camkit.overlay(picture.float() / 255.0, cam, alpha=0.4))
    theirs = overlay_torch(picture[None], cam[None], 0.4)[0].permute(1, 2, 0).numpy()
    assert mine.shape == (9, 11, 3) and (mine == theirs).all()
    by_hand = jet_blend(picture[:, 2, 3].numpy(), float(cam[2, 3]), 0.4)
    assert (mine[2, 3] == by_hand).all()


def test_overlay_resamples_the_map_to_the_picture_and_scales_raw_maps():
    picture = np.zeros((20, 30, 3), np.uint8)
    cam = np.zeros((2, 3))
    cam[:, 2] = 7.0  # a raw map: min-max scaled, so the right column is 1
    out = np.asarray(camkit.overlay(picture, cam, alpha=1.0))
    assert out.shape == (20, 30, 3)
    assert (out[:, -1] == jet_blend(np.zeros(3), 1.0, 1.0)).all()
    assert (out[:, 0] == jet_blend(np.zeros(3), 0.0, 1.0)).all()


def test_show_titles_each_map_with_its_class_and_probability(model):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    result = camkit.explain(model, x, "gradcam")
    with torch.no_grad():
        probabilities = model(x).softmax(dim=1)
    gallery = result.show(x, classes=CLASSES)
    expected = [f"{CLASSES[int(c)]} {100 * float(probabilities[i, c]):.2f}%"
                for i, c in enumerate(probabilities.argmax(dim=1))]
    assert gallery.titles == expected and len(gallery) == 3 and gallery.columns == 3
    assert [tile.size for tile in gallery.tiles] == [(32, 32)] * 3
    assert (np.asarray(gallery[1]) == np.asarray(camkit.overlay(x[1], result.maps[1]))).all()
    png = gallery._repr_png_()
    assert (np.asarray(Image.open(io.BytesIO(png))) == np.asarray(gallery.image)).all()
    assert base64.b64encode(png).decode() in gallery._repr_html_()
    assert "\n" not in repr(gallery) and expected[0] in repr(gallery)
    without_names = result.show(x).titles
    assert without_names[0] == f"#{int(probabilities[0].argmax())} {100 * float(probabilities[0].max()):.2f}%"


def test_topk_gives_one_row_per_sample_and_compare_one_column_per_method(model, tmp_path):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    top = camkit.explain(model, x, "gradcam", topk=2)
    gallery = top.show(x, classes=CLASSES)
    assert len(gallery) == 4 and gallery.columns == 2
    assert [t.split()[0] for t in gallery.titles] == [CLASSES[int(c)] for c in top.targets.reshape(-1)]
    results = {"cam": camkit.explain(model, x, "cam"), "layercam": camkit.explain(model, x, "layercam")}
    side = compare(results, x, classes=CLASSES)
    assert side.columns == 2 and [t.split("\n")[0] for t in side.titles] == ["cam", "layercam", "cam", "layercam"]
    assert (np.asarray(side[3]) == np.asarray(camkit.overlay(x[1], results["layercam"].maps[1]))).all()
    path = side.save(tmp_path / "side.png")
    assert Image.open(path).size == side.image.size
    with pytest.raises(ValueError, match="same samples"):
        compare({"a": results["cam"], "b": camkit.explain(model, x[:1], "cam")})
    with pytest.raises(ValueError, match="1 picture"):
        results["cam"].show(x[:1])


def test_rich_display_and_one_line_repr(model):
    x = torch.rand(18, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    result = camkit.explain(model, x, "cam")
    line = repr(result)
    assert "\n" not in line and line.startswith("CamResult(cam on 'features', maps NHW (18, 16, 16)")
    html = result._repr_html_()
    assert "first 16 samples" in html and "data:image/png;base64," in html
    shown = np.asarray(Image.open(io.BytesIO(result._repr_png_())))
    first = camkit.display.result_gallery(result)
    assert len(first) == 16 and (shown == np.asarray(first.image)).all()
    assert (np.asarray(first[15]) == camkit.display.colourise(result.maps[15])).all()  # maps alone: their colours


def _fake(maps, letters, targets=None):
    n = maps.shape[0]
    logits = torch.zeros(n, 3)
    ids = torch.zeros(n, dtype=torch.long) if targets is None else targets
    return CamResult(maps=maps, targets=ids, logits=logits, method="m", layer="l", layout="?", map_letters=letters)


def test_volumes_are_a_montage_of_overlaid_slices():
    generator = torch.Generator().manual_seed(5)
    cam, volume = torch.rand(10, 6, 7, generator=generator), torch.rand(10, 6, 7, generator=generator)
    montage = np.asarray(volume_montage(cam, volume, alpha=0.5, slices=4))
    chosen = [0, 3, 6, 9]
    assert montage.shape == (6, 4 * 7 + 3 * 2, 3)
    grey = np.floor(volume.numpy() * 255 + 0.5).astype(np.uint8)
    for position, d in enumerate(chosen):
        part = montage[:, position * 9: position * 9 + 7]
        assert (part == np.asarray(camkit.overlay(grey[d], cam[d], 0.5))).all()
    pictures = _fake(cam[None].expand(2, -1, -1, -1), "NDHW").overlays(volume[None, None].expand(2, 1, -1, -1, -1))
    assert len(pictures) == 2 and pictures[0].size == (8 * 7 + 7 * 2, 6)


def test_signals_are_drawn_over_a_band_coloured_by_the_map():
    cam = np.zeros(60)
    cam[40:] = 1.0
    picture = np.asarray(signal_picture(cam)).astype(int)
    row = picture[picture.shape[0] // 2]
    left, right = row[int(0.25 * len(row))], row[int(0.8 * len(row))]
    assert left[2] > left[0] + 60 and right[0] > right[2] + 60  # blue where the map is 0, red where it is 1
    result = _fake(torch.from_numpy(cam).float()[None], "NL")
    assert result.overlays(np.sin(np.arange(60) / 5.0))[0].size[0] > 100


def test_skeleton_maps_show_joint_time_and_the_drawing_with_the_clip():
    from camkit_plugins.skeleton.data import generate_clip

    clip, _ = generate_clip(0, np.random.default_rng(0), frames=24)
    cam = torch.rand(1, 24, 25, generator=torch.Generator().manual_seed(6))
    result = _fake(cam, "NTV")
    heat_only, with_clip = result.overlays()[0], result.overlays(clip[None])[0]
    assert with_clip.size[0] > heat_only.size[0] + 100 and with_clip.size[1] >= heat_only.size[1]
    with pytest.raises(ValueError, match="no picture for maps of layout"):
        _fake(torch.rand(1, 2, 3, 4, 5), "NDHWL").show()


def test_gallery_needs_a_title_per_picture():
    with pytest.raises(ValueError, match="2 pictures but 1 titles"):
        Gallery([Image.new("RGB", (2, 2))] * 2, ["a"])


def test_importing_camkit_display_stays_torch_free():
    code = "import sys, camkit; camkit.display; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_notebook_example_of_docs_app_md_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "app.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "docs/app.md", "exec"), namespace)
    assert len(namespace["tiles"]) == 4 and namespace["grid"].titles[0].split()[0] in ("circle", "square", "triangle")
    assert Image.open(tmp_path / "side.png").size == namespace["side"].image.size and namespace["side"].columns == 2


def test_a_notebook_keeps_its_matplotlib_backend_and_no_figure_is_left_open():
    pytest.importorskip("matplotlib_inline", reason="Jupyter's inline backend (ipykernel, a test extra)")
    code = """
import matplotlib
matplotlib.use("module://matplotlib_inline.backend_inline")
import matplotlib.pyplot as plt, numpy as np
from camkit.display import signal_picture, skeleton_picture
skeleton_picture(np.random.rand(8, 25), np.random.rand(3, 8, 25, 1))
signal_picture(np.random.rand(30), np.random.rand(30))
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["module://matplotlib_inline.backend_inline", "0"]


def test_pictures_and_files_leave_matplotlib_as_found(tmp_path):
    """Rendering never imports pyplot nor switches the backend (a notebook's inline plots keep theirs)."""
    script = f"""
import sys, matplotlib
matplotlib.use("svg")
import numpy as np
import camkit
from camkit.display import skeleton_picture, signal_picture
from camkit.plugin_manager import lookup
rng = np.random.default_rng(0)
assert skeleton_picture(rng.random((16, 25)), rng.random((3, 16, 25))).size[0] > 100
assert signal_picture(rng.random(40), rng.random(80)).size[0] > 100
lookup("renderers", "joint-time")(rng.random((16, 25)), r"{tmp_path / 'joints.png'}", "ntu25")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg", "False"]
    assert Image.open(tmp_path / "joints.png").size[0] > 100
