"""Skeleton preprocessing, sampling, augmentation, modalities and the modality ensemble, each checked
against hand-made skeletons with known coordinates or explicit loops."""

import numpy as np
import pytest
import torch

import camkit
from camkit_plugins.skeleton import preprocess
from camkit_plugins.skeleton.graph import COCO17, NTU25, NTU25_BONES, OPENPOSE18, OPENPOSE18_BONES
from camkit_plugins.skeleton.modalities import bones, motion, to_modality
from camkit_plugins.skeleton.models import STGCN, build_ensemble
from camkit_plugins.skeleton.preprocess import ClipPipeline

# ---------------------------------------------------------------- pre-normalisation


def canonical_pose(rng):
    """NTU-25 joints already normalised: spine mid (1) at the origin, spine base (0) below it on z,
    the shoulder line from the right (8) to the left (4) shoulder along +x."""
    pose = rng.uniform(-0.5, 0.5, size=(25, 3))
    pose[1] = 0
    pose[0] = (0, 0, -0.3)
    pose[8], pose[4] = (-0.2, 0.05, 0.3), (0.2, 0.05, 0.3)
    return pose


def rotation(angles):
    x, y, z = angles
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_prenormalise_recovers_a_rotated_shifted_skeleton_and_orders_bodies():
    rng = np.random.default_rng(0)
    canonical = [canonical_pose(rng)]
    for _ in range(3):  # the pose moves from frame to frame (joint 1 stays the origin)
        moved = canonical[-1] + rng.normal(0, 0.05, size=(25, 3))
        moved[1] = 0
        canonical.append(moved)
    turn = rotation((0.4, -0.7, 2.1))
    other = rng.uniform(-1, 1, size=(25, 3))  # a second person who stands still
    other[7] = 0  # an untracked joint
    clip = np.zeros((3, 6, 25, 2))
    for t, pose in enumerate(canonical):
        world = pose @ turn.T + (0.3 * t, 1.0, 2.0 - 0.1 * t)  # rotated, walking
        clip[:, t + 1, :, 1] = world.T  # frame 0 is empty; the moving person is in the second slot
        clip[:, t + 1, :, 0] = other.T
    out = preprocess.prenormalise(clip.astype(np.float32))
    assert out.shape == (3, 4, 25, 2)  # the empty frame dropped (and the empty last one)
    for t, pose in enumerate(canonical):
        np.testing.assert_allclose(out[:, t, :, 0].T, pose, atol=1e-5)  # main body first, back in its frame
        world_centre = (pose @ turn.T + (0.3 * t, 1.0, 2.0 - 0.1 * t))[1]
        expected_other = (other - world_centre) @ turn  # = turn^T (other - centre)
        expected_other[7] = 0
        np.testing.assert_allclose(out[:, t, :, 1].T, expected_other, atol=1e-5)
    spine = out[:, 0, 1, 0] - out[:, 0, 0, 0]
    np.testing.assert_allclose(spine / np.linalg.norm(spine), [0, 0, 1], atol=1e-6)


def test_each_prenormalisation_step_on_known_coordinates():
    clip = np.zeros((3, 4, 25, 2), np.float32)
    clip[:, 1, :, 0] = 1.0  # the main body is present in frames 1 and 3 only
    clip[:, 3, :, 0] = 2.0
    clip[:, 3, 5, 0] = 0  # joint 5 untracked in frame 3
    clip[:, :, :, 1] = np.arange(4)[None, :, None]  # the second body moves more
    ordered = preprocess.order_bodies_by_motion(clip)
    np.testing.assert_array_equal(ordered[..., 0], clip[..., 1])
    kept = preprocess.drop_empty_frames(clip)
    np.testing.assert_array_equal(kept, clip[:, [1, 3]])
    centred = preprocess.centre_on_joint(clip, joint=1)
    np.testing.assert_array_equal(centred[:, 3, 4, 0], [0, 0, 0])
    assert not centred[:, 3, 5, 0].any()  # an absent joint stays absent
    np.testing.assert_array_equal(centred[:, 2, 0, 1], [2, 2, 2])  # frame 2: main body absent, centre 0
    with pytest.raises(ValueError, match="3-D coordinates"):
        preprocess.prenormalise(np.zeros((2, 4, 25, 1)))
    flat = np.zeros((3, 2, 25, 1), np.float32)
    flat[:, :, 2:] = 1.0  # spine base, spine mid and both shoulders untracked (zero): no turn, no NaN
    np.testing.assert_array_equal(preprocess.align_axes(flat), flat)


