"""Skeleton plugin: graphs, readers, generator, ST-GCN / RA-GCN, joint-by-time CAMs and RA-GCN masks."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import camkit
from camkit_plugins.skeleton.data import (
    SYNTHETIC_CLASSES,
    build_ntu_skeleton,
    build_skeleton_npy,
    build_skeleton_synthetic,
    read_skeleton_file,
)
from camkit_plugins.skeleton.evaluation import energy_share, frame_importance, joint_importance, pointing_hits
from camkit_plugins.skeleton.graph import NTU25, OPENPOSE18, get_graph
from camkit_plugins.skeleton.masking import MaskRule, frames_from_cells
from camkit_plugins.skeleton.models import RAGCN, STGCN

# ---------------------------------------------------------------- graphs


@pytest.mark.parametrize("graph", [NTU25, OPENPOSE18])
@pytest.mark.parametrize("partition,max_hop,k", [("uniform", 1, 1), ("distance", 2, 3), ("spatial", 1, 3)])
def test_adjacency_columns_average_the_neighbourhood(graph, partition, max_hop, k):
    a = graph.adjacency(partition, max_hop)
    assert a.shape == (k, graph.num_joints, graph.num_joints)
    np.testing.assert_allclose(a.sum(axis=(0, 1)), np.ones(graph.num_joints), atol=1e-6)
    # the neighbourhood of a joint (incl. itself, within max_hop) gets equal weights
    hops = graph.hop_distance(max_hop)
    w = 3  # NTU neck / OpenPose right elbow: both have degree 2
    neighbours = np.flatnonzero(hops[:, w] <= max_hop)
    np.testing.assert_allclose(a.sum(0)[neighbours, w], 1 / len(neighbours), atol=1e-6)


def test_spatial_partition_splits_by_distance_to_centre():
    a = NTU25.adjacency("spatial")
    assert np.count_nonzero(a[0] - np.diag(np.diag(a[0]))) == 0  # root: the joint itself only
    # left elbow (5): its wrist (6) is farther from the centre (20), its shoulder (4) closer
    assert a[1, 6, 5] > 0 and a[1, 4, 5] == 0
    assert a[2, 4, 5] > 0 and a[2, 6, 5] == 0
    np.testing.assert_allclose(a[:, :, 5].sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(a[0, 5, 5], 1 / 3, atol=1e-6)


def test_custom_graph_and_errors():
    g = get_graph({"joints": 3, "bones": [[0, 1], [1, 2]], "center": 1})
    a = g.adjacency("uniform")[0]
    np.testing.assert_allclose(a[:, 1], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(a[:, 0], [1 / 2, 1 / 2, 0])
    with pytest.raises(ValueError, match="not pairs of distinct joints"):
        get_graph({"joints": 3, "bones": [[0, 5]]})
    with pytest.raises(KeyError, match="ntu25, openpose18, or a dict with joints, bones, center"):
        get_graph("kinect")
    with pytest.raises(ValueError, match="unknown partition"):
        NTU25.adjacency("nearest")


# ---------------------------------------------------------------- NTU reader and npy loader


def write_skeleton(path, frames):
    """Write an NTU .skeleton file; ``frames`` is a list of lists of (body_id, (25, 3) xyz)."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body_id, xyz in bodies:
            lines.append(f"{body_id} 0 1 1 1 1 0 0.1 0.2 2")
            lines.append("25")
            lines += [f"{x:.4f} {y:.4f} {z:.4f} 250 200 900 500 0 0 0 0 2" for x, y, z in xyz]
    path.write_text("\n".join(lines) + "\n")


def test_read_skeleton_file_pads_and_keeps_the_most_active_bodies(tmp_path):
    rng = np.random.default_rng(0)
    still = np.ones((25, 3))
    moving = [rng.normal(size=(25, 3)) for _ in range(3)]
    frames = [[("72057594037931101", still), ("72057594037931102", moving[t])] for t in range(3)]
    path = tmp_path / "S001C002P003R001A013.skeleton"
    write_skeleton(path, frames)
    with pytest.warns(RuntimeWarning, match="2 bodies tracked, kept the 1 most active"):
        out = read_skeleton_file(path, frames=5, bodies=1)
    assert out.shape == (3, 5, 25, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :3, :, 0], np.stack(moving).transpose(2, 0, 1), atol=1e-4)
    assert not out[:, 3:].any()
    two = read_skeleton_file(path, frames=3, bodies=2)
    np.testing.assert_allclose(two[:, :, :, 1], np.broadcast_to(still.T[:, None], (3, 3, 25)), atol=1e-4)
    with pytest.raises(ValueError, match="do not fit in frames=2"):
        read_skeleton_file(path, frames=2)


