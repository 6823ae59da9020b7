"""Skeleton commands under bad input and interruption: one ``camkit: error:`` line with status 2, no
non-finite checkpoint, a checkpoint every epoch and a resumed run equal to an uninterrupted one."""

import json
import sys

import numpy as np
import pytest
import torch

import camkit.cli
from camkit.checkpoint import WEIGHTS_FILE, load_checkpoint
from camkit.cli import main

DATA = ["-d", "size=8", "-d", "frames=8"]
TINY = ["-m", "config=tiny", "--epochs", "1", "--batch-size", "4"]


def run_cli(monkeypatch, capsys, *argv):
    """``camkit ARGV`` as the console command runs it: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["camkit", *argv])
    code = camkit.cli.run()
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny ST-GCN and a 2-stream RA-GCN checkpoint, and a folder that looks like an image checkpoint."""
    root = tmp_path_factory.mktemp("checkpoints")
    assert main(["train", "skeleton", *DATA, "--model", "stgcn", *TINY, "--out", str(root / "stgcn")]) == 0
    assert main(["train", "skeleton", *DATA, "--streams", "2", *TINY, "--out", str(root / "ragcn")]) == 0
    (root / "image").mkdir()
    (root / "image" / "config.json").write_text(json.dumps({"model": "resnet18", "classes": ["a", "b"],
                                                            "domain": "image"}))
    return root


BAD_INPUTS = [
    (["train", "skeleton", *DATA, "--epochs", "0", "--out", "{out}"], "--epochs must be at least 1, got 0"),
    (["train", "skeleton", "-d", "frames=abc", "--out", "{out}"],
     "dataset skeleton-synthetic option frames=abc must be a whole number"),
    (["train", "skeleton", "-d", "sise=8", "--out", "{out}"],
     "unknown dataset skeleton-synthetic option 'sise'. Did you mean 'size'"),
    (["train", "skeleton", *DATA, "-m", "confg=tiny", "--out", "{out}"],
     "unknown model ragcn option 'confg'. Did you mean 'config'"),
    (["train", "skeleton", *DATA, "-m", "dropout=high", "--out", "{out}"],
     "model ragcn option dropout=high must be a number"),
    (["train", "skeleton", "-d", "size", "--out", "{out}"], "-d 'size' is not KEY=VALUE"),
    (["train", "skeleton", "-d", "split=xsub", "--out", "{out}"], "choose the split with --split"),
    (["train", "skeleton", *DATA], "train skeleton needs --out DIR"),
    (["train", "skeleton", *DATA, "--modality", "velocity", "--out", "{out}"], "unknown modality 'velocity'"),
    (["train", "skeleton", *DATA, "--modality", "bone-motoin", "--out", "{out}"],
     "unknown modality 'bone-motoin'. Did you mean 'bone-motion'"),
    (["train", "skeleton", "--resume", "{root}/image"], "nothing to resume"),
    (["explain", "skeleton", "--checkpoint", "{root}/stgcn", "--count", "0", "--out", "{out}"],
     "--count must be at least 1, got 0"),
    (["explain", "skeleton", "--checkpoint", "{root}/image", "--out", "{out}"],
     "is an image checkpoint, not a skeleton one"),
    (["eval", "skeleton", "--checkpoints", "{root}/image", "--out", "{out}"], "is an image checkpoint"),
    (["eval", "skeleton", "--checkpoints", "{root}/stgcn", "-m", "mask_rul=joints", "--out", "{out}"],
     "STGCN checkpoint without RA-GCN masks: -m mask_rul does not apply"),
    (["eval", "skeleton", "--checkpoints", "{root}/ragcn", "-m", "mask_rul=joints", "--out", "{out}"],
     "unknown mask option 'mask_rul'. Did you mean 'mask_rule'"),
    (["eval", "skeleton", "--checkpoints", "{root}/stgcn", "--label", "a", "--label", "b", "--out", "{out}"],
     "2 --label for 1 checkpoints"),
    (["ensemble", "skeleton", "--checkpoints", "{root}/stgcn", "{root}/ragcn", "--weights", "1", "--out", "{out}"],
     "1 --weights for 2 checkpoints"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a[:2]) + ": " + m[:40] for a, m in BAD_INPUTS])
def test_bad_input_is_one_error_line_with_status_2(checkpoints, tmp_path, monkeypatch, capsys, argv, message):
    argv = [a.format(root=checkpoints, out=tmp_path / "out") for a in argv]
    code, err = run_cli(monkeypatch, capsys, *argv)
    assert code == 2
    assert err.startswith("camkit: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out" / WEIGHTS_FILE).exists()