def test_rotation_between_maps_one_direction_onto_another():
    rng = np.random.default_rng(1)
    for a, b in [rng.normal(size=(2, 3)) for _ in range(5)] + [(np.array([0, 0, 2.0]), np.array([0, 0, -1.0]))]:
        matrix = preprocess.rotation_between(a, b)
        np.testing.assert_allclose(matrix @ (a / np.linalg.norm(a)), b / np.linalg.norm(b), atol=1e-9)
        np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(matrix) == pytest.approx(1)


# ---------------------------------------------------------------- fitting clips to the window


def ramp(length, joints=2):
    """A clip whose value in frame t is t + 1 (so a read frame names itself)."""
    return np.broadcast_to(np.arange(1, length + 1, dtype=np.float32)[None, :, None, None],
                           (3, length, joints, 1)).copy()


def test_clip_windows_pad_sample_crop_and_resize():
    clip = ramp(20)
    short = ClipPipeline(frames=25)(clip, training=True)
    assert short.shape == (3, 25, 2, 1) and (short[0, :20, 0, 0] == np.arange(1, 21)).all() and not short[:, 20:].any()
    torch.manual_seed(0)
    sampled = ClipPipeline(frames=5)(clip, training=True)[0, :, 0, 0]
    assert all(4 * i < v <= 4 * (i + 1) for i, v in enumerate(sampled))  # one frame from each 4-frame segment
    centre = ClipPipeline(frames=6)(clip, training=False)[0, :, 0, 0]
    assert centre.tolist() == [8, 9, 10, 11, 12, 13]
    uniform = ClipPipeline(frames=5, test_sampling="uniform")(clip, training=False)[0, :, 0, 0]
    assert uniform.tolist() == [3, 7, 11, 15, 19]  # the middle of each 4-frame segment
    windows = ClipPipeline(frames=6, test_clips=3)(clip, training=False)
    assert windows.shape == (3, 3, 6, 2, 1) and windows[:, 0, 0, 0, 0].tolist() == [1, 8, 15]
    torch.manual_seed(1)
    resized = ClipPipeline(frames=7, sampling="crop-resize")(clip, training=True)[0, :, 0, 0]
    steps = np.diff(resized)
    np.testing.assert_allclose(steps, steps[0], atol=1e-5)  # linear in time: a resized contiguous crop
    assert 10 / 6 - 1e-5 <= steps[0] <= 19 / 6 + 1e-5 and 1 <= resized[0] and resized[-1] <= 20
    np.testing.assert_allclose(preprocess.resize_frames(ramp(3), 5)[0, :, 0, 0], [1, 1.5, 2, 2.5, 3])
    with pytest.raises(ValueError, match="unknown sampling 'random'"):
        ClipPipeline(sampling="random")


def test_several_test_windows_are_scored_together():
    from camkit_plugins.skeleton.evaluation import clip_scores

    model = STGCN(3, config="tiny", persons=1).eval()
    windows = torch.randn(2, 3, 3, 8, 25, 1)
    with torch.no_grad():
        expected = torch.stack([torch.stack([model(windows[n, k:k + 1])[0].softmax(0) for k in range(3)]).mean(0)
                                for n in range(2)])
        torch.testing.assert_close(clip_scores(model, windows), expected)


def test_augmentation_rotates_and_scales_coordinates_only():
    rng = np.random.default_rng(2)
    clip = rng.normal(size=(3, 5, 25, 2)).astype(np.float32)
    torch.manual_seed(0)
    turned = preprocess.random_rotation(clip, 0.3, coordinates=3)
    np.testing.assert_allclose(np.linalg.norm(turned, axis=0), np.linalg.norm(clip, axis=0), rtol=1e-5)
    assert not np.allclose(turned, clip)
    flat = preprocess.random_rotation(clip, 0.3, coordinates=2)
    np.testing.assert_array_equal(flat[2], clip[2])  # the score channel is not a coordinate
    np.testing.assert_allclose(np.linalg.norm(flat[:2], axis=0), np.linalg.norm(clip[:2], axis=0), rtol=1e-5)
    scaled = preprocess.random_scale(clip, 0.1, coordinates=3)
    factors = (scaled / clip).reshape(3, -1)
    np.testing.assert_allclose(factors, factors[:, :1].repeat(factors.shape[1], 1), rtol=1e-5)
    assert ((0.9 <= factors) & (factors <= 1.1)).all()


