"""RA-GCN's evaluation protocol, the class report, the modality ensemble command and the paper table."""

import json

import numpy as np
import pytest
import torch

import camkit
from camkit.cli import main
from camkit_plugins.skeleton.evaluation import class_report
from camkit_plugins.skeleton.graph import NTU25_PARTS
from camkit_plugins.skeleton.protocols import (
    PAPER_COLUMNS,
    PAPER_REFERENCE,
    jitter,
    occlude_frame_block,
    paper_table,
    ragcn_conditions,
)


def clip_with_frames(first, last, t=20, n=1):
    """``(n, 3, t, 25, 2)`` ones in frames first..last (inclusive), zero padding elsewhere."""
    x = torch.zeros(n, 3, t, 25, 2)
    x[:, :, first:last + 1] = 1
    return x


def hidden_frames(before, after):
    """Frames that were present and are now zero in every joint, body and channel."""
    was = before.abs().sum(dim=(1, 3, 4)) > 0
    now = after.abs().sum(dim=(1, 3, 4)) > 0
    return [torch.nonzero(w & ~a).flatten().tolist() for w, a in zip(was, now)]


def test_frame_blocks_are_centred_in_each_clip_or_on_a_named_frame():
    x = torch.cat([clip_with_frames(4, 13), clip_with_frames(0, 19)])
    assert hidden_frames(x, occlude_frame_block(x, 4)) == [[7, 8, 9, 10], [8, 9, 10, 11]]  # middles 9 and 10
    assert hidden_frames(x, occlude_frame_block(x, 3, centre=5)) == [[4, 5, 6], [4, 5, 6]]
    assert hidden_frames(x, occlude_frame_block(x, 6, centre=1)) == [[4, 5], [0, 1, 2, 3, 4, 5]]  # kept inside
    long = clip_with_frames(0, 299, t=300)
    assert hidden_frames(long, occlude_frame_block(long, 10, centre=50)) == [list(range(45, 55))]


def test_ragcn_conditions_hide_exactly_the_named_joints_and_frames():
    dataset = camkit.lookup("datasets", "skeleton-synthetic")(split="test", size=2, frames=20, persons=2)
    conditions = ragcn_conditions(dataset)
    assert list(conditions)[:11] == ["clean", *NTU25_PARTS, "10 frames", "20 frames", "30 frames", "40 frames",
                                     "50 frames"]
    x, y, g = torch.rand(2, 3, 20, 25, 2) + 0.1, torch.tensor([0, 1]), torch.Generator().manual_seed(0)
    for part, joints in NTU25_PARTS.items():
        out = conditions[part](x, y, g)
        zero = (out == 0).all(dim=1).all(dim=1)  # (N, V, M): a joint zero in every frame and channel
        assert zero[:, list(joints)].all() and zero.sum() == 2 * len(joints) * 2  # every body, nothing else
        keep = [v for v in range(25) if v not in joints]
        assert torch.equal(out[:, :, :, keep], x[:, :, :, keep])
    assert hidden_frames(x, conditions["10 frames"](x, y, g)) == [list(range(5, 15))] * 2
    assert hidden_frames(x, conditions["50 frames"](x, y, g)) == [list(range(20))] * 2


def test_jitter_and_random_occlusion_touch_a_share_of_joints_or_frames_and_never_the_padding():
    x = clip_with_frames(0, 149, t=200, n=4) * 0.5
    g = torch.Generator().manual_seed(0)
    joint = jitter(x, "joint", 0.1, 0.05, g) - x  # (N, C, T, V, M) noise
    moved = (joint != 0).any(dim=1)  # (N, T, V, M)
    assert 0.07 < moved[:, :150].float().mean() < 0.13 and not moved[:, 150:].any()
    assert 0.03 < joint[joint != 0].std() < 0.07
    frame = (jitter(x, "frame", 0.1, 0.1, g) - x) != 0
    per_frame = frame.any(dim=1).flatten(2)  # (N, T, V*M): all joints of a frame move together
    assert torch.equal(per_frame.any(dim=2), per_frame.all(dim=2))
    assert 0.05 < per_frame[:, :150].any(dim=2).float().mean() < 0.15
    occluded = jitter(x, "occlusion", 0.1, 0.0, g)
    cells = (occluded == 0).all(dim=1)[:, :150]  # (N, T, V, M)
    assert torch.equal(cells[..., 0], cells[..., 1])  # a hidden cell is hidden in every body
    assert 0.07 < cells.float().mean() < 0.13 and torch.equal(occluded[occluded != 0], x[occluded != 0])


