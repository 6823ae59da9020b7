"""Skeleton readers: each format written here, byte for byte as its pipeline writes it, read back with
known values and trained on for one epoch through ``camkit train skeleton``."""

import json
import pickle

import numpy as np
import pytest
import torch

import camkit
from camkit.checkpoint import load_checkpoint
from camkit.cli import main
from camkit_plugins.skeleton.graph import COCO17_JOINTS
from test_skeleton import write_skeleton

TINY = ["--model", "stgcn", "-m", "config=tiny", "--epochs", "1", "--batch-size", "4"]


def train_one_epoch(out, dataset, *options):
    assert main(["train", "skeleton", "--dataset", dataset, *options, *TINY, "--out", str(out)]) == 0
    return load_checkpoint(out)


# ---------------------------------------------------------------- pyskl / mmaction2


def write_pyskl_ntu(path, rng, clips=6, frames=10):
    """pyskl's NTU 3-D annotations: float16 keypoints (M, T, 25, 3), only the four NTU keys."""
    annotations, names = [], []
    for i in range(clips):
        name = f"S001C001P{i + 1:03d}R001A{1 + i % 3:03d}"
        bodies = 1 + i % 2
        annotations.append({"frame_dir": name, "label": i % 3, "total_frames": frames,
                            "keypoint": rng.uniform(0.1, 1, size=(bodies, frames, 25, 3)).astype(np.float16)})
        names.append(name)
    content = {"split": {"xsub_train": names[:4], "xsub_val": names[4:]}, "annotations": annotations}
    path.write_bytes(pickle.dumps(content, protocol=4))
    return content


def test_pyskl_3d_ntu_reads_keypoints_by_split_and_trains(tmp_path):
    content = write_pyskl_ntu(tmp_path / "ntu60_3danno.pkl", np.random.default_rng(0))
    build = camkit.lookup("datasets", "pyskl")
    by_name = build(split="xsub_val", path=str(tmp_path / "ntu60_3danno.pkl"), frames=10)
    by_protocol = build(split="test", path=str(tmp_path / "ntu60_3danno.pkl"), protocol="xsub", frames=10)
    assert len(by_name) == len(by_protocol) == 2 and by_name.graph == "ntu25"
    for i, annotation in enumerate(content["annotations"][4:]):
        expected = np.zeros((3, 10, 25, 2), np.float32)
        keypoint = annotation["keypoint"].astype(np.float32)
        expected[..., : keypoint.shape[0]] = keypoint.transpose(3, 1, 2, 0)
        np.testing.assert_array_equal(by_name[i]["input"].numpy(), expected)
        assert by_protocol[i]["label"] == annotation["label"]
    broken = {**content, "annotations": [{"frame_dir": "x", "label": 0}]}
    (tmp_path / "broken.pkl").write_bytes(pickle.dumps(broken))
    with pytest.raises(ValueError, match="broken.pkl: annotation 0 lacks frame_dir, label or keypoint"):
        build(split="xsub_val", path=str(tmp_path / "broken.pkl"))
    with pytest.raises(ValueError, match=r"ntu60_3danno.pkl: unknown split 'xview_val'\. .*Available: .*xsub_val"):
        build(split="val", path=str(tmp_path / "ntu60_3danno.pkl"), protocol="xview")

    model, config = train_one_epoch(tmp_path / "model", "pyskl", "-d", f"path={tmp_path / 'ntu60_3danno.pkl'}",
                                    "-d", "frames=8", "--train-split", "xsub_train", "--val-split", "xsub_val")
    assert config["input_shape"] == [3, 8, 25, 2] and config["graph"] == "ntu25" and len(config["classes"]) == 3


