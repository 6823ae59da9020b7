"""The network inside an Ultralytics YOLO model, with outputs targets can score: a classifier's logits
(its eval-mode output is ``(probabilities, logits)``), a detector's (and segmenter's) detections after
non-maximum suppression as torchvision detectors give them, ``[{"boxes", "labels", "scores", "anchors"
[, "masks"]}, ...]`` per sample, the scores differentiable. Imported only for a model that is one (this
module imports torch; it never imports ultralytics itself)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# ultralytics' own prediction defaults (``model.overrides`` of a YOLO object can change them)
DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET = 0.25, 0.7, 300
TASKS = {"ClassificationModel": "classify", "DetectionModel": "detect", "SegmentationModel": "segment",
         "PoseModel": "pose"}


class YoloNetwork(nn.Module):
    """``model`` (a ``YOLO`` object, or its network: ``DetectionModel``, ``SegmentationModel``,
    ``ClassificationModel``, ``PoseModel``) run as a network: its own submodules under their own names (so
    ``layer="model.model.15"`` on a YOLO object stays that), its forward the network's, not ``predict()``.

    Detections: boxes ``[x1, y1, x2, y2]`` in input pixels, the best class's sigmoid score, kept when at least
    ``conf`` and by class-wise NMS at ``iou``, at most ``max_det`` per sample, best first (``conf``, ``iou``,
    ``max_det``: the YOLO object's ``overrides``, else ultralytics' defaults 0.25, 0.7, 300). ``anchors`` is
    each detection's anchor; a segmenter adds ``masks`` (K, 1, H, W), the sigmoid of its mask coefficients
    times the prototypes, resampled to the input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        network = getattr(model, "model", None) if type(model).__name__ not in TASKS else model
        if not isinstance(network, nn.Module) or type(network).__name__ not in TASKS:
            raise TypeError(f"{type(model).__name__}: camkit explains Ultralytics classification, detection, "
                            f"segmentation and pose models (YOLO objects or their networks: "
                            f"{', '.join(TASKS)}); got a {type(network).__name__} network")
        for name, child in model.named_children():  # the user's names, e.g. "model.model.15" on a YOLO object
            self.add_module(name, child)
        object.__setattr__(self, "network", network)  # not a submodule: its children are
        self.task = TASKS[type(network).__name__]
        self.prefix = "" if network is model else "model."
        overrides = getattr(model, "overrides", None) or {}
        self.conf = float(overrides.get("conf") if overrides.get("conf") is not None else DEFAULT_CONF)
        self.iou = float(overrides.get("iou") if overrides.get("iou") is not None else DEFAULT_IOU)
        self.max_det = int(overrides.get("max_det") or DEFAULT_MAX_DET)
        self.names = dict(getattr(network, "names", {}) or {})
        self.stride = int(max(getattr(network, "stride", torch.tensor([32])).tolist()))

    @property
    def head(self) -> nn.Module:
        return self.network.model[-1]

    def feature_layer(self) -> str | None:
        """Detectors: the first input of the detection head (stride 8, on every detection's path: the
        bottom-up path reads it for the coarser levels too); classifiers: None (found by data flow)."""
        if self.task == "classify":
            return None
        return f"{self.prefix}model.{self.head.f[0]}"

    def forward(self, x: torch.Tensor) -> Any:
        if x.ndim != 4 or x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise ValueError(f"a YOLO network takes (N, 3, H, W) pictures with H and W multiples of its stride "
                             f"{self.stride}, got {tuple(x.shape)}")
        if self.task != "classify" and self.head.training:
            raise ValueError("a YOLO detector gives detections in eval mode only (in training mode it returns its "
                             "raw loss inputs): keep eval_mode=True, the default")
        anchors = getattr(self.head, "anchors", None)
        if isinstance(anchors, torch.Tensor) and anchors.is_inference() and not torch.is_inference_mode_enabled():
            self.head.shape = None  # its anchor cache was made under inference_mode: autograd cannot use it
        levels: list[torch.Tensor] = []  # the class branch's logits per stride, (N, classes, H', W') each
        heads = getattr(self.head, "one2many", {}).get("cls_head") if self.task != "classify" else None
        hooks = [branch.register_forward_hook(lambda module, args, output: levels.append(output))
                 for branch in (heads or [])]
        try:
            out = self.network(x)
        finally:
            for hook in hooks:
                hook.remove()
        if self.task == "classify":
            return out[1] if isinstance(out, (tuple, list)) else out  # eval: (probabilities, logits)
        first = out[0] if isinstance(out, (tuple, list)) else out
        predictions, prototypes = (first[0], first[1]) if isinstance(first, (tuple, list)) else (first, None)
        if predictions.ndim == 3 and predictions.shape[-1] == 6 and getattr(self.head, "end2end", False):
            return [self._end_to_end(row) for row in predictions]  # already (K, 6): x1 y1 x2 y2 score class
        raw = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 and isinstance(out[1], dict) else {}
        raw = raw.get("one2many", raw)
        anchors = sum(level.shape[-2] * level.shape[-1] for level in levels)
        if len(levels) != len(heads or []) or anchors != predictions.shape[-1]:
            levels = []  # a head that did not run its class branches as expected: score from its output
        return [self._detections(predictions[i], None if prototypes is None else prototypes[i], x.shape[-2:],
                                 [level[i] for level in levels], raw["mask_coefficient"][i]
                                 if isinstance(raw.get("mask_coefficient"), torch.Tensor) else None)
                for i in range(len(predictions))]

    def _detections(self, prediction: torch.Tensor, prototypes: torch.Tensor | None, size: Any,
                    levels: list[torch.Tensor], mask_coefficients: torch.Tensor | None) -> dict[str, Any]:
        """One sample's ``(4 + classes + extra, anchors)`` prediction after NMS. Scores come from the class
        branch's logits of their own stride (``levels``, the same values) and mask coefficients from the
        head's raw ones: a score's gradient then runs back through its stride's class branch only, not
        through the box branch, its decoding and the other strides, which would all receive zeros (Grad-CAM
        on YOLOv8n at 640 px: 1.49x a forward before, see docs/models.md)."""
        from torchvision.ops import batched_nms, box_convert

        classes = int(self.head.nc)
        class_scores = prediction[4:4 + classes]  # (classes, anchors), sigmoid already
        best, labels = class_scores.detach().max(dim=0)
        anchors = torch.nonzero(best >= self.conf).flatten()
        boxes = box_convert(prediction[:4, anchors].T, "cxcywh", "xyxy")
        keep = batched_nms(boxes.detach().float(), best[anchors].float(), labels[anchors], self.iou)[:self.max_det]
        anchors, labels = anchors[keep], labels[anchors][keep]
        scores = _scores_by_level(levels, labels, anchors) if levels else class_scores[labels, anchors]
        found = {"boxes": boxes[keep], "labels": labels, "scores": scores, "anchors": anchors}
        if prototypes is not None:  # mask coefficients follow the classes
            coefficients = mask_coefficients[:, anchors].T if mask_coefficients is not None else \
                prediction[4 + classes:4 + classes + prototypes.shape[0], anchors].T
            masks = torch.einsum("kc,chw->khw", coefficients, prototypes).sigmoid()[:, None]
            found["masks"] = nn.functional.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
        return found

    def _end_to_end(self, rows: torch.Tensor) -> dict[str, Any]:
        kept = rows[rows[:, 4].detach() >= self.conf][:self.max_det]
        return {"boxes": kept[:, :4], "labels": kept[:, 5].detach().long(), "scores": kept[:, 4]}


