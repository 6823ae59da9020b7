"""Image datasets: embedded digits and shapes, MNIST IDX files (raw and .gz), picture folders in both
layouts, and unreadable files reported by name."""

import gzip
import struct
import warnings

import numpy as np
import pytest
import torch
from torchvision.io import write_png

import camkit
from camkit_plugins.image.datasets import (
    CorruptImageError,
    SkipCorrupt,
    TensorImageDataset,
    build_digits,
    build_image_folder,
    build_mnist,
    build_shapes,
    collate_skipping,
    read_idx,
)
from camkit_plugins.image.train import evaluate_accuracy, train_classifier


def test_registered_names():
    assert {"digits", "shapes", "mnist", "image-folder"} <= set(camkit.registry("datasets"))


def test_digits_are_28x28_and_splits_are_disjoint_and_seeded():
    train, val, test = (build_digits(s, seed=3) for s in ("train", "val", "test"))
    assert train.images.shape[1:] == (1, 28, 28) and train.input_layout == "NCHW" and train.domain == "image"
    assert len(train) + len(val) + len(test) == 1797 and len(test) == 359
    item = test[0]
    assert item["input"].shape == (1, 28, 28) and isinstance(item["label"], int)
    flat = lambda d: {tuple(x.flatten().tolist()) for x in d.images[:50]}  # noqa: E731
    assert not flat(train) & flat(test)
    assert torch.equal(build_digits("test", seed=3).images, test.images)
    assert not torch.equal(build_digits("test", seed=4).labels, test.labels)
    pixels = test.images * 0.5 + 0.5  # undo the normalisation: back in [0, 1]
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.max() > 0.9


def test_shapes_are_deterministic_with_boxes_around_their_masks():
    data = build_shapes("train", seed=1, size=48, count=20)
    again = build_shapes("train", seed=1, size=48, count=20)
    other = build_shapes("train", seed=2, size=48, count=20)
    assert torch.equal(data.images, again.images) and not torch.equal(data.images, other.images)
    assert data.classes == ["circle", "square", "triangle", "star", "cross"]
    for i in range(len(data)):
        item = data[i]
        x0, y0, x1, y1 = item["box"]
        mask = item["mask"]
        assert item["input"].shape == (3, 48, 48) and mask.shape == (48, 48) and mask.dtype == torch.bool
        rows, cols = torch.nonzero(mask.any(1))[:, 0], torch.nonzero(mask.any(0))[:, 0]
        assert (x0, y0, x1, y1) == (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
        # the shape has one flat colour: inside the mask the picture varies far less than around it
        inside = item["input"][:, mask]
        assert inside.std(dim=1).max() < 1e-5


def _write_idx(path, array, dtype_code=0x08, compress=False):
    header = bytes([0, 0, dtype_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(">u1" if dtype_code == 0x08 else ">i4").tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_raw_and_gz(tmp_path, compress):
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    train_labels = np.arange(20, dtype=np.uint8) % 10
    test_images, test_labels = train_images[:5], train_labels[:5]
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train_images, compress=compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", train_labels, compress=compress)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test_images, compress=compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", test_labels, compress=compress)
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), train_images)
    test = build_mnist("test", root=tmp_path)
    assert test.images.shape == (5, 1, 28, 28) and test.labels.tolist() == [0, 1, 2, 3, 4]
    assert torch.allclose(test.images[2, 0] * 0.5 + 0.5, torch.from_numpy(test_images[2] / 255.0).float())
    train = build_mnist("train", root=tmp_path, val_fraction=0.25)
    val = build_mnist("val", root=tmp_path, val_fraction=0.25)
    assert len(train) == 15 and len(val) == 5
    assert sorted(train.labels.tolist() + val.labels.tolist()) == sorted(train_labels.tolist())


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03garbage")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short-idx1-ubyte"
    _write_idx(short, np.arange(10, dtype=np.uint8))
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"short-idx1-ubyte: IDX body has 7 bytes, shape \(10,\) needs 10"):
        read_idx(short)
    broken_gz = tmp_path / "t.gz"
    broken_gz.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t.gz: cannot read IDX file"):
        read_idx(broken_gz)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        build_mnist("test", root=tmp_path)


def _picture(colour, size=(20, 30)):
    image = torch.zeros(3, *size, dtype=torch.uint8)
    image[:] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    return image


def _write_prefix_folder(root, count=5):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_png(_picture((250, 10, 10)), str(root / f"cat.{i}.png"))
        write_png(_picture((10, 10, 250)), str(root / f"dog.{i}.png"))


