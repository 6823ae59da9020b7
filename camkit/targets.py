"""Targets: what a map explains, as a function of the model's output.

A target is any callable ``target(output) -> scores`` of shape ``(N,)`` (one map per sample) or
``(N, K)`` (K maps per sample), batched and differentiable; gradient methods explain those scores.
Class ids are the common case (``targets=3``, one id per sample, ``topk=k``, ``"all"``); the classes
below cover the other tasks. CAM itself needs class ids (it reads the classifier's rows): a target
exposing ``class_ids(output)`` (``ClassScore``, ``ClassProbability``) works with CAM too.

    camkit.explain(seg_model, x, "gradcam", targets=camkit.targets.SegmentationRegion(15))
    camkit.explain(detector, x, "gradcam", layer="backbone.body.layer4",
                   targets=camkit.targets.DetectionBox(box=[10, 20, 120, 200], label=18))
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from camkit.adapters import describe


def resolve_targets(targets: Any, logits: Any, topk: int | None = None) -> Any:
    """Class ids ``(N,)`` or ``(N, K)`` from ``targets`` (None: predicted; int; one id per sample;
    ``"all"``; an ``(N, K)`` array) or ``topk``."""
    import torch

    n, num_classes = logits.shape
    device = logits.device
    if topk is not None:
        if targets is not None:
            raise ValueError("pass either targets or topk, not both")
        if isinstance(topk, bool) or not isinstance(topk, numbers.Integral):
            raise TypeError(f"topk must be an integer, got {topk!r}")
        if not 1 <= int(topk) <= num_classes:
            raise ValueError(f"topk={topk} must be between 1 and the number of classes ({num_classes})")
        return logits.topk(int(topk), dim=1).indices
    if targets is None:
        return logits.argmax(dim=1)
    if isinstance(targets, str):
        if targets != "all":
            raise ValueError(f"targets={targets!r}: the only named choice is 'all'")
        return torch.arange(num_classes, device=device).expand(n, num_classes)
    if isinstance(targets, bool):
        raise TypeError("targets must be class ids, not a bool")
    if isinstance(targets, numbers.Integral):
        ids = torch.full((n,), int(targets), dtype=torch.long, device=device)
    else:
        ids = torch.as_tensor(targets, device=device)
        if ids.is_inference():  # made under inference_mode: a plain copy can take part in autograd
            ids = ids.clone()
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"targets must be integer class ids, got dtype {ids.dtype}")
        ids = ids.long()
        if ids.ndim == 0:
            ids = ids.expand(n)
        if ids.ndim not in (1, 2) or ids.shape[0] != n:
            raise ValueError(f"got {ids.shape[0] if ids.ndim else 1} target(s) of shape {tuple(ids.shape)} for a batch "
                             f"of {n}: pass one class id per sample, (N, K) ids, an int, topk=k or 'all'")
    bad = (ids < 0) | (ids >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"class id(s) {sorted(set(ids[bad].tolist()))} out of range: the model has {num_classes} "
                         f"classes")
    return ids


@dataclass
class Target:
    """Resolved targets of one batch: ``scores`` ``(N,)`` / ``(N, K)`` (differentiable when computed with
    grad on) and the class ids behind them when there are any (CAM needs them)."""

    scores: Any
    class_ids: Any = None

    @property
    def multi(self) -> bool:
        return self.scores.ndim == 2

    @classmethod
    def resolve(cls, targets: Any, topk: int | None, output: Any) -> "Target":
        if targets is None and is_detections(output):  # a detector: its best detection(s), like the predicted class
            targets, topk = TopDetections(topk), None
        if callable(targets) and not hasattr(targets, "shape"):
            if topk is not None:
                raise ValueError("pass either a callable target or topk, not both")
            scores = checked_scores(targets(output), output, targets)
            ids = targets.class_ids(output) if hasattr(targets, "class_ids") else None
            return cls(scores, ids)
        logits = _class_logits(output)
        ids = resolve_targets(targets, logits.detach(), topk)
        scores = logits.gather(1, ids if ids.ndim == 2 else ids[:, None])
        return cls(scores if ids.ndim == 2 else scores[:, 0], ids)


def _class_logits(output: Any) -> Any:
    if getattr(output, "ndim", None) != 2:
        raise TypeError(f"class-id targets need (N, classes) logits, but the model output is {describe(output)}: "
                        f"pass output=... to pick the logits, or a callable target (camkit.targets: "
                        f"SegmentationRegion, DetectionBox, EmbeddingSimilarity, Regression, ...)")
    _require_finite_scores(output.detach(), "the model's logits")
    return output


def checked_scores(scores: Any, output: Any, target: Any) -> Any:
    """``scores`` if they are a float tensor ``(N,)`` or ``(N, K)`` of finite values, else a clear error."""
    import torch

    name = getattr(target, "__name__", type(target).__name__)
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(f"target {name} returned {describe(scores)}; a target returns a float tensor of scores, "
                        f"(N,) or (N, K)")
    n = _batch_size(output)
    if scores.ndim not in (1, 2) or (n is not None and scores.shape[0] != n):
        raise ValueError(f"target {name} returned scores of shape {tuple(scores.shape)}; expected (N,) or (N, K) "
                         f"with N = {n}, one score per sample")
    _require_finite_scores(scores.detach(), f"the scores of target {name}")
    return scores


def _require_finite_scores(values: Any, what: str) -> None:
    from camkit.validation import require_finite

    require_finite(values, what)


def _batch_size(output: Any) -> int | None:
    """The batch of an output: a tensor's first axis, a tuple's first tensor's (nested tuples too), the
    length of a list of per-sample results (a detector's dicts)."""
    if hasattr(output, "shape") and len(output.shape) >= 1:
        return int(output.shape[0])
    if not isinstance(output, (list, tuple)):
        return None
    nested = bool(output) and (isinstance(output[0], (list, tuple)) or
                               isinstance(output, tuple) and hasattr(output[0], "shape"))
    return _batch_size(output[0]) if nested else len(output)


class ClassScore:
    """The logit of a class: ``output[:, class_id]``; ``class_id`` an int or one id per sample."""

    def __init__(self, class_id: int | Sequence[int] | Any) -> None:
        self.class_id = class_id

    def class_ids(self, output: Any) -> Any:
        return resolve_targets(self.class_id, _class_logits(output).detach())

    def __call__(self, output: Any) -> Any:
        logits = _class_logits(output)
        return logits.gather(1, self.class_ids(output)[:, None])[:, 0]


class ClassProbability(ClassScore):
    """The softmax probability of a class (the logits of the other classes then count too)."""

    def __call__(self, output: Any) -> Any:
        probabilities = _class_logits(output).float().softmax(dim=1)
        return probabilities.gather(1, self.class_ids(output)[:, None])[:, 0]


class ClassReST(ClassScore):
    """Logit plus log-probability of a class, ``z_c + log softmax(z)_c`` (the "ReST" target of Cai 2025,
    pytorch-grad-cam's ``ClassifierOutputReST``): second-order methods such as Shapley-CAM see its
    curvature even where the logit is linear in the features."""

    def __call__(self, output: Any) -> Any:
        logits = _class_logits(output).float()
        ids = self.class_ids(output)[:, None]
        return (logits.gather(1, ids) + logits.log_softmax(dim=1).gather(1, ids))[:, 0]


class SegmentationRegion:
    """Sum of class ``class_id``'s logits over a region of a segmentation output ``(N, classes, H, W)``
    (torchvision's ``["out"]``, picked automatically). ``mask``: ``(H, W)`` or ``(N, H, W)`` weights
    (booleans or floats); None: the pixels the model assigns to that class (its argmax)."""

    def __init__(self, class_id: int, mask: Any = None) -> None:
        self.class_id = int(class_id)
        self.mask = mask

    def __call__(self, output: Any) -> Any:
        import torch

        if getattr(output, "ndim", 0) < 3:
            raise TypeError(f"SegmentationRegion needs a (N, classes, H, W) output, got {describe(output)}")
        if not 0 <= self.class_id < output.shape[1]:
            raise ValueError(f"class {self.class_id} out of range: the segmentation output has {output.shape[1]} "
                             f"classes")
        logits = output[:, self.class_id]
        if self.mask is None:
            mask = (output.detach().argmax(dim=1) == self.class_id).to(logits.dtype)
        else:
            mask = torch.as_tensor(self.mask, device=output.device).to(logits.dtype)
            if tuple(mask.shape[-2:]) != tuple(logits.shape[-2:]) or mask.ndim not in (2, 3):
                raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit the segmentation output's "
                                 f"{tuple(logits.shape[-2:])} pixels: pass (H, W) or (N, H, W)")
        return (logits * mask).flatten(1).sum(dim=1)


