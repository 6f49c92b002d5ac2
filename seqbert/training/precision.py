"""Device and numeric precision, decided once at the edge. The only device-aware module of seqbert.

`resolve_device("auto")` picks cuda > mps > cpu; `resolve_precision("auto", device)` picks bf16 autocast
where the hardware computes bf16 natively (CUDA with bf16 support; CPUs with AVX512-BF16 or AMX) and fp32
elsewhere: on a CPU without those instructions bf16 matmuls are emulated and about 100x slower than fp32.
fp16 needs a GradScaler (its 5-bit exponent underflows small gradients) and is offered on CUDA only.
`init_distributed` joins torchrun's process group with the backend that fits the device.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the native bf16 instructions


def resolve_device(name: str = "auto") -> torch.device:
    """The device to train on: "auto" -> cuda > mps > cpu; otherwise `torch.device(name)`, checked to exist.

    Under torchrun a bare "cuda" becomes `cuda:$LOCAL_RANK`, so each process drives its own GPU.
    """
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:i]' or 'mps', got {name!r}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available")
    return device


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU flags list AVX512-BF16 or AMX-BF16 (False where /proc/cpuinfo is absent, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def resolve_precision(name: str, device: torch.device, cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The precision to train in on `device`: "auto" | "fp32" | "bf16" | "fp16" -> "fp32" | "bf16" | "fp16".

    `cpuinfo` is a parameter so that the CPU rule can be tested against other machines' flags.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16(cpuinfo) else "fp32"
        return "fp32"  # mps: bf16 autocast support varies by macOS version; fp32 is always right
    if name == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (GradScaler), got device {device}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)}; use fp16"
        )
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward-pass context: `torch.autocast` for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group) from torchrun's environment.

    One process: (0, 1, False) and nothing is initialised. Backend: nccl between GPUs, gloo between CPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), owns_group


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
