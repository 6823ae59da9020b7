"""``camkit train image`` survives interruption: a checkpoint at the end of every epoch, ``--resume`` that
ends with exactly the weights of an uninterrupted run, Ctrl-C that names the last good checkpoint, and a
stop at the first non-finite loss that never writes a non-finite checkpoint."""

import json
import sys

import pytest
import torch
from torchvision.io import write_png

from camkit.checkpoint import load_checkpoint, load_training_state, read_config
from camkit.cli import main, run
from camkit.validation import NonFiniteError
from camkit_plugins.image import datasets

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "pets"
    root.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(5):
        for name, channel in (("cat", 0), ("dog", 2)):
            image = torch.randint(0, 80, (3, 16, 16), dtype=torch.uint8, generator=generator)
            image[channel] += 150
            write_png(image, str(root / f"{name}.{i}.png"))
    return root


def _train(pets, out, *extra):
    # --flip draws from the global RNG and the loader shuffles: both must be restored on resume
    return ["train", "image", "--data", str(pets), "--arch", "mnist-gap", "--epochs", "3", "--size", "16",
            "--batch-size", "3", "--val-fraction", "0.2", "--lr", "0.01", "--flip", "--out", str(out), *extra]


def _interrupt_after(monkeypatch, reads, exception=KeyboardInterrupt):
    """Ctrl-C (or another exception) while the dataset reads its ``reads``-th item."""
    real = datasets.ImageFolderDataset.__getitem__
    count = [0]

    def reading(self, index):
        count[0] += 1
        if count[0] == reads:
            raise exception()
        return real(self, index)

    monkeypatch.setattr(datasets.ImageFolderDataset, "__getitem__", reading)


def _weights(directory):
    return torch.load(directory / "model.pt", weights_only=True)


def test_resume_after_ctrl_c_ends_with_the_weights_of_an_uninterrupted_run(pets, tmp_path, monkeypatch, capsys):
    assert main(_train(pets, tmp_path / "whole")) == 0
    whole = _weights(tmp_path / "whole")
    assert read_config(tmp_path / "whole")["epochs_done"] == 3

    # 8 training pictures and 2 for validation per epoch: the 15th read is in epoch 2
    _interrupt_after(monkeypatch, 15)
    monkeypatch.setattr(sys, "argv", ["camkit", *_train(pets, tmp_path / "cut")])
    assert run() == 130
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("camkit")]
    cut = tmp_path / "cut"
    assert lines == [f"camkit: interrupted: the last good checkpoint is {cut} (epoch 1 of 3); "
                     f"continue with: camkit train image --resume {cut}"]
    assert read_config(cut)["epochs_done"] == 1 and load_training_state(cut)["epoch"] == 1
    load_checkpoint(cut)  # the epoch-1 checkpoint is a whole, loadable checkpoint
    assert not any(torch.equal(whole[name], tensor) for name, tensor in _weights(cut).items()
                   if tensor.is_floating_point() and tensor.numel() > 1)

    monkeypatch.undo()
    assert main(["train", "image", "--resume", str(cut)]) == 0
    resumed = _weights(cut)
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert read_config(cut) == read_config(tmp_path / "whole")  # the same history, accuracies and settings


def test_resume_into_another_folder_keeps_the_interrupted_one(pets, tmp_path, monkeypatch):
    _interrupt_after(monkeypatch, 15)
    with pytest.raises(KeyboardInterrupt, match="epoch 1 of 3"):
        main(_train(pets, tmp_path / "cut"))
    monkeypatch.undo()
    before = _weights(tmp_path / "cut")
    assert main(["train", "image", "--resume", str(tmp_path / "cut"), "--out", str(tmp_path / "next"),
                 "--workers", "0"]) == 0
    assert all(torch.equal(before[k], v) for k, v in _weights(tmp_path / "cut").items())
    assert read_config(tmp_path / "next")["epochs_done"] == 3


def test_ctrl_c_in_the_first_epoch_says_nothing_was_written(pets, tmp_path, monkeypatch):
    _interrupt_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt, match="no checkpoint was written"):
        main(_train(pets, tmp_path / "early"))
    assert list((tmp_path / "early").iterdir()) == []


@pytest.mark.parametrize("epoch, batch", [(1, 2), (2, 3)])
def test_first_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(pets, tmp_path, monkeypatch, epoch,
                                                                              batch):
    real = torch.nn.functional.cross_entropy
    calls = [0]
    batches_per_epoch = 3  # 8 training pictures in batches of 3

    def diverging(*args, **kwargs):
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("inf") if calls[0] == (epoch - 1) * batches_per_epoch + batch else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", diverging)
    out = tmp_path / "run"
    stop = rf"training loss \(epoch {epoch}, batch {batch}\) is not finite"
    with pytest.raises(NonFiniteError, match=stop) as caught:
        main(_train(pets, out))
    if epoch == 1:
        assert "no checkpoint was written" in str(caught.value) and list(out.iterdir()) == []
    else:
        assert f"the last good checkpoint is {out} (epoch 1 of 3)" in str(caught.value)
        assert read_config(out)["epochs_done"] == 1
        assert all(torch.isfinite(t).all() for t in _weights(out).values() if t.is_floating_point())


def test_non_finite_weights_are_never_written(pets, tmp_path, monkeypatch):
    """A step that leaves a weight infinite (with a finite loss) stops training at the epoch's checkpoint."""
    real_step = torch.optim.AdamW.step
    steps = [0]

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps[0] += 1
        if steps[0] == 3:  # the epoch's last batch: no loss sees the infinite bias before the checkpoint
            self.param_groups[0]["params"][-1].data[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="weight 'classifier.bias' is not finite.*no checkpoint was written"):
        main(_train(pets, out, "--epochs", "1"))
    assert list(out.iterdir()) == []


def test_the_recorded_settings_are_the_run_s_own(pets, tmp_path):
    assert main(_train(pets, tmp_path / "run", "--epochs", "1")) == 0
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert recorded == {"data": str(pets), "arch": "mnist-gap", "epochs": 1, "seed": 0, "size": 16, "lr": 0.01,
                        "batch_size": 3, "weights": None, "output_stride": 32, "val_fraction": 0.2, "flip": True}
