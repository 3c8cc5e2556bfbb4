"""The LightningModule: training/validation/test steps, accuracy and loss per split, AdamW over
the trainable parameters only, and ReduceLROnPlateau on val_loss. Batches arrive as uint8
pixels (normalised here, after the copy to the device) or as cached frozen-stage features.

    python -c "from resnet_exp.model.classifier import ResNetClassifier; from resnet_exp.model.netspec import NetSpec; \
print(ResNetClassifier(NetSpec('basic', (2, 2, 2, 2), ('a', 'b'), 64, 3), 3e-5))"
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from resnet_exp import schema as S
from resnet_exp.data.images import normalise
from resnet_exp.model.metrics import ExactAccuracy
from resnet_exp.model.netspec import NetSpec
from resnet_exp.model.network import InitialWeights, build_resnet, count_parameters

LR_FACTOR = 0.5  # halve the learning rate ...
LR_PATIENCE = 3  # ... after 3 epochs without a val_loss improvement


def adamw(parameters: list[torch.nn.Parameter], lr: float) -> torch.optim.AdamW:
    """AdamW as a single fused kernel where torch has one for the parameters' device (CPU, CUDA,
    MPS): the same update as the per-tensor loop, 6.6x faster on a 2-core EPYC for ResNet18's
    stages 3-4 (16 against 108 ms a step), which is a third of a step when stages 1-3 are frozen
    or cached."""
    device = parameters[0].device.type if parameters else "cpu"
    fused = device in ("cpu", "cuda", "mps")
    return torch.optim.AdamW(parameters, lr=lr, fused=fused or None)


class ResNetClassifier(pl.LightningModule):
    """A StagedResNet trained as an image classifier. The checkpoint holds the NetSpec (as
    `NetSpec.to_dict()` under hparams[schema.CKPT_NETSPEC]) and the run's config params, so the
    file alone rebuilds the network, with or without Lightning (inference.py)."""

    def __init__(
        self,
        spec: NetSpec | dict,
        learning_rate: float,
        config_params: dict[str, str] | None = None,
        initial: InitialWeights | None = None,
    ):
        super().__init__()
        # load_from_checkpoint passes the stored hparams back as arguments: the spec as a dict.
        self.spec = spec if isinstance(spec, NetSpec) else NetSpec.from_dict(spec)
        # Plain dicts, lists and numbers only, so that torch.load(weights_only=True) reads them.
        self.save_hyperparameters(
            {
                S.CKPT_NETSPEC: self.spec.to_dict(),
                "learning_rate": learning_rate,
                "config_params": config_params,
            }
        )
        self.model = build_resnet(self.spec, initial)
        self.class_names = list(self.spec.class_names)
        # One metric object per split (keyed by metric name), so their states never mix.
        self.accuracy = torch.nn.ModuleDict(
            {acc: ExactAccuracy() for _, acc in S.SPLIT_METRICS.values()}
        )
        # How this run feeds the network (set by train.py, not part of the checkpoint: a loaded
        # checkpoint is the whole network, fed normalised images).
        self.input_is_features = False  # batches hold model.prefix() outputs, not pixels
        self.channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised images (N, 3, H, W): the whole network, whatever was cached."""
        return self.model(x)

    def use_channels_last(self) -> None:
        """Keep weights and inputs NHWC in memory (see hardware.Runtime.channels_last)."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        return network_input(x, self.channels_last), y

    def parameter_counts(self) -> tuple[int, int]:
        return count_parameters(self.model)

    def _step(self, batch: Any, split: str) -> torch.Tensor:
        x, y = batch
        logits = self.model.forward_after_prefix(x) if self.input_is_features else self(x)
        loss = F.cross_entropy(logits, y)
        loss_name, acc_name = S.SPLIT_METRICS[split]
        self.accuracy[acc_name](logits, y)
        if split == S.TEST:  # kept for the run's diagnostics (resnet_exp/tracking/diagnostics.py)
            self.test_outputs.append((logits.detach().float().cpu(), y.detach().cpu()))
        per_step = split == S.TRAIN  # validation and test report epoch values only
        log = dict(on_step=per_step, on_epoch=True, batch_size=len(y), prog_bar=True)
        self.log(loss_name, loss, **log)
        self.log(acc_name, self.accuracy[acc_name], **log)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, S.TRAIN)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, S.VAL)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, S.TEST)

    def on_test_epoch_start(self) -> None:
        # (logits, targets) per test batch, in loader order: one test epoch's worth
        self.test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_epoch_start(self) -> None:
        # The rate in force during this epoch; the scheduler steps after validation.
        # As a float64 tensor: Lightning turns a Python float into float32, and the UI would
        # show 3e-5 as 0.000029999999242136255 (MPS has no float64).
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        lr = torch.tensor(self.optimizers().param_groups[0]["lr"], dtype=dtype)
        self.log(S.LR, lr, on_step=False, on_epoch=True)

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        # ReduceLROnPlateau steps when validation ends, before last.ckpt is written
        # (training.callbacks.PlateauStepBeforeCheckpoint); Lightning's later step would be a
        # second one.
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            super().lr_scheduler_step(scheduler, metric)

    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = adamw(trainable, self.hparams.learning_rate)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=LR_FACTOR, patience=LR_PATIENCE
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": S.MONITOR, "interval": "epoch"},
        }


def network_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch as the network takes it, on its device: pixels travel as uint8 (4x less to copy)
    and are normalised here; cached features travel as fp16 and compute in the run's precision."""
    x = normalise(x) if x.dtype == torch.uint8 else x.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
