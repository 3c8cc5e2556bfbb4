"""On a CUDA GPU: how close does the project's end-to-end training come to the compute-only
bound? ResNet18 at 224 px, bf16 mixed precision, channels_last (what `precision=auto` and the
runtime pick on a recent GPU), a batch large enough to keep the GPU busy; the image store is
built from a folder of realistic JPEGs first (timed apart). Sized to finish in under 5 minutes
on one H100 (about 1 minute of that is making the JPEGs and the store on one CPU core).

    python benchmarks/gpu_throughput.py

Exits with status 2 without a GPU; `--allow-cpu` runs the same measurements on the CPU, at
whatever size is given, to check the script itself. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import torch
from harness import (
    bench_config,
    compute_only,
    jpeg_folder,
    print_table,
    project_run,
    scratch_space,
    steady,
    work_dir_option,
)

from resnet_exp.hardware import resolve_runtime


@click.command()
@click.option("--image-size", default=224, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--epochs", default=8, show_default=True, help="the first is not timed")
@click.option(
    "--images-per-class", default=400, show_default=True, help="JPEGs per class (10 classes)"
)
@click.option("--source-size", default=320, show_default=True, help="pixels of the generated JPEGs")
@click.option("--steps", default=30, show_default=True, help="timed compute-only steps")
@click.option("--precision", default="bf16-mixed", show_default=True)
@click.option(
    "--allow-cpu", is_flag=True, help="run on the CPU when there is no GPU (a smoke test)"
)
@work_dir_option
def main(
    image_size: int,
    batch_size: int,
    epochs: int,
    images_per_class: int,
    source_size: int,
    steps: int,
    precision: str,
    allow_cpu: bool,
    work_dir: Path,
) -> None:
    if not torch.cuda.is_available() and not allow_cpu:
        click.echo(
            "gpu_throughput needs a CUDA GPU and found none (--allow-cpu runs it on the CPU)",
            err=True,
        )
        sys.exit(2)
    folder = jpeg_folder(work_dir, images_per_class, source_size)
    with scratch_space() as scratch:
        config = bench_config(
            folder,
            scratch,
            blocks=(2, 2, 2, 2),
            freeze_blocks=0,
            image_size=image_size,
            batch_size=batch_size,
            max_epochs=epochs,
            precision=precision,
        )
        runtime = resolve_runtime(config)
        bound = compute_only(config, steps)
        project = project_run(config)
    rate = steady(project.images_per_s)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"{device}: ResNet18, {folder.name} -> {image_size} px, batch={batch_size}, precision={runtime.precision}, "
        f"channels_last={runtime.channels_last}, workers={runtime.num_workers}; "
        f"image store built in {project.store_s:.1f} s"
    )
    print_table(
        [
            {"path": "compute only", "images/s": bound, "vs compute only": 1.0},
            {"path": "project end to end", "images/s": rate, "vs compute only": rate / bound},
        ]
    )
    print(
        json.dumps(
            {
                "benchmark": "gpu_throughput",
                "device": device,
                "image_size": image_size,
                "batch_size": batch_size,
                "precision": runtime.precision,
                "compute_only_images_per_s": round(bound, 1),
                "project_images_per_s": round(rate, 1),
                "ratio": round(rate / bound, 3),
                "store_build_s": round(project.store_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
