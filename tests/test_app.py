"""The explorer app: its computations against camkit's own (no browser), then the page in a real headless
chromium driven by Playwright (skipped without the app extra or a chromium; .ci/run installs Debian's)."""

import io
import shutil
import socket
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit_plugins.app.explorer import Explorer, PictureError

CLASSES = ["circle", "square", "triangle"]
CONFIG = {"model": "mnist-gap", "classes": CLASSES, "input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
          "in_channels": 3, "domain": "image"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return camkit.lookup("models", "mnist-gap")(num_classes=3, in_channels=3).eval()


def write_picture(path, seed, size=(40, 48)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def model_input(path):
    from camkit_plugins.image.datasets import decode_image_file, prepare_image

    return prepare_image(decode_image_file(path), 32, CONFIG["mean"], CONFIG["std"])[None]


def test_panels_are_camkit_explain_with_the_chosen_class_and_deletion_is_the_metric(model, tmp_path):
    from camkit_plugins.metrics.faithfulness import Deletion

    picture = write_picture(tmp_path / "p.png", 0)
    explorer = Explorer(model, CONFIG, tmp_path / "out")
    loaded = explorer.read_picture(picture)
    x = model_input(picture)
    with torch.no_grad():
        probabilities = model(x).softmax(dim=1)[0]
    panels = explorer.panels(loaded, ["gradcam", "cam"], None, None, alpha=0.3, deletion=True)
    top = int(probabilities.argmax())
    assert [p.caption for p in panels] == [f"{m}: {CLASSES[top]} {100 * float(probabilities[top]):.2f}%"
                                           for m in ("gradcam", "cam")]
    assert explorer.class_choices(loaded)[0] == (f"{CLASSES[top]} {100 * float(probabilities[top]):.2f}%", top)
    other = int(probabilities.argmin())
    chosen = explorer.panels(loaded, ["gradcam"], explorer.layers(loaded)[0], other)[0]
    expected = camkit.explain(model, x, "gradcam", targets=[other]).numpy()[0]
    assert np.allclose(chosen.cam, expected, atol=1e-6) and chosen.caption.startswith(f"gradcam: {CLASSES[other]} ")
    assert chosen.picture.size == (48, 40)  # drawn on the picture as uploaded, not the 32-px input
    from camkit.layout import Layout
    from camkit_plugins.metrics.base import EvalBatch

    maps = camkit.explain(model, x, "gradcam").maps
    batch = EvalBatch(model=model, inputs=x, input_layout=Layout.parse("NCHW"), labels=torch.tensor([top]),
                      targets=torch.tensor([top]), maps=maps, map_letters="NHW", indices=torch.zeros(1).long(),
                      explain=None)
    assert panels[0].deletion_auc == pytest.approx(float(Deletion(steps=20).evaluate(batch).values["auc"][0]))
    files = explorer.downloads(loaded, [chosen])
    assert [f.name for f in files] == ["p_gradcam.npy", "p_gradcam.jpg"]
    assert np.array_equal(np.load(files[0]), chosen.cam)


def test_bad_pictures_are_one_clear_message(model, tmp_path, monkeypatch):
    explorer = Explorer(model, CONFIG, tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(PictureError, match="bad.png: cannot read this picture"):
        explorer.read_picture(tmp_path / "bad.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(PictureError, match="notes.txt: not a picture file"):
        explorer.read_picture(tmp_path / "notes.txt")
    monkeypatch.setattr("camkit_plugins.app.explorer.MAX_PIXELS", 100)
    with pytest.raises(PictureError, match="40 pixels is more than the 100 allowed"):
        explorer.read_picture(write_picture(tmp_path / "big.png", 1, size=(40, 48)))


def test_layer_candidates_start_with_the_located_one_and_the_model_is_left_as_found(model, tmp_path):
    import torchvision

    resnet = torchvision.models.resnet18(num_classes=3).train()
    running = resnet.bn1.running_mean.clone()
    explorer = Explorer(resnet, {**CONFIG, "input_size": 64})
    layers = explorer.layers(explorer.read_picture(write_picture(tmp_path / "p.png", 2)))
    assert resnet.training and torch.equal(resnet.bn1.running_mean, running)  # no statistics updated
    # a stage giving its last block's tensor stands for that block
    assert layers == ["layer4", "layer4.0", "layer3", "layer3.0", "layer2", "layer2.0", "layer1"]


def test_command_is_registered_and_checks_its_arguments(tmp_path):
    from camkit.cli import commands, main

    assert "app" in commands()
    with pytest.raises(ValueError, match="--examples: no such file"):
        main(["app", "--model", "torchvision:resnet18", "--examples", str(tmp_path / "missing.png")])


# ---------------------------------------------------------------- the page in a real browser


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    pytest.importorskip("gradio", reason="the app extra (pip install 'camkit[app]') is not installed")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    browser_path = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                         if shutil.which(name)), None)
    if browser_path is None:
        pytest.skip("no chromium; .ci/run installs Debian's chromium with apt-get")
    from camkit_plugins.app.server import build_app, launch

    folder = tmp_path_factory.mktemp("app")
    example = write_picture(folder / "example.png", 3)
    explorer = Explorer(model, CONFIG, folder / "out")
    app = build_app(explorer, [example])
    port = free_port()
    launch(app, port=port, max_upload_mb=0.05, block=False)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            yield {"url": f"http://127.0.0.1:{port}", "browser": browser, "folder": folder}
        finally:
            browser.close()
            app.close()


def open_page(served):
    page = served["browser"].new_page(viewport={"width": 1200, "height": 900})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(served["url"])
    page.wait_for_selector("input[type=file]", state="attached")
    return page, requests


def shown_map(page):
    """The bytes of the first overlay the gallery shows, fetched from the page's own URL."""
    source = page.locator("#maps img").first.get_attribute("src")
    return page.request.get(source).body()


def wait_for_info(page, text):
    page.locator("#info").filter(has_text=text).wait_for(timeout=60_000)
    return page.locator("#info").inner_text()


def test_upload_gradcam_overlay_with_label_then_another_class_changes_the_map(served, model):
    page, requests = open_page(served)
    picture = write_picture(served["folder"] / "mine.png", 4)
    with torch.no_grad():
        probabilities = model(model_input(picture)).softmax(dim=1)[0]
    order = probabilities.argsort(descending=True).tolist()
    label = f"{CLASSES[order[0]]} {100 * float(probabilities[order[0]]):.2f}%"
    # Gradio renders the checkbox group after the page loads: wait for it, then count.
    from playwright.sync_api import expect  # the served fixture has skipped already when absent
    expect(page.locator("#methods input[type=checkbox]")).to_have_count(
        len(camkit.available_methods()), timeout=60_000)
    page.locator("input[type=file]").set_input_files(str(picture))
    info = wait_for_info(page, f"gradcam: {label}")
    assert "mine.png" in info
    expect(page.locator("#maps img")).to_have_count(1, timeout=60_000)
    first = shown_map(page)
    assert Image.open(io.BytesIO(first)).size == (48, 40)
    page.get_by_label("cam", exact=True).check()  # a second method, side by side
    page.locator("#maps img").nth(1).wait_for(timeout=60_000)
    assert f"cam: {label}" in wait_for_info(page, "cam").splitlines()
    page.get_by_label("cam", exact=True).uncheck()
    second = f"{CLASSES[order[1]]} {100 * float(probabilities[order[1]]):.2f}%"
    page.locator("#class input").click()
    page.get_by_role("option", name=second).click()
    wait_for_info(page, f"gradcam: {second}")
    changed = shown_map(page)
    assert changed != first
    expect(page.locator("#maps img")).to_have_count(1, timeout=60_000)
    downloads = page.locator("#downloads").inner_text().replace("\n", "")
    assert "mine_gradcam.npy" in downloads and "mine_gradcam.jpg" in downloads
    assert all(url.startswith(served["url"]) or url.startswith(("data:", "blob:")) for url in requests), \
        sorted({url for url in requests if not url.startswith(served["url"])})
    page.close()


def test_a_corrupt_upload_is_a_message_and_the_next_upload_works(served, model):
    page, _ = open_page(served)
    corrupt = served["folder"] / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    page.locator("input[type=file]").set_input_files(str(corrupt))
    page.get_by_text("corrupt.png: cannot read this picture").first.wait_for(timeout=60_000)
    good = write_picture(served["folder"] / "after.png", 5)
    page.locator("input[type=file]").set_input_files(str(good))
    with torch.no_grad():
        top = int(model(model_input(good)).argmax())
    wait_for_info(page, f"gradcam: {CLASSES[top]} ")
    assert "after.png" in page.locator("#info").inner_text()
    page.close()


def test_examples_by_name_and_nothing_else_of_the_machine_is_served(served):
    page, _ = open_page(served)
    page.locator("#examples input").click()
    page.get_by_role("option", name="example.png").click()
    wait_for_info(page, "example.png")
    secret = served["folder"] / "secret.txt"
    secret.write_text("not for the page")
    statuses = []
    for path, marker in ((secret, b"not for the page"), ("/etc/passwd", b"root:"),
                         (served["folder"] / "example.png", b"PNG")):
        for route in ("/gradio_api/file=", "/file="):
            response = page.request.get(f"{served['url']}{route}{path}")
            statuses.append(response.status)
            assert response.status != 200 and marker not in response.body(), (route, path, response.status)
    assert set(statuses) <= {403, 404}, statuses
    page.close()


def test_uploads_over_the_size_limit_are_refused(served):
    page, _ = open_page(served)
    big = write_picture(served["folder"] / "big.png", 6, size=(200, 200))  # ~120 kB over the 50 kB limit
    page.locator("input[type=file]").set_input_files(str(big))
    page.get_by_text("exceed", exact=False).first.wait_for(timeout=30_000)
    assert "big.png" not in page.locator("#info").inner_text()
    page.close()


def test_the_page_is_bound_to_this_machine(served):
    from camkit.cli import commands

    parser = __import__("argparse").ArgumentParser()
    commands()["app"].add_arguments(parser)
    assert parser.parse_args(["--model", "x:y"]).host == "127.0.0.1"
    port = int(served["url"].rsplit(":", 1)[1])
    assert urllib.request.urlopen(served["url"], timeout=10).status == 200
    with socket.socket() as probe:  # 127.0.0.2 reaches a server on all addresses, not one on 127.0.0.1 alone
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.2", port)) != 0


def test_skeleton_checkpoints_offer_their_test_clips_with_joint_time_and_drawing(tmp_path):
    import argparse

    from camkit.cli import main
    from camkit_plugins.app.command import load

    checkpoint = tmp_path / "skeleton"
    assert main(["train", "skeleton", "--model", "stgcn", "-m", "config=tiny", "-d", "size=16", "-d", "frames=16",
                 "--epochs", "1", "--out", str(checkpoint)]) == 0
    args = argparse.Namespace(model=None, checkpoint=str(checkpoint), weights="DEFAULT", labels=None, size=None,
                              examples=[], clips=3)
    model, config, clips = load(args)
    assert len(clips) == 3 and tuple(clips[0].shape) == (3, 16, 25, 1)
    explorer = Explorer(model, config, tmp_path / "out")
    loaded = explorer.load_clip(clips[1], "clip 1")
    (panel,) = explorer.panels(loaded, ["gradcam"], None, None, deletion=True)
    expected = camkit.explain(model, torch.as_tensor(clips[1])[None], "gradcam", reduce="M")
    assert np.allclose(panel.cam, expected.numpy()[0], atol=1e-6) and panel.cam.shape == (16, 25)
    assert panel.deletion_auc is None  # the deletion metric is for pictures here
    heat_only = camkit.display.skeleton_picture(expected.maps[0])
    assert panel.picture.size[0] > heat_only.size[0] + 100  # the skeleton drawing beside the joint x time map
    assert explorer.layers(loaded)[0] == expected.layer
    with pytest.raises(ValueError, match="--examples: pictures are for image models"):
        load(argparse.Namespace(**{**vars(args), "examples": ["x.png"]}))
    pytest.importorskip("gradio", reason="the app extra (pip install 'camkit[app]') is not installed")
    from camkit_plugins.app.server import build_app

    app = build_app(explorer, (), clips)  # the page's handler for a picked clip, called as Gradio calls it
    (pick,) = [block.fn for block in app.fns.values() if block.fn.__name__ == "from_source"]
    state, _, classes, methods, gallery, info, files = pick(2, ["gradcam", "cam"], 0.5, False)
    assert len(gallery) == 2 and [f.rsplit(".", 1)[1] for f in files] == ["npy", "jpg", "npy", "jpg"]
    assert np.allclose(np.load(files[2]), camkit.explain(model, torch.as_tensor(clips[2])[None], "cam",
                                                          reduce="M").numpy()[0], atol=1e-6)
    assert "clip 2" in info and len(classes["choices"]) == min(5, len(config["classes"]))


def test_the_app_reads_its_model_with_explains_arguments():
    import argparse

    from camkit.cli import commands
    from camkit_plugins.app.command import load

    app_parser, explain_parser = argparse.ArgumentParser(), argparse.ArgumentParser()
    commands()["app"].add_arguments(app_parser)
    commands()["explain"].add_arguments(explain_parser)
    model_options = {"checkpoint", "model", "weights", "labels", "size", "mean", "std"}
    assert model_options <= {a.dest for a in app_parser._actions} & {a.dest for a in explain_parser._actions}
    args = app_parser.parse_args(["--model", "torchvision:resnet18", "--weights", "none", "--size", "96",
                                  "--mean", "0.5,0.4,0.3", "--std", "0.2,0.25,0.3"])
    model, config, clips = load(args)
    assert clips == [] and config["input_size"] == 96
    assert np.allclose(config["mean"], [0.5, 0.4, 0.3]) and np.allclose(config["std"], [0.2, 0.25, 0.3])
    with pytest.raises(ValueError, match="--mean, --std: only with --model"):
        load(argparse.Namespace(**{**vars(args), "model": None, "checkpoint": "x", "size": None}))
