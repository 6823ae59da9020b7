"""Speed of camkit against a plain forward pass and against other CAM toolkits, in one process.

For every case (device x model x batch size x dtype) it times, round-robin so that load from other
processes hits every runner alike: the plain inference forward, every camkit method, and the same
work through pytorch-grad-cam, torchcam and captum when they are installed (``pip install -e .[bench]``).
"The same work" is: maps of one class per image (the fp32 prediction, passed explicitly to every
toolkit), ReLU, upsampled to the input size and min-max normalised. Each toolkit's maps are compared
with camkit's (max abs difference after re-normalising both, which removes the harmless difference in
the order "normalise then resize"), so a ratio is never reported for different work unnoticed.

Writes ``speed.md`` (Markdown table, then the issue's targets with pass/fail), ``speed.json`` (rows,
targets, failures) and ``speed.png`` into ``--out``; the Markdown and JSON are rewritten after every
case, so a run cut short still leaves what it measured.

On CUDA, Score-CAM runs in its own fp32 case per model (``--scorecam-batch``, default 8, at 224 px):
its upsampled masks take N x C x H x W floats (105 GB for ResNet-50 at batch 256), pytorch-grad-cam's
masked inputs three times that, and a call is N x C forward passes.

    python benchmarks/speed.py --device cpu --quick          # < 2 minutes on 2 CPU cores
    python benchmarks/speed.py --device cuda                 # the full GPU suite
    python benchmarks/speed.py --device cuda --models resnet50,resnet18 --batch-sizes 256   # the issue's targets
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

# before any tqdm import: silences pytorch-grad-cam's per-image bars (ours pass disable=False)
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CAMKIT_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "eigencam")
# issue 12's methods: timed when named with --methods (fullgrad is camkit.fullgrad, not a weight method)
NEW_METHODS = ("gradcam-elementwise", "eigengradcam", "fem", "ablationcam", "finercam", "smoothgradcam++", "sscam",
               "iscam", "fullgrad")
# masked or ablated forwards per (sample, channel): a small case of their own on a CPU
PERTURBATION_METHODS = ("scorecam", "sscam", "iscam")
TOOLKITS = ("pytorch-grad-cam", "torchcam", "captum")
# --quick compares only these (toolkit, method) pairs: the headline ones
QUICK_PAIRS = frozenset({("pytorch-grad-cam", "gradcam"), ("torchcam", "cam"), ("torchcam", "gradcam"),
                         ("captum", "gradcam"), ("pytorch-grad-cam", "scorecam"),
                         # issue 12's pairs (their methods run only when named with --methods)
                         ("pytorch-grad-cam", "gradcam-elementwise"), ("pytorch-grad-cam", "eigengradcam"),
                         ("pytorch-grad-cam", "fem"), ("pytorch-grad-cam", "ablationcam"), ("pytorch-grad-cam", "fullgrad"),
                         ("torchcam", "smoothgradcam++"), ("torchcam", "sscam"), ("torchcam", "iscam")})
# maps of random-weight models agree to float rounding when the formula is the same
AGREEMENT_TOLERANCE = 1e-3
# known formula differences, so a large difference there is reported, not treated as a bug
KNOWN_DIFFERENCES = {
    ("pytorch-grad-cam", "scorecam"): "softmax over the channel scores; align_corners=True upsampling of the masks",
    ("pytorch-grad-cam", "gradcam++"): "adds 1e-6 to the alpha denominator, not small next to the tiny gradients",
    ("torchcam", "gradcam++"): "alpha stays g^2: `alpha[mask].div_` divides a copy; sums g^3 * f over sites",
    ("torchcam", "scorecam"): "softmax over the channel scores (target score minus the baseline's), not over classes",
    ("pytorch-grad-cam", "eigencam"): "centres each channel before the SVD (another principal direction); sign left "
                                      "arbitrary",
    ("pytorch-grad-cam", "eigengradcam"): "centres each channel of g * f before the SVD; sign left arbitrary",
    ("pytorch-grad-cam", "fullgrad"): "normalises every channel of every layer separately (camkit: per sample, as the "
                                      "authors' code; per_channel=True agrees to ~1e-7)",
    ("torchcam", "smoothgradcam++"): "other noise draws; ReLU of the last noisy sample's gradient, not of the mean",
    ("torchcam", "sscam"): "other noise draws; softmax over the channel scores, not over classes",
    ("torchcam", "iscam"): "accumulated coefficient ((1 + ... + i) / N times the mask); softmax over the channel scores",
}
# The targets: (name, camkit method, Row measure or "speedup:<toolkit>", comparison, bar).
GPU_TARGETS = (
    ("cam throughput vs plain forward", "cam", "throughput_vs_forward", ">=", 0.98),
    ("gradcam throughput vs plain forward", "gradcam", "throughput_vs_forward", ">=", 0.9),
    ("gradcam peak memory vs inference", "gradcam", "memory_vs_forward", "<=", 1.2),
    ("scorecam speed-up vs pytorch-grad-cam, same batch", "scorecam", "speedup:pytorch-grad-cam", ">=", 10.0),
)
CPU_TARGETS = (
    ("cam time vs its own forward", "cam", "own_forward_ratio", "<=", 1.05),
    ("gradcam time vs its own forward", "gradcam", "own_forward_ratio", "<=", 1.15),
)
# issue 12's bars: checked (and listed) only in runs that timed the method
NEW_METHOD_TARGETS = (
    ("gradcam-elementwise time vs its own forward", "gradcam-elementwise", "own_forward_ratio", "<=", 1.15),
    ("eigengradcam time vs its own forward", "eigengradcam", "own_forward_ratio", "<=", 1.15),
    ("ablationcam speed-up vs pytorch-grad-cam, same batch", "ablationcam", "speedup:pytorch-grad-cam", ">=", 20.0),
    ("fullgrad speed-up vs pytorch-grad-cam, same batch", "fullgrad", "speedup:pytorch-grad-cam", ">=", 2.0),
    ("smoothgradcam++ speed-up vs torchcam, same batch", "smoothgradcam++", "speedup:torchcam", ">=", 2.0),
    ("sscam speed-up vs torchcam, same batch", "sscam", "speedup:torchcam", ">=", 2.0),
    ("iscam speed-up vs torchcam, same batch", "iscam", "speedup:torchcam", ">=", 2.0),
)
# the case each target is stated for (Score-CAM: any batch of its own case, the same for both toolkits)
GPU_HEADLINE = {"model": "resnet50", "batch": 256, "dtype": "fp32", "size": 224}
CPU_HEADLINE = {"model": "resnet18", "batch": 8, "dtype": "fp32", "size": 224}


@dataclass
class Case:
    device: str
    model: str
    batch: int
    dtype: str
    size: int = 224


@dataclass
class Row:
    device: str
    model: str
    batch: int
    dtype: str
    size: int
    tool: str
    method: str
    seconds: float
    images_per_s: float
    throughput_vs_forward: float = float("nan")  # forward time / this time (1.0 = free maps)
    time_vs_forward: float = float("nan")
    own_forward_ratio: float | None = None  # camkit, CPU: call time / the forward inside the same call
    cpu_seconds: float = float("nan")  # process CPU time: steadier than wall time on a shared machine
    cpu_time_vs_forward: float = float("nan")
    peak_memory_mb: float | None = None
    memory_vs_forward: float | None = None
    max_abs_diff: float | None = None  # vs camkit's maps of the same method
    agrees: bool | None = None
    note: str = ""
    camkit_speedup: dict[str, float] = field(default_factory=dict)  # other tool's time / camkit's time
    rounds: int | None = None  # timed rounds behind the medians (Score-CAM cases have their own count)


# ---------------------------------------------------------------------------------------------- models


def build_model(name: str, device: str, dtype: str) -> torch.nn.Module:
    """A random-weight torchvision classifier (seeded), wrapped for autocast when dtype is not fp32."""
    import torchvision

    from camkit_plugins.gpu.accelerate import accelerate

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval().to(device)
    return accelerate(model, dtype=dtype) if dtype != "fp32" else model


def inner(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "model", model)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation of (N, H, W) maps (for the toolkits that stop before it)."""
    flat = maps.flatten(1)
    lo, hi = torch.aminmax(flat, dim=1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


# --------------------------------------------------------------------------------------------- runners


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
    options = {"method_options": {"chunk_size": scorecam_chunk}} if chunked else {}
    with camkit.Explainer(model, method, **options) as explainer:
        yield lambda: explainer(x, ids).maps


@contextlib.contextmanager
def grad_cam_runner(model: torch.nn.Module, method: str, x: torch.Tensor, ids: torch.Tensor) -> Iterator[Runner | None]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
               "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM, "scorecam": pgc.ScoreCAM, "eigencam": pgc.EigenCAM,
               "gradcam-elementwise": pgc.GradCAMElementWise, "eigengradcam": pgc.EigenGradCAM, "fem": pgc.FEM,
               "ablationcam": pgc.AblationCAM, "fullgrad": pgc.FullGrad}
    if method not in classes:
        yield None
        return
    targets = [ClassifierOutputTarget(int(i)) for i in ids]
    layers = [] if method == "fullgrad" else [inner(model).layer4]  # FullGrad takes every bias layer itself
    explainer = classes[method](model=model, target_layers=layers)
    try:
        yield lambda: explainer(input_tensor=x, targets=targets)
    finally:
        explainer.activations_and_grads.release()
        # it keeps the last forward's outputs, and with them the autograd graph (EigenCAM never
        # backpropagates): gigabytes that would count against every later runner's peak memory
        explainer.outputs = None