def test_malformed_skeleton_file_names_file_and_line(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    write_skeleton(path, [[("1", np.zeros((25, 3)))]])
    lines = path.read_text().splitlines()
    lines[4 + 7] = "0.1 0.2 oops 250 200 900 500 0 0 0 0 2"  # joint 8 of the only body
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"{path.name}:12: .*'oops' is not a number"):
        read_skeleton_file(path)
    lines[4 + 7] = "0.1 0.2"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"{path.name}:12: expected 12 value"):
        read_skeleton_file(path)
    path.write_text("\n".join(lines[:6]))
    with pytest.raises(ValueError, match=rf"{path.name}:7: file ends"):
        read_skeleton_file(path)


def test_ntu_dataset_labels_from_file_names_and_splits(tmp_path):
    for subject, action in [(1, 1), (2, 5), (3, 7), (4, 2)]:
        write_skeleton(tmp_path / f"S001C001P{subject:03d}R001A{action:03d}.skeleton", [[("1", np.ones((25, 3)))]])
    train = camkit.lookup("datasets", "ntu-skeleton")(split="train", root=str(tmp_path), frames=4, val_fraction=0)
    test = build_ntu_skeleton("test", root=str(tmp_path), frames=4)
    assert sorted(train.labels.tolist()) == [0, 1, 4]  # subjects 1, 2, 4 are xsub training subjects
    assert test.labels.tolist() == [6]
    item = test[0]
    assert item["input"].shape == (3, 4, 25, 2) and item["label"] == 6
    assert train.input_layout == "NCTVM" and train.domain == "skeleton" and len(train.classes) == 60
    (tmp_path / "bad_name.skeleton").write_text("0\n")
    with pytest.raises(ValueError, match="bad_name.skeleton: file name has no NTU"):
        build_ntu_skeleton("test", root=str(tmp_path), protocol="all")


def test_npy_loader_is_memory_mapped(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 3, 6, 25, 2)).astype(np.float32)
    np.save(tmp_path / "train_data.npy", data)
    (tmp_path / "train_label.txt").write_text("0\n2\n1\n2\n0\n")
    ds = camkit.lookup("datasets", "skeleton-npy")(split="train", root=str(tmp_path))
    assert isinstance(ds._load.__closure__[0].cell_contents, np.memmap)
    assert len(ds) == 5 and ds.classes == ["class 0", "class 1", "class 2"]
    torch.testing.assert_close(ds[3]["input"], torch.from_numpy(data[3]))
    assert ds[3]["label"] == 2
    (tmp_path / "train_label.txt").write_text("0\n2\nx\n")
    with pytest.raises(ValueError, match="train_label.txt:3: 'x' is not an integer"):
        build_skeleton_npy("train", root=str(tmp_path))
    np.save(tmp_path / "labels.npy", np.array([0, 1]))
    with pytest.raises(ValueError, match="has 2 labels but .* has 5 samples"):
        build_skeleton_npy("train", data=str(tmp_path / "train_data.npy"), labels=str(tmp_path / "labels.npy"))


# ---------------------------------------------------------------- generator


