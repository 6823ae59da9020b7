"""index.html: self-contained, every picture it names exists, and a real headless browser loads them all."""

import re
import shutil
import subprocess

import pytest
import torch

import camkit
from camkit_plugins.image.page import Card, Section, render_page, write_page, write_raw_map

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser_or_skip():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless browser ({', '.join(BROWSERS)}); .ci/run installs Debian's chromium with apt-get")


def loaded_in_browser(page):
    """``(loaded, total)`` pictures as the page itself counted them after its load event, in headless Chromium."""
    browser = browser_or_skip()
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                             "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", result.stdout)
    assert body, f"no DOM from {browser}: {result.stderr[-500:]}"
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, f"the page's load handler did not run: {body.group(0)}"
    return int(loaded.group(1)), int(total.group(1))


def linked_files(page):
    return re.findall(r'(?:src|href)="([^"]+)"', page.read_text())


def _pictures(folder, names):
    maps = torch.linspace(0, 1, 12 * 16).reshape(1, 12, 16).expand(len(names), -1, -1)
    for name, raw in zip(names, maps):
        write_raw_map(folder / name, raw)


def test_raw_map_png_is_the_jet_colour_of_each_value(tmp_path):
    import cv2

    from camkit_plugins.image.render import jet_lut

    raw = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    picture = cv2.cvtColor(cv2.imread(str(write_raw_map(tmp_path / "m.png", raw))), cv2.COLOR_BGR2RGB)
    expected = jet_lut("cpu")[(raw * 255 + 0.5).long()].round().numpy()
    assert (abs(picture.astype(float) - expected) <= 1).all()


def test_page_has_no_network_reference_and_refuses_absolute_pictures(tmp_path):
    card = Card("cat.jpg", "cat_pred_tabby.jpg", "tabby", 0.8123, "cat_map.png", [("tabby", 0.8123), ("lynx", 0.1)])
    text = render_page("t", [Section("s", tables=[(["a"], [["<b>"]])], cards=[card])])
    assert "tabby 81.23%" in text and "&lt;b&gt;" in text and "lynx" in text
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text) and "@import" not in text
    with pytest.raises(ValueError, match="relative"):
        write_page(tmp_path, "t", [Section("s", figures=[(str(tmp_path / "x.png"), "x")])])


def test_browser_counts_every_picture_and_notices_a_missing_one(tmp_path):
    _pictures(tmp_path, ["a_map.png", "b_map.png", "a.png", "b.png"])
    cards = [Card(f"{n}.jpg", f"{n}.png", "x", 0.5, f"{n}_map.png") for n in "ab"]
    page = write_page(tmp_path, "t", [Section("s", cards=cards, figures=[("a.png", "figure")])])
    assert loaded_in_browser(page) == (5, 5)
    (tmp_path / "b_map.png").unlink()  # the check can fail: a missing picture is counted as not loaded
    assert loaded_in_browser(page) == (4, 5)


def test_camkit_explain_writes_a_page_whose_every_picture_loads(tmp_path):
    from camkit_plugins.image.explain_files import explain_files

    inputs = tmp_path / "in"
    inputs.mkdir()
    generator = torch.Generator().manual_seed(0)
    from torchvision.io import write_png

    for name in ("p0", "p1", "p2"):
        write_png(torch.randint(0, 255, (3, 20, 24), dtype=torch.uint8, generator=generator),
                  str(inputs / f"{name}.png"))
    model = camkit.lookup("models", "mnist-gap")(num_classes=3, in_channels=3).eval()
    config = {"classes": ["a", "b", "c"], "input_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "in_channels": 3}
    out = tmp_path / "out"
    report = explain_files(model, config, sorted(inputs.iterdir()), out, topk=2, workers=0)
    page = out / "index.html"
    links = linked_files(page)
    assert len(report.cards) == 3 and all((out / link).is_file() for link in links)
    for card in report.cards:  # each overlay with its raw map and top-k panel, labelled with its probability
        assert {card.overlay, card.raw_map, card.extra} <= set(links) and len(card.topk) == 2
        assert f"{card.label} {100 * card.probability:.2f}%" in page.read_text()
    assert loaded_in_browser(page) == (3 * 2 + 1, 3 * 2 + 1)  # overlays, raw maps, grid.png
