"""Pick precision, DataLoader workers and torch threads for the machine at hand.

On a CPU, training is compute-bound (about 11 images/s for ResNet18 at 224 px on 2 cores) and
decoding one image costs about 3 ms, so extra DataLoader processes only steal cores from the
training threads (measured: any other busy process cuts 2-thread training about 3x). On CUDA
the CPU's only job is feeding the GPU, so workers get most cores.

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

SMALL_CPU_CORES = 4  # up to this many cores, decode in the training process itself


@dataclass(frozen=True)
class Runtime:
    accelerator: str  # 'cuda', 'mps' or 'cpu'
    precision: str  # Lightning precision string
    num_workers: int
    torch_threads: int
    pin_memory: bool

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


def resolve_runtime(config: TrainConfig) -> Runtime:
    cores = usable_cores()
    cuda = torch.cuda.is_available()
    accelerator = "cuda" if cuda else "mps" if torch.backends.mps.is_available() else "cpu"
    precision = config.precision
    if precision == AUTO:
        # Mixed precision only on CUDA: bf16 autocast on a CPU without native bf16 measured
        # 25-46x slower than fp32, and Apple's MPS gains little from it. Pre-Ampere GPUs only
        # emulate bf16, so they get fp16.
        native_bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
        precision = ("bf16-mixed" if native_bf16 else "16-mixed") if cuda else "32-true"
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
    return Runtime(accelerator, precision, workers, threads, pin_memory=cuda)


def apply_runtime(runtime: Runtime) -> None:
    """Set torch's thread pool so training threads and loader workers do not share cores."""
    torch.set_num_threads(runtime.torch_threads)
