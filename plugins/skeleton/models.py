"""ST-GCN (Yan et al. 2018), RA-GCN (Song et al. 2020) and their late-fusion ensemble over modalities,
on ``(N, C, T, V, M)`` skeleton batches.

All expose their last features through an ``nn.Identity`` named ``features`` with layout
``NCTVM`` (persons unfolded from the batch), so ``camkit.explain(model, x)`` gives joint-by-time maps.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from camkit.families import ModelFamily
from camkit.plugin_manager import UnknownNameError
from camkit_plugins.skeleton.graph import get_graph, skeleton_layout
from camkit_plugins.skeleton.masking import MaskRule, frames_from_cells

#: Widths and temporal strides of named configurations. "paper": the 10-layer NTU configuration.
CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "paper": ((64, 64, 64, 64, 128, 128, 128, 256, 256, 256), (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)),
    "small": ((16, 32, 32, 64), (1, 2, 1, 2)),
    "tiny": ((8, 16), (2, 2)),
}


class GraphConv(nn.Module):
    """Spatial graph convolution: a 1x1 conv to K*C_out channels, then ``sum_k sum_v x_v A_k[v, w]``
    with a learnable edge-importance mask per partition."""

    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor, edge_importance: bool) -> None:
        super().__init__()
        self.partitions = adjacency.shape[0]
        self.conv = nn.Conv2d(in_channels, out_channels * self.partitions, kernel_size=1)
        self.register_buffer("adjacency", adjacency)
        self.importance = nn.Parameter(torch.ones_like(adjacency)) if edge_importance else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.adjacency * self.importance if self.importance is not None else self.adjacency
        y = self.conv(x)
        n, kc, t, v = y.shape
        return torch.einsum("nkctv,kvw->nctw", y.view(n, self.partitions, kc // self.partitions, t, v), a)


class STGCNBlock(nn.Module):
    """Graph conv -> BN -> ReLU -> temporal conv (stride) -> BN -> dropout, plus a residual, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor, stride: int,
                 temporal_kernel: int, dropout: float, edge_importance: bool, residual: bool) -> None:
        super().__init__()
        pad = (temporal_kernel - 1) // 2
        self.gcn = GraphConv(in_channels, out_channels, adjacency, edge_importance)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1), (pad, 0)),
            nn.BatchNorm2d(out_channels), nn.Dropout(dropout),
        )
        if not residual:
            self.residual: nn.Module | None = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, (stride, 1)),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tcn(self.gcn(x))
        return self.relu(y + self.residual(x) if self.residual is not None else y)


