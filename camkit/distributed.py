"""torch.distributed for camkit's commands: one place that joins (or starts) a ``torchrun`` job.

Used by ``camkit bench`` (sharded evaluation), ``camkit explain`` and ``camkit eval image`` (sharded data
sets) and ``camkit train skeleton`` (DDP). Outside
``torchrun`` everything degrades to a world of one process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def parse_device(name: Any) -> Any:
    """``name`` ("auto", "cpu", "cuda", "cuda:1", "mps", a ``torch.device``) as a ``torch.device`` that this
    machine has, or a ``ValueError`` that says what is wrong in one line. The one parser behind every
    ``--device`` option; "auto" is CUDA when available, else the CPU."""
    import torch

    if isinstance(name, torch.device):
        device = name
    else:
        text = str(name).strip().lower()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        kind, colon, index = text.partition(":")
        if kind not in DEVICE_TYPES or (colon and not index.isdigit()):
            raise ValueError(f"device {str(name)!r}: not a device; use auto, cpu, cuda, cuda:N (N = 0, 1, ...), "
                             f"mps or xpu")
        device = torch.device(text)
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if device.type == "mps":
        available = torch.backends.mps.is_available
    if available is None or not available():
        hint = (f" (this torch {torch.__version__} was built without CUDA)"
                if device.type == "cuda" and torch.version.cuda is None else "")
        raise ValueError(f"device {str(name)!r}: this machine has no {device.type.upper()} device torch can use"
                         f"{hint}; use --device cpu, or auto to take a GPU only when there is one")
    return device


def local_device(name: Any = "auto") -> Any:
    """The device of this process (see :func:`parse_device`); plain "cuda" is this ``torchrun`` process's
    own GPU, ``cuda:LOCAL_RANK``. More processes than GPUs is a clear error."""
    import torch

    device = parse_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise ValueError(f"this process wants {device} but the machine has {torch.cuda.device_count()} visible GPU(s): "
                         f"start at most that many processes per node (torchrun --nproc_per_node), or hide "
                         f"the GPUs (CUDA_VISIBLE_DEVICES=) to run on the CPU")
    return device


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (world 1 without one).

    ``collective_device``: where ``sum`` puts its tensors for ``all_reduce``: ``cpu`` when the process
    group has a CPU backend (gloo; the group this class starts always has one), else the process's
    GPU (a group somebody else started with plain ``nccl``, which cannot reduce CPU tensors)."""

    rank: int = 0
    world: int = 1
    started_here: bool = False
    collective_device: str = "cpu"

    @classmethod
    def from_environment(cls, device: Any) -> "Distributed":
        """Join (or start) the ``torchrun`` process group for work on ``device`` (a torch device or type).

        On CUDA each process first selects its own GPU (``device``'s index, else ``LOCAL_RANK``), so NCCL
        and ``broadcast_object_list`` do not all land on cuda:0; the group is started with backend
        ``cpu:gloo,cuda:nccl``: CPU tensors (the metric sums, pickled objects) go through gloo, CUDA
        tensors through NCCL. Without CUDA: ``gloo``."""
        import torch
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        device = local_device(device)
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        started = False
        if not dist.is_initialized():
            dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
            started = True
        backend = str(dist.get_backend()).lower()
        supports_cpu = any(name in backend for name in ("gloo", "mpi", "cpu:"))
        collective = "cpu" if supports_cpu or not cuda else str(device)
        return cls(dist.get_rank(), dist.get_world_size(), started, collective)

    def shard(self, count: int) -> list[int]:
        """This rank's sample positions: ``DistributedSampler`` order without its padding duplicates."""
        if self.world == 1:
            return list(range(count))
        from torch.utils.data import DistributedSampler

        if count < self.world:
            raise ValueError(f"{count} samples cannot be shared by {self.world} processes")
        sampler: DistributedSampler[int] = DistributedSampler(range(count), num_replicas=self.world,  # type: ignore[arg-type]
                                                             rank=self.rank, shuffle=False)
        # position i of this rank is global position rank + i * world; >= count means padding
        return [index for i, index in enumerate(sampler) if self.rank + i * self.world < count]

    def sum(self, tensor: Any) -> Any:
        """``tensor`` summed over the processes (on ``collective_device``, returned on ``tensor``'s device)."""
        if self.world > 1:
            import torch.distributed as dist

            moved = tensor.to(self.collective_device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            return moved.to(tensor.device)
        return tensor

    def broadcast(self, value: Any) -> Any:
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (any picklable object), in rank order, on every process."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        found: list[Any] = [None] * self.world
        dist.all_gather_object(found, value)
        return found

    def close(self) -> None:
        if self.started_here:
            import torch.distributed as dist

            dist.destroy_process_group()


@contextlib.contextmanager
def joined(device: Any, distributed: Distributed | None = None) -> Iterator[Distributed]:
    """``distributed`` when one is given (whoever made it closes it), else this process's place in the
    ``torchrun`` job, closed after the block. A command that runs several sharded steps makes one and
    passes it to each: a process group is started once per process."""
    if distributed is not None:
        yield distributed
        return
    made = Distributed.from_environment(device)
    try:
        yield made
    finally:
        made.close()
