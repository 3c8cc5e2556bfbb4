"""Pick precision, memory format, DataLoader workers and torch threads for the machine at hand.

On a CPU, training is compute-bound (ResNet18 at 224 px on 2 cores: about 11-19 images/s in
fp32) and a batch comes from the memory-mapped image store in about a millisecond, so extra
DataLoader processes only steal cores from the training threads (measured: any other busy
process cuts 2-thread training about 3x). On CUDA the CPU's only job is feeding the GPU, so
workers get most cores. Precision `auto` on a CPU is decided by measuring bf16 autocast against
fp32 at the run's size, once per CPU model, torch version, thread count and size (cached in
~/.cache/resnet-exp/precision.json).

    python -c "from resnet_exp.config import TrainConfig; from resnet_exp.hardware import resolve_runtime; \
print(resolve_runtime(TrainConfig()))"
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from resnet_exp.config import AUTO, TrainConfig
from resnet_exp.errors import ConfigError
from resnet_exp.model.netspec import network_size

log = logging.getLogger(__name__)

SMALL_CPU_CORES = 4  # up to this many cores, load batches in the training process itself
# precision=auto on a CPU: bf16 autocast only where it was measured faster than fp32 on this
# machine at the run's size. Flag lists miss CPUs: bf16 trained ResNet18 2.1-3.1x faster on a
# Xeon with AMX, 1.56x faster on an AMD EPYC with AVX512-BF16 and no AMX, and 25-46x slower on
# a Zen3 without native bf16.
BF16_MARGIN = 1.1  # bf16 must be at least this much faster: below it, timing noise could decide
MEASURE_BATCH = 4  # images per measured step: per-image cost changes little above it
MEASURE_ROUNDS = 3  # timed steps per precision, interleaved, after one warm-up step each
MEASURE_BUDGET_S = 10.0  # stop timing after this many seconds (at least one round is timed)
# A bf16 warm-up step this many times slower than fp32's means bf16 is emulated (measured 4.5x
# slower on an AVX2-only EPYC, 25-46x on Zen3): decided at once, without timing more steps.
# One-time costs make a warm-up step at most about 2x slower where bf16 is native.
EMULATED_BF16 = 3.0
PRECISION_CACHE = "precision.json"


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
    # bf16 autocast training speed over fp32, measured on this CPU at the run's size; None where
    # precision was not chosen by measurement (set explicitly, or a GPU)
    bf16_speedup: float | None = None

    def to_params(self) -> dict[str, str]:
        return {f"resolved/{k}": str(v) for k, v in asdict(self).items() if v is not None}


CPUS_VARIABLE = "RESNET_EXP_CPUS"  # a cap on the cores a training uses: a Ray trial's CPUs


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a container's CPU quota and by
    RESNET_EXP_CPUS (set by the Ray executor to the trial's CPUs: Ray reserves CPUs without
    pinning the process to them)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "<quota> <period>" in microseconds
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    cap = os.environ.get(CPUS_VARIABLE, "")
    return min(cores, int(cap)) if cap.isdigit() and int(cap) >= 1 else cores


def available_memory() -> int | None:
    """Bytes of memory this process could still use: MemAvailable, capped by a container's
    limit (cgroup v2); None where neither can be read."""
    try:
        meminfo = Path("/proc/meminfo").read_text().split("\n")
        available = (
            int(next(line for line in meminfo if line.startswith("MemAvailable")).split()[1]) * 1024
        )
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


# --- will it fit? ---------------------------------------------------------------------------

# Bytes that training holds per parameter: a trained one its fp32 weight, gradient and AdamW's
# two moments; a frozen one its weight alone.
TRAINED_PARAMETER_BYTES, FROZEN_PARAMETER_BYTES = 16, 4
# Values that autograd keeps per conv output value, at least: the conv's output (BatchNorm's
# backward needs it) and the normalised, rectified output (the next conv's backward needs it).
SAVED_PER_CONV_VALUE = 2


def training_memory(config: TrainConfig, freeze_blocks: int, batch: int) -> tuple[int, int, int]:
    """(bytes, parameters, activation bytes) that training the config's network on `batch`
    images holds at the least, counted from the block counts without building anything. Only
    stages after the frozen ones keep activations; mixed precision may keep them in 2 bytes."""
    params, values = network_size(config.block, config.blocks, config.image_size)
    first = freeze_blocks + 1 if freeze_blocks else 0  # the first trained part (0: the stem)
    trained = sum(params[first:])
    frozen = sum(params) - trained
    value_bytes = 4 if config.precision == "32-true" else 2
    kept = sum(values[first:])
    activations = batch * kept * SAVED_PER_CONV_VALUE * value_bytes
    total = trained * TRAINED_PARAMETER_BYTES + frozen * FROZEN_PARAMETER_BYTES + activations
    return total, sum(params), activations


def memory_for_training() -> tuple[int | None, str]:
    """(bytes free, where): the GPU's free memory where CUDA trains, else the machine's
    available memory; None where it cannot be read (Apple's MPS shares the machine's)."""
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0], "the GPU has"
    return available_memory(), "this machine has"


def check_memory(config: TrainConfig) -> None:
    """Refuse, before any data loads, a run whose network and batch cannot fit in memory: a
    ConfigError naming the parameters, the estimate (a lower bound, so a refusal is certain)
    and the memory free. precision=auto on a CPU first trains the whole network on
    MEASURE_BATCH images to time bf16, so that must fit too."""
    free, where = memory_for_training()
    if free is None:
        return
    needs = [(training_memory(config, config.freeze_blocks, config.batch_size), "training")]
    if config.precision == AUTO and not torch.cuda.is_available():
        measure = min(config.batch_size, MEASURE_BATCH)
        needs.append((training_memory(config, 0, measure), "precision=auto's bf16 measurement"))
    (need, params, activations), what = max(needs, key=lambda n: n[0][0])
    if need <= free:
        return
    gb = 1e9
    names = f"image_size={config.image_size}, batch_size={config.batch_size}"
    names += f", block={config.block}, blocks={','.join(map(str, config.blocks))}"
    fix = "lower batch_size or image_size, or use fewer blocks"
    if what != "training":
        fix = "set precision to 32-true or bf16-mixed (no measurement), or " + fix
    raise ConfigError(
        f"{names}: {what} needs at least {need / gb:.1f} GB of memory ({params:,} parameters; "
        f"activations {activations / gb:.1f} GB) but {where} {free / gb:.1f} GB free: {fix}"
    )


def resolve_runtime(config: TrainConfig) -> Runtime:
    cores = usable_cores()
    cuda = torch.cuda.is_available()
    accelerator = "cuda" if cuda else "mps" if torch.backends.mps.is_available() else "cpu"
    if config.num_workers is not None:
        workers = config.num_workers
    elif cuda:
        workers = max(1, min(8, cores - 1))
    else:
        workers = 0 if cores <= SMALL_CPU_CORES else max(1, cores // 8)
    threads = max(1, cores - workers)  # loader workers and torch threads on separate cores
    precision, speedup = config.precision, None
    if precision == AUTO:
        # Mixed precision on CUDA; on a CPU, what measurement says (see BF16_MARGIN); Apple's
        # MPS gains little from it. Pre-Ampere GPUs only emulate bf16, so they get fp16.
        if cuda:
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
            precision = "bf16-mixed" if native_bf16 else "16-mixed"
        elif accelerator == "cpu":
            precision, speedup = cpu_precision(config, threads)
        else:
            precision = "32-true"
    elif precision == "16-mixed" and accelerator == "cpu":
        # Lightning would silently switch to bf16-mixed, the slow path on most CPUs.
        raise ConfigError(
            "precision='16-mixed' needs a GPU; on this CPU use 32-true (or "
            "bf16-mixed where it is faster: precision=auto measures it)"
        )
    return Runtime(
        accelerator,
        precision,
        workers,
        threads,
        pin_memory=cuda,
        channels_last=accelerator in ("cpu", "cuda"),
        bf16_speedup=speedup,
    )


# --- precision by evidence, on a CPU -------------------------------------------------------------


def cpu_precision(config: TrainConfig, threads: int) -> tuple[str, float]:
    """('bf16-mixed' or '32-true', measured bf16 speedup) for this CPU at the run's size:
    read from the cache, else measured (a few seconds) and cached."""
    key = precision_key(config, threads)
    path = precision_cache_file()
    cache = _read_cache(path)
    if key not in cache:
        speedup = round(measure_bf16_speedup(config, threads), 3)  # decided on what is recorded
        cache = {
            **_read_cache(path),
            key: {"precision": precision_for_speedup(speedup), "bf16_speedup": speedup},
        }
        _write_cache(path, cache)
        log.info(
            "precision=auto: bf16 autocast trains %.2fx as fast as fp32 here (%s); cached in %s",
            speedup,
            key,
            path,
        )
    entry = cache[key]
    return entry["precision"], float(entry["bf16_speedup"])


def precision_for_speedup(bf16_speedup: float) -> str:
    """A CPU's precision from bf16's measured speedup over fp32 (see BF16_MARGIN)."""
    return "bf16-mixed" if bf16_speedup >= BF16_MARGIN else "32-true"


def precision_key(config: TrainConfig, threads: int) -> str:
    """What the measured ratio depends on: the CPU, torch, threads, network and input size."""
    block = getattr(config, "block", "basic")
    blocks = ",".join(map(str, config.blocks))
    return (
        f"{cpu_model()} | torch {torch.__version__} | {threads} threads | {block} {blocks} | "
        f"{config.image_size}px | batch {min(config.batch_size, MEASURE_BATCH)}"
    )


def cpu_model() -> str:
    """/proc/cpuinfo's 'model name' (Linux), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def precision_cache_file() -> Path:
    """$RESNET_EXP_CACHE_DIR, else $XDG_CACHE_HOME/resnet-exp, else ~/.cache/resnet-exp."""
    folder = os.environ.get("RESNET_EXP_CACHE_DIR")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "resnet-exp"
    return Path(folder) / PRECISION_CACHE


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again