def test_pyskl_2d_coco_keypoints_get_their_score_as_a_channel_and_train(tmp_path):
    rng = np.random.default_rng(1)
    annotations = []
    for i in range(6):
        annotations.append({"frame_dir": f"clip{i}", "label": i % 2, "total_frames": 7, "img_shape": (480, 640),
                            "original_shape": (480, 640),
                            "keypoint": rng.uniform(0, 480, size=(1, 7, 17, 2)).astype(np.float32),
                            "keypoint_score": rng.uniform(0.1, 1, size=(1, 7, 17)).astype(np.float32)})
    content = {"split": {"sub_train": [f"clip{i}" for i in range(4)], "sub_val": ["clip4", "clip5"]},
               "annotations": annotations}
    path = tmp_path / "coco.pkl"
    path.write_bytes(pickle.dumps(content))
    data = camkit.lookup("datasets", "pyskl")(split="val", path=str(path), frames=7, bodies=1)  # one pair: no protocol
    assert data.graph == "coco17" and data.sample_shape == (3, 7, 17, 1) and data.coordinates == 2
    item = data[0]["input"].numpy()[..., 0]
    keypoint, score = annotations[4]["keypoint"][0], annotations[4]["keypoint_score"][0]
    np.testing.assert_allclose(item[0], keypoint[..., 0] / 320 - 1, rtol=1e-6)  # x over half the width
    np.testing.assert_allclose(item[1], keypoint[..., 1] / 240 - 1, rtol=1e-6)
    np.testing.assert_array_equal(item[2], score)
    _, config = train_one_epoch(tmp_path / "model", "pyskl", "-d", f"path={path}", "-d", "bodies=1",
                                "-d", "frames=6", "-d", "rotate=0.3", "-d", "scale=0.1")
    assert config["graph"] == "coco17" and config["input_shape"] == [3, 6, 17, 1]
    assert main(["explain", "skeleton", "--checkpoint", str(tmp_path / "model"), "--split", "sub_val", "--count", "1",
                 "--out", str(tmp_path / "maps")]) == 0
    assert np.load(tmp_path / "maps" / "maps.npy").shape == (1, 6, 17)
    summary = json.loads((tmp_path / "maps" / "summary.json").read_text())
    assert set(summary[0]["top joints"]) <= set(COCO17_JOINTS)


def test_pickles_that_would_run_code_are_refused(tmp_path):
    from camkit_plugins.skeleton.formats import load_pickle

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"split": {}, "annotations": [print]}))
    with pytest.raises(ValueError, match="evil.pkl: cannot read this pickle: it holds a builtins.print"):
        load_pickle(path)


# ---------------------------------------------------------------- CTR-GCN .npz


def test_ctrgcn_npz_unpacks_two_bodies_of_25_xyz_joints_and_trains(tmp_path):
    rng = np.random.default_rng(2)
    clips = {side: rng.normal(size=(n, 3, 12, 25, 2)).astype(np.float32) for side, n in (("train", 6), ("test", 3))}
    arrays = {}
    for side, clip in clips.items():
        x = np.zeros((len(clip), 12, 150), np.float32)
        for n, t, body, joint, axis in np.ndindex(len(clip), 12, 2, 25, 3):  # CTR-GCN's layout, written out
            x[n, t, body * 75 + joint * 3 + axis] = clip[n, axis, t, joint, body]
        arrays[f"x_{side}"] = x
        arrays[f"y_{side}"] = np.eye(4)[np.arange(len(clip)) % 4]
    np.savez(tmp_path / "NTU60_CS.npz", **arrays)
    test = camkit.lookup("datasets", "ctrgcn")(split="test", path=str(tmp_path / "NTU60_CS.npz"), frames=12)
    assert len(test) == 3 and len(test.classes) == 4 and test.labels.tolist() == [0, 1, 2]
    for i in range(3):
        np.testing.assert_array_equal(test[i]["input"].numpy(), clips["test"][i])
    _, config = train_one_epoch(tmp_path / "model", "ctrgcn", "-d", f"path={tmp_path / 'NTU60_CS.npz'}",
                                "-d", "frames=8", "-d", "sampling=crop-resize")
    assert config["input_shape"] == [3, 8, 25, 2]


# ---------------------------------------------------------------- ST-GCN .npy + label pickle


