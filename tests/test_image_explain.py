"""explain_files: bounded pending writes, and every write error named."""

import weakref

import pytest
import torch
from torchvision.io import write_png

import camkit
import camkit_plugins.image.explain_files as explain_module
from camkit_plugins.image.explain_files import OverlayWriteError, explain_files

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")  # random pictures, untrained model


def _setup(tmp_path, count):
    torch.manual_seed(0)
    folder = tmp_path / "in"
    folder.mkdir()
    files = []
    for i in range(count):
        path = folder / f"p{i:02d}.png"
        write_png(torch.randint(0, 255, (3, 12, 12), dtype=torch.uint8), str(path))
        files.append(path)
    model = camkit.lookup("models", "mnist-gap")(num_classes=2, in_channels=3).eval()
    config = {"classes": ["a", "b"], "input_size": 12, "mean": [0.5] * 3, "std": [0.5] * 3, "in_channels": 3}
    return model, config, files


def test_pending_writes_are_collected_as_they_finish(tmp_path, monkeypatch):
    model, config, files = _setup(tmp_path, 24)
    alive, most = [], [0]

    class Tracking(explain_module.ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            future = super().submit(*args, **kwargs)
            alive.append(weakref.ref(future))
            most[0] = max(most[0], sum(ref() is not None for ref in alive))
            return future

    monkeypatch.setattr(explain_module, "ThreadPoolExecutor", Tracking)
    monkeypatch.setattr(explain_module, "MAX_PENDING_WRITES", 3)
    report = explain_files(model, config, files, tmp_path / "out", batch_size=4, workers=0, grid=False,
                           save_maps=True, page=False)  # overlays and maps only: 2 writes per picture
    assert len(report.written) == 24 and len(alive) == 48
    assert all((tmp_path / "out" / f"p{i:02d}_maps.npy").is_file() for i in range(24))
    assert most[0] <= 4  # the limit plus the one just submitted, not all 48


def test_every_write_error_is_named_and_the_others_are_written(tmp_path, monkeypatch):
    import camkit_plugins.image.render as render

    model, config, files = _setup(tmp_path, 6)
    real = render.write_overlay

    def flaky(path, *args, **kwargs):
        if path.name.startswith(("p01", "p04")):
            raise OSError(f"disk full writing {path.name}")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(render, "write_overlay", flaky)
    monkeypatch.setattr(explain_module, "MAX_PENDING_WRITES", 1)
    with pytest.raises(OverlayWriteError) as caught:
        explain_files(model, config, files, tmp_path / "out", batch_size=2, workers=0, grid=False)
    error = caught.value
    assert sorted(path.name[:3] for path, _ in error.failures) == ["p01", "p04"]
    assert "p01_pred_" in str(error) and "p04_pred_" in str(error) and "disk full" in str(error)
    assert isinstance(error.__cause__, OSError)
    assert len(error.report.written) == 4 and all(path.is_file() for path in error.report.written)


def _jpeg_folder(tmp_path):
    """Six pictures of two sizes: JPEGs (one named .png), a PNG, and a JPEG cut short after its header."""
    from torchvision.io import encode_jpeg

    folder = tmp_path / "jpeg-in"
    folder.mkdir()
    generator = torch.Generator().manual_seed(1)
    for i, (height, width) in enumerate([(20, 24), (20, 24), (16, 16), (20, 24)]):
        picture = torch.randint(0, 255, (3, height, width), dtype=torch.uint8, generator=generator)
        (folder / f"j{i}.jpg").write_bytes(encode_jpeg(picture, quality=90).numpy().tobytes())
    misnamed = torch.randint(0, 255, (3, 18, 18), dtype=torch.uint8, generator=generator)
    (folder / "misnamed.png").write_bytes(encode_jpeg(misnamed).numpy().tobytes())
    write_png(torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8, generator=generator), str(folder / "plain.png"))
    good = (folder / "j0.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[:40])
    return sorted(folder.iterdir())


def test_reading_jpegs_for_the_device_and_decoding_them_in_one_batch(tmp_path):
    from camkit_plugins.image.datasets import decode_image_file
    from camkit_plugins.image.explain_files import PictureFiles, decode_jpeg_items

    files = _jpeg_folder(tmp_path)
    readers = PictureFiles(files, 12, [0.5] * 3, [0.5] * 3, 3, jpeg_bytes=True)
    items = [readers[i] for i in range(len(readers))]
    kinds = {file.name: sorted(item) for file, item in zip(files, items)}
    assert kinds["misnamed.png"] == ["index", "jpeg", "orientation", "path"]  # found by its bytes, not its name
    assert kinds["plain.png"] == ["index", "input", "path", "picture"]  # decoded in the worker
    assert kinds["truncated.jpg"] == ["index", "jpeg", "orientation", "path"]

    decoded = decode_jpeg_items(items, readers, "cpu")
    assert [item["path"] for item in decoded] == [str(f) for f in files]  # order kept
    bad = [item for item in decoded if "error" in item]
    assert len(bad) == 1 and "truncated.jpg: cannot read image" in bad[0]["error"]
    workers = PictureFiles(files, 12, [0.5] * 3, [0.5] * 3, 3)
    for index, item in enumerate(decoded):
        if "error" in item:
            continue
        expected = workers[index]
        assert torch.equal(item["picture"], decode_image_file(files[index]))
        assert torch.equal(item["picture"], expected["picture"])
        torch.testing.assert_close(item["input"], expected["input"], rtol=0, atol=0)


@pytest.mark.parametrize("channels", [3, 1])
def test_device_decode_writes_the_same_files_as_worker_decode(tmp_path, channels):
    import numpy as np

    files = _jpeg_folder(tmp_path)
    model = camkit.lookup("models", "mnist-gap")(num_classes=2, in_channels=channels).eval()
    config = {"classes": ["a", "b"], "input_size": 12, "mean": [0.5] * channels, "std": [0.5] * channels,
              "in_channels": channels}
    reports = {}
    for decode in ("workers", "device"):
        reports[decode] = explain_files(model, config, files, tmp_path / decode, batch_size=3, workers=0,
                                        save_maps=True, topk=2, decode=decode)
    names = {decode: sorted(p.name for p in (tmp_path / decode).iterdir()) for decode in reports}
    assert names["workers"] == names["device"] and len(reports["device"].written) == 6
    assert reports["workers"].bad == reports["device"].bad and len(reports["device"].bad) == 1
    for name in names["device"]:
        first, second = tmp_path / "workers" / name, tmp_path / "device" / name
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(first), np.load(second))
        elif name.endswith(".jpg"):
            assert first.read_bytes() == second.read_bytes(), name