def test_generator_is_deterministic_with_masks_on_the_cue_joints():
    a = camkit.lookup("datasets", "skeleton-synthetic")(split="train", seed=3, size=24, frames=32)
    b = build_skeleton_synthetic("train", seed=3, size=24, frames=32)
    other = build_skeleton_synthetic("test", seed=3, size=24, frames=32)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.allclose(a.inputs, other.inputs)
    assert len(a.classes) == len(SYNTHETIC_CLASSES) >= 8
    assert np.bincount(a.labels, minlength=8).tolist() == [3] * 8
    for i in range(len(a)):
        item = a[i]
        mask = item["mask"].numpy()
        assert item["input"].shape == (3, 32, 25, 1) and mask.shape == (32, 25)
        cue1, cue2 = a.cue_joints(item["label"])
        assert set(cue1).isdisjoint(cue2)
        assert set(np.flatnonzero(mask.any(0))) == set(cue1) | set(cue2)
        frames = np.flatnonzero(mask.any(1))
        assert frames.size >= 0.4 * 32 * 0.9 and np.all(np.diff(frames) == 1)  # one contiguous window
        present = np.abs(item["input"].numpy()).sum(axis=(0, 2, 3)) > 0
        assert present[: frames[-1] + 1].all()
        assert not mask[~present].any()  # padding is never relevant


# ---------------------------------------------------------------- models and CAMs


def tiny_stgcn(**options):
    return STGCN(5, config="tiny", persons=2, **options).eval()


def test_stgcn_forward_and_options():
    x = torch.randn(3, 3, 16, 25, 2)
    model = tiny_stgcn()
    assert model(x).shape == (3, 5)
    assert model.extract(x).shape == (3, 16, 4, 25, 2)  # T' = T / 4
    paper = camkit.lookup("models", "stgcn")(num_classes=60, config="paper")
    assert len(paper.blocks) == 10 and paper.num_channels == 256
    assert [b.tcn[2].stride[0] for b in paper.blocks].count(2) == 2
    op = STGCN(4, graph="openpose18", partition="uniform", widths=[8, 8], strides=[1, 2], edge_importance=False)
    assert op(torch.randn(2, 3, 8, 18, 2)).shape == (2, 4) and op.blocks[0].gcn.importance is None
    with pytest.raises(ValueError, match=r"expects \(N, C=3, T, V=25, M=2\)"):
        model(torch.randn(2, 3, 16, 18, 2))


def test_joint_time_cam_matches_the_hand_written_sum():
    model = tiny_stgcn()
    x = torch.randn(2, 3, 16, 25, 2)
    raw = camkit.explain(model, x, targets=[1, 3], relu=False, normalize=False, upsample=False)
    assert raw.layout == "NCTVM" and raw.map_letters == "NTVM" and raw.maps.shape == (2, 4, 25, 2)
    f = model.extract(x).detach()
    w = model.fc.weight.detach()
    # oracle: M(t, v, m) = sum_k w_k^c f_k(t, v, m), one loop per sample
    for i, c in enumerate([1, 3]):
        oracle = sum(w[c, k] * f[i, k] for k in range(f.shape[1]))
        torch.testing.assert_close(raw.maps[i], oracle, atol=1e-5, rtol=1e-5)
    # the mean of the map over the sites is the class score minus the bias (CAM's identity)
    torch.testing.assert_close(raw.maps.mean(dim=(1, 2, 3)), raw.logits.gather(1, raw.targets[:, None])[:, 0]
                               - model.fc.bias.detach()[raw.targets], atol=1e-5, rtol=1e-5)


def test_joint_time_cam_resamples_time_only():
    model = tiny_stgcn()
    x = torch.randn(2, 3, 16, 25, 2)
    result = camkit.explain(model, x, reduce="M", relu=False, normalize=False)
    assert result.maps.shape == (2, 16, 25) and result.map_letters == "NTV"
    raw = camkit.explain(model, x, relu=False, normalize=False, upsample=False).maps.mean(dim=-1)
    # linear interpolation in time (align_corners=False) of each joint's column, joints untouched
    expected = torch.nn.functional.interpolate(raw.permute(0, 2, 1), size=16, mode="linear", align_corners=False)
    torch.testing.assert_close(result.maps, expected.permute(0, 2, 1), atol=1e-5, rtol=1e-5)
    gradcam = camkit.explain(model, x, method="gradcam", reduce="M")
    torch.testing.assert_close(gradcam.maps, camkit.explain(model, x, reduce="M").maps, atol=1e-5, rtol=0)
    # naming the family's own layer keeps its NCTVM layout (not a rank-5 guess such as NCDHW)
    named = camkit.explain(model, x, layer="features", reduce="M", relu=False, normalize=False)
    assert named.layout == "NCTVM" and named.map_letters == "NTV"
    torch.testing.assert_close(named.maps, result.maps)


