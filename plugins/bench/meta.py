"""MetaQuantus-style meta-evaluation of a metric in the bench (Hedström et al., "The Meta-Evaluation
Problem in Explainable AI", TMLR 2023): does the metric ignore minor perturbations (noise resilience)
and react to disruptive ones (adversary reactivity)?

Two tests, each run ``iterations`` times with ``perturbations`` draws (K = 5, 3 iterations as
MetaQuantus):

- *model*: every parameter multiplied by noise from N(1, sigma^2) (sigma = ``model_noise``: 0.001 minor,
  2.0 disruptive); the maps are recomputed with the perturbed model (same targets) and the metric scored
  with it;
- *input*: the inputs get uniform noise U(-eps, eps) (eps = ``input_noise``: 0.001, 5.0), clipped below at
  the batch's minimum as MetaQuantus; the maps of the unperturbed inputs are scored on the perturbed ones.

Only the samples whose top-1 prediction the perturbation keeps (resilience) or changes (adversary)
enter, as in MetaQuantus. Scores: ``statistics.meta_consistency`` (IAC_NR, IAC_AR, IEC_NR, IEC_AR, MC).
Every draw is seeded by (bench seed, test, kind, iteration, perturbation) and, for the input noise, the
sample id. One process only (the perturbed scores are not sharded)."""

from __future__ import annotations

import copy
import zlib
from typing import Any, Mapping

META_KEYS = ("metrics", "perturbations", "iterations", "model_noise", "input_noise")
META_DEFAULTS: dict[str, Any] = {"perturbations": 5, "iterations": 3, "model_noise": [0.001, 2.0],
                                 "input_noise": [0.001, 5.0]}
KINDS = ("resilience", "adversary")
TESTS = ("model", "input")


def normalize_meta(value: Any, metric_labels: list[str]) -> dict[str, Any] | None:
    """The ``meta_evaluation`` setting in its full form (None: off); metric labels and keys checked."""
    from camkit.plugin_manager import UnknownNameError

    if value in (None, False, [], {}):
        return None
    if isinstance(value, (str, list)):
        value = {"metrics": [value] if isinstance(value, str) else value}
    if not isinstance(value, Mapping):
        raise ValueError(f"meta_evaluation must be a list of metric labels or a table, got {value!r}")
    for key in value:
        if key not in META_KEYS:
            raise UnknownNameError.of("meta_evaluation key", key, META_KEYS)
    meta = {**META_DEFAULTS, **dict(value)}
    if not meta.get("metrics"):
        raise ValueError("meta_evaluation needs 'metrics': the labels of the metrics to meta-evaluate")
    for label in meta["metrics"]:
        if label not in metric_labels:
            raise UnknownNameError.of("metric", label, metric_labels, where="meta_evaluation")
    for key in ("perturbations", "iterations"):
        if not isinstance(meta[key], int) or meta[key] < 1:
            raise ValueError(f"meta_evaluation {key} must be a positive integer, got {meta[key]!r}")
    for key in ("model_noise", "input_noise"):
        noise = meta[key]
        if not (isinstance(noise, list) and len(noise) == 2 and all(isinstance(v, (int, float)) and v > 0
                                                                    for v in noise)):
            raise ValueError(f"meta_evaluation {key} must be [minor, disruptive] positive numbers, got {noise!r}")
    return meta


def _seed(*parts: Any) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def perturbed_model(model: Any, sigma: float, seed: int) -> Any:
    """A deep copy of ``model`` with every parameter multiplied by N(1, sigma^2) noise (drawn on the CPU from
    a generator of its own, so the same on every device; the user's model is untouched)."""
    import torch

    copied = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in copied.parameters():
            noise = 1.0 + sigma * torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            parameter.mul_(noise.to(device=parameter.device, dtype=parameter.dtype))
    return copied