def test_decode_mode_is_checked(tmp_path):
    from camkit_plugins.image.explain_files import use_device_decode

    assert use_device_decode("auto", "cpu") is False and use_device_decode("device", "cpu") is True
    assert use_device_decode("workers", "cpu") is False
    with pytest.raises(ValueError, match="decode='gpu': choose one of auto, workers, device"):
        use_device_decode("gpu", "cpu")


@pytest.mark.gpu
def test_nvjpeg_batch_decode_matches_the_cpu_decoder(tmp_path):
    from camkit_plugins.image.explain_files import PictureFiles, decode_jpeg_items

    files = [f for f in _jpeg_folder(tmp_path) if f.name != "truncated.jpg"]
    readers = PictureFiles(files, 12, [0.5] * 3, [0.5] * 3, 3, jpeg_bytes=True)
    items = [readers[i] for i in range(len(readers))]
    on_gpu = decode_jpeg_items(items, readers, "cuda")
    on_cpu = decode_jpeg_items(items, readers, "cpu")
    for item, gpu_item, cpu_item in zip(items, on_gpu, on_cpu):
        assert gpu_item["picture"].device.type == ("cuda" if "jpeg" in item else "cpu")
        difference = (gpu_item["picture"].cpu().float() - cpu_item["picture"].float()).abs()
        assert difference.mean() < 2.0 and difference.max() <= 40  # nvjpeg's IDCT differs slightly from libjpeg's


@pytest.mark.gpu
def test_explain_on_cuda_mixes_device_decoded_jpegs_and_worker_decoded_pngs(tmp_path):
    files = _jpeg_folder(tmp_path)
    model = camkit.lookup("models", "mnist-gap")(num_classes=2, in_channels=3).eval()
    config = {"classes": ["a", "b"], "input_size": 12, "mean": [0.5] * 3, "std": [0.5] * 3, "in_channels": 3}
    report = explain_files(model, config, files, tmp_path / "cuda", batch_size=8, workers=0, device="cuda")
    reference = explain_files(model, config, files, tmp_path / "cpu", batch_size=8, workers=0, device="cpu")
    assert len(report.written) == 6 and len(report.bad) == 1 and "truncated.jpg" in report.bad[0]
    assert sorted(p.name for p in report.written) == sorted(p.name for p in reference.written)


def test_inputs_with_the_same_name_never_share_output_files(tmp_path):
    from camkit_plugins.image.explain_files import unique_stem

    used = set()
    assert [unique_stem(s, used) for s in ["x", "x", "x_2", "x", "y"]] == ["x", "x_2", "x_2_2", "x_3", "y"]
    model, config, files = _setup(tmp_path, 3)
    renamed = []
    for folder, name in (("a", "x.png"), ("b", "x.png"), ("c", "x_2.png")):
        (tmp_path / folder).mkdir()
        renamed.append(files[len(renamed)].rename(tmp_path / folder / name))
    report = explain_files(model, config, renamed, tmp_path / "out", workers=0, grid=False, save_maps=True)
    assert len(set(report.written)) == 3 and all(path.is_file() for path in report.written)
    assert len(list((tmp_path / "out").glob("*_maps.npy"))) == 3
