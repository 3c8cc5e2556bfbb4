"""How much does freezing stages speed up a training step? Baseline: freeze_blocks=0, measured
in the same process with the same model, batch and threads. Compute only (random tensors), so
the ratios isolate what freezing saves: the backward pass and optimizer work of frozen stages.

    python benchmarks/freeze_speed.py --image-size 112 --blocks 2,2,2,2 --steps 10

Prints a table and, last, one JSON line with images/s and the speed-up per freeze_blocks.
"""

from __future__ import annotations

import json
import time

import click
import torch
import torch.nn.functional as F

from resnet_exp.config import NUM_STAGES, parse_blocks
from resnet_exp.hardware import usable_cores
from resnet_exp.model import build_resnet

NUM_CLASSES = 90  # the Animals head


def images_per_second(blocks: tuple[int, ...], freeze: int, image_size: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_resnet(blocks, NUM_CLASSES, freeze).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-5)
    x = torch.randn(batch, 3, image_size, image_size)
    y = torch.randint(0, NUM_CLASSES, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator and kernel selection
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


@click.command()
@click.option("--image-size", default=112, show_default=True)
@click.option("--blocks", default="2,2,2,2", show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--steps", default=10, show_default=True, help="timed steps per configuration")
def main(image_size: int, blocks: str, batch_size: int, steps: int) -> None:
    torch.set_num_threads(usable_cores())
    depth = parse_blocks(blocks)
    rates = {k: images_per_second(depth, k, image_size, batch_size, steps) for k in range(NUM_STAGES + 1)}
    base = rates[0]
    print(f"blocks={blocks} image_size={image_size} batch={batch_size} threads={torch.get_num_threads()}")
    print(f"{'freeze_blocks':>13} {'images/s':>9} {'vs freeze 0':>11}")
    for k, rate in rates.items():
        print(f"{k:>13} {rate:>9.1f} {rate / base:>10.2f}x")
    print(json.dumps({"benchmark": "freeze_speed", "blocks": blocks, "image_size": image_size,
                      "images_per_s": {k: round(v, 2) for k, v in rates.items()},
                      "speedup_vs_freeze0": {k: round(v / base, 2) for k, v in rates.items()}}))


if __name__ == "__main__":
    main()
