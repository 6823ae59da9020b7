"""End to end through the command line: ``camkit train image`` on a few tiny pictures, then
``camkit explain`` on a folder with one corrupt file (every good file written, exit code 1)."""

import json

import cv2
import numpy as np
import pytest
import torch
from torchvision.io import write_png

from camkit.checkpoint import load_checkpoint
from camkit.cli import main


@pytest.fixture
def picture_folder(tmp_path):
    """Red pictures are cats, blue ones dogs; each has a bright square somewhere."""
    root = tmp_path / "pets"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        for name, channel in (("cat", 0), ("dog", 2)):
            image = torch.full((3, 24, 20), 40, dtype=torch.uint8)
            image[channel] = 200
            y, x = rng.integers(0, 12, size=2)
            image[:, y:y + 8, x:x + 8] = 255
            write_png(image, str(root / f"{name}.{i}.png"))
    return root


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")  # 2 epochs on 16 px: some maps are flat
def test_train_then_explain_through_the_cli(tmp_path, picture_folder, capsys):
    run = tmp_path / "run"
    code = main(["train", "image", "--data", str(picture_folder), "--arch", "mnist-gap", "--epochs", "2",
                 "--size", "16", "--batch-size", "4", "--out", str(run), "--val-fraction", "0.25"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["cat", "dog"] and config["input_size"] == 16 and config["in_channels"] == 3
    assert config["model"] == "mnist-gap" and len(config["val_accuracy"]) == 2
    model, loaded = load_checkpoint(run)
    assert not model.training and loaded == config

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("cat.0.png", "dog.3.png"):
        (inputs / name).write_bytes((picture_folder / name).read_bytes())
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "explained"
    code = main(["explain", "--checkpoint", str(run), str(inputs), "--out", str(out), "--save-maps", "--topk", "2",
                 "--workers", "0"])
    captured = capsys.readouterr()
    assert code == 1 and "broken.jpg" in captured.err and "1 unreadable" in captured.err
    overlays = sorted(p.name for p in out.glob("*_pred_*.jpg"))
    assert [name.split("_pred_")[0] for name in overlays] == ["cat.0", "dog.3"]
    for name in overlays:
        label, percent = name.split("_pred_")[1][: -len(".jpg")].rsplit("_", 1)
        assert label in ("cat", "dog") and percent.endswith("pct") and 50.0 <= float(percent[:-3]) <= 100.0
        assert cv2.imread(str(out / name)).shape == (24, 20, 3)  # the overlay keeps the picture's size
    maps = np.load(out / "cat.0_maps.npy")
    assert maps.shape == (2, 16, 16) and 0.0 <= maps.min() and maps.max() <= 1.0  # top-2 maps at input size
    assert (out / "cat.0_top2.png").is_file() and (out / "grid.png").is_file()
    assert not list(out.glob("broken*"))


def test_explain_without_pictures_and_unknown_data_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png: no such file"):
        from camkit_plugins.image.explain_files import collect_image_files

        collect_image_files([tmp_path / "nowhere.png"])
    with pytest.raises(ValueError, match="--data 'imagenet': not a directory.*digits, shapes"):
        main(["train", "image", "--data", "imagenet", "--out", str(tmp_path / "run")])
