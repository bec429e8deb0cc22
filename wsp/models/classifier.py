"""The LightningModule for every training task: a timm backbone and a linear head.

Pretraining feeds soft targets (normalised k-hot hashtag vectors); fine-tuning feeds class indices;
both go through the same loss and the same label-set top-k metrics. Only plain values go into the
hyperparameters (checkpoints load with weights_only=True).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torchmetrics
from timm.optim import param_groups_weight_decay
from torch import nn

from wsp.config import ConfigError
from wsp.models.backbones import create_backbone
from wsp.models.losses import as_distribution, classification_loss, topk_hits
from wsp.utils.schedule import lr_multiplier, peak_lr


class Share(torchmetrics.Metric):
    """100 x hits / images over a validation pass, both summed over the ranks (the val loaders deal every
    image to one rank, unpadded): a ratio of sums, not a mean of the ranks' means. Logged as the metric
    itself, Lightning leaves syncing it to torchmetrics (at `compute`) and resets it after each pass."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("hits", "images"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, hits: torch.Tensor) -> None:
        self.hits += hits.sum()
        self.images += len(hits)

    def compute(self) -> torch.Tensor:
        return 100 * self.hits / self.images.clamp(min=1)


class Count(torchmetrics.Metric):
    """A count over a validation pass, summed over the ranks (as `Share`)."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, count: torch.Tensor | int) -> None:
        self.total += count

    def compute(self) -> torch.Tensor:
        return self.total


class Classifier(pl.LightningModule):
    def __init__(self, model_name: str, num_classes: int, optim: dict, loss: str = "softmax",
                 model_kwargs: dict | None = None, channels_last: bool = True,
                 nonfinite_loss: str = "stop", compile: bool = False,
                 grad_checkpointing: bool = False, schedule_images: int | None = None):  # fmt: skip
        """`schedule_images`: the length of training that the lr schedule spans, in images (default: the
        trainer's max_steps x the global batch)."""
        super().__init__()
        self.save_hyperparameters()
        self.backbone = create_backbone(model_name, **(model_kwargs or {}))
        if grad_checkpointing:  # recompute activations in backward: the largest models at full batch
            self.backbone.set_grad_checkpointing(True)
        if compile:  # compiles the forward in place, so state_dict keys (checkpoints, export) stay plain
            self.backbone.compile()
        self.head = nn.Linear(self.backbone.num_features, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        if channels_last:  # faster convolutions on CPU and on tensor cores
            self.to(memory_format=torch.channels_last)
        self.skipped_steps = 0
        # top-1/top-5 and the images counted, each val image once; with duplicates listed (data.duplicates)
        # the paper's lower bound, which counts each listed image wrong
        self.val_metrics = nn.ModuleDict({"top1": Share(), "top5": Share(), "images": Count(),
                                          "top1_lower_bound": Share(), "duplicates_listed": Count()})  # fmt: skip
        # Images processed since the start of training, over every layout a run was resumed on: the lr
        # schedule's clock, so a run resumed on more or fewer devices goes on where it stopped.
        self.images_processed = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(images))

    def _split_batch(self, batch):
        images, targets, *rest = batch
        skipped = int(rest[0]) if rest else 0
        return images, as_distribution(targets, self.hparams.num_classes), skipped

    def training_step(self, batch, batch_idx):
        self.images_processed += self.trainer.datamodule.batch_size * self.trainer.world_size
        images, target, skipped = self._split_batch(batch)
        # unreadable images dropped from the batches, summed over the epoch and the ranks as
        # val/skipped_samples is: one pass's count, the one data.max_unreadable caps
        self.log("train/skipped_samples", float(skipped), on_step=False, on_epoch=True, reduce_fx="sum",
                 sync_dist=True, batch_size=len(images))  # fmt: skip
        if not len(images):  # every image of the batch was unreadable
            # A zero loss through every parameter: this rank still runs backward, so under DDP the
            # gradients are all-reduced as on every step (its share zero) and the ranks step together;
            # returning None would skip backward here alone and hang the others in their all-reduce.
            return torch.stack([p.sum() for p in self.parameters() if p.requires_grad]).sum() * 0.0
        loss = classification_loss(self.hparams.loss, self(images), target)
        if not torch.isfinite(loss):
            if self.hparams.nonfinite_loss == "stop":
                raise FloatingPointError(
                    f"training loss is {loss.item()} at step {self.global_step}; lower optim.base_lr, or set "
                    "task.nonfinite_loss=skip to skip such steps"
                )
            self.skipped_steps += 1  # returning None makes Lightning skip this optimizer step
            self.log("train/skipped_steps", float(self.skipped_steps), batch_size=len(images))
            return None
        self.log_dict({
            "train/loss": loss,
            "train/lr": self.optimizers().param_groups[0]["lr"],
        }, batch_size=len(images))  # fmt: skip
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx):
        images, target, skipped = self._split_batch(batch)
        self.log(
            "val/skipped_samples", float(skipped), reduce_fx="sum", sync_dist=True, batch_size=len(images)
        )
        listed = getattr(self.trainer.datamodule, "listed", None)
        if len(images):  # (a batch of only unreadable images has none)
            logits = self(images)
            top1, top5 = topk_hits(logits, target, 1), topk_hits(logits, target, 5)
            for name, hits in (("top1", top1), ("top5", top5)):
                self.val_metrics[name].update(hits)
            self.val_metrics["images"].update(len(images))
            if listed is not None:  # transfer batches carry the images' indices in their split
                listed = listed[batch[3].cpu()].to(self.device)
                self.val_metrics["top1_lower_bound"].update(top1 * ~listed)
                self.val_metrics["duplicates_listed"].update(listed.sum())
            loss = classification_loss(self.hparams.loss, logits, target)
        else:  # weighs nothing in the mean, and every rank logs the same keys, as syncing them needs
            loss = torch.zeros((), device=self.device)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(images))
        # the metrics themselves, logged on every batch of every rank: Lightning computes each at the
        # pass's end, where torchmetrics sums it over the ranks, and resets it
        names = ["top1", "top5", "images"]
        if listed is not None:
            names += ["top1_lower_bound", "duplicates_listed"]
        for name in names:
            self.log(f"val/{name}", self.val_metrics[name], prog_bar=True)

    def configure_optimizers(self):
        o = self.hparams.optim
        peak = peak_lr(o["base_lr"], self.global_batch_size())
        # Goyal et al.'s recipe, which the paper follows, decays weights only: BatchNorm and biases are
        # exempt unless optim.decay_norm_and_bias
        groups = param_groups_weight_decay(
            self, o["weight_decay"], weight_decay_exclude_1d=not o["decay_norm_and_bias"]
        )
        optimizer = torch.optim.SGD(groups, lr=peak, momentum=o["momentum"], nesterov=o["nesterov"])
        total = self.hparams.schedule_images or self.trainer.max_steps * self.global_batch_size()
        warmup = round(o["warmup_fraction"] * total)
        start = min(1.0, o["base_lr"] / peak)  # warm up from base_lr, as in Goyal et al.

        def multiplier(_step: int) -> float:  # by images processed, whatever the batch was when
            return lr_multiplier(self.images_processed, total=total, warmup=warmup, warmup_start=start,
                                 schedule=o["schedule"], halvings=o["halvings"])  # fmt: skip

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        # A resume restores the checkpoint's lr, initial_lr and base_lrs: its peak was for its global batch.
        peak = peak_lr(self.hparams.optim["base_lr"], self.global_batch_size())
        scheduler = self.lr_schedulers()
        scheduler.base_lrs = [peak] * len(scheduler.optimizer.param_groups)
        for group, multiplier in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
            group["initial_lr"], group["lr"] = peak, peak * multiplier(scheduler.last_epoch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["images_processed"] = self.images_processed

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "images_processed" not in checkpoint:  # the lr schedule's clock: unknowable without it
            source = f"ckpt_path={self._trainer.ckpt_path}" if self._trainer else "the checkpoint"
            raise ConfigError(
                f"{source}: the checkpoint lacks images_processed (written by another program or an older wsp); "
                "it cannot be resumed, only its weights loaded (backbone.weights)"
            )
        self.images_processed = checkpoint["images_processed"]

    def global_batch_size(self) -> int:
        datamodule = self.trainer.datamodule
        return datamodule.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches
