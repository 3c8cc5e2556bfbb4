"""How close does the project's training come to the compute-only bound, and how much faster is
it than a seed-style pipeline? All measured in one process, same threads, same model.

- compute only: training steps on random tensors already in memory (the project's model,
  precision and memory format; no data loading, no feature cache);
- project: `resnet_exp.training.train.train` on a folder of JPEGs (image store, and with frozen stages
  once with `feature_cache=off` and once with `auto`); its own `train_images_per_s`;
- seed-style baseline: see harness.py.
Images/s are the mean of the epochs after the first. This CPU's speed drifts by about 10% over
minutes, so compute only is measured before and after the trainings and averaged. Ratios:
project / compute only (>= 0.95 is the target with feature_cache=off: the data path costs
under 5%) and project / baseline.

    python benchmarks/train_throughput.py --image-size 112 --freeze-blocks 0 --epochs 3

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from harness import (
    bench_config,
    compute_only,
    jpeg_folder,
    print_table,
    project_run,
    scratch_space,
    seed_style_run,
    steady,
    work_dir_option,
)

from resnet_exp.config import parse_blocks
from resnet_exp.hardware import resolve_runtime


@click.command()
@click.option("--image-size", default=112, show_default=True)
@click.option("--blocks", default="2,2,2,2", show_default=True)
@click.option("--freeze-blocks", default=0, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--epochs", default=3, show_default=True, help="per training; the first is not timed")
@click.option(
    "--images-per-class", default=32, show_default=True, help="JPEGs per class (10 classes)"
)
@click.option("--source-size", default=320, show_default=True, help="pixels of the generated JPEGs")
@click.option("--steps", default=8, show_default=True, help="timed compute-only steps")
@click.option("--precision", default="auto", show_default=True, help="project and compute only")
@click.option("--baseline-precision", default="32-true", show_default=True)
@work_dir_option
def main(
    image_size: int,
    blocks: str,
    freeze_blocks: int,
    batch_size: int,
    epochs: int,
    images_per_class: int,
    source_size: int,
    steps: int,
    precision: str,
    baseline_precision: str,
    work_dir: Path,
) -> None:
    folder = jpeg_folder(work_dir, images_per_class, source_size)
    with scratch_space() as scratch:
        config = bench_config(
            folder,
            scratch,
            image_size=image_size,
            blocks=parse_blocks(blocks),
            freeze_blocks=freeze_blocks,
            batch_size=batch_size,
            max_epochs=epochs,
            precision=precision,
        )
        runtime = resolve_runtime(config)
        bounds = [compute_only(config, steps)]
        uncached = project_run(config.replace(feature_cache="off"))
        rates = {"project": steady(uncached.images_per_s)}
        if freeze_blocks:
            cached = project_run(config)
            rates[f"project, feature cache {cached.feature_cache}"] = steady(cached.images_per_s)
        rates["seed-style baseline"] = steady(
            seed_style_run(config, baseline_precision, validate=False).images_per_s
        )
        bounds.append(compute_only(config, steps))
        rates = {"compute only": sum(bounds) / len(bounds), **rates}

    base, bound = rates["seed-style baseline"], rates["compute only"]
    print(
        f"{folder.name} -> {image_size} px, blocks={blocks}, freeze_blocks={freeze_blocks}, batch={batch_size}, "
        f"precision={runtime.precision} (baseline {baseline_precision}), threads={runtime.torch_threads}, "
        f"workers={runtime.num_workers}, channels_last={runtime.channels_last}; "
        f"image store built in {uncached.store_s:.1f} s; compute only before/after: "
        f"{bounds[0]:.1f}/{bounds[1]:.1f} images/s"
    )
    print_table(
        [
            {"path": k, "images/s": v, "vs compute only": v / bound, "vs baseline": v / base}
            for k, v in rates.items()
        ]
    )
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "image_size": image_size,
                "blocks": blocks,
                "freeze_blocks": freeze_blocks,
                "precision": runtime.precision,
                "baseline_precision": baseline_precision,
                "store_build_s": round(uncached.store_s, 2),
                "images_per_s": {k: round(v, 2) for k, v in rates.items()},
                "compute_only_before_after": [round(b, 2) for b in bounds],
                "project_vs_compute_only": round(rates["project"] / bound, 3),
                "project_vs_baseline": {
                    k: round(v / base, 2) for k, v in rates.items() if k.startswith("project")
                },
            }
        )
    )


if __name__ == "__main__":
    main()
