"""Metric computations for training. (Metric *names* live in schema.py.)

    python -c "import torch; from resnet_exp.model.metrics import ExactAccuracy; m = ExactAccuracy(); \
m.update(torch.eye(3)[[0, 1, 1]], torch.tensor([0, 1, 2])); print(m.compute().item())"
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class ExactAccuracy(Metric):
    """Correct predictions over all predictions, as an exact fraction in double precision.

    torchmetrics' accuracy divides in float32, so 34 of 80 is stored as 0.42500001192092896;
    counting in integers and dividing in float64 stores 0.425, the number the UI should show."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.correct += (logits.argmax(dim=1) == target).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        # On the CPU: Apple's MPS has no float64.
        return self.correct.cpu().double() / self.total.cpu()
