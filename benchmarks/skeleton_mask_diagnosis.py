"""Which cue do an RA-GCN's masks hide? Per-stream accuracy and mask/cue overlap on generated clips.

    python benchmarks/skeleton_mask_diagnosis.py runs/r3-seed1

For the clean held-out clips and with each clip's cue 1 / cue 2 occluded, with ``absent_counts`` off
and on: accuracy of the summed logits and of every stream, the share of each cue's joints hidden
(in every frame) from streams 1, 2, ..., and every stream's mean top softmax probability. Last, every
stream's accuracy without any mask. Used for the diagnosis in docs/skeleton.md.
"""

import sys

import torch

import camkit
from camkit.checkpoint import load_checkpoint
from camkit_plugins.skeleton.evaluation import occlude_joints


def main(checkpoint: str) -> None:
    model, config = load_checkpoint(checkpoint)
    data = camkit.lookup("datasets", "skeleton-synthetic")(split="test", seed=0, **config.get("dataset_options", {}))
    x, y = torch.as_tensor(data.inputs), torch.as_tensor(data.labels)
    cue = torch.zeros(2, len(data.classes), x.shape[3], dtype=torch.bool)
    for c in range(len(data.classes)):
        for which in range(2):
            cue[which, c, list(data.cue_joints(c)[which])] = True
    conditions = {"clean": x, "cue 1 occluded": occlude_joints(x, cue[0][y]),
                  "cue 2 occluded": occlude_joints(x, cue[1][y])}
    for absent_counts in (False, True):
        model.set_mask_options(absent_counts=absent_counts)
        print(f"--- {checkpoint}, absent_counts={absent_counts}")
        for name, xc in conditions.items():
            with torch.no_grad():
                logits = model(xc, per_stream=True)
                _, seen = model.stream_masks(xc)
            streams = " ".join(f"{100 * (logits[:, s].argmax(1) == y).float().mean():5.1f}"
                               for s in range(logits.shape[1]))
            line = f"{name:15s} sum {100 * (logits.sum(1).argmax(1) == y).float().mean():5.1f} | streams {streams}"
            for s in range(1, seen.shape[0]):
                hidden = (seen[s] == 0).all(dim=1)  # (N, V): joint hidden in every frame
                shares = [((hidden & cue[w][y]).sum(1) / cue[w][y].sum(1)).float().mean() for w in range(2)]
                line += f" | hidden from stream {s}: cue 1 {100 * shares[0]:3.0f}%, cue 2 {100 * shares[1]:3.0f}%"
            confidence = " ".join(f"{c:.2f}" for c in logits.softmax(-1).amax(-1).mean(0).tolist())
            print(line + f" | confidence {confidence}")
    with torch.no_grad():
        for name, xc in conditions.items():
            accuracy = " ".join(f"{100 * (s(xc).argmax(1) == y).float().mean():5.1f}" for s in model.streams)
            print(f"without masks, {name:15s} streams {accuracy}")


if __name__ == "__main__":
    main(sys.argv[1])