class EmbeddingSimilarity:
    """Cosine similarity of the output embedding ``(N, D)`` to ``reference`` (``(D,)`` or ``(N, D)``)."""

    def __init__(self, reference: Any) -> None:
        self.reference = reference

    def __call__(self, output: Any) -> Any:
        import torch

        if getattr(output, "ndim", 0) != 2:
            raise TypeError(f"EmbeddingSimilarity needs (N, D) embeddings, got {describe(output)}")
        reference = torch.as_tensor(self.reference, device=output.device, dtype=output.dtype)
        if reference.shape[-1] != output.shape[1] or reference.ndim not in (1, 2):
            raise ValueError(f"reference of shape {tuple(reference.shape)} does not fit embeddings of "
                             f"{output.shape[1]} dimensions")
        return torch.nn.functional.cosine_similarity(output, reference.expand_as(output), dim=1)


class Regression:
    """Output ``index`` of a regression model (``(N, outputs)``; a ``(N,)`` output is used as it is)."""

    def __init__(self, index: int = 0) -> None:
        self.index = int(index)

    def __call__(self, output: Any) -> Any:
        if getattr(output, "ndim", 0) == 1:
            return output
        if getattr(output, "ndim", 0) != 2:
            raise TypeError(f"Regression needs a (N,) or (N, outputs) output, got {describe(output)}")
        if not -output.shape[1] <= self.index < output.shape[1]:
            raise ValueError(f"index {self.index} out of range: the model has {output.shape[1]} outputs")
        return output[:, self.index]


