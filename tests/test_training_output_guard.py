"""Trainers refuse to write into a folder that already holds a checkpoint (``train image``, ``train
skeleton``, ``ensemble skeleton``) unless told: ``--resume`` of that folder or ``--overwrite``. The old
checkpoint stays byte for byte what it was, also when the refused run would have been killed after its
first epoch's checkpoint (which, written into the old folder, used to replace the user's model)."""

import pytest
import torch
from torchvision.io import write_png

import camkit_plugins.image.train as image_train
from camkit.cli import main

IMAGE = ["--arch", "mnist-gap", "--epochs", "2", "--size", "16", "--batch-size", "4", "--val-fraction", "0.25"]
SKELETON = ["-d", "size=8", "-d", "frames=8", "--model", "stgcn", "-m", "config=tiny", "--epochs", "1",
            "--batch-size", "4"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    generator = torch.Generator().manual_seed(0)
    for i in range(4):
        for name, channel in (("cat", 0), ("dog", 2)):
            image = torch.randint(0, 80, (3, 16, 16), dtype=torch.uint8, generator=generator)
            image[channel] += 150
            write_png(image, str(root / f"{name}.{i}.png"))
    return root


def _files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _killed_after_the_first_checkpoint(monkeypatch):
    """The run is killed (Ctrl-C) right after its first epoch's checkpoint is written."""
    real = image_train.train_classifier

    def train(*args, on_epoch_end, **kwargs):
        def save_then_die(epoch, training):
            on_epoch_end(epoch, training)
            raise KeyboardInterrupt

        return real(*args, on_epoch_end=save_then_die, **kwargs)

    monkeypatch.setattr(image_train, "train_classifier", train)


def test_train_image_into_a_used_folder_is_refused_and_the_old_checkpoint_kept(pictures, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", "image", "--data", str(pictures), *IMAGE, "--seed", "1", "--out", str(run)]) == 0
    before = _files(run)
    assert {"config.json", "model.pt", "training.pt"} <= set(before)
    _killed_after_the_first_checkpoint(monkeypatch)
    with pytest.raises(FileExistsError, match=r"already holds a checkpoint .*--resume .*--overwrite"):
        main(["train", "image", "--data", str(pictures), *IMAGE, "--seed", "2", "--out", str(run)])
    assert _files(run) == before
    # told to overwrite, the killed run has replaced it: the refusal is what kept it
    with pytest.raises(KeyboardInterrupt):
        main(["train", "image", "--data", str(pictures), *IMAGE, "--seed", "2", "--out", str(run), "--overwrite"])
    after = _files(run)
    assert after["model.pt"] != before["model.pt"] and after["config.json"] != before["config.json"]


def test_resuming_a_folder_may_write_into_it_and_a_fresh_folder_needs_nothing(pictures, tmp_path, monkeypatch):
    _killed_after_the_first_checkpoint(monkeypatch)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        main(["train", "image", "--data", str(pictures), *IMAGE, "--out", str(cut)])
    monkeypatch.undo()
    other = tmp_path / "other"
    assert main(["train", "image", "--data", str(pictures), *IMAGE, "--out", str(other)]) == 0
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):  # resume cut, write over another run
        main(["train", "image", "--resume", str(cut), "--out", str(other)])
    assert main(["train", "image", "--resume", str(cut)]) == 0


def test_skeleton_training_and_ensembles_refuse_a_used_folder(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "skeleton", *SKELETON, "--out", str(run)]) == 0
    before = _files(run)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        main(["train", "skeleton", *SKELETON, "--seed", "3", "--out", str(run)])
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        main(["ensemble", "skeleton", "--checkpoints", str(run), str(run), "--out", str(run)])
    assert _files(run) == before
    assert main(["ensemble", "skeleton", "--checkpoints", str(run), str(run), "--out", str(tmp_path / "both")]) == 0
    assert main(["train", "skeleton", *SKELETON, "--seed", "3", "--out", str(run), "--overwrite"]) == 0
    assert _files(run)["model.pt"] != before["model.pt"]