def perturbed_inputs(inputs: Any, indices: Any, epsilon: float, seed: int, stream: str) -> Any:
    """``inputs`` + U(-epsilon, epsilon) per element, sample by sample from ``sample_generator`` (the same
    noise for a sample in any batch), clipped below at the batch's minimum (MetaQuantus)."""
    import torch

    from camkit_plugins.metrics.base import sample_generator

    noise = torch.stack([torch.rand(inputs.shape[1:], generator=sample_generator(seed, int(i), stream))
                         for i in indices.reshape(-1).tolist()])
    noisy = inputs + (2.0 * noise.to(inputs.device, inputs.dtype) - 1.0) * epsilon
    return noisy.clamp_min(inputs.min())


def meta_evaluate(pair: Any, metric_entry: Mapping[str, Any], methods: list[str],
                  meta: Mapping[str, Any]) -> dict[str, Any]:
    """Meta-evaluate one metric over ``methods`` on the pair's samples: ``{test: {IAC_NR, ..., MC}}``."""
    import numpy as np
    import torch

    from camkit_plugins.bench.runner import MapMaker, _evaluation_batch, _run_batches
    from camkit_plugins.metrics.registry import make_metric
    from camkit_plugins.metrics.statistics import meta_consistency

    metric = make_metric(metric_entry["name"], **metric_entry["options"])
    seed, iterations, k = pair.config["seed"], meta["iterations"], meta["perturbations"]
    batches = _run_batches(pair, [metric])
    makers = {m: MapMaker(m, pair.input_layout, pair.config["method_options"].get(m, {}), seed) for m in methods}
    originals = {m: [_evaluation_batch(pair, makers[m], positions)[0] for positions in batches] for m in methods}
    n = sum(len(b) for b in batches)

    def scores(evaluations: list[Any]) -> Any:
        return np.concatenate([metric.evaluate(e).values[metric.primary].detach().double().cpu().numpy()
                               for e in evaluations])

    original = {m: scores(originals[m]) for m in methods}
    predictions = torch.cat([e.predictions for e in originals[methods[0]]])
    result: dict[str, Any] = {}
    for test in TESTS:
        noise = meta["model_noise"] if test == "model" else meta["input_noise"]
        perturbed = {kind: {m: np.empty((iterations, k, n)) for m in methods} for kind in KINDS}
        keep = {kind: np.empty((iterations, k, n), dtype=bool) for kind in KINDS}
        for kind, level in zip(KINDS, noise):
            for i in range(iterations):
                for j in range(k):
                    draw = _seed(seed, "meta", test, kind, i, j)
                    evaluations, changed = _perturbed(pair, test, level, draw, originals, makers, methods)
                    for m in methods:
                        perturbed[kind][m][i, j] = scores(evaluations[m])
                    same = (changed == predictions).cpu().numpy()
                    keep[kind][i, j] = same if kind == "resilience" else ~same
        result[test] = meta_consistency(original, perturbed["resilience"], keep["resilience"],
                                        perturbed["adversary"], keep["adversary"], metric.higher_is_better)
    return result


def _perturbed(pair: Any, test: str, level: float, draw: int, originals: Mapping[str, list[Any]],
               makers: Mapping[str, Any], methods: list[str]) -> tuple[dict[str, list[Any]], Any]:
    """The methods' evaluation batches under one perturbation, and the perturbed top-1 predictions."""
    import dataclasses

    import torch

    from camkit.capture import evaluation_mode

    model = perturbed_model(pair.model, level, draw) if test == "model" else pair.model
    out: dict[str, list[Any]] = {m: [] for m in methods}
    predictions = []
    with evaluation_mode(model):
        for position, reference in enumerate(originals[methods[0]]):
            inputs = reference.inputs
            if test == "input":
                inputs = perturbed_inputs(inputs, reference.indices, level, draw, "meta:input")
            with torch.inference_mode():
                predicted = model(inputs).argmax(dim=1)
            predictions.append(predicted)
            for m in methods:
                original = originals[m][position]
                maps = original.maps
                if test == "model":  # re-explained by the perturbed model, for the same targets
                    maps = torch.nan_to_num(makers[m](model, inputs, original.targets, original.indices))
                out[m].append(dataclasses.replace(original, model=model, inputs=inputs, maps=maps,
                                                  predictions=predicted))
    return out, torch.cat(predictions)