def test_image_folder_by_file_name_prefix(tmp_path):
    _write_prefix_folder(tmp_path)
    train = build_image_folder("train", root=tmp_path, size=16, val_fraction=0.2, seed=0)
    val = build_image_folder("val", root=tmp_path, size=16, val_fraction=0.2, seed=0)
    assert train.classes == ["cat", "dog"] and len(train) == 8 and len(val) == 2
    assert not set(train.files) & set(val.files)
    item = train[0]
    assert item["input"].shape == (3, 16, 16)
    name = item["path"].rsplit("/", 1)[-1]
    assert train.classes[item["label"]] == name.split(".")[0]
    red = item["input"][0].mean() > item["input"][2].mean()
    assert red == (name.startswith("cat"))
    assert build_image_folder("val", root=tmp_path, val_fraction=0.2, seed=0).files == val.files


def test_image_folder_class_directories(tmp_path):
    for name, colour in (("ants", (200, 0, 0)), ("bees", (0, 200, 0)), ("wasps", (0, 0, 200))):
        (tmp_path / name).mkdir()
        for i in range(2):
            write_png(_picture(colour), str(tmp_path / name / f"{i}.png"))
    data = build_image_folder("test", root=tmp_path, size=8)
    assert data.classes == ["ants", "bees", "wasps"] and len(data) == 6
    assert [data.classes[label] for label in data.labels] == ["ants"] * 2 + ["bees"] * 2 + ["wasps"] * 2
    channel = [int(data[i]["input"].mean(dim=(1, 2)).argmax()) for i in range(6)]
    assert channel == [0, 0, 1, 1, 2, 2]


def test_empty_or_single_class_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        build_image_folder(root=tmp_path)
    write_png(_picture((1, 2, 3)), str(tmp_path / "cat.1.png"))
    with pytest.raises(ValueError, match="only the class"):
        build_image_folder(root=tmp_path)


def test_loose_pictures_next_to_class_folders_are_an_error(tmp_path):
    _write_prefix_folder(tmp_path, count=2)
    (tmp_path / "extra").mkdir()
    write_png(_picture((1, 2, 3)), str(tmp_path / "extra" / "0.png"))
    with pytest.raises(ValueError, match=r"4 loose picture.*class folder.*extra"):
        build_image_folder(root=tmp_path)


def test_macosx_and_hidden_folders_do_not_hide_loose_pictures(tmp_path):
    _write_prefix_folder(tmp_path, count=2)
    for junk in ("__MACOSX", ".thumbnails"):
        (tmp_path / junk).mkdir()
        write_png(_picture((1, 2, 3)), str(tmp_path / junk / "._cat.0.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing worth a warning here
        data = build_image_folder("test", root=tmp_path, size=8)
    assert data.classes == ["cat", "dog"] and len(data) == 4
    assert all(f.parent == tmp_path for f in data.files)


def test_files_that_are_not_pictures_and_nested_folders_are_counted_in_a_warning(tmp_path):
    for name in ("ants", "bees"):
        (tmp_path / name).mkdir()
        write_png(_picture((9, 9, 9)), str(tmp_path / name / "0.png"))
        (tmp_path / name / "notes.txt").write_text("x")
    (tmp_path / "ants" / "more").mkdir()
    write_png(_picture((9, 9, 9)), str(tmp_path / "ants" / "more" / "1.png"))
    (tmp_path / "ants" / "raw.heic").write_bytes(b"x")
    (tmp_path / "labels.csv").write_text("x")
    (tmp_path / "ants" / ".DS_Store").write_bytes(b"x")  # hidden: ignored without a word
    with pytest.warns(UserWarning, match=r"ignored 4 file\(s\) that are not pictures \(suffixes \.csv, \.heic, "
                                         r"\.txt.*1 folder\(s\) nested.*ants/more"):
        data = build_image_folder("test", root=tmp_path, size=8)
    assert data.classes == ["ants", "bees"] and len(data) == 2


def test_corrupt_picture_is_named_and_training_skips_it_with_a_count(tmp_path):
    _write_prefix_folder(tmp_path, count=3)
    (tmp_path / "dog.99.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    data = build_image_folder("test", root=tmp_path, size=8)
    bad = data.files.index(tmp_path / "dog.99.jpg")
    with pytest.raises(CorruptImageError, match="dog.99.jpg: cannot read image"):
        data[bad]
    with pytest.warns(UserWarning, match="skipping .*dog.99.jpg"):
        batch = collate_skipping([SkipCorrupt(data)[i] for i in range(len(data))])
    assert batch["skipped"] == [str(tmp_path / "dog.99.jpg")] and batch["input"].shape == (6, 3, 8, 8)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = train_classifier(model, data, None, epochs=2, batch_size=4, log=lambda _: None)
    assert history["skipped"] == [str(tmp_path / "dog.99.jpg")]
    assert any("1 unreadable image(s) skipped" in str(w.message) for w in caught)


def test_unknown_split_and_dataset_names():
    with pytest.raises(ValueError, match="unknown split 'dev'. Available: train, val, test"):
        build_digits("dev")
    with pytest.raises(KeyError, match="digits"):
        camkit.lookup("datasets", "no-such-set")


def test_evaluate_accuracy_restores_each_submodules_own_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    model.train()
    model[2].eval()  # a deliberately frozen BatchNorm in a training model
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append([m.training for m in model.modules()]))
    data = TensorImageDataset(torch.randn(6, 1, 2, 2), torch.tensor([0, 1] * 3), ["a", "b"], [0.0], [1.0])
    accuracy = evaluate_accuracy(model, data, batch_size=3)
    assert 0.0 <= accuracy <= 1.0
    assert seen and not any(any(flags) for flags in seen)  # all in eval mode while evaluating
    assert model.training and model[3].training and model[1].training
    assert not model[2].training  # still frozen afterwards


@pytest.mark.parametrize("suffix", [".bmp", ".tif"])
def test_bmp_and_tiff_decode_to_their_pixels(tmp_path, suffix):
    import cv2

    from camkit_plugins.image.datasets import decode_image_file

    rgb = np.random.default_rng(1).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    path = tmp_path / f"picture{suffix}"
    assert cv2.imwrite(str(path), rgb[..., ::-1])  # cv2 writes BGR; both formats are lossless
    decoded = decode_image_file(path)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 7, 9)
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), rgb)