@contextlib.contextmanager
def torchcam_runner(model: torch.nn.Module, method: str, x: torch.Tensor, ids: torch.Tensor) -> Iterator[Runner | None]:
    from torchcam import methods as tc

    classes = {"cam": tc.CAM, "gradcam": tc.GradCAM, "gradcam++": tc.GradCAMpp, "xgradcam": tc.XGradCAM,
               "layercam": tc.LayerCAM, "scorecam": tc.ScoreCAM, "smoothgradcam++": tc.SmoothGradCAMpp, "sscam": tc.SSCAM,
               "iscam": tc.ISCAM}
    if method not in classes:
        yield None
        return
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


# ------------------------------------------------------------------------------------------- measuring


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def time_round_robin(factories: dict[Any, RunnerFactory], repeats: int, device: str,
                     after: Callable[[], None] | None = None,
                     ) -> tuple[dict[Any, float], dict[Any, float], dict[Any, float | None]]:
    """Median wall seconds, median process CPU seconds and peak CUDA MiB (None off CUDA) per runner
    over ``repeats`` rounds; every round visits every runner once, so load from other processes hits
    them alike. CPU time counts only this process's work, a steadier measure on a shared machine.
    Only one toolkit's hooks are on the model at a time (entering and leaving a runner are not timed).
    The peak is the most memory allocated during the timed call (the peak counter is reset just
    before it), over the rounds; ``after`` runs after each call, untimed (e.g. to drop the ``.grad``
    a toolkit left on the parameters, which would count against the next runner). Call after a warm-up."""
    cuda = device.startswith("cuda")
    wall: dict[Any, list[float]] = {key: [] for key in factories}
    cpu: dict[Any, list[float]] = {key: [] for key in factories}
    peak: dict[Any, float | None] = {key: None for key in factories}
    resident: dict[Any, float] = {}
    for _ in range(repeats):
        for key, factory in factories.items():
            with factory() as run:
                synchronize(device)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(torch.device(device))
                    resident[key] = max(resident.get(key, 0.0), torch.cuda.memory_allocated(torch.device(device)) / 2**20)
                start, start_cpu = time.perf_counter(), time.process_time()
                run()  # the result is dropped at once: it must not count against the next runner
                synchronize(device)
                wall[key].append(time.perf_counter() - start)
                cpu[key].append(time.process_time() - start_cpu)
                if cuda:
                    peak[key] = max(peak[key] or 0.0, torch.cuda.max_memory_allocated(torch.device(device)) / 2**20)
            run = None
            if after is not None:
                after()
            if cuda and key[0] in TOOLKITS:
                gc.collect()  # a toolkit's explainer caught in a reference cycle would keep its tensors
    if resident and max(resident.values()) - min(resident.values()) > 16:
        # every runner should start from the same memory (weights + input); more means a leftover
        # of another runner is counted in the peaks
        print(f"WARNING: memory allocated before the timed calls differs between runners (MiB): "
              f"{ {f'{k[0]} {k[1]}': round(v) for k, v in resident.items()} }", file=sys.stderr)
    return ({key: statistics.median(v) for key, v in wall.items()},
            {key: statistics.median(v) for key, v in cpu.items()}, peak)


