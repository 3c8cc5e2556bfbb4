"""How long does a freeze_blocks sweep take, against its compute bound and against a seed-style
pipeline? One seed, a few epochs, each configuration trained with validation every epoch and
tested at the end, on a folder of realistic JPEGs, in one process (same threads). The project
runs the real `resnet_exp.training.train.train` (MLflow, checkpoints, model logging and all), so its wall
time includes building the image store (once, in the first configuration) and computing cached
features (in each frozen one).

The compute bound of a cell is what no pipeline can skip: its trainable stages trained for the
epochs it ran and evaluated on validation and test, plus one forward pass of its frozen prefix
per image, timed on random tensors in the same process (harness.compute_bound). Target: the
sweep's wall time at most 1.15x the sum of its cells' bounds. The seed-style baseline is
described in harness.py.

    python benchmarks/sweep_time.py --image-size 112 --epochs 3

`--compare-uncached` also runs the project sweep with feature_cache=off, to show that the cache
changes the time and not the accuracy. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from harness import (
    bench_config,
    compute_bound,
    jpeg_folder,
    print_table,
    project_run,
    scratch_space,
    seed_style_run,
    steady,
    work_dir_option,
)

from resnet_exp.config import parse_blocks
from resnet_exp.data.splits import load_splits
from resnet_exp.hardware import resolve_runtime


@click.command()
@click.option("--image-size", default=112, show_default=True)
@click.option("--blocks", default="2,2,2,2", show_default=True)
@click.option(
    "--freeze", default="0,1,2,3,4", show_default=True, help="freeze_blocks values to sweep"
)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--limit-batches", default=0, show_default=True, help="per split and epoch (0: all)")
@click.option(
    "--images-per-class", default=50, show_default=True, help="JPEGs per class (10 classes)"
)
@click.option("--source-size", default=320, show_default=True, help="pixels of the generated JPEGs")
@click.option("--precision", default="auto", show_default=True, help="of the project")
@click.option("--baseline-precision", default="32-true", show_default=True)
@click.option(
    "--compare-uncached", is_flag=True, help="also sweep the project with feature_cache=off"
)
@click.option(
    "--bound-steps", default=5, show_default=True, help="timed steps per compute-bound measurement"
)
@work_dir_option
def main(
    image_size: int,
    blocks: str,
    freeze: str,
    batch_size: int,
    epochs: int,
    limit_batches: int,
    images_per_class: int,
    source_size: int,
    precision: str,
    baseline_precision: str,
    compare_uncached: bool,
    bound_steps: int,
    work_dir: Path,
) -> None:
    folder = jpeg_folder(work_dir, images_per_class, source_size)
    levels = [int(k) for k in freeze.split(",")]
    with scratch_space() as scratch:
        config = bench_config(
            folder,
            scratch,
            image_size=image_size,
            blocks=parse_blocks(blocks),
            batch_size=batch_size,
            max_epochs=epochs,
            limit_batches=limit_batches,
            precision=precision,
        )
        project = {k: project_run(config.replace(freeze_blocks=k)) for k in levels}
        sizes = _image_counts(config)
        bound = {
            k: compute_bound(
                config.replace(freeze_blocks=k), len(project[k].val_acc), sizes, bound_steps
            )
            for k in levels
        }
        uncached = {
            k: project_run(config.replace(freeze_blocks=k, feature_cache="off"))
            for k in levels
            if compare_uncached
        }
        baseline = {
            k: seed_style_run(config.replace(freeze_blocks=k), baseline_precision) for k in levels
        }

    rows = [_row(k, project[k], bound[k], baseline[k], uncached.get(k)) for k in levels]
    total_project = sum(r.wall_s for r in project.values())
    total_bound = sum(bound.values())
    total_baseline = sum(r.wall_s for r in baseline.values())
    runtime = resolve_runtime(config)
    print(
        f"{folder.name} -> {image_size} px, blocks={blocks}, {epochs} epochs, batch={batch_size}, "
        f"precision={runtime.precision} (baseline {baseline_precision}), threads={runtime.torch_threads}"
    )
    print_table(rows)
    print(
        f"whole sweep: project {total_project:.1f} s, compute bound {total_bound:.1f} s "
        f"({total_project / total_bound:.2f}x the bound; target <= 1.15x)"
    )
    print(
        f"against the seed-style baseline: {total_baseline:.1f} s, {total_baseline / total_project:.2f}x faster"
    )
    print(
        json.dumps(
            {
                "benchmark": "sweep_time",
                "image_size": image_size,
                "blocks": blocks,
                "epochs": epochs,
                "precision": runtime.precision,
                "baseline_precision": baseline_precision,
                "project_s": round(total_project, 2),
                "bound_s": round(total_bound, 2),
                "over_bound": round(total_project / total_bound, 2),
                "baseline_s": round(total_baseline, 2),
                "speedup": round(total_baseline / total_project, 2),
                "per_freeze": {
                    r["freeze_blocks"]: {k: v for k, v in r.items() if k != "freeze_blocks"}
                    for r in rows
                },
            }
        )
    )


def _image_counts(config) -> dict[str, int]:
    """Images per split as the project trains them (limit_batches caps each split)."""
    sizes = load_splits(config).sizes()
    if config.limit_batches:
        sizes = {
            name: min(n, config.limit_batches * config.batch_size) for name, n in sizes.items()
        }
    return sizes


def _row(k: int, project, bound: float, baseline, uncached) -> dict[str, object]:
    row = {
        "freeze_blocks": k,
        "feature_cache": project.feature_cache,
        "project_s": round(project.wall_s, 2),
        "bound_s": round(bound, 2),
        "over_bound": round(project.wall_s / bound, 2),
        "baseline_s": round(baseline.wall_s, 2),
        "speedup": round(baseline.wall_s / project.wall_s, 2),
        "epoch_speedup": round(steady(project.images_per_s) / steady(baseline.images_per_s), 1),
        "val_acc": round(project.val_acc[-1], 3),
        "baseline_val_acc": round(baseline.val_acc[-1], 3),
    }
    if uncached:
        row.update(
            {
                "uncached_s": round(uncached.wall_s, 2),
                "uncached_val_acc": round(uncached.val_acc[-1], 3),
            }
        )
    return row


if __name__ == "__main__":
    main()
