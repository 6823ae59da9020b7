"""Pictures read as they are meant to be seen (16-bit PNGs, EXIF orientation), results written atomically,
output folders and devices checked before any work, checkpoints that do not fit named in one line."""

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import camkit
import camkit_plugins.image.datasets as datasets
from camkit.checkpoint import describe_state_mismatch, read_config
from camkit.cli import main
from camkit.io import atomic_path, output_folder
from camkit_plugins.image.datasets import apply_orientation, decode_image_file, exif_orientation
from camkit_plugins.image.explain_files import explain_files

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")  # untrained models

DECODERS = ["torchvision", "pil"]


@pytest.fixture(params=DECODERS)
def decoder(request, monkeypatch):
    """Both decoding paths: torchvision.io, and PIL (what camkit uses once torchvision drops its decoders)."""
    if request.param == "pil":
        monkeypatch.setattr(datasets, "torchvision_decoding", lambda: None)
    return request.param


def _ramp16(height=24, width=20):
    """16-bit values spread evenly over the whole range, 0 to 65535."""
    steps = np.arange(height * width, dtype=np.int64).reshape(height, width)
    return (steps * 65535 // (height * width - 1)).astype(np.uint16)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_sixteen_bit_pngs_decode_to_their_eight_bit_pixels(tmp_path, decoder, channels):
    grey = _ramp16()
    pixels = grey if channels == 1 else np.stack([grey, grey // 2, 65535 - grey, grey][:channels], axis=-1)
    path = tmp_path / f"sixteen_{channels}.png"
    cv2.imwrite(str(path), pixels)  # cv2 writes 16-bit PNGs (BGR order for colour)
    decoded = decode_image_file(path).numpy().astype(int)  # (3, H, W) RGB
    rgb = np.repeat(grey[..., None], 3, -1) if channels == 1 else pixels[..., :3][..., ::-1]
    expected = np.rint(rgb.astype(np.float64) / 257).astype(int).transpose(2, 0, 1)
    tolerance = 1 if decoder == "pil" and channels > 1 else 0  # PIL keeps the high byte of colour PNGs
    assert decoded.shape == expected.shape and np.abs(decoded - expected).max() <= tolerance
    assert decoded.max() == 255 and decoded.min() == 0  # the full range, neither clipped white nor black


def test_pil_refuses_pixels_of_unknown_range(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "torchvision_decoding", lambda: None)
    path = tmp_path / "float.tif"
    Image.fromarray(np.linspace(0, 3, 64, dtype=np.float32).reshape(8, 8), mode="F").save(path)
    with pytest.raises(datasets.CorruptImageError, match=r"float.tif: .*floating-point pixels \(PIL mode F\)"):
        decode_image_file(path)


def test_sixteen_bit_pngs_are_explained_and_trained_on(tmp_path):
    folder = tmp_path / "pets"
    folder.mkdir()
    for i in range(3):
        for name, channel in (("cat", 0), ("dog", 2)):
            pixels = np.full((16, 16, 3), 9000, dtype=np.uint16)
            pixels[..., 2 - channel] = 60000  # BGR
            cv2.imwrite(str(folder / f"{name}.{i}.png"), pixels)
    train = datasets.build_image_folder("train", root=folder, size=16, val_fraction=0.34)
    assert all(train[i]["input"].shape == (3, 16, 16) for i in range(len(train)))  # none is skipped
    run = tmp_path / "run"
    assert main(["train", "image", "--data", str(folder), "--arch", "mnist-gap", "--epochs", "1", "--size", "16",
                 "--batch-size", "2", "--val-fraction", "0.34", "--out", str(run)]) == 0
    assert read_config(run)["skipped_files"] == []
    out = tmp_path / "explained"
    assert main(["explain", "--checkpoint", str(run), str(folder / "cat.0.png"), "--out", str(out),
                 "--workers", "0"]) == 0
    assert len(list(out.glob("cat.0_pred_*.jpg"))) == 1


# ---------------------------------------------------------------- EXIF orientation


def _oriented_jpeg(path, upright, orientation):
    """A JPEG whose stored pixels are ``upright`` turned the way a camera held sideways stores them."""
    stored = Image.fromarray(upright)
    inverse = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
               4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE],
               6: [Image.Transpose.ROTATE_90], 7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_270]}
    for step in inverse.get(orientation, []):
        stored = stored.transpose(step)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format="JPEG", quality=95, exif=exif)
    return path