# ---------------------------------------------------------------- modalities


@pytest.mark.parametrize("graph,listed", [(NTU25, NTU25_BONES), (OPENPOSE18, OPENPOSE18_BONES)])
def test_parents_are_the_second_joint_of_each_listed_bone(graph, listed):
    parents = graph.parents()
    assert parents[graph.center] == graph.center
    assert {(child, parents[child]) for child in range(graph.num_joints) if child != graph.center} == set(listed)


def test_coco_parents_are_one_bone_closer_to_the_nose():
    hops = COCO17.hop_distance(17)[:, COCO17.center]
    for child, parent in enumerate(COCO17.parents()):
        if child != COCO17.center:
            assert (child, parent) in COCO17.bones or (parent, child) in COCO17.bones
            assert hops[parent] == hops[child] - 1


def test_bone_and_motion_match_explicit_loops():
    x = torch.randn(2, 3, 5, 25, 2)
    bone = bones(x, NTU25.parents())
    for child, parent in NTU25_BONES:
        torch.testing.assert_close(bone[:, :, :, child], x[:, :, :, child] - x[:, :, :, parent])
    assert not bone[:, :, :, NTU25.center].any()  # the centre joint's bone is zero
    moved = motion(x)
    for t in range(4):
        torch.testing.assert_close(moved[:, :, t], x[:, :, t + 1] - x[:, :, t])
    assert not moved[:, :, 4].any()
    torch.testing.assert_close(to_modality(x, "bone-motion", NTU25.parents()), motion(bone))
    with pytest.raises(ValueError, match="unknown modality 'velocity'"):
        to_modality(x, "velocity", NTU25.parents())


def test_a_modality_model_is_its_joint_model_fed_the_modality():
    torch.manual_seed(0)
    bone_model = STGCN(4, config="tiny", persons=2, modality="bone").eval()
    joint_model = STGCN(4, config="tiny", persons=2).eval()
    joint_model.load_state_dict(bone_model.state_dict())
    x = torch.randn(2, 3, 8, 25, 2)
    with torch.no_grad():
        torch.testing.assert_close(bone_model(x), joint_model(bones(x, NTU25.parents())))


def test_ensemble_fuses_logits_and_its_cam_is_the_weighted_sum_of_the_member_cams():
    members = [{"model": "stgcn", "model_options": {"config": "tiny", "modality": m}}
               for m in ("joint", "bone", "joint-motion")] + \
              [{"model": "ragcn", "model_options": {"config": "tiny", "streams": 2, "modality": "bone-motion"}}]
    ensemble = build_ensemble(5, members, [2, 2, 1, 1]).eval()
    x = torch.randn(3, 3, 16, 25, 2)
    with torch.no_grad():
        fused = sum(w * m(x) for w, m in zip([2, 2, 1, 1], ensemble.members))
        torch.testing.assert_close(ensemble(x), fused)
    targets = [0, 3, 4]
    whole = camkit.explain(ensemble, x, targets=targets, relu=False, normalize=False, upsample=False).maps
    parts = [camkit.explain(m, x, targets=targets, relu=False, normalize=False, upsample=False).maps
             for m in ensemble.members]
    torch.testing.assert_close(whole, sum(w * p for w, p in zip([2, 2, 1, 1], parts)), atol=1e-5, rtol=1e-5)
    biases = sum(w * (m.fc.bias if isinstance(m, STGCN) else sum(s.fc.bias for s in m.streams))
                 for w, m in zip([2, 2, 1, 1], ensemble.members)).detach()
    torch.testing.assert_close(whole.mean(dim=(1, 2, 3)), fused.gather(1, torch.tensor(targets)[:, None])[:, 0]
                               - biases[targets], atol=1e-4, rtol=1e-4)  # CAM's identity for the fused logits
    with pytest.raises(ValueError, match="one weight per member"):
        build_ensemble(5, members, [1, 1])