def test_a_file_neither_decoder_reads_names_both_reasons(tmp_path):
    from camkit_plugins.image.datasets import decode_image_file

    path = tmp_path / "broken.bmp"
    path.write_bytes(b"BM not really a bitmap")
    with pytest.raises(CorruptImageError, match=r"broken.bmp: cannot read image: .*\(PIL: .*\)") as caught:
        decode_image_file(path)
    assert caught.value.__cause__ is not None  # torchvision's own error is kept


def test_data_roots_expand_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _write_prefix_folder(tmp_path / "pets", count=2)
    assert len(build_image_folder("test", root="~/pets", size=8, val_fraction=0.5)) > 0
    rng = np.random.default_rng(0)
    (tmp_path / "mnist").mkdir()
    _write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8))
    _write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.arange(3, dtype=np.uint8))
    assert len(build_mnist("test", root="~/mnist")) == 3


def test_pictures_decode_through_pil_once_torchvision_drops_its_decoders(tmp_path, monkeypatch):
    import torchvision.io

    from camkit_plugins.image.datasets import decode_image_file
    from camkit_plugins.image.explain_files import use_device_decode

    picture = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    write_png(picture, str(tmp_path / "p.png"))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    monkeypatch.delattr(torchvision.io, "decode_image")  # what a torchvision without decoders looks like
    assert torch.equal(decode_image_file(tmp_path / "p.png"), picture)
    with pytest.raises(CorruptImageError, match=r"bad.png: cannot read image: PIL: "):
        decode_image_file(tmp_path / "bad.png")
    assert use_device_decode("auto", "cuda") is False
    with pytest.raises(ValueError, match="decode='device' needs torchvision.io.decode_jpeg"):
        use_device_decode("device", "cpu")


def test_erase_squares_zeroes_one_square_in_the_chosen_pictures_only():
    from camkit_plugins.image.train import erase_squares

    inputs = torch.randn(64, 3, 12, 10) + 5.0  # no pixel is 0 before erasing
    torch.manual_seed(0)
    erased = erase_squares(inputs, 4)
    torch.manual_seed(0)
    assert torch.equal(erase_squares(inputs, 4), erased)  # draws from torch's seeded RNG
    zero = erased == 0
    per_picture = zero.flatten(1).sum(1)
    assert set(per_picture.tolist()) == {0, 3 * 4 * 4} and 16 < int((per_picture > 0).sum()) < 48
    for picture, mask in zip(zero, zero[:, 0]):
        if mask.any():  # one 4x4 square, the same on every channel
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            assert rows.tolist() == list(range(int(rows[0]), int(rows[0]) + 4)) and len(cols) == 4
            assert torch.equal(picture, mask.expand_as(picture))
    assert torch.equal(erased[~zero], inputs[~zero])
    with pytest.raises(ValueError, match="must fit"):
        erase_squares(inputs, 11)