def _upright_picture():
    """48 rows x 80 columns, a bright block at the bottom left only (the label band of an overlay covers
    the top left): any turn or mirror moves it or changes the shape."""
    picture = np.full((48, 80, 3), 30, dtype=np.uint8)
    picture[-12:, :20] = (250, 250, 40)
    return picture


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pil(orientation):
    stored = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif)
    assert exif_orientation(buffer.getvalue()) == orientation
    expected = np.array(ImageOps.exif_transpose(Image.open(buffer)))
    turned = apply_orientation(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(turned, expected)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rotated_jpegs_decode_upright(tmp_path, decoder, orientation):
    upright = _upright_picture()
    path = _oriented_jpeg(tmp_path / "photo.jpg", upright, orientation)
    decoded = decode_image_file(path).permute(1, 2, 0).numpy().astype(int)
    assert decoded.shape == upright.shape
    assert np.abs(decoded - upright).mean() < 4  # JPEG noise, not a turned picture


@pytest.mark.parametrize("decode", ["workers", "device"])
def test_explain_writes_rotated_photos_upright(tmp_path, decode):
    upright = _upright_picture()
    files = [_oriented_jpeg(tmp_path / f"photo{k}.jpg", upright, k) for k in (1, 6, 8)]
    model = camkit.lookup("models", "mnist-gap")(num_classes=2, in_channels=3).eval()
    config = {"classes": ["a", "b"], "input_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "in_channels": 3}
    report = explain_files(model, config, files, tmp_path / decode, workers=0, alpha=0.0, decode=decode, grid=False)
    assert len(report.written) == 3
    for path in report.written:
        written = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(int)
        assert written.shape == upright.shape, path.name
        # alpha 0: the picture itself, below the label band
        assert np.abs(written[24:] - upright[24:]).mean() < 4, path.name


# ---------------------------------------------------------------- atomic writes


@pytest.fixture
def renames(monkeypatch):
    """The destinations of every ``os.replace``: the atomic writer's last step."""
    done = []
    real = os.replace

    def replace(source, destination, *args, **kwargs):
        real(source, destination, *args, **kwargs)
        done.append(Path(destination).resolve())

    monkeypatch.setattr(os, "replace", replace)
    return done


def _files(folder):
    return sorted(p.resolve() for p in Path(folder).rglob("*") if p.is_file())


def test_every_file_explain_writes_arrives_by_an_atomic_rename(tmp_path, renames):
    from torchvision.io import write_png

    files = []
    for i in range(3):
        files.append(tmp_path / f"p{i}.png")
        write_png(torch.randint(0, 255, (3, 12, 12), dtype=torch.uint8), str(files[-1]))
    model = camkit.lookup("models", "mnist-gap")(num_classes=2, in_channels=3).eval()
    config = {"classes": ["a", "b"], "input_size": 12, "mean": [0.5] * 3, "std": [0.5] * 3, "in_channels": 3}
    explain_files(model, config, files, tmp_path / "out", workers=0, save_maps=True, topk=2)
    written = _files(tmp_path / "out")
    # overlay, maps, raw map, top-2 panel per picture; grid.png, index.html, manifest.jsonl, explain-run.json and
    # the run's journal folded into .explain-journal/done.jsonl (the per-rank journal is appended, then removed)
    assert len(written) == 3 * 4 + 5
    assert set(written) <= set(renames)


def test_every_file_bench_writes_arrives_by_an_atomic_rename(tmp_path, renames):
    from camkit_plugins.bench.runner import run_suite

    out = tmp_path / "bench"
    run_suite({"models": ["mnist-gap"], "datasets": ["digits"], "methods": ["cam"], "samples": 4, "batch_size": 4,
               "metrics": [{"name": "deletion", "options": {"steps": 2}}], "out": str(out), "device": "cpu"},
              progress=False)
    written = _files(out)
    assert {p.suffix for p in written} == {".json", ".csv", ".md", ".png"}
    assert set(written) <= set(renames)


@pytest.mark.parametrize("writer", ["overlay", "grid", "maps"])
def test_a_write_killed_halfway_leaves_the_old_file(tmp_path, monkeypatch, writer):
    """The writer is stopped (KeyboardInterrupt) after writing half a file: the old file stays whole
    and no temporary file is left behind."""
    import matplotlib.figure

    import camkit_plugins.image.explain_files as explain_module
    from camkit_plugins.image import render

    target = tmp_path / {"overlay": "a_pred_b.jpg", "grid": "grid.png", "maps": "a_maps.npy"}[writer]
    target.write_bytes(b"the old, complete file")

    def half_then_killed(destination):
        if hasattr(destination, "write"):
            destination.write(b"half")
        else:
            Path(destination).write_bytes(b"half")
        raise KeyboardInterrupt

    if writer == "overlay":
        monkeypatch.setattr(cv2, "imwrite", lambda path, *a: half_then_killed(path))
        call = lambda: render.write_overlay(target, np.zeros((4, 4, 3), np.uint8))  # noqa: E731
    elif writer == "grid":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, path, **k: half_then_killed(path))
        call = lambda: render.save_grid(target, torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.rand(1, 4, 4),  # noqa: E731
                                        ["t"])
    else:
        monkeypatch.setattr(np, "save", lambda file, array: half_then_killed(file))
        call = lambda: explain_module._save_npy(target, torch.zeros(2, 2))  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        call()
    assert target.read_bytes() == b"the old, complete file"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "result.txt"
    with atomic_path(target) as temporary:
        temporary.write_text("first")
        assert temporary.parent == tmp_path and temporary.suffix == ".txt" and not target.exists()
    assert target.read_text() == "first" and oct(target.stat().st_mode & 0o777) != oct(0o600)
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("second, cut short")
        raise RuntimeError("killed")
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["result.txt"]


# ---------------------------------------------------------------- output folders, devices, checkpoints


def test_output_folder_is_created_or_refused_before_any_work(tmp_path):
    assert output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="--out .*file: is a file, not a folder"):
        output_folder(tmp_path / "file")
    with pytest.raises(NotADirectoryError, match=r"--maps .*file/x/y: cannot create the folder, .*file is a file"):
        output_folder(tmp_path / "file" / "x" / "y", option="--maps")


