"""One runner per toolkit: a context manager yielding a call that returns (N, H, W) maps of the same work
(one class per image, ReLU, upsampled to the input size, min-max normalised), and the comparison of maps."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.nn.functional as F

from .cases import PERTURBATION_METHODS, TOOLKITS, inner, minmax

Runner = Callable[[], Any]
RunnerFactory = Callable[[], ContextManager[Runner | None]]


@contextlib.contextmanager
def camkit_runner(model: torch.nn.Module, method: str, x: torch.Tensor, ids: torch.Tensor,
                  scorecam_chunk: int) -> Iterator[Runner]:
    import camkit

    if method == "fullgrad":
        from camkit.fullgrad import fullgrad

        yield lambda: fullgrad(model, x, ids).maps
        return
    chunked = method in PERTURBATION_METHODS or method == "ablationcam"
    options: dict[str, Any] = {"method_options": {"chunk_size": scorecam_chunk}} if chunked else {}
    if method == "legrad":  # the paper's per-block scores, projected as torchcam does for torchvision's ViT
        vit = inner(model)
        options = {"method_options": {"score_projection": lambda z: vit.heads(vit.encoder.ln(z.mean(dim=1)))}}
    with camkit.Explainer(model, method, **options) as explainer:
        yield lambda: explainer(x, ids).maps


@contextlib.contextmanager
def grad_cam_runner(model: torch.nn.Module, method: str, x: torch.Tensor, ids: torch.Tensor) -> Iterator[Runner | None]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
               "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM, "scorecam": pgc.ScoreCAM, "eigencam": pgc.EigenCAM,
               "gradcam-elementwise": pgc.GradCAMElementWise, "eigengradcam": pgc.EigenGradCAM, "fem": pgc.FEM,
               "ablationcam": pgc.AblationCAM, "fullgrad": pgc.FullGrad, "kpcacam": pgc.KPCA_CAM,
               "shapleycam": pgc.ShapleyCAM, "segeigencam": getattr(pgc, "SegEigenCAM", None),
               "finercam": getattr(pgc, "FinerCAM", None)}
    options = {"kpcacam": {"kernel": "rbf"}}.get(method, {})  # camkit's default kernel (the peer's is sigmoid)
    if classes.get(method) is None:  # Seg-Eigen-CAM: 1.5.7 on
        yield None
        return
    # Finer-CAM builds its own targets from the top class (the benchmark's ids are the top classes)
    targets = None if method == "finercam" else [ClassifierOutputTarget(int(i)) for i in ids]
    layers = [] if method == "fullgrad" else [inner(model).layer4]  # FullGrad takes every bias layer itself
    explainer = classes[method](model=model, target_layers=layers, **options)
    base = getattr(explainer, "base_cam", explainer)  # Finer-CAM wraps a Grad-CAM holding the hooks
    try:
        yield lambda: explainer(input_tensor=x, targets=targets)
    finally:
        base.activations_and_grads.release()
        # it keeps the last forward's outputs, and with them the autograd graph (EigenCAM never
        # backpropagates): gigabytes that would count against every later runner's peak memory
        base.outputs = None


@contextlib.contextmanager
def torchcam_runner(model: torch.nn.Module, method: str, x: torch.Tensor, ids: torch.Tensor) -> Iterator[Runner | None]:
    from torchcam import methods as tc

    classes = {"cam": tc.CAM, "gradcam": tc.GradCAM, "gradcam++": tc.GradCAMpp, "xgradcam": tc.XGradCAM,
               "layercam": tc.LayerCAM, "scorecam": tc.ScoreCAM, "smoothgradcam++": tc.SmoothGradCAMpp,
               "sscam": tc.SSCAM, "iscam": tc.ISCAM, "legrad": getattr(tc, "LeGrad", None)}
    if classes.get(method) is None:  # LeGrad: torchcam 0.5 on
        yield None
        return
    if method == "legrad":  # every block; its default score projection for torchvision's ViT
        explainer = classes[method](inner(model), target_layer=list(inner(model).encoder.layers))
    else:
        kwargs = {"fc_layer": inner(model).fc} if method == "cam" else {}
        explainer = classes[method](model, target_layer=inner(model).layer4, input_shape=tuple(x.shape[1:]), **kwargs)
    explainer._relu = True  # torchcam's CAM skips the ReLU the other methods (and camkit) apply
    class_idx = [int(i) for i in ids]
    grad = method != "cam"
    size = x.shape[-2:]

    def run() -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            scores = model(x)
        cams = explainer(class_idx=class_idx, scores=scores)[0]
        # torchcam stops at the feature resolution: upsample and re-normalise, as the others do
        return minmax(F.interpolate(cams[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0])

    try:
        yield run
    finally:
        explainer.remove_hooks()


@contextlib.contextmanager
def captum_runner(model: torch.nn.Module, method: str, x: torch.Tensor, ids: torch.Tensor) -> Iterator[Runner | None]:
    from captum.attr import LayerAttribution, LayerGradCam

    if method != "gradcam":
        yield None
        return
    explainer = LayerGradCam(model, inner(model).layer4)
    size = tuple(x.shape[-2:])

    def run() -> torch.Tensor:
        attributions = explainer.attribute(x, target=ids, relu_attributions=True)
        return minmax(LayerAttribution.interpolate(attributions, size, interpolate_mode="bilinear")[:, 0].float())

    yield run


TOOLKIT_RUNNERS = {"pytorch-grad-cam": grad_cam_runner, "torchcam": torchcam_runner, "captum": captum_runner}
TOOLKIT_MODULES = {"pytorch-grad-cam": "pytorch_grad_cam", "torchcam": "torchcam", "captum": "captum"}


def installed_toolkits(wanted: tuple[str, ...] = TOOLKITS) -> list[str]:
    """The toolkits in ``wanted`` that import here."""
    import importlib

    found = []
    for name in wanted:
        try:
            importlib.import_module(TOOLKIT_MODULES[name])
        except ImportError:
            continue
        found.append(name)
    return found


def as_maps(output: Any) -> torch.Tensor:
    """Any toolkit's output as float32 (N, H, W) on the CPU."""
    if not isinstance(output, torch.Tensor):
        output = torch.from_numpy(output)
    return output.detach().float().cpu()


def max_abs_difference(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Max abs difference of two batches of maps after min-max normalising both (same resolution)."""
    if reference.shape != other.shape:
        raise ValueError(f"maps of shape {tuple(other.shape)} cannot be compared with {tuple(reference.shape)}")
    return float((minmax(reference) - minmax(other)).abs().max())