def test_ragcn_cam_is_the_cam_of_the_summed_logits():
    model = RAGCN(4, streams=3, config="tiny", persons=1).eval()
    x = torch.randn(3, 3, 16, 25, 1)
    result = camkit.explain(model, x, relu=False, normalize=False, upsample=False)
    assert result.maps.shape == (3, 4, 25, 1)
    biases = sum(s.fc.bias for s in model.streams).detach()
    torch.testing.assert_close(result.maps.mean(dim=(1, 2, 3)),
                               result.logits.gather(1, result.targets[:, None])[:, 0] - biases[result.targets],
                               atol=1e-5, rtol=1e-5)
    stream_logits = model(x, per_stream=True)
    assert stream_logits.shape == (3, 3, 4)
    torch.testing.assert_close(stream_logits.sum(1), result.logits)


def test_importance_helpers_and_pointing_game():
    cam = torch.zeros(2, 4, 3)
    cam[0, 1, 2] = 3.0
    cam[0, 2, 0] = 1.0
    cam[1, 3, 1] = 2.0
    torch.testing.assert_close(joint_importance(cam), torch.tensor([[0.25, 0, 0.75], [0, 1, 0]]))
    torch.testing.assert_close(frame_importance(cam), torch.tensor([[0, 0.75, 0.25, 0], [0, 0, 0, 1]]))
    truth = torch.zeros(2, 4, 3, dtype=torch.bool)
    truth[0, 1, 2] = True
    truth[1, 0, 0] = True
    assert pointing_hits(cam, truth).tolist() == [True, False]
    torch.testing.assert_close(energy_share(cam, truth), torch.tensor([0.75, 0.0]))


# ---------------------------------------------------------------- RA-GCN masks


