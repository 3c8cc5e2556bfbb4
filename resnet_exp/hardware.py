"""Pick precision, memory format, DataLoader workers and torch threads for the machine at hand.

On a CPU, training is compute-bound (ResNet18 at 224 px on 2 cores: about 11-19 images/s in
fp32) and a batch comes from the memory-mapped image store in about a millisecond, so extra
DataLoader processes only steal cores from the training threads (measured: any other busy
process cuts 2-thread training about 3x). On CUDA the CPU's only job is feeding the GPU, so
workers get most cores.

    python -c "from resnet_exp.config import TrainConfig; from resnet_exp.hardware import resolve_runtime; \
print(resolve_runtime(TrainConfig()))"
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from resnet_exp.config import AUTO, TrainConfig
from resnet_exp.errors import ConfigError

SMALL_CPU_CORES = 4  # up to this many cores, load batches in the training process itself
# CPU flag of native bf16 matrix units (Intel AMX). With it, bf16 autocast trained ResNet18
# 2.1x (112 px) and 3.1x (224 px) faster than fp32 on a 2-core Xeon; without native bf16 it
# was measured 25-46x slower, so anything else keeps fp32.
NATIVE_BF16_FLAG = "amx_bf16"


@dataclass(frozen=True)
class Runtime:
    accelerator: str  # 'cuda', 'mps' or 'cpu'
    precision: str  # Lightning precision string
    num_workers: int
    torch_threads: int
    pin_memory: bool
    # NHWC activations: ResNet18 trained 5-17% faster in fp32 on a 2-core Xeon CPU (112-224 px,
    # equal at 32-64 px), and it is what tensor cores want on CUDA; unmeasured on Apple MPS.
    channels_last: bool

    def to_params(self) -> dict[str, str]:
        return {f"resolved/{k}": str(v) for k, v in asdict(self).items()}


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a container's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "<quota> <period>" in microseconds
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AMX), read from /proc/cpuinfo's flags."""
    try:
        with open("/proc/cpuinfo") as info:
            return any(line.startswith("flags") and NATIVE_BF16_FLAG in line.split() for line in info)
    except OSError:  # not Linux: assume not
        return False


def available_memory() -> int | None:
    """Bytes of memory this process could still use: MemAvailable, capped by a container's
    limit (cgroup v2); None where neither can be read."""
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")
        available = int(next(line for line in meminfo if line.startswith("MemAvailable")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


def resolve_runtime(config: TrainConfig) -> Runtime:
    cores = usable_cores()
    cuda = torch.cuda.is_available()
    accelerator = "cuda" if cuda else "mps" if torch.backends.mps.is_available() else "cpu"
    precision = config.precision
    if precision == AUTO:
        # Mixed precision on CUDA and on CPUs with native bf16 (see NATIVE_BF16_FLAG); Apple's
        # MPS gains little from it. Pre-Ampere GPUs only emulate bf16, so they get fp16.
        if cuda:
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
            precision = "bf16-mixed" if native_bf16 else "16-mixed"
        else:
            precision = "bf16-mixed" if accelerator == "cpu" and cpu_has_native_bf16() else "32-true"
    elif precision == "16-mixed" and accelerator == "cpu":
        # Lightning would silently switch to bf16-mixed, the slow path on most CPUs.
        raise ConfigError("precision='16-mixed' needs a GPU; on this CPU use 32-true (or "
                          "bf16-mixed on a CPU with native bf16)")
    if config.num_workers is not None:
        workers = config.num_workers
    elif cuda:
        workers = max(1, min(8, cores - 1))
    else:
        workers = 0 if cores <= SMALL_CPU_CORES else max(1, cores // 8)
    threads = max(1, cores - workers)  # loader workers and torch threads on separate cores
    return Runtime(accelerator, precision, workers, threads, pin_memory=cuda,
                   channels_last=accelerator in ("cpu", "cuda"))


def autocast(runtime: Runtime) -> torch.autocast:
    """The autocast context Lightning uses for the run's precision (disabled for 32-true), for
    work done outside Lightning in the same numerics, such as caching features."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(runtime.precision)
    return torch.autocast(runtime.accelerator, dtype=dtype, enabled=dtype is not None)


def apply_runtime(runtime: Runtime) -> None:
    """Set torch's thread pool so training threads and loader workers do not share cores."""
    torch.set_num_threads(runtime.torch_threads)
