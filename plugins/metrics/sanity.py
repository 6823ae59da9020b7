"""Model-randomisation sanity check (Adebayo et al. 2018), cascading from the output down."""

from __future__ import annotations

from typing import Any

from camkit_plugins.metrics.base import EvalBatch, Metric, MetricValues


def parameter_groups(model: Any, depth: int = 2) -> list[tuple[str, list[Any]]]:
    """Modules owning parameters, grouped by the first ``depth`` parts of their names
    (``layer4.1.conv2`` -> ``layer4.1``), ordered top-down (output side first)."""
    groups: dict[str, list[Any]] = {}
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            key = ".".join(name.split(".")[:depth]) or type(model).__name__
            groups.setdefault(key, []).append(module)
    return list(reversed(groups.items()))


def randomize_(modules: list[Any], seed: int) -> None:
    """Re-initialise ``modules`` in place: their own ``reset_parameters`` (torch's init), else normal(0, 0.02).

    The draws are made on the CPU from the CPU generator alone (then moved back to each module's
    device), so a model on a GPU gets the very same random weights as on the CPU, and no global
    random state, CPU or CUDA, is changed."""
    import torch

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that reseeds every GPU too
        for module in modules:
            device = next(module.parameters(recurse=False)).device
            module.to("cpu")
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, 0.02)
            module.to(device)


class Randomization(Metric):
    """Cascading parameter randomisation: on a deep copy of the model, re-initialise parameter groups
    one after another from the output down, recompute the maps (same targets) after each, and report
    the Spearman rank correlation with the original maps per layer (``spearman``, a curve over layers)
    and its mean (lower = the maps depend more on the learned weights). The user's model is untouched."""

    name = "randomization"
    family = "randomisation"
    primary = "mean_spearman"
    higher_is_better = False

    def __init__(self, depth: int = 2, max_layers: int | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth, self.max_layers = int(depth), max_layers

    def evaluate(self, batch: EvalBatch) -> MetricValues:
        import copy

        import torch

        from camkit_plugins.metrics.base import spearman

        model = copy.deepcopy(batch.model)
        groups = parameter_groups(model, self.depth)
        if self.max_layers is not None:
            groups = groups[: int(self.max_layers)]
        if not groups:
            raise ValueError(f"model {type(model).__name__} has no parameters to randomise")
        original = batch.flat_maps()
        rows = []
        for position, (_, modules) in enumerate(groups):
            randomize_(modules, seed=batch.seed * 7919 + position)
            maps = batch.explain(model, batch.inputs, batch.targets)
            rows.append(spearman(original, maps.reshape(maps.shape[0], -1).float()))
        curve = torch.stack(rows, dim=1)
        return MetricValues({"mean_spearman": torch.nanmean(curve, dim=1), "spearman": curve},
                            {"spearman": [name for name, _ in groups]})

    def options(self) -> dict[str, Any]:
        return {"depth": self.depth, "max_layers": self.max_layers}


METRICS = (Randomization,)