def _write_cache(path: Path, cache: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(cache, indent=2, sort_keys=True))
        os.replace(partial, path)  # concurrent runs each write a whole file
    except OSError as err:
        log.warning(
            "cannot cache the precision decision in %s (%s): it will be measured again", path, err
        )


def measure_bf16_speedup(config: TrainConfig, threads: int) -> float:
    """fp32 step time / bf16-autocast step time of training the run's network (its block type
    and counts, 10 classes) at its image size, on MEASURE_BATCH images, channels_last as
    training runs. One warm-up step each (enough when bf16 is clearly emulated), then up to
    MEASURE_ROUNDS interleaved timed steps within MEASURE_BUDGET_S; the fastest of each counts
    (another busy process only ever slows a step down)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    from resnet_exp.model.classifier import adamw

    block = Bottleneck if getattr(config, "block", "basic") == "bottleneck" else BasicBlock
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        model = ResNet(block, list(config.blocks), num_classes=10).to(
            memory_format=torch.channels_last
        )
        optimizer = adamw(list(model.parameters()), 1e-5)  # as training steps
        batch = min(config.batch_size, MEASURE_BATCH)
        x = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), generator=generator)

        def step(bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return time.perf_counter() - start

        start = time.perf_counter()
        warm32, warm16 = step(False), step(True)  # warm-up: allocations, kernel selection
        if warm16 > EMULATED_BF16 * warm32:
            return warm32 / warm16
        times = {False: [], True: []}
        for _ in range(MEASURE_ROUNDS):
            for bf16 in (False, True):
                times[bf16].append(step(bf16))
            if time.perf_counter() - start > MEASURE_BUDGET_S:
                break
        return min(times[False]) / min(times[True])
    finally:
        torch.set_num_threads(previous)


def autocast(runtime: Runtime) -> torch.autocast:
    """The autocast context Lightning uses for the run's precision (disabled for 32-true), for
    work done outside Lightning in the same numerics, such as caching features."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(runtime.precision)
    return torch.autocast(runtime.accelerator, dtype=dtype, enabled=dtype is not None)


def apply_runtime(runtime: Runtime) -> None:
    """Set torch's thread pool so training threads and loader workers do not share cores."""
    torch.set_num_threads(runtime.torch_threads)