def own_forward_ratio(model: torch.nn.Module, method: str, x: torch.Tensor, ids: torch.Tensor,
                      repeats: int) -> float:
    """Median over calls of (camkit call time) / (time of the model forward inside that call).

    Both are taken in the same call, so load from other processes affects them alike: on a shared
    CPU this is the steady way to check "a CAM costs about one forward" (CPU only: on CUDA the
    forward is asynchronous and the wall-time ratios are the measure)."""
    import camkit

    inside: list[float] = []
    started: list[float] = []
    pre = model.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    post = model.register_forward_hook(lambda *_: inside.append(time.perf_counter() - started[-1]))
    ratios = []
    try:
        with camkit.Explainer(model, method) as explainer:
            explainer(x, ids)  # warm-up
            for _ in range(repeats):
                inside.clear()
                start = time.perf_counter()
                explainer(x, ids)
                ratios.append((time.perf_counter() - start) / inside[0])
    finally:
        pre.remove()
        post.remove()
    return statistics.median(ratios)


def measure_case(case: Case, methods: tuple[str, ...], toolkits: list[str], repeats: int,
                 scorecam_chunk: int = 256, pairs: frozenset[tuple[str, str]] | None = None,
                 own_forward_methods: tuple[str, ...] = ("cam", "gradcam", "gradcam-elementwise", "eigengradcam"),
                 failures: list[dict[str, Any]] | None = None) -> list[Row]:
    """Every runner of one case, timed in the same rounds; rows relative to the plain forward.
    ``pairs``: the (toolkit, method) pairs to run besides camkit (default: every one the toolkits have).
    A runner whose warm-up call raises (out of memory, a toolkit's bug) is left out and, when
    ``failures`` is given, recorded there; otherwise the error propagates."""
    model = build_model(case.model, case.device, case.dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(case.batch, 3, case.size, case.size, generator=generator).to(case.device)
    with torch.no_grad():  # not inference_mode: ids used in autograd must be normal tensors
        ids = inner(model)(x).argmax(dim=1)  # the fp32 prediction (the wrapper's autocast is bypassed)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    @contextlib.contextmanager
    def plain_forward() -> Iterator[Runner]:
        yield forward

    def drop_gradients() -> None:  # pytorch-grad-cam and torchcam backpropagate into the parameters
        for p in model.parameters():
            p.grad = None

    factories: dict[tuple[str, str], RunnerFactory] = {("plain forward", "-"): plain_forward}
    references: dict[tuple[str, str], torch.Tensor] = {}
    for method in methods:
        factories[("camkit", method)] = partial(camkit_runner, model, method, x, ids, scorecam_chunk)
        if case.dtype != "fp32":
            continue  # the other toolkits turn activations into fp32 numpy or fail on bf16
        for tool in toolkits:
            if pairs is not None and (tool, method) not in pairs:
                continue
            factories[(tool, method)] = partial(TOOLKIT_RUNNERS[tool], model, method, x, ids)
    for key, factory in list(factories.items()):
        failed = False
        try:
            with factory() as run:
                if run is None:  # the toolkit lacks this method
                    del factories[key]
                    continue
                maps = as_maps(run())  # also the warm-up; nothing of it stays on the device
                if key[0] != "plain forward":
                    references[key] = maps
                del maps
        except Exception as exc:  # noqa: BLE001 - one runner's failure must not lose the whole run
            if failures is None or key == ("plain forward", "-"):
                raise
            del factories[key]
            record_failure(failures, case, key[0], key[1], exc)
            failed = True
        finally:
            run = None  # the last runner's closure (and its explainer) must not live through the timing
            drop_gradients()
        if case.device.startswith("cuda") and (failed or key[0] in TOOLKITS):
            gc.collect()  # the failed call's frames (and tensors) went with the exception
            if failed:
                torch.cuda.empty_cache()  # an out-of-memory runner leaves large cached blocks behind
    seconds, cpu_seconds, memory = time_round_robin(factories, repeats, case.device, after=drop_gradients)
    rows: list[Row] = []
    base = seconds[("plain forward", "-")]
    base_cpu = cpu_seconds[("plain forward", "-")]
    base_memory = memory[("plain forward", "-")]
    for tool, method in factories:
        t = seconds[(tool, method)]
        row = Row(**asdict(case), tool=tool, method=method, seconds=t, images_per_s=case.batch / t, rounds=repeats,
                  throughput_vs_forward=base / t, time_vs_forward=t / base, peak_memory_mb=memory[(tool, method)],
                  cpu_seconds=cpu_seconds[(tool, method)], cpu_time_vs_forward=cpu_seconds[(tool, method)] / base_cpu)
        if row.peak_memory_mb is not None and base_memory:
            row.memory_vs_forward = row.peak_memory_mb / base_memory
        if tool == "camkit" and method in own_forward_methods and case.device == "cpu":
            row.own_forward_ratio = own_forward_ratio(model, method, x, ids, repeats)
        if tool not in ("camkit", "plain forward") and ("camkit", method) in references:
            row.max_abs_diff = max_abs_difference(references[("camkit", method)], references[(tool, method)])
            row.agrees = row.max_abs_diff <= AGREEMENT_TOLERANCE
            if not row.agrees:
                row.note = KNOWN_DIFFERENCES.get((tool, method), "UNEXPECTED DIFFERENCE")
        rows.append(row)
    for row in rows:
        if row.tool == "camkit":
            row.camkit_speedup = {other.tool: other.seconds / row.seconds for other in rows
                                  if other.method == row.method and other.tool in TOOLKITS}
    return rows


# -------------------------------------------------------------------------------------------- reports


def markdown(rows: list[Row]) -> str:
    lines = ["| device | model | batch | dtype | size | tool | method | images/s | throughput vs forward | "
             "time vs forward | CPU time vs forward | time vs own forward | camkit speed-up | peak MiB (vs fwd) | "
             "max abs diff vs camkit |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = ", ".join(f"{k} {v:.2f}x" for k, v in r.camkit_speedup.items())
        memory = f"{r.peak_memory_mb:.0f} ({r.memory_vs_forward:.2f}x)" if r.memory_vs_forward is not None else "-"
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}" + ("" if r.agrees else f" ({r.note})")
        lines.append(f"| {r.device} | {r.model} | {r.batch} | {r.dtype} | {r.size} | {r.tool} | {r.method} | "
                     f"{r.images_per_s:.1f} | {r.throughput_vs_forward:.2f} | {r.time_vs_forward:.2f} | "
                     f"{r.cpu_time_vs_forward:.2f} | "
                     f"{'-' if r.own_forward_ratio is None else format(r.own_forward_ratio, '.3f')} | "
                     f"{speedup or '-'} | {memory} | {diff} |")
    return "\n".join(lines) + "\n"


def record_failure(failures: list[dict[str, Any]], case: Case, tool: str, method: str, exc: BaseException) -> None:
    """Keep a failed runner or case in the report (and its traceback on stderr) instead of losing the run."""
    failures.append({**asdict(case), "tool": tool, "method": method, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    print(f"FAILED {tool} {method} on {case}: {type(exc).__name__}: {exc}", file=sys.stderr)
    traceback.print_exc()


def _measure(row: Row, measure: str) -> float | None:
    if measure.startswith("speedup:"):
        return row.camkit_speedup.get(measure.split(":", 1)[1])
    value = getattr(row, measure)
    return None if value is None or value != value else float(value)  # NaN: not measured


def _is_headline(row: Row, method: str, headline: dict[str, Any]) -> bool:
    keys = ("model", "dtype") if method in PERTURBATION_METHODS else tuple(headline)  # they have their own batch
    return all(getattr(row, key) == headline[key] for key in keys)


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The issue's targets, checked on every case that measured them: GPU (any ``cuda`` device)
    ``cam`` >= 0.98x and ``gradcam`` >= 0.9x plain-forward throughput, ``gradcam`` peak memory <= 1.2x
    inference, Score-CAM >= 10x pytorch-grad-cam on the same batch; CPU ``cam`` <= 1.05x and
    ``gradcam`` <= 1.15x of the forward inside the same call. ``headline`` marks the case a target is
    stated for (GPU: ResNet-50, batch 256, fp32, 224 px; CPU: ResNet-18, batch 8, fp32); a headline
    target of a device that ran but missed that case is listed with ``met: None`` (not measured)."""
    found: list[dict[str, Any]] = []
    for device_kind, table, headline in (("cuda", GPU_TARGETS, GPU_HEADLINE), ("cpu", CPU_TARGETS, CPU_HEADLINE)):
        device_rows = [r for r in rows if r.device.split(":")[0] == device_kind]
        if not device_rows:
            continue
        timed = {r.method for r in device_rows}
        table = table + tuple(t for t in NEW_METHOD_TARGETS if t[1] in timed)
        for name, method, measure, comparison, bar in table:
            seen_headline = False
            for row in device_rows:
                if row.tool != "camkit" or row.method != method:
                    continue
                value = _measure(row, measure)
                if value is None:
                    continue
                met = value >= bar if comparison == ">=" else value <= bar
                is_headline = _is_headline(row, method, headline)
                seen_headline |= is_headline
                found.append({"target": name, "bar": f"{comparison} {bar:g}", "device": row.device, "model": row.model,
                              "batch": row.batch, "dtype": row.dtype, "size": row.size, "value": value, "met": met,
                              "headline": is_headline})
            if not seen_headline:
                case = {k: v for k, v in headline.items() if method not in PERTURBATION_METHODS or k in ("model", "dtype")}
                found.append({"target": name, "bar": f"{comparison} {bar:g}", "device": device_kind, **case,
                              "value": None, "met": None, "headline": True})
    found.sort(key=lambda t: not t["headline"])  # headline first, each group in table order
    return found


def markdown_targets(found: list[dict[str, Any]]) -> str:
    """The targets as a Markdown section: a summary line, then one row per (target, case)."""
    headline = [t for t in found if t["headline"]]
    met = sum(t["met"] is True for t in headline)
    missing = sum(t["met"] is None for t in headline)
    lines = ["## Targets", "",
             f"Headline cases: {met} of {len(headline)} targets met"
             + (f", {missing} not measured" if missing else "") + ".", "",
             "| target | bar | case | value | met |", "|---|---|---|---|---|"]
    for t in found:
        case = " ".join(str(t[k]) for k in ("device", "model") if k in t)
        case += "".join(f" {prefix}{t[k]}" for k, prefix in (("batch", "b"), ("dtype", ""), ("size", "")) if k in t)
        if "size" in t:
            case += "px"
        value = "not measured" if t["value"] is None else f"{t['value']:.3f}"
        verdict = {True: "PASS", False: "FAIL", None: "-"}[t["met"]]
        lines.append(f"| {'**' + t['target'] + '**' if t['headline'] else t['target']} | {t['bar']} | {case} | "
                     f"{value} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, meta: dict[str, Any], rows: list[Row], failures: list[dict[str, Any]],
                  with_plot: bool = True) -> str:
    """``speed.json`` / ``speed.md`` (and ``speed.png``) from the rows so far; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    found = targets(rows)
    (out / "speed.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "targets": found,
                                                "failures": failures}, indent=1))
    text = f"{json.dumps(meta)}\n\n{markdown(rows)}\n{markdown_targets(found)}"
    if failures:
        text += "\n## Failures\n\n" + "".join(f"- {f['device']} {f['model']} b{f['batch']} {f['dtype']} {f['size']}px "
                                               f"{f['tool']} {f['method']}: {f['error'].splitlines()[0]}\n"
                                               for f in failures)
    (out / "speed.md").write_text(text)
    if with_plot and rows:
        plot(rows, out / "speed.png")
    return text


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r.device, r.model, r.batch, r.dtype, r.size) for r in rows))
    counts = [sum((r.device, r.model, r.batch, r.dtype, r.size) == case for r in rows) for case in cases]
    fig, axes = plt.subplots(len(cases), 1, figsize=(9, 0.32 * len(rows) + 1.2 * len(cases)), squeeze=False,
                             gridspec_kw={"height_ratios": [c + 2 for c in counts]})
    for ax, case in zip(axes[:, 0], cases):
        case_rows = [r for r in rows if (r.device, r.model, r.batch, r.dtype, r.size) == case]
        labels = [f"{r.tool}: {r.method}" if r.tool != "plain forward" else r.tool for r in case_rows]
        colours = ["grey" if r.tool == "plain forward" else "tab:blue" if r.tool == "camkit" else "tab:orange"
                   for r in case_rows]
        ax.barh(labels, [r.throughput_vs_forward for r in case_rows], color=colours)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"{case[0]} {case[1]} batch {case[2]} {case[3]} {case[4]}px: throughput vs plain forward",
                     fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or all (cuda when available)")
    parser.add_argument("--quick", action="store_true", help="ResNet-18, batch 8, fp32, a small Score-CAM case")
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch-sizes", default=None, help="default: 8,32 on cpu, 64,256 on cuda")
    parser.add_argument("--dtypes", default=None, help="fp32,bf16 (cpu) / fp32,bf16,fp16 (cuda)")
    parser.add_argument("--methods", default=",".join(CAMKIT_METHODS))
    parser.add_argument("--toolkits", default=",".join(TOOLKITS))
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (median); default 5 quick, 10 full")
    parser.add_argument("--scorecam-size", type=int, default=None,
                        help="input size of the Score-CAM case (CPU: 96, 48 with --quick; CUDA: 224)")
    parser.add_argument("--scorecam-batch", type=int, default=None,
                        help="its batch (CPU: 2, 1 with --quick; CUDA: 8, one per model of --models)")
    parser.add_argument("--scorecam-repeats", type=int, default=None,
                        help="timed rounds of the Score-CAM case (default: 2 with --quick, 3 on CUDA, else --repeats)")
    parser.add_argument("--scorecam-chunk", type=int, default=256, help="camkit's Score-CAM chunk_size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--include", type=Path, action="append", default=[],
                        help="a speed.json of an earlier run whose rows join this report (and its targets); repeatable")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser.parse_args(argv)


