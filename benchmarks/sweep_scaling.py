"""What does the Ray executor cost? One small grid (2 configurations x 2 seeds by default) swept
three times, each into a fresh tracking store: executor=local (the serial loop), executor=ray
with one trial at a time holding every core (what the local loop has), and executor=ray with two
trials at once of half the cores each. The image store is built once beforehand, so every
sweep measures training and orchestration only.

Ray's overhead per trial = (ray@1 wall - local wall) / trials, reported as a share of the mean
trial (local wall / trials). Target: under 5% of a 3-epoch 112 px trial. It is split into a
marginal part per trial, which is what grows with a study's size, and a fixed part per sweep,
which a 45-run study pays once. Marginal: from the child runs' own start and end times, each
cell's time in its run under Ray minus the same cell's under the local loop, over the cells that
were not the first in their process under either (a worker's first trial loads the splits, which
the local loop had from its preflight), plus the difference in the gaps between runs. Fixed:
the rest (starting Ray, each worker's imports and first trial, stopping). It also reports the
CPU that the trainings had to share while they ran: the CPU time of every process but those that
trained (Ray's own processes, and the driver running Tune's controller), as a share of the
machine's cores. The ray@2 line shows what two concurrent trials buy on this machine (on 2
cores: little, the cores are already busy).

On a CUDA GPU it also packs 1, 2 and 4 trials per GPU (trial_resources gpu=1, 0.5, 0.25) and
reports the GPU's mean utilisation over each sweep (nvidia-ml-py).

    python benchmarks/sweep_scaling.py --image-size 112 --epochs 3

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import click
import psutil
import torch
from harness import bench_config, jpeg_folder, print_table, scratch_space, work_dir_option
from mlflow import MlflowClient

from resnet_exp import schema as S
from resnet_exp.data.splits import load_splits
from resnet_exp.data.store import open_image_store
from resnet_exp.hardware import usable_cores
from resnet_exp.sweep.grid import SweepGrid
from resnet_exp.tracking import timing

STUDY_TRIALS = 45  # 5 freeze_blocks x 3 block lists x 3 seeds: the study the README describes
PHASES = (*S.PHASE_TIMES, S.RUN_TIME)  # the child runs' phases, compared Ray against local


@click.command()
@click.option("--image-size", default=112, show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option(
    "--freeze", default="3,4", show_default=True, help="freeze_blocks values (configurations)"
)
@click.option("--blocks", default="1,1,1,1", show_default=True)
@click.option("--seeds", default="2", show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--limit-batches", default=0, show_default=True, help="per split and epoch (0: all)")
@click.option(
    "--images-per-class", default=30, show_default=True, help="JPEGs per class (10 classes)"
)
@click.option("--source-size", default=160, show_default=True, help="pixels of the generated JPEGs")
@click.option(
    "--precision", default="32-true", show_default=True, help="fixed: no measurement in the timing"
)
@work_dir_option
def main(
    image_size: int,
    epochs: int,
    freeze: str,
    blocks: str,
    seeds: str,
    batch_size: int,
    limit_batches: int,
    images_per_class: int,
    source_size: int,
    precision: str,
    work_dir: Path,
) -> None:
    from resnet_exp.sweep.run import run_sweep

    folder = jpeg_folder(work_dir, images_per_class, source_size)
    cores = usable_cores()
    modes = {
        "local": {"executor": "local"},
        "ray@1": {
            "executor": "ray",
            "trial_resources": f"cpu={cores}",
            "max_concurrent_trials": "1",
        },
        "ray@2": {
            "executor": "ray",
            "trial_resources": f"cpu={max(1, cores // 2)}",
            "max_concurrent_trials": "2",
        },
    }
    if torch.cuda.is_available():
        for pack in (1, 2, 4):
            modes[f"gpu x{pack}"] = {
                "executor": "ray",
                "max_concurrent_trials": str(pack),
                "trial_resources": f"cpu={max(1, cores // pack)},gpu={1 / pack:g}",
            }
    grid_text = dict(freeze_blocks=freeze, blocks=blocks, seeds=seeds)
    rows, walls, timelines = [], {}, {}
    with scratch_space() as shared:
        data_dir = shared / "data"
        base = bench_config(
            folder,
            shared,
            image_size=image_size,
            batch_size=batch_size,
            max_epochs=epochs,
            limit_batches=limit_batches,
            precision=precision,
            registered_model_name="none",
            early_stopping_patience=epochs,
            data_dir=str(data_dir),
        )
        open_image_store(load_splits(base), base)  # built once: no sweep pays for it
        for mode, options in modes.items():
            with scratch_space() as scratch:  # a fresh store: nothing is skipped
                config = base.replace(output_dir=str(scratch / "results"))
                with gpu_utilisation() as utilisation, sweep_processes_cpu() as cpu_samples:
                    start = time.time()
                    result = run_sweep(SweepGrid(**grid_text, **options), config)
                    walls[mode] = time.time() - start
                    timelines[mode] = _timeline(result)
                trained = result.count("trained")
                assert trained == result.grid_size, (
                    f"{mode}: {trained} of {result.grid_size} cells trained"
                )
                row = {
                    "mode": mode,
                    "trials": trained,
                    "wall_s": round(walls[mode], 1),
                    "per_trial_s": round(walls[mode] / trained, 1),
                    "in_run_s": round(timelines[mode].in_run, 2),
                    "between_runs_s": round(timelines[mode].gap, 2),
                }
                row["others_cpu_pct"] = round(
                    100 * others_cpu_share(timelines[mode], cpu_samples, cores), 1
                )
                if utilisation:
                    row["gpu_util_pct"] = round(sum(utilisation) / len(utilisation), 1)
                rows.append(row)
    trials = rows[0]["trials"]
    trial_s = walls["local"] / trials
    overhead = (walls["ray@1"] - walls["local"]) / trials
    ray, local = timelines["ray@1"], timelines["local"]
    # Marginal: what each further trial adds, from the cells that were not the first in their
    # process under either executor, each paired with itself (a worker's first trial pays once
    # for loading the splits, which the local loop had from its preflight), plus the gaps.
    # Fixed: the rest, once per sweep (starting Ray, each worker's first trial, stopping).
    later = [name for name in ray.durations if name not in ray.firsts | local.firsts]
    in_run = sum(ray.durations[name] - local.durations[name] for name in later) / len(later)
    gap = ray.gap - local.gap
    phases = {name: ray.phases[name] - local.phases[name] for name in PHASES}
    marginal = in_run + gap  # per trial
    fixed = (overhead - marginal) * trials  # per sweep
    print(
        f"{trials} trials of {image_size} px x {epochs} epochs, {cores} cores, precision {precision}"
    )
    print_table(rows)
    print(
        f"Ray's overhead per trial: {overhead:.1f} s = {overhead / trial_s:.1%} of a {trial_s:.1f} s trial "
        f"(target < 5%); 2 concurrent trials: {walls['local'] / walls['ray@2']:.2f}x the local loop's speed"
    )
    print(
        f"  of which fixed per sweep: {fixed:.1f} s (start, each worker's imports and first "
        "trial, stop), and marginal per "
        f"trial: {marginal:.2f} s = {marginal / trial_s:.1%} of a trial; in a {STUDY_TRIALS}-trial study: "
        f"{(fixed / STUDY_TRIALS + marginal) / trial_s:.1%} per trial"
    )
    print(
        f"  the marginal part: {in_run:+.2f} s inside each child run ({len(later)} cells paired, each "
        f"worker's first trial left out), {gap:+.2f} s in each gap between two"
    )
    print(
        "  inside the runs, per phase: "
        + ", ".join(
            f"{name} {seconds:+.2f} s" for name, seconds in phases.items() if abs(seconds) >= 0.01
        )
    )
    others = {r["mode"]: r["others_cpu_pct"] for r in rows}
    print(
        f"  Ray's own processes and the driver used {others['ray@1']:.1f}% of the {cores} cores while one trial "
        f"at a time ran (the local sweep's other processes: {others['local']:.1f}%)"
    )
    print(
        json.dumps(
            {
                "benchmark": "sweep_scaling",
                "image_size": image_size,
                "epochs": epochs,
                "trials": trials,
                "cores": cores,
                "wall_s": {m: round(w, 1) for m, w in walls.items()},
                "trial_s": round(trial_s, 1),
                "ray_overhead_per_trial_s": round(overhead, 2),
                "ray_overhead_share": round(overhead / trial_s, 3),
                "ray_fixed_per_sweep_s": round(fixed, 1),
                "ray_marginal_per_trial_s": round(marginal, 2),
                "ray_marginal_share": round(marginal / trial_s, 3),
                "ray_in_run_s": round(in_run, 2),
                "ray_gap_s": round(gap, 2),
                "ray_phase_s": {name: round(seconds, 2) for name, seconds in phases.items()},
                "others_cpu_pct": others,
                "gpu_util_pct": {r["mode"]: r["gpu_util_pct"] for r in rows if "gpu_util_pct" in r},
            }
        )
    )


class Timeline(NamedTuple):
    durations: dict[str, float]  # seconds each child run (by run name: its cell) was open
    firsts: set[str]  # the cells that were the first trained in their process
    gap: float  # mean seconds from one child's end to the next one's start (negative when concurrent)
    first: float  # when the first child run started (Unix time)
    last: float  # when the last child run ended
    trainers: set[int]  # pids of the processes that trained the child runs
    phases: dict[str, float]  # mean seconds per phase (PHASES) of the child runs

    @property
    def in_run(self) -> float:
        """Mean seconds a child run was open."""
        return sum(self.durations.values()) / len(self.durations)


def _timeline(result) -> Timeline:
    """The sweep's timeline from its child runs' own start and end times, as MLflow stored them."""
    client = MlflowClient()
    runs = sorted(
        (client.get_run(o.run_id) for o in result.outcomes), key=lambda r: r.info.start_time
    )
    infos = [r.info for r in runs]
    gaps = [(b.start_time - a.end_time) / 1000 for a, b in zip(infos, infos[1:])]
    first_cell_of: dict[int, str] = {}  # trainer pid -> its first cell (runs are in start order)
    for run in runs:
        first_cell_of.setdefault(int(run.data.tags[S.TAG_PROCESS].split()[1]), run.info.run_name)
    return Timeline(
        durations={r.run_name: (r.end_time - r.start_time) / 1000 for r in infos},
        firsts=set(first_cell_of.values()),
        gap=sum(gaps) / max(1, len(gaps)),
        first=infos[0].start_time / 1000,
        last=max(r.end_time for r in infos) / 1000,
        trainers=set(first_cell_of),
        phases={
            name: sum(timing.phase_times(r.info.run_id).get(name, 0.0) for r in runs) / len(runs)
            for name in PHASES
        },
    )


@contextmanager
def sweep_processes_cpu(interval_s: float = 0.5) -> Iterator[dict[int, list[tuple[float, float]]]]:
    """CPU seconds (user + system) of this process and every process it started, directly or
    not, sampled while the block runs: pid -> [(time, CPU seconds so far)]."""
    samples: dict[int, list[tuple[float, float]]] = {}
    me = psutil.Process()

    def record() -> None:
        now = time.time()
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:  # ended since it was listed
                continue
            samples.setdefault(process.pid, []).append((now, times.user + times.system))

    with sampling(record, interval_s):
        yield samples


def others_cpu_share(
    timeline: Timeline, samples: dict[int, list[tuple[float, float]]], cores: int
) -> float:
    """The share of the cores that every process but those that trained (Ray's own, and the
    driver under Ray: Tune's controller) used while the trials ran."""
    used = sum(
        cpu_between(series, timeline.first, timeline.last)
        for pid, series in samples.items()
        if pid not in timeline.trainers
    )
    return used / cores / (timeline.last - timeline.first)


def cpu_between(series: list[tuple[float, float]], start: float, end: float) -> float:
    """CPU seconds a process used from `start` to `end`, from its samples (0 before its first)."""

    def at(moment: float) -> float:
        return max((cpu for t, cpu in series if t <= moment), default=0.0)

    return at(end) - at(start)


@contextmanager
def gpu_utilisation(interval_s: float = 0.5) -> Iterator[list[float]]:
    """Samples of GPU 0's utilisation (%) while the block runs; empty without a CUDA GPU."""
    samples: list[float] = []
    if not torch.cuda.is_available():
        yield samples
        return
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    try:
        with sampling(
            lambda: samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
            interval_s,
        ):
            yield samples
    finally:
        pynvml.nvmlShutdown()


@contextmanager
def sampling(record: Callable[[], None], interval_s: float) -> Iterator[None]:
    """Call `record` at once and then every `interval_s` seconds, in a thread, while the block runs."""
    done = threading.Event()

    def loop() -> None:
        record()
        while not done.wait(interval_s):
            record()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


if __name__ == "__main__":
    main()