class DetectionBox:
    """Score of the detection matched to ``box`` (``[x1, y1, x2, y2]`` in input pixels, or one box per
    sample ``(N, 4)``): the highest-scoring detection with IoU >= ``iou_threshold`` (and ``label``, if
    given). For torchvision detectors in eval mode (``[{"boxes", "labels", "scores"}, ...]``) and Ultralytics
    YOLO models (camkit turns their raw output into that form, after non-maximum suppression). No match:
    a score of zero that depends on no feature (the map is then empty, with a warning)."""

    def __init__(self, box: Any, label: int | None = None, iou_threshold: float = 0.5) -> None:
        self.box = box
        self.label = label
        self.iou_threshold = float(iou_threshold)

    def __call__(self, output: Any) -> Any:
        import torch
        from torchvision.ops import box_iou

        if not isinstance(output, (list, tuple)) or not all(isinstance(d, dict) and {"boxes", "scores"} <= d.keys()
                                                            for d in output):
            raise TypeError(f"DetectionBox needs a detector's list of {{'boxes', 'labels', 'scores'}} dicts "
                            f"(a torchvision detector in eval mode), got {describe(output)}")
        boxes = torch.as_tensor(self.box, dtype=torch.float32)
        if boxes.shape[-1] != 4 or boxes.ndim not in (1, 2) or (boxes.ndim == 2 and len(boxes) != len(output)):
            raise ValueError(f"box of shape {tuple(boxes.shape)}: pass [x1, y1, x2, y2] or one box per sample "
                             f"({len(output)}, 4)")
        scores = []
        for i, detections in enumerate(output):
            box = (boxes if boxes.ndim == 1 else boxes[i]).to(detections["boxes"].device)[None]
            overlap = box_iou(box, detections["boxes"].detach().float())[0]
            match = overlap >= self.iou_threshold
            if self.label is not None and "labels" in detections:
                match &= detections["labels"] == self.label
            candidates = detections["scores"] * match
            scores.append(candidates.max() if bool(match.any()) else detections["scores"].sum() * 0)
        return torch.stack(scores)


def is_detections(output: Any) -> bool:
    """Whether ``output`` is a detector's list of ``{"boxes", "labels", "scores"}`` dicts, one per sample."""
    return isinstance(output, (list, tuple)) and bool(output) and all(
        isinstance(d, dict) and {"boxes", "scores"} <= d.keys() for d in output)


class TopDetections:
    """Scores of each sample's ``k`` highest-scoring detections, ``(N, k)`` (``k=None``: the best one,
    ``(N,)``); the default target of a detector (``targets=None``, ``topk=k``). A sample with fewer
    detections gets scores of zero that depend on no feature (those maps are empty, with a warning)."""

    def __init__(self, k: int | None = None) -> None:
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"topk={k!r}: the number of detections to explain must be a positive integer")
        self.k = k

    def __call__(self, output: Any) -> Any:
        import torch

        if not is_detections(output):
            raise TypeError(f"TopDetections needs a detector's list of {{'boxes', 'labels', 'scores'}} dicts, got "
                            f"{describe(output)}")
        count = self.k or 1
        rows = []
        for detections in output:
            scores = detections["scores"]
            best = scores[scores.detach().argsort(descending=True)[:count]]
            missing = (scores.sum() * 0).expand(count - len(best))  # no detection: a score no feature changes
            rows.append(torch.cat([best, missing]))
        stacked = torch.stack(rows)
        return stacked if self.k is not None else stacked[:, 0]


class Negative:
    """The counterfactual form of a target: ``-target(output)``, so the map shows what speaks *against*
    it (Grad-CAM's counterfactual explanations)."""

    def __init__(self, target: Callable[[Any], Any] | int) -> None:
        self.target: Callable[[Any], Any] = ClassScore(target) if isinstance(target, int) else target

    def __call__(self, output: Any) -> Any:
        return -self.target(output)


__all__ = ["ClassProbability", "ClassReST", "ClassScore", "DetectionBox", "EmbeddingSimilarity", "Negative",
           "Regression", "SegmentationRegion", "Target", "TopDetections", "is_detections", "resolve_targets"]