def load_rows(path: Path) -> list[Row]:
    """The rows of an earlier run's ``speed.json``."""
    return [Row(**row) for row in json.loads(Path(path).read_text())["rows"]]


def plan(args: argparse.Namespace) -> list[tuple[Case, tuple[str, ...]]]:
    """(case, methods) pairs. Score-CAM costs channels x batch forwards and, on CUDA, batch x channels
    upsampled masks (pytorch-grad-cam: also batch x channels masked images): it runs in its own fp32
    case, small on a CPU (ResNet-18, ``--scorecam-size`` / ``--scorecam-batch``), at 224 px and batch
    8 per model on CUDA (ResNet-50: 3.3 GB of masks for camkit, ~17 GB for pytorch-grad-cam)."""
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]
    if not devices:
        raise SystemExit(f"--device {args.device}: no CUDA device here")
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted(set(methods) - set(CAMKIT_METHODS) - set(NEW_METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}: choose from {', '.join(CAMKIT_METHODS + NEW_METHODS)}")
    pairs = []
    for device in devices:
        gpu = device.startswith("cuda")
        models = ["resnet18"] if args.quick else args.models.split(",")
        batches = [8] if args.quick and not gpu else [int(b) for b in (args.batch_sizes or ("64,256" if gpu else "8,32")).split(",")]
        dtypes = ["fp32"] if args.quick else (args.dtypes or ("fp32,bf16,fp16" if gpu else "fp32,bf16")).split(",")
        main_methods = tuple(m for m in methods if m not in PERTURBATION_METHODS)
        score_methods = tuple(m for m in methods if m in PERTURBATION_METHODS)
        if main_methods:
            for model in models:
                for batch in batches:
                    for dtype in dtypes:
                        pairs.append((Case(device, model, batch, dtype), main_methods))
        if score_methods:
            if gpu:
                size = args.scorecam_size or 224
                batch = args.scorecam_batch or 8
                for model in models:
                    pairs.append((Case(device, model, batch, "fp32", size), score_methods))
            else:
                size = args.scorecam_size or (48 if args.quick else 96)  # 48 px: 2 x 2 features
                batch = args.scorecam_batch or (1 if args.quick else 2)
                pairs.append((Case(device, "resnet18", batch, "fp32", size), score_methods))
    return pairs


def run_metadata(repeats: int, toolkits: list[str], started: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cuda": None, "repeats": repeats,
        "seconds": time.perf_counter() - started, "load_average": os.getloadavg(),
        "toolkits": {t: _version(t) for t in toolkits}, "camkit_triton": os.environ.get("CAMKIT_TRITON", ""),
    }
    if torch.cuda.is_available():
        try:  # the details must never cost the measurements
            props = torch.cuda.get_device_properties(0)
            meta.update(cuda=torch.cuda.get_device_name(), cuda_runtime=torch.version.cuda,
                        capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                        cudnn_tf32=torch.backends.cudnn.allow_tf32, matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                        cudnn_benchmark=torch.backends.cudnn.benchmark)
        except Exception as exc:  # noqa: BLE001
            meta["cuda"] = f"details unavailable: {exc}"
    return meta


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 10)
    pairs = QUICK_PAIRS if args.quick else None
    toolkits = installed_toolkits(tuple(t for t in args.toolkits.split(",") if t))
    missing = sorted(set(args.toolkits.split(",")) - set(toolkits) - {""})
    if missing:
        print(f"not installed, skipped: {', '.join(missing)} (pip install -e '.[bench]')", file=sys.stderr)
    rows: list[Row] = []
    for path in args.include:
        if path.exists():
            rows.extend(load_rows(path))
        else:
            print(f"--include {path}: no such file, skipped", file=sys.stderr)
    failures: list[dict[str, Any]] = []
    started = time.perf_counter()
    for case, methods in tqdm(plan(args), desc="cases", unit="case", disable=False):
        if set(methods) <= set(PERTURBATION_METHODS):  # seconds per call: fewer rounds
            default = 2 if args.quick else 3 if case.device.startswith("cuda") else repeats
            rounds = args.scorecam_repeats or default
        else:
            rounds = repeats
        try:
            rows.extend(measure_case(case, methods, toolkits, rounds, scorecam_chunk=args.scorecam_chunk, pairs=pairs,
                                     failures=failures))
        except Exception as exc:  # noqa: BLE001 - keep the cases measured so far and go on
            record_failure(failures, case, "*", ",".join(methods), exc)
        if case.device.startswith("cuda"):  # this case's model, inputs and cached blocks go before the next
            gc.collect()
            torch.cuda.empty_cache()
        write_reports(args.out, run_metadata(repeats, toolkits, started), rows, failures, with_plot=False)
    meta = run_metadata(repeats, toolkits, started)
    text = write_reports(args.out, meta, rows, failures)
    print(text.split("\n\n", 1)[1])
    print(f"wrote {args.out}/speed.md, speed.json, speed.png in {meta['seconds']:.0f} s")
    unexpected = [r for r in rows if r.agrees is False and r.note == "UNEXPECTED DIFFERENCE"]
    for r in unexpected:
        print(f"DISAGREEMENT: {r.tool} {r.method} differs from camkit by {r.max_abs_diff:.3g}", file=sys.stderr)
    return 1 if unexpected or failures else 0


def _version(toolkit: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    distribution = {"pytorch-grad-cam": "grad-cam"}.get(toolkit, toolkit)
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