def test_mask_rules_zero_exactly_the_selected_cells_per_sample():
    cam = torch.tensor([[[0.0, 1.0, 4.0], [2.0, -1.0, 3.0]],
                        [[5.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # (N=2, T'=2, V=3)
    threshold = MaskRule("threshold", 0.5).cell_mask(cam)
    assert threshold.tolist() == [[[1, 1, 0], [0, 1, 0]], [[0, 1, 1], [1, 1, 1]]]
    topk = MaskRule("topk", 2).cell_mask(cam)
    assert topk.tolist() == [[[1, 1, 0], [1, 1, 0]], [[0, 1, 1], [1, 1, 0]]]
    joints = MaskRule("joints", 1).cell_mask(cam)
    assert joints.tolist() == [[[1, 1, 0], [1, 1, 0]], [[0, 1, 1], [0, 1, 1]]]
    quantile = MaskRule("quantile", 0.7).cell_mask(cam)  # cut halfway between the 4th and 5th smallest
    assert quantile.tolist() == [[[1, 1, 0], [1, 1, 0]], [[0, 1, 1], [1, 1, 0]]]
    keep = MaskRule("threshold", 0.5, "keep").cell_mask(cam)
    assert (keep + threshold == 1).all()
    # an all-negative map selects nothing (ReLU first)
    assert MaskRule("topk", 3).cell_mask(-torch.ones(1, 2, 3)).eq(1).all()
    with pytest.raises(ValueError, match="unknown mask rule"):
        MaskRule("random")
    with pytest.raises(ValueError, match="whole count"):
        MaskRule("topk", 0.5)


def test_absent_joints_take_the_budget_of_the_count_rules_first():
    cam = torch.tensor([[[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]]])  # (N=1, T'=2, V=4)
    absent = torch.tensor([[False, False, False, True]])  # joint 3 is missing from the input
    joints = MaskRule("joints", 2, absent_counts=True).select(cam, absent)
    assert joints[0, 0].tolist() == [True, False, False, True]  # absent joint 3, then the best joint 0
    assert MaskRule("joints", 2).select(cam, absent)[0, 0].tolist() == [True, True, False, False]
    topk = MaskRule("topk", 3, absent_counts=True).select(cam, absent)
    assert topk[0].tolist() == [[True, False, False, True], [False, False, False, True]]
    # more absent joints than the budget: only absent joints are hidden, nothing from the map
    every = torch.tensor([[True, True, True, False]])
    assert MaskRule("joints", 2, absent_counts=True).select(cam, every)[0, 0].sum() == 2
    assert not MaskRule("joints", 2, absent_counts=True).select(cam, every)[0, :, 3].any()
    # threshold rules ignore it
    assert torch.equal(MaskRule("threshold", 0.5, absent_counts=True).select(cam, absent),
                       MaskRule("threshold", 0.5).select(cam, absent))


def test_ragcn_absent_counts_spares_the_visible_joints_under_occlusion():
    torch.manual_seed(2)
    model = RAGCN(4, streams=2, config="tiny", persons=1, mask_rule="joints", mask_amount=6,
                  absent_counts=False).eval()
    x = torch.randn(3, 3, 16, 25, 1)
    x[:, :, :, [4, 5, 6, 7, 21, 22]] = 0  # left arm occluded
    _, plain = model.stream_masks(x)
    model.set_mask_options(absent_counts=True)
    _, spared = model.stream_masks(x)
    for i in range(3):
        hidden = set((spared[1, i] == 0).all(0).nonzero().flatten().tolist())
        assert hidden == {4, 5, 6, 7, 21, 22}  # the budget of 6 is spent on the missing arm
    visible = torch.ones(25, dtype=torch.bool)
    visible[[4, 5, 6, 7, 21, 22]] = False
    assert ((plain[1] == 0).all(1) & visible).any()  # without it the CAM hides joints still in view
    with pytest.raises(ValueError, match="unknown mask option"):
        model.set_mask_options(mask_size=3)


def test_frames_from_cells_covers_time_blocks():
    mask = torch.tensor([[[1.0], [0.0], [1.0]]])  # T' = 3
    assert frames_from_cells(mask, 6)[0, :, 0].tolist() == [1, 1, 0, 0, 1, 1]
    assert frames_from_cells(mask, 7)[0, :, 0].tolist() == [1, 1, 1, 0, 0, 1, 1]


def test_ragcn_masks_are_per_sample_cumulative_and_from_the_stream_cams():
    torch.manual_seed(1)
    rule = dict(mask_rule="topk", mask_amount=6)
    model = RAGCN(4, streams=3, config="tiny", persons=1, **rule).eval()
    x = torch.randn(2, 3, 16, 25, 1)
    features, seen = model.stream_masks(x)
    assert seen.shape == (3, 2, 16, 25)
    assert seen[0].eq(1).all()
    hidden1 = (seen[1] == 0)
    hidden2 = (seen[2] == 0)
    assert (hidden1 <= hidden2).all() and hidden2.sum() > hidden1.sum()  # cumulative
    assert not torch.equal(hidden1[0], hidden1[1])  # one mask per sample
    # stream 0's mask: top-6 cells of its own CAM for its predicted class, stretched over 4-frame blocks
    s0 = model.streams[0]
    predicted = s0(x).argmax(1)
    cam = camkit.explain(s0, x, targets=predicted, reduce="M", relu=False, normalize=False, upsample=False).maps
    for i in range(2):
        cells = set(cam[i].flatten().topk(6).indices.tolist())
        blocks = {t // 4 * 25 + v for t, v in hidden1[i].nonzero().tolist()}
        assert blocks == cells
        assert hidden1[i].sum() == 6 * 4
    # with labels in training mode the true class drives the mask
    labels = torch.tensor([0, 3])
    model.train()
    _, seen_train = model.stream_masks(x, labels)
    model.eval()
    s0.train()
    f0 = s0.extract(x).detach()
    s0.eval()
    cam_true = camkit.class_activation_map(f0, "NCTVM", channel_weights=s0.fc.weight[labels].detach()).mean(-1)
    for i in range(2):
        cells = set(cam_true[i].flatten().topk(6).indices.tolist())
        assert {t // 4 * 25 + v for t, v in (seen_train[1, i] == 0).nonzero().tolist()} == cells
    assert not any("mask" in key for key in model.state_dict())


def test_part_occlusion_augmentation_hides_one_whole_part_set_or_nothing():
    from camkit_plugins.skeleton.commands import occlude_random_parts
    from camkit_plugins.skeleton.graph import NTU25_PARTS

    x = torch.rand(64, 3, 8, 25, 1) + 0.5
    out = occlude_random_parts(x, 0.5, torch.Generator().manual_seed(0))
    hidden = (out == 0).all(1).all(1).all(-1)  # (N, V)
    assert ((out == 0) == hidden[:, None, None, :, None]).all()  # whole joints, every frame and channel
    sets = [set(joints) for joints in NTU25_PARTS.values()]
    rows = [set(row.nonzero().flatten().tolist()) for row in hidden]
    assert all(row == set() or row in sets for row in rows)
    assert 16 < sum(row != set() for row in rows) < 48  # about half the clips
    assert (occlude_random_parts(x, 1.0, torch.Generator().manual_seed(1)) == 0).any(1).any(1).any(-1).any(1).all()


def test_summarise_runs_reports_mean_and_sample_std():
    from camkit_plugins.skeleton.evaluation import markdown_table, summarise_runs

    means, spread = summarise_runs({"a": [{"accuracy": 0.5}, {"accuracy": 0.7}, {"accuracy": 0.9}],
                                    "b": [{"accuracy": 1.0}]})
    assert means["a"]["accuracy"] == pytest.approx(0.7) and spread["a"]["accuracy"] == pytest.approx(0.2)
    assert spread["b"] == {}
    assert markdown_table(means, spread).splitlines()[2] == "| accuracy | 70.0 ± 20.0 | 100.0 |"


def test_ragcn_training_step_reaches_every_stream_and_mode_is_kept():
    from camkit_plugins.skeleton.models import ra_gcn_loss

    model = RAGCN(3, streams=2, config="tiny", persons=1)
    x, y = torch.randn(4, 3, 16, 25, 1), torch.tensor([0, 1, 2, 0])
    out = model(x, labels=y, per_stream=True)
    loss = ra_gcn_loss(out, y)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(loss, ce(out.sum(1), y) + ce(out[:, 0], y) + ce(out[:, 1], y))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.training
    camkit.explain(model, x)
    assert model.training


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, camkit, camkit_plugins.skeleton; camkit.registry; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_occlusions_hide_exactly_what_they_name():
    from camkit_plugins.skeleton.evaluation import occlude_frames, occlude_joints

    x = torch.ones(3, 3, 10, 25, 2)
    hidden = occlude_frames(x, 4, torch.Generator().manual_seed(0))
    per_frame = hidden.sum(dim=(1, 3, 4))
    assert ((per_frame == 0).sum(dim=1) == 4).all() and not torch.equal(per_frame[0], per_frame[1])
    arm = occlude_joints(x, [4, 5, 6])
    assert arm[:, :, :, [4, 5, 6]].eq(0).all() and arm.sum() == x.sum() * 22 / 25
    own = torch.zeros(3, 25, dtype=torch.bool)
    own[1, 7] = True
    per_sample = occlude_joints(x, own)
    assert per_sample[1, :, :, 7].eq(0).all() and per_sample.sum() == x.sum() - 3 * 10 * 2


def test_renderers_draw_named_joints_and_key_frames(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from camkit_plugins.skeleton.render import key_frames

    clip = build_skeleton_synthetic("test", size=1, frames=16)[0]
    cam = clip["mask"].float()
    fig = camkit.lookup("renderers", "joint-time")(cam, None, "ntu25", "test", truth=clip["mask"])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == list(NTU25.joints)
    frames = key_frames(cam.numpy(), 3)
    active = np.flatnonzero(cam.numpy().sum(1))
    assert len(frames) == 3 and all(active[0] <= f <= active[-1] for f in frames)
    path = tmp_path / "s.png"
    camkit.lookup("renderers", "skeleton")(clip["input"], cam, path, frames=3, gif=tmp_path / "s.gif")
    assert path.stat().st_size > 3000 and (tmp_path / "s.gif").read_bytes()[:3] == b"GIF"
    with pytest.raises(ValueError, match="has 8 frames but the sequence 16"):
        camkit.lookup("renderers", "skeleton")(clip["input"], cam[:8], None)