def test_stgcn_label_pickles_beside_the_data_arrays(tmp_path):
    rng = np.random.default_rng(3)
    for split, n in (("train", 6), ("val", 2)):
        np.save(tmp_path / f"{split}_data.npy", rng.normal(size=(n, 3, 9, 25, 2)).astype(np.float32))
        names = [f"S001C001P001R001A{i + 1:03d}.skeleton" for i in range(n)]
        with open(tmp_path / f"{split}_label.pkl", "wb") as file:
            pickle.dump((names, [i % 3 for i in range(n)]), file)
    data = camkit.lookup("datasets", "stgcn-npy")(split="train", root=str(tmp_path))
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2] and data.sample_shape == (3, 9, 25, 2)
    _, config = train_one_epoch(tmp_path / "model", "stgcn-npy", "-d", f"root={tmp_path}")
    assert config["classes"] == ["class 0", "class 1", "class 2"]
    with open(tmp_path / "val_label.pkl", "wb") as file:
        pickle.dump((["a", "b"], [0]), file)
    with pytest.raises(ValueError, match="val_label.pkl: expected ST-GCN's pickled"):
        camkit.lookup("datasets", "stgcn-npy")(split="val", root=str(tmp_path))


# ---------------------------------------------------------------- Kinetics-skeleton JSON


def kinetics_frame(index, people):
    return {"frame_index": index,
            "skeleton": [{"pose": pose.tolist(), "score": score.tolist()} for pose, score in people]}


def test_kinetics_json_centres_xy_keeps_the_best_scored_people_and_trains(tmp_path):
    rng = np.random.default_rng(4)
    for split, count in (("train", 6), ("val", 2)):
        folder = tmp_path / f"kinetics_{split}"
        folder.mkdir()
        index = {}
        for i in range(count):
            frames = [kinetics_frame(t + 1, [(rng.uniform(0, 1, 36), rng.uniform(0.1, 1, 18)) for _ in range(3)])
                      for t in range(5)]
            (folder / f"clip{i}.json").write_text(json.dumps({"data": frames, "label": f"action {i % 2}",
                                                              "label_index": i % 2}))
            index[f"clip{i}"] = {"has_skeleton": True, "label": f"action {i % 2}", "label_index": i % 2}
        (tmp_path / f"kinetics_{split}_label.json").write_text(json.dumps(index))

    # one clip by hand: a weak and a strong person, a zero-score joint, frames numbered from 1
    weak, strong = (np.full(36, 0.7), np.full(18, 0.2)), (np.linspace(0, 1, 36), np.full(18, 0.9))
    strong[1][3] = 0.0
    (tmp_path / "kinetics_val" / "clip0.json").write_text(json.dumps(
        {"data": [kinetics_frame(1, [weak, strong]), kinetics_frame(3, [strong])], "label_index": 0}))
    data = camkit.lookup("datasets", "kinetics-json")(split="val", root=str(tmp_path / "kinetics_{split}"),
                                                      labels=str(tmp_path / "kinetics_{split}_label.json"), frames=4)
    assert data.graph == "openpose18" and data.classes == ["action 0", "action 1"]
    clip = data[0]["input"].numpy()
    expected_xy = np.stack([strong[0][0::2], strong[0][1::2]]) - 0.5
    expected_xy[:, 3] = 0  # score 0: the joint is absent
    np.testing.assert_allclose(clip[:2, 0, :, 0], expected_xy, atol=1e-6)
    np.testing.assert_allclose(clip[2, 0, :, 0], strong[1])
    np.testing.assert_allclose(clip[:2, 0, :, 1], np.full((2, 18), 0.2), atol=1e-6)  # the weaker one second
    np.testing.assert_array_equal(clip[:, 2, :, 0], clip[:, 0, :, 0])  # frame_index 3: the strong person alone
    assert not clip[:, 2, :, 1].any() and not clip[:, 1].any() and not clip[:, 3].any()

    (tmp_path / "kinetics_val" / "clip1.json").write_text(json.dumps({"data": [{"skeleton": []}]}))
    with pytest.raises(ValueError, match=r"clip1.json: not a Kinetics-skeleton clip .*'frame_index'"):
        data[1]
    (tmp_path / "kinetics_val" / "clip1.json").unlink()  # the index may list clips that are not there

    _, config = train_one_epoch(tmp_path / "model", "kinetics-json", "-d", f"root={tmp_path / 'kinetics_{split}'}",
                                "-d", f"labels={tmp_path / 'kinetics_{split}_label.json'}", "-d", "frames=4")
    assert config["graph"] == "openpose18" and config["input_shape"] == [3, 4, 18, 2]


# ---------------------------------------------------------------- NTU .skeleton