def test_explain_checks_the_output_folder_before_computing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(camkit, "Explainer", lambda *a, **k: calls.append(a))
    (tmp_path / "taken").write_text("x")
    with pytest.raises(NotADirectoryError):
        explain_files(None, {"classes": ["a"], "input_size": 8, "mean": [0], "std": [1]}, [tmp_path / "x.png"],
                      tmp_path / "taken")
    assert calls == []


@pytest.mark.parametrize("name, gpus, expected", [
    ("auto", 0, "cpu"), ("CPU", 0, "cpu"), (" cuda:1 ", 2, "cuda:1"), ("cuda", 1, "cuda:0"), ("auto", 1, "cuda:0"),
])
def test_one_device_parser_for_every_command(monkeypatch, name, gpus, expected):
    from camkit.distributed import local_device, parse_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert local_device(name) == torch.device(expected)
    assert parse_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["banana", "cuda:0x", "cuda:", "cuda:-1", "", "cpu:0:1"])
def test_malformed_devices_are_refused(name):
    from camkit.distributed import parse_device

    with pytest.raises(ValueError, match="not a device; use auto, cpu, cuda, cuda:N"):
        parse_device(name)


def test_state_mismatch_is_one_line_with_the_first_few_names():
    model = camkit.lookup("models", "mnist-gap")(num_classes=3, in_channels=1)
    other = camkit.lookup("models", "resnet18")(num_classes=3)
    assert describe_state_mismatch(model.state_dict(), model.state_dict()) == ""
    text = describe_state_mismatch(model.state_dict(), other.state_dict())
    missing = [name for name in model.state_dict() if name not in other.state_dict()]
    unexpected = [name for name in other.state_dict() if name not in model.state_dict()]
    assert "\n" not in text and f"{len(missing)} missing ({missing[0]}" in text
    assert f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}, ... ({len(unexpected) - 3} more))" in text