def test_data_with_a_nan_is_refused_naming_the_sample(tmp_path, monkeypatch, capsys):
    data = np.random.default_rng(0).normal(size=(4, 3, 6, 25, 1)).astype(np.float32)
    data[2, 1, 3, 4, 0] = np.nan
    for split in ("train", "val"):
        np.save(tmp_path / f"{split}_data.npy", data)
        (tmp_path / f"{split}_label.txt").write_text("0\n1\n0\n1\n")
    code, err = run_cli(monkeypatch, capsys, "train", "skeleton", "--dataset", "stgcn-npy", "-d", f"root={tmp_path}",
                        "--model", "stgcn", *TINY, "--out", str(tmp_path / "out"))
    assert code == 2 and "train_data.npy sample 2 is not finite: 1 NaN" in err
    assert not (tmp_path / "out").exists()


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from camkit_plugins.skeleton import models

    calls = []
    real_loss = models.ra_gcn_loss

    def loss_that_diverges_in_epoch_2(logits, labels):
        calls.append(1)
        loss = real_loss(logits, labels)
        return loss * float("nan") if len(calls) > 2 else loss  # 2 batches per epoch

    monkeypatch.setattr(models, "ra_gcn_loss", loss_that_diverges_in_epoch_2)
    out = tmp_path / "out"
    code, err = run_cli(monkeypatch, capsys, "train", "skeleton", *DATA, "-m", "config=tiny", "--epochs", "3",
                        "--batch-size", "4", "--out", str(out))
    assert code == 2 and len(calls) == 3
    assert "the training loss at epoch 2, batch 1 is not finite: 1 NaN" in err
    assert f"the last good checkpoint is {out} (epoch 1 of 3)" in err and err.count("\n") == 1
    model, config = load_checkpoint(out)
    assert config["epochs_done"] == 1
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    from camkit_plugins.skeleton import models

    rng = np.random.default_rng(0)
    for split in ("train", "val"):  # long clips, so the window sampling and the rotation draw random numbers
        np.save(tmp_path / f"{split}_data.npy", rng.normal(size=(8, 3, 12, 25, 1)).astype(np.float32))
        (tmp_path / f"{split}_label.txt").write_text("\n".join(str(i % 2) for i in range(8)))
    run = ["train", "skeleton", "--dataset", "stgcn-npy", "-d", f"root={tmp_path}", "-d", "frames=8",
           "-d", "rotate=0.3", "-d", "scale=0.1", "--streams", "2", "-m", "config=tiny", "-m", "dropout=0.3",
           "--occlude-parts", "0.5", "--epochs", "2", "--batch-size", "4"]
    assert main([*run, "--out", str(tmp_path / "whole")]) == 0

    calls = []
    real_loss = models.ra_gcn_loss

    def interrupt_in_epoch_2(logits, labels):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(logits, labels)

    monkeypatch.setattr(models, "ra_gcn_loss", interrupt_in_epoch_2)
    halted = tmp_path / "halted"
    assert main([*run, "--out", str(halted)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"interrupted: the last good checkpoint is {halted} (epoch 1 of 2); "
                       f"continue with: camkit train skeleton --resume {halted}")
    assert load_checkpoint(halted)[1]["epochs_done"] == 1
    monkeypatch.setattr(models, "ra_gcn_loss", real_loss)

    code, err = run_cli(monkeypatch, capsys, "train", "skeleton", "--resume", str(halted), "--epochs", "5")
    assert code == 2 and "epochs 5 (saved: 2) would change them" in err
    torch.manual_seed(123)  # the resumed run must not depend on the state it starts in
    np.random.seed(123)
    assert main(["train", "skeleton", "--resume", str(halted)]) == 0
    whole, resumed = load_checkpoint(tmp_path / "whole")[0].state_dict(), load_checkpoint(halted)[0].state_dict()
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert load_checkpoint(halted)[1]["epochs_done"] == 2


def test_option_checks_name_the_option_and_read_numbers_given_for_text_as_text():
    from camkit_plugins.skeleton.options import check_options, parse_key_values

    accepted = {"root": str, "frames": int, "rate": float, "flag": bool, "graph": None}
    given = parse_key_values(["root=2024", "frames=3", "rate=1", "flag=true", 'graph={"joints": 3, "bones": []}'], "-d")
    assert check_options(given, accepted, "dataset d") == {"root": "2024", "frames": 3, "rate": 1, "flag": True,
                                                           "graph": {"joints": 3, "bones": []}}
    for pair, message in [("frames=2.5", "frames=2.5 must be a whole number"),
                          ("frames=true", "must be a whole number"),
                          ("flag=1", "flag=1 must be true or false"), ("rate=fast", "rate=fast must be a number"),
                          ("frame=3", r"unknown dataset d option 'frame'\. Did you mean 'frames', 'rate'\? "
                                      r"Available: flag, frames, graph, rate, root$")]:
        with pytest.raises(ValueError, match=message):
            check_options(parse_key_values([pair], "-d"), accepted, "dataset d")