def test_class_report_counts_top1_top5_per_class_and_confusion_by_hand():
    dataset = camkit.lookup("datasets", "skeleton-synthetic")(split="test", size=24, frames=8)
    model = camkit.lookup("models", "stgcn")(num_classes=8, config="tiny", persons=1).eval()
    report = class_report(model, dataset, batch_size=5, progress=False)
    x = torch.stack([dataset[i]["input"] for i in range(24)])
    y = torch.as_tensor(dataset.labels)
    with torch.no_grad():
        logits = model(x)
    confusion = np.zeros((8, 8), int)
    for truth, predicted in zip(y.tolist(), logits.argmax(1).tolist()):
        confusion[truth, predicted] += 1
    np.testing.assert_array_equal(report["confusion"], confusion)
    assert report["top-1"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    top5 = sum(int(label in row) for label, row in zip(y.tolist(), logits.topk(5, dim=1).indices.tolist()))
    assert report["top-5"] == pytest.approx(top5 / 24)
    assert report["per class"][2] == pytest.approx(confusion[2, 2] / confusion[2].sum())


def test_paper_table_puts_our_rows_under_the_published_ones():
    results = {"ours": {key: 0.01 * (i + 1) for i, (_, key) in enumerate(PAPER_COLUMNS)}}
    table = paper_table(results)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| model | none"))
    assert header == "| model | none | left arm | right arm | hands | legs | trunk | 10 | 20 | 30 | 40 | 50 |"
    assert "| ST-GCN (paper) | 80.7 | 71.4 | 60.5 | 62.6 | 77.4 | 50.2 | 69.3 | 57.0 | 44.5 | 34.5 | 24.0 |" in lines
    assert f"| RA-GCN 3s (paper) | {' | '.join(f'{v:.1f}' for v in PAPER_REFERENCE['RA-GCN 3s (paper)'])} |" in lines
    assert "| ours | 1.0 | 2.0 | 3.0 | 4.0 | 5.0 | 6.0 | 7.0 | 8.0 | 9.0 | 10.0 | 11.0 |" in lines
    assert lines.index("| ours | 1.0 | 2.0 | 3.0 | 4.0 | 5.0 | 6.0 | 7.0 | 8.0 | 9.0 | 10.0 | 11.0 |") > \
        lines.index(header) + 2


@pytest.mark.slow
def test_modality_models_ensemble_and_the_ragcn_protocol_through_the_cli(tmp_path, capsys):
    data = ["-d", "size=8", "-d", "frames=12"]
    for modality in ("joint", "bone"):
        assert main(["train", "skeleton", *data, "--model", "stgcn", "--modality", modality, "-m", "config=tiny",
                     "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / modality)]) == 0
    assert main(["ensemble", "skeleton", "--checkpoints", str(tmp_path / "joint"), str(tmp_path / "bone"),
                 "--out", str(tmp_path / "fused")]) == 0
    assert "2 x joint + 2 x bone" in capsys.readouterr().out  # pyskl's weights by modality
    from camkit.checkpoint import load_checkpoint

    fused, config = load_checkpoint(tmp_path / "fused")
    joint, _ = load_checkpoint(tmp_path / "joint")
    bone, _ = load_checkpoint(tmp_path / "bone")
    test = camkit.lookup("datasets", "skeleton-synthetic")(split="test", size=8, frames=12)
    x = torch.stack([test[i]["input"] for i in range(8)])
    with torch.no_grad():
        torch.testing.assert_close(fused(x), 2 * joint(x) + 2 * bone(x))
    assert config["modalities"] == ["joint", "bone"] and bone.modality == "bone"

    explained = tmp_path / "explained"
    assert main(["explain", "skeleton", "--checkpoint", str(tmp_path / "fused"), "--count", "2",
                 "--out", str(explained)]) == 0
    np.testing.assert_allclose(np.load(explained / "maps.npy"), camkit.explain(fused, x[:2], reduce="M").numpy(),
                               atol=1e-6)

    evaluated = tmp_path / "eval"
    assert main(["eval", "skeleton", "--protocol", "ragcn", "--checkpoints", str(tmp_path / "fused"),
                 "--label", "ensemble", "--out", str(evaluated)]) == 0
    printed = capsys.readouterr().out
    assert "| ST-GCN (paper) | 80.7 |" in printed and "| ensemble | " in printed
    results = json.loads((evaluated / "results.json").read_text())
    with torch.no_grad():
        clean = (fused(x).argmax(1) == torch.as_tensor(test.labels)).float().mean().item()
    assert results["ensemble"]["accuracy"] == pytest.approx(clean)
    assert {"accuracy 50 frames", "accuracy joint jitter p=0.1 σ=0.05", "top-5 accuracy"} <= set(results["ensemble"])
    per_class = json.loads((evaluated / "per_class.json").read_text())
    assert list(per_class["ensemble"][0]) == test.classes
    assert [p.name for p in evaluated.glob("confusion_*.png")] == ["confusion_0_fused.png"]
    assert (evaluated / "confusion_0_fused.png").stat().st_size > 5000
    assert not [p for p in tmp_path.rglob(".*")]  # atomic writes leave no temporary files behind