def test_ntu_missing_lists_and_the_ntu120_splits(tmp_path):
    codes = [(1, 1, 1), (2, 2, 45), (3, 3, 3), (4, 1, 60), (2, 1, 2)]  # (setup, camera, subject)
    for i, (setup, camera, subject) in enumerate(codes):
        write_skeleton(tmp_path / f"S{setup:03d}C{camera:03d}P{subject:03d}R001A{i + 1:03d}.skeleton",
                       [[("1", np.full((25, 3), 0.1 * (t + 1)))] for t in range(3)])
    (tmp_path / "missing.txt").write_text("# samples with missing skeletons\nS002C001P002R001A005\n")
    build = camkit.lookup("datasets", "ntu-skeleton")
    options = dict(root=str(tmp_path), frames=3, val_fraction=0, num_classes=120)
    xsub = build("train", protocol="xsub", **options)
    assert sorted(xsub.labels.tolist()) == [0, 1, 4]  # subjects 1, 45 (NTU-120) and 2
    xset = build("train", protocol="xset", missing=str(tmp_path / "missing.txt"), **options)
    assert sorted(xset.labels.tolist()) == [1, 3]  # even setups 2 and 4; A005 is on the missing list
    assert sorted(build("test", protocol="xset", **options).labels.tolist()) == [0, 2]
    assert sorted(build("test", protocol="xview", **options).labels.tolist()) == [0, 3, 4]  # camera 1
    (tmp_path / "bad.txt").write_text("S001C001\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: 'S001C001' is not an NTU sample name"):
        build("train", missing=str(tmp_path / "bad.txt"), **options)
    _, config = train_one_epoch(tmp_path / "model", "ntu-skeleton", "-d", f"root={tmp_path}", "-d", "frames=2",
                                "-d", "protocol=all", "-d", "num_classes=120",
                                "-d", f"missing={tmp_path / 'missing.txt'}")
    assert config["input_shape"] == [3, 2, 25, 2] and len(config["classes"]) == 120


def test_ntu_reader_refuses_non_finite_coordinates_naming_file_and_line(tmp_path):
    from camkit_plugins.skeleton.data import read_skeleton_file

    path = tmp_path / "S001C001P001R001A001.skeleton"
    write_skeleton(path, [[("1", np.zeros((25, 3)))]])
    for bad in ("nan", "inf", "-inf"):
        lines = path.read_text().splitlines()
        lines[4 + 2] = f"0.1 {bad} 0.3 250 200 900 500 0 0 0 0 2"
        path.write_text("\n".join(lines))
        with pytest.raises(ValueError, match=rf"{path.name}:7: .*'{bad}' is not a finite number"):
            read_skeleton_file(path)


def test_non_finite_values_in_array_data_name_the_sample(tmp_path):
    data = np.zeros((3, 3, 4, 25, 1), np.float32)
    data[1, 0, 2, 5, 0] = np.nan
    np.save(tmp_path / "train_data.npy", data)
    (tmp_path / "train_label.txt").write_text("0\n1\n0\n")
    dataset = camkit.lookup("datasets", "stgcn-npy")(split="train", root=str(tmp_path))
    assert dataset[0]["input"].shape == (3, 4, 25, 1)
    with pytest.raises(ValueError, match=r"train_data.npy sample 1 is not finite: 1 NaN"):
        dataset[1]


def test_long_clips_are_sampled_to_the_window_instead_of_refused(tmp_path):
    frames = [[("1", np.full((25, 3), t + 1.0))] for t in range(12)]
    write_skeleton(tmp_path / "S001C001P001R001A001.skeleton", frames)
    build = camkit.lookup("datasets", "ntu-skeleton")
    test = build("test", root=str(tmp_path), protocol="all", frames=4, bodies=1)
    assert test[0]["input"][0, :, 0, 0].tolist() == [5, 6, 7, 8]  # centre crop
    torch.manual_seed(0)
    train = build("train", root=str(tmp_path), protocol="all", frames=4, bodies=1, val_fraction=0)
    picked = train[0]["input"][0, :, 0, 0]
    assert all(lo < v <= hi for v, lo, hi in zip(picked.tolist(), (0, 3, 6, 9), (3, 6, 9, 12)))  # one per segment