def _scores_by_level(levels: list[torch.Tensor], labels: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The sigmoid of each detection's class logit, read from the class branch of its own stride (anchors
    number the strides' grids one after the other, row-major), in the detections' order."""
    return _LevelScores.apply(labels, anchors, *levels)


class _LevelScores(torch.autograd.Function):
    """Detection scores gathered from the strides' class logits, whose backward gives a stride no gradient
    at all (``None``, so autograd does not run through its branch) when no scored detection lies in it: a
    target scores a few of the detections, and the strides it does not touch would otherwise be
    backpropagated with zeros."""

    @staticmethod
    def forward(ctx: Any, labels: torch.Tensor, anchors: torch.Tensor, *levels: torch.Tensor) -> torch.Tensor:
        starts = [0]
        for level in levels:
            starts.append(starts[-1] + level.shape[-2] * level.shape[-1])
        logits = torch.cat([level.flatten(1) for level in levels], dim=1)[labels, anchors]
        scores = logits.sigmoid()
        ctx.save_for_backward(labels, anchors, scores)
        ctx.starts, ctx.shapes = starts, [level.shape for level in levels]
        return scores

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        labels, anchors, scores = ctx.saved_tensors
        grad = grad * scores * (1 - scores)  # the sigmoid's derivative
        grads = []
        for start, end, shape in zip(ctx.starts[:-1], ctx.starts[1:], ctx.shapes):
            here = (anchors >= start) & (anchors < end) & (grad != 0)
            if not bool(here.any()):
                grads.append(None)
                continue
            level = grad.new_zeros(shape[0], end - start)
            level.index_put_((labels[here], anchors[here] - start), grad[here], accumulate=True)
            grads.append(level.view(shape))
        if all(level is None for level in grads):  # nothing scored (no detection): a zero gradient, as before
            grads[0] = grad.new_zeros(ctx.shapes[0])
        return (None, None, *grads)
