"""Timing: every runner of a case in the same round-robin rounds (wall, process CPU and peak CUDA memory),
camkit's call against the forward inside it, and the rows of one case."""

from __future__ import annotations

import contextlib
import gc
import statistics
import sys
import time
import traceback
from dataclasses import asdict
from functools import partial
from typing import Any, Callable, Iterator

import torch

from .cases import AGREEMENT_TOLERANCE, KNOWN_DIFFERENCES, TOOLKITS, Case, Row, build_model, inner
from .runners import TOOLKIT_RUNNERS, Runner, RunnerFactory, as_maps, camkit_runner, max_abs_difference


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
                    allocated = torch.cuda.memory_allocated(torch.device(device)) / 2**20
                    resident[key] = max(resident.get(key, 0.0), allocated)
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
                 own_forward_methods: tuple[str, ...] = ("cam", "gradcam", "gradcam-elementwise", "eigengradcam",
                                                         "shapleycam", "kpcacam", "segeigencam"),
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



def record_failure(failures: list[dict[str, Any]], case: Case, tool: str, method: str, exc: BaseException) -> None:
    """Keep a failed runner or case in the report (and its traceback on stderr) instead of losing the run."""
    failures.append({**asdict(case), "tool": tool, "method": method, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    print(f"FAILED {tool} {method} on {case}: {type(exc).__name__}: {exc}", file=sys.stderr)
    traceback.print_exc()