class STGCN(nn.Module):
    """ST-GCN classifier: data BN, graph-conv blocks, global average pooling over (T, V, M), linear.

    ``forward(x)`` takes ``(N, C, T, V, M)`` and returns logits ``(N, classes)``; ``self.features``
    sees ``(N, C', T', V, M)``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        graph: Any = "ntu25",
        partition: str = "spatial",
        max_hop: int = 1,
        config: str = "small",
        widths: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
        temporal_kernel: int = 9,
        dropout: float = 0.0,
        edge_importance: bool = True,
        persons: int = 2,
        modality: str = "joint",
    ) -> None:
        super().__init__()
        from camkit_plugins.skeleton.modalities import check_modality

        self.modality = check_modality(modality)
        if config not in CONFIGS:
            raise UnknownNameError.of("ST-GCN config", config, sorted(CONFIGS))
        widths = tuple(widths) if widths is not None else CONFIGS[config][0]
        strides = tuple(strides) if strides is not None else (
            CONFIGS[config][1] if len(widths) == len(CONFIGS[config][1]) else (1,) * len(widths))
        if len(widths) != len(strides) or not widths:
            raise ValueError(f"widths {widths} and strides {strides} must be non-empty and of equal length")
        self.graph = get_graph(graph)
        self.parents = self.graph.parents()
        self.in_channels, self.persons = in_channels, persons
        adjacency = torch.from_numpy(self.graph.adjacency(partition, max_hop))
        v = self.graph.num_joints
        self.data_bn = nn.BatchNorm1d(in_channels * v * persons)
        blocks, previous = [], in_channels
        for i, (width, stride) in enumerate(zip(widths, strides)):
            blocks.append(STGCNBlock(previous, width, adjacency.clone(), stride, temporal_kernel,
                                     0.0 if i == 0 else dropout, edge_importance, residual=i > 0))
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.features = nn.Identity()
        self.fc = nn.Linear(previous, num_classes)
        self.num_channels = previous

    def check_input(self, x: torch.Tensor) -> None:
        v = self.graph.num_joints
        if x.ndim != 5 or x.shape[1] != self.in_channels or x.shape[3] != v or x.shape[4] != self.persons:
            raise ValueError(f"{type(self).__name__} expects (N, C={self.in_channels}, T, V={v}, M={self.persons}) "
                             f"inputs, got shape {tuple(x.shape)}")

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, C', T', V, M)`` of an ``(N, C, T, V, M)`` batch of joint coordinates (turned
        into this model's modality first; before ``self.features``)."""
        from camkit_plugins.skeleton.modalities import to_modality

        self.check_input(x)
        if self.modality != "joint":
            x = to_modality(x, self.modality, self.parents)
        n, c, t, v, m = x.shape
        y = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t))
        y = y.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        for block in self.blocks:
            y = block(y)
        return y.view(n, m, *y.shape[1:]).permute(0, 2, 3, 4, 1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean(dim=(2, 3, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.extract(x)))

    # the interface a ModalityEnsemble member offers (RAGCN offers it too)
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def classifier_weights(self) -> torch.Tensor:
        return self.fc.weight


class RAGCN(nn.Module):
    """Richly activated GCN: ``streams`` ST-GCNs; stream s sees the input times the product of the
    activation masks of streams 0..s-1, each computed per sample from that stream's CAM (the true
    class when ``labels`` are given in training, the stream's predicted class otherwise).

    ``forward(x, labels=None, per_stream=False)``: summed logits ``(N, classes)``, or the stream logits
    ``(N, S, classes)``. ``self.features`` sees the streams' features concatenated on C, so the CAM of
    the sum is one contraction with the concatenated classifiers."""

    def __init__(self, num_classes: int, streams: int = 3, mask_rule: str = "threshold", mask_amount: float = 0.5,
                 mask_direction: str = "mask", absent_counts: bool = True, **stgcn_options: Any) -> None:
        super().__init__()
        if not 1 <= int(streams) <= 4:
            raise ValueError(f"RA-GCN takes 1 to 4 streams, got {streams}")
        self.streams = nn.ModuleList(STGCN(num_classes, **stgcn_options) for _ in range(int(streams)))
        self.mask_rule = MaskRule(mask_rule, mask_amount, mask_direction, bool(absent_counts))
        self.features = nn.Identity()

    def set_mask_options(self, **options: Any) -> None:
        """Change ``mask_rule`` / ``mask_amount`` / ``mask_direction`` / ``absent_counts`` of a built
        (e.g. loaded) model: masks are no weights, so this needs no retraining to take effect."""
        import dataclasses

        names = {"mask_rule": "rule", "mask_amount": "amount", "mask_direction": "direction",
                 "absent_counts": "absent_counts"}
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise UnknownNameError.of("mask option", unknown[0], list(names))
        self.mask_rule = dataclasses.replace(self.mask_rule, **{names[k]: v for k, v in options.items()})

    def stream_masks(self, x: torch.Tensor,
                     labels: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-stream features and the cumulative frame masks ``(S, N, T, V)`` each stream saw."""
        import camkit

        n, _, t, v, _ = x.shape
        visible = torch.ones(n, t, v, dtype=x.dtype, device=x.device)
        counts_absent = self.mask_rule.absent_counts and self.mask_rule.rule in ("topk", "joints")
        absent = (x == 0).all(dim=1).all(dim=1).all(dim=-1) if counts_absent else None  # (N, V): zero in every frame
        features, seen = [], []
        for s, stream in enumerate(self.streams):
            seen.append(visible)
            f = stream.extract(x if s == 0 else x * skeleton_layout().broadcast(visible, "NTV"))
            features.append(f)
            if s == len(self.streams) - 1:
                break
            with torch.no_grad():
                f = f.detach()
                if labels is not None and self.training:
                    target = labels
                else:
                    target = stream.head(f).argmax(dim=1)
                weights = stream.fc.weight.detach()[target]
                cam = camkit.class_activation_map(f, "NCTVM", channel_weights=weights).mean(dim=-1)
                visible = visible * frames_from_cells(self.mask_rule.cell_mask(cam, absent), t)
        return features, torch.stack(seen)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, per_stream: bool = False) -> torch.Tensor:
        logits = self.stream_logits(self.features(self.forward_features(x, labels)))
        return logits if per_stream else logits.sum(dim=1)

    def forward_features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The streams' features ``(N, S*C', T', V, M)``, concatenated on C."""
        self.streams[0].check_input(x)
        return torch.cat(self.stream_masks(x, labels)[0], dim=1)

    def stream_logits(self, joined: torch.Tensor) -> torch.Tensor:
        """``(N, S, classes)`` from the concatenated stream features."""
        parts = joined.split([stream.num_channels for stream in self.streams], dim=1)
        return torch.stack([stream.head(part) for stream, part in zip(self.streams, parts)], dim=1)

    def classify(self, joined: torch.Tensor) -> torch.Tensor:
        return self.stream_logits(joined).sum(dim=1)

    def classifier_weights(self) -> torch.Tensor:
        """``(classes, S*C')``: the stream classifiers side by side (the biases only shift the sum)."""
        return torch.cat([stream.fc.weight for stream in self.streams], dim=1)


class ModalityEnsemble(nn.Module):
    """Late fusion of models of different modalities: logits ``sum_m weight_m * logits_m`` (e.g. joint,
    bone, joint motion, bone motion at 2 : 2 : 1 : 1). Every member takes the same joint coordinates
    and turns them into its own modality.

    ``members``: ``[{"model": "stgcn" or "ragcn", "model_options": {...}}, ...]`` (checkpoint configs).
    ``self.features`` sees the members' features concatenated on C and :meth:`classifier_weights`
    stacks ``weight_m * W_m``, so the CAM of the ensemble is the weighted sum of the members' CAMs:
    the exact map of the fused logits. (Logits are fused, not softmax scores, for that reason.)"""

    def __init__(self, num_classes: int, members: Sequence[dict[str, Any]], weights: Sequence[float]) -> None:
        super().__init__()
        builders = {"stgcn": build_stgcn, "ragcn": build_ragcn}
        if not members or len(members) != len(weights):
            raise ValueError(f"an ensemble needs one weight per member, got {len(members)} members and "
                             f"{len(weights)} weights")
        unknown = [m.get("model") for m in members if m.get("model") not in builders]
        if unknown:
            raise UnknownNameError.of("ensemble member model", str(unknown[0]), list(builders))
        self.members = nn.ModuleList(builders[m["model"]](num_classes, **m.get("model_options", {})) for m in members)
        first = self._inner(self.members[0])
        for member in self.members[1:]:
            inner = self._inner(member)
            if (inner.graph.num_joints, inner.persons, inner.in_channels) != (first.graph.num_joints, first.persons,
                                                                            first.in_channels):
                raise ValueError("ensemble members must share joints, persons and input channels")
        self.weights = [float(w) for w in weights]
        self.features = nn.Identity()

    @staticmethod
    def _inner(member: nn.Module) -> STGCN:
        return member.streams[0] if isinstance(member, RAGCN) else member  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [member.forward_features(x) for member in self.members]
        joined = self.features(torch.cat(parts, dim=1))
        split = joined.split([p.shape[1] for p in parts], dim=1)
        return sum(w * member.classify(p) for w, member, p in zip(self.weights, self.members, split))

    def classifier_weights(self) -> torch.Tensor:
        return torch.cat([w * member.classifier_weights() for w, member in zip(self.weights, self.members)], dim=1)


def build_ensemble(num_classes: int, members: Sequence[dict[str, Any]], weights: Sequence[float]) -> ModalityEnsemble:
    """Registered as model ``skeleton-ensemble`` (written by ``camkit ensemble skeleton``)."""
    return ModalityEnsemble(num_classes, members, weights)


def build_stgcn(num_classes: int, **options: Any) -> STGCN:
    """Registered as model ``stgcn``: options as ``STGCN`` (graph, partition, config, widths, ...)."""
    return STGCN(num_classes, **options)


def build_ragcn(num_classes: int, **options: Any) -> RAGCN:
    """Registered as model ``ragcn``: ``streams`` (1-4), ``mask_rule``, ``mask_amount``,
    ``mask_direction``, ``absent_counts`` and the ST-GCN options of every stream."""
    return RAGCN(num_classes, **options)


def ra_gcn_loss(stream_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(sum of stream logits) + sum over streams of CE(stream s)."""
    ce = nn.functional.cross_entropy
    total = ce(stream_logits.sum(dim=1), labels)
    return total + sum(ce(stream_logits[:, s], labels) for s in range(stream_logits.shape[1]))


class SkeletonFamily(ModelFamily):
    """Model family for ST-GCN / RA-GCN / modality ensembles: layer ``features`` with layout ``NCTVM``."""

    name = "stgcn"
    layout = "NCTVM"

    def matches(self, model: Any) -> bool:
        return isinstance(model, (STGCN, RAGCN, ModalityEnsemble))

    def target_layer(self, model: Any) -> str:
        return "features"

    def classifier_weights(self, model: Any) -> Any:
        return model.classifier_weights()


def unwrap(model: Any) -> Any:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)
