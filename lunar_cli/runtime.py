"""Where code runs: the device, thread use, and the torchrun/DDP process group."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lunar_cli.console import LunarError, warn
from lunar_cli.parallel import cpu_cores

if TYPE_CHECKING:
    import torch


def set_environment_defaults() -> None:
    """Set environment defaults the user did not choose: passive OpenMP waits, quiet OpenCV logs.

    Measured on a 2-core machine with other work running: a custom U-Net step took
    2.4 s with spinning threads and 0.09 s with passive ones. Must run before torch loads.
    Also keeps OpenCV's own "[ WARN ] ... PNG input buffer is incomplete" lines off
    stderr (read before cv2 loads), and FFmpeg's "[mjpeg @ 0x...] No JPEG data found"
    for a damaged video frame (-8: AV_LOG_QUIET): lunar already says which file or frame
    is bad, in one line.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


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


@dataclass(frozen=True)
class Precision:
    """How a model runs on its device: the autocast dtype (None: fp32), the memory layout, and how to say it."""

    device_type: str
    dtype: "torch.dtype | None"
    channels_last: bool
    label: str  # for the log line that names the device, e.g. "cpu, bf16 autocast (AVX512-BF16), channels-last"

    def autocast(self):
        """Return the autocast context for a forward pass (a no-op in fp32)."""
        import torch  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self):
        """Return a GradScaler where the dtype needs one (fp16 on CUDA), else None."""
        import torch  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

        return torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None


def cpu_bf16_support() -> str | None:
    """Return what runs bf16 convolutions natively on this CPU ("AMX", "AVX512-BF16"), or None.

    oneDNN also runs bf16 on CPUs without these instructions, by emulation, which is slower
    than fp32; so only the native instructions count.
    """
    import torch  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return None
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return None
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


# Device types where channels-last is the faster layout. Measured for every model family (custom,
# vgg11, resnet18, mobilenet_v3_large), training and inference, fp32 and bf16: see bench/RESULTS.md.
CHANNELS_LAST_DEVICES = ("cuda", "cpu")


def choose_precision(device: "torch.device", amp: bool | None, channels_last: bool | None) -> Precision:
    """Return how to run a model on ``device``.

    ``amp`` None picks mixed precision where the hardware runs it well (CUDA: bf16, else
    fp16; CPU: bf16 with AMX or AVX512-BF16), True asks for it (on a CPU without bf16 it
    falls back to fp32, said in one line), False is fp32. ``channels_last`` None picks
    the faster layout on this device type.
    """
    import torch  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)


    kind = device.type
    dtype, how = None, "fp32"
    if kind == "cuda" and amp is not False:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        how = f"{'bf16' if dtype == torch.bfloat16 else 'fp16'} autocast"
    elif kind == "cpu" and amp is not False:
        support = cpu_bf16_support()
        if support is not None:
            dtype, how = torch.bfloat16, f"bf16 autocast ({support})"
        elif amp:
            warn("--amp: this CPU has no native bf16 (AMX or AVX512-BF16); running in fp32")
    layout = kind in CHANNELS_LAST_DEVICES if channels_last is None else channels_last
    label = f"{device}, {how}" + (", channels-last" if layout else "")
    return Precision(device_type=kind, dtype=dtype, channels_last=layout, label=label)


def select_device(name: str = "auto", local_rank: int = 0) -> "torch.device":
    """Return the torch device for ``name``: auto picks CUDA, then MPS, then CPU."""
    import torch  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

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
    import torch  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Dist(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = select_device(device_name, dist.local_rank)
    if device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        cores = cpu_cores()
        torch.set_num_threads(max(1, cores // max(1, local)))
    if dist.enabled:
        import torch.distributed as tdist  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

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
    import torch.distributed as tdist  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    """Wait for every rank (a no-op outside torchrun)."""
    if dist.enabled:
        import torch.distributed as tdist  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

        tdist.barrier()


def all_reduce_sum(values: "torch.Tensor", dist: Dist) -> "torch.Tensor":
    """Return ``values`` summed over ranks (unchanged outside torchrun)."""
    if dist.enabled:
        import torch.distributed as tdist  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

        tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
    return values


def teardown_distributed(dist: Dist) -> None:
    """Leave the process group if this process joined one."""
    if dist.enabled:
        import torch.distributed as tdist  # heavy: only once a device is chosen (never for lunar --help or ONNX predict)

        if tdist.is_initialized():
            tdist.destroy_process_group()
