"""Training speed as metrics: images/s per device and in total, and the share of time spent waiting
for data, each over the last `log_every_n_steps` batches."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch


class Throughput(pl.Callback):
    """Wall time between one batch's end and the next one's start is data wait (Lightning fetches the
    next batch there; on checkpoint steps it also writes the checkpoint)."""

    def __init__(self):
        self.images = self.batches = 0
        self.compute = self.wait = 0.0
        self.batch_started = self.batch_ended = None
        self.metrics: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_started = time.perf_counter()
        if self.batch_ended is not None:
            self.wait += self.batch_started - self.batch_ended

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batch_ended = time.perf_counter()
        self.compute += self.batch_ended - self.batch_started
        self.images += len(batch[0])
        self.batches += 1  # across virtual epochs, which can be shorter than the window
        if self.batches % trainer.log_every_n_steps == 0:  # every rank reaches this batch together
            elapsed = self.compute + self.wait
            total_images = trainer.strategy.reduce(torch.tensor(float(self.images)), reduce_op="sum")
            self.metrics = {
                "train/images_per_s_per_device": self.images / elapsed,
                "train/images_per_s": float(total_images) / elapsed,
                "train/data_wait_fraction": self.wait / elapsed,
            }
            self.images, self.compute, self.wait = 0, 0.0, 0.0
        if self.metrics:
            pl_module.log_dict(self.metrics, batch_size=len(batch[0]))

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.batch_ended is not None:
            self.wait += time.perf_counter() - self.batch_ended

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.batch_ended is not None:  # validation time is neither training nor waiting
            self.batch_ended = time.perf_counter()
