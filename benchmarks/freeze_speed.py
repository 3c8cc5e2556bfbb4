"""How much does freezing stages speed up a training step? Baseline: freeze_blocks=0, measured
in the same process with the same model, batch and threads. Compute only (random tensors, the
project's precision and memory format, no feature cache), so the ratios isolate what freezing
saves: the backward pass and optimizer work of frozen stages.

    python benchmarks/freeze_speed.py --image-size 112 --blocks 2,2,2,2 --steps 10

Prints a table and, last, one JSON line with images/s and the speed-up per freeze_blocks.
"""

from __future__ import annotations

import json

import click
from harness import compute_only

from resnet_exp.config import NUM_STAGES, TrainConfig, parse_blocks
from resnet_exp.hardware import resolve_runtime

NUM_CLASSES = 90  # the Animals head


@click.command()
@click.option("--image-size", default=112, show_default=True)
@click.option("--blocks", default="2,2,2,2", show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--steps", default=10, show_default=True, help="timed steps per configuration")
@click.option("--precision", default="auto", show_default=True)
def main(image_size: int, blocks: str, batch_size: int, steps: int, precision: str) -> None:
    config = TrainConfig(
        data="demo",
        weights="none",
        blocks=parse_blocks(blocks),
        image_size=image_size,
        batch_size=batch_size,
        precision=precision,
    )
    rates = {
        k: compute_only(config.replace(freeze_blocks=k), steps, NUM_CLASSES)
        for k in range(NUM_STAGES + 1)
    }
    base = rates[0]
    runtime = resolve_runtime(config)
    print(
        f"blocks={blocks} image_size={image_size} batch={batch_size} threads={runtime.torch_threads} "
        f"precision={runtime.precision} channels_last={runtime.channels_last}"
    )
    print(f"{'freeze_blocks':>13} {'images/s':>9} {'vs freeze 0':>11}")
    for k, rate in rates.items():
        print(f"{k:>13} {rate:>9.1f} {rate / base:>10.2f}x")
    print(
        json.dumps(
            {
                "benchmark": "freeze_speed",
                "blocks": blocks,
                "image_size": image_size,
                "precision": runtime.precision,
                "images_per_s": {k: round(v, 2) for k, v in rates.items()},
                "speedup_vs_freeze0": {k: round(v / base, 2) for k, v in rates.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
