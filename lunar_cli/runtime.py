"""Where code runs: the device, thread use, and the torchrun/DDP process group."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lunar_cli.console import LunarError

if TYPE_CHECKING:
    import torch


def set_environment_defaults() -> None:
    """Set environment defaults the user did not choose: passive OpenMP waits, quiet OpenCV logs.

    Measured on a 2-core machine with other work running: a custom U-Net step took
    2.4 s with spinning threads and 0.09 s with passive ones. Must run before torch loads.
    Also keeps OpenCV's own "[ WARN ] ... PNG input buffer is incomplete" lines off
    stderr (read before cv2 loads): lunar already says which file is bad, in one line.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when running under torchrun with more than one process."""
        return self.world_size > 1


def autocast_for(device: "torch.device", amp: bool):
    """Return (autocast context factory, GradScaler or None): mixed precision on GPU, fp32 elsewhere.

    bf16 where the GPU supports it (no scaler needed), else fp16 with a GradScaler.
    """
    import contextlib

    import torch

    if not amp or device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def select_device(name: str = "auto", local_rank: int = 0) -> "torch.device":
    """Return the torch device for ``name``: auto picks CUDA, then MPS, then CPU."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise LunarError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LunarError(f"device {name!r} asked for but no CUDA GPU is visible: use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise LunarError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LunarError(f"device {name!r} asked for but MPS is not available: use --device cpu or auto")
    return device


def setup_distributed(device_name: str = "auto") -> tuple[Dist, "torch.device"]:
    """Join the torchrun process group when launched by torchrun; return (Dist, device).

    NCCL on GPUs, gloo on CPU. On CPU the cores are shared between the local processes.
    """
    import torch

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Dist(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = select_device(device_name, dist.local_rank)
    if device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // max(1, local)))
    if dist.enabled:
        import torch.distributed as tdist

        if not tdist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            tdist.init_process_group(backend=backend)
    return dist, device


def broadcast(value: Any, dist: Dist) -> Any:
    """Return rank 0's ``value`` on every rank (a no-op outside torchrun)."""
    if not dist.enabled:
        return value
    import torch.distributed as tdist

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    """Wait for every rank (a no-op outside torchrun)."""
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()


def all_reduce_sum(values: "torch.Tensor", dist: Dist) -> "torch.Tensor":
    """Return ``values`` summed over ranks (unchanged outside torchrun)."""
    if dist.enabled:
        import torch.distributed as tdist

        tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
    return values


def teardown_distributed(dist: Dist) -> None:
    """Leave the process group if this process joined one."""
    if dist.enabled:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()
